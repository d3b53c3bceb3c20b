"""Providers: a provider type plus field values. Sensitive values are encrypted at rest.

The public part of the document (non-sensitive fields) is stored like every catalog entity; sensitive
values live only in ``secret_data``, a MultiFernet token of a JSON object, and never leave the server
except to the worker that needs them.

Also here: the fake provider's machines (its simulated cloud, shared by every worker process), the
reaper's sightings of orphaned machines, and plugin resources (scripts, archives, keys) automators use.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from templates_app.models import CatalogEntity, _unique_name
from tenants.models import TenantModel


class Provider(CatalogEntity):
    kind_key = "providers"

    provider_type = models.CharField(max_length=64, db_index=True)
    secret_data = models.TextField(blank=True, default="")

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("provider")


class FakeMachine(models.Model):
    """A machine of the ``fake`` provider type: the simulated cloud's own state.

    Kept in the database, not in process memory (as libcloud's DummyNodeDriver does), so that every worker
    process sees the same machines and a ``kill -9`` of one loses nothing. Rows are keyed by
    ``provider_key`` so providers (and so tenants) never see each other's machines. A deleted machine keeps
    its row with ``deleted_at`` set, as clouds keep terminated instances visible for a while; that also lets
    tests count every machine ever made, which is how a leak shows.
    """

    provider_key = models.CharField(max_length=200)
    machine_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255)
    client_token = models.CharField(max_length=128)
    node_key = models.CharField(max_length=255)
    tags = models.JSONField(default=dict)
    flavor = models.CharField(max_length=255, blank=True, default="")
    image = models.CharField(max_length=255, blank=True, default="")
    ssh_user = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField()
    ready_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)
    # What happens to machines out of band, which the health sweep must notice (tests set these directly, as
    # someone at a cloud console would): stopped, or given another address.
    stopped_at = models.DateTimeField(null=True, blank=True)
    access_v4 = models.CharField(max_length=64, blank=True, default="", help_text="Replaces the made-up address.")

    class Meta:
        ordering = ["pk"]
        constraints = [
            # The cloud-side half of idempotency (EC2's ClientToken): two concurrent creates of one node,
            # e.g. a duplicate broker delivery, cannot both make a machine.
            models.UniqueConstraint(
                fields=["provider_key", "client_token"],
                condition=models.Q(deleted_at__isnull=True),
                name="fakemachine_unique_live_token",
            )
        ]
        indexes = [
            models.Index(fields=["provider_key", "node_key"], name="fakemachine_provider_node"),
            models.Index(fields=["provider_key", "name"], name="fakemachine_provider_name"),
        ]

    def __str__(self) -> str:
        return f"{self.machine_id} ({self.name})"


class FakeCallCount(models.Model):
    """How often the fake driver has been asked to do ``action`` for ``subject`` (a node or machine).

    The count is the attempt number that seeds the fake's random draws: every worker derives the same
    draw for the n-th create of a node without sharing a generator or relying on the caller to pass an
    attempt number, so a seeded run is reproducible however its tasks are spread over processes.
    """

    provider_key = models.CharField(max_length=200)
    subject = models.CharField(max_length=255)
    action = models.CharField(max_length=32)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider_key", "subject", "action"], name="fakecallcount_unique")
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.subject}: {self.count}"


class OrphanSighting(TenantModel):
    """A tagged machine the reaper found with no live node behind it, and when it first saw it.

    Works for every driver (only the machine id and tags are needed). A machine is deleted only once it has
    been an orphan for longer than the grace period, so a node whose row is being written while its
    machine is created is never reaped; rows with ``deleted_at`` set are the record of what was reaped.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="orphan_sightings")
    machine_id = models.CharField(max_length=255)
    name = models.CharField(max_length=255, blank=True, default="")
    cluster_key = models.CharField(max_length=255, blank=True, default="")
    node_key = models.CharField(max_length=255, blank=True, default="")
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["provider", "first_seen", "pk"]
        constraints = [models.UniqueConstraint(fields=["provider", "machine_id"], name="orphansighting_unique_machine")]

    def __str__(self) -> str:
        return f"{self.machine_id} on provider {self.provider_id}"


class PluginResource(TenantModel):
    """One uploaded version of a plugin resource: scripts, archives, cookbooks, manifests, SSH keys, ...

    Identity as in the original (loom-reference §1.14): (tenant, plugin kind, plugin, resource type, name,
    version), versions counting up from 1 per name. Status comes from two flags: ``live`` (what automators
    use now) and ``slated`` (what they will use after the next activation): active = live and slated,
    recalled = live only, staged = slated only, inactive = neither. At most one version per name is slated
    and one is live, so "stage v3" replaces v2 at the next activation without a gap.

    The bytes are encrypted at rest (``content`` is a MultiFernet token): some resources are SSH or API
    keys, and treating every resource alike means no resource type can be forgotten.
    """

    class Kind(models.TextChoices):
        AUTOMATOR = "automatortypes", "Automator type"
        PROVIDER = "providertypes", "Provider type"

    plugin_kind = models.CharField(max_length=16, choices=Kind.choices)
    plugin = models.CharField(max_length=64)
    resource_type = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    version = models.PositiveIntegerField()
    live = models.BooleanField(default=False)
    slated = models.BooleanField(default=False)
    content = models.BinaryField()
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plugin_kind", "plugin", "resource_type", "name", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "plugin_kind", "plugin", "resource_type", "name", "version"],
                name="pluginresource_unique_version",
            ),
            models.UniqueConstraint(
                fields=["tenant", "plugin_kind", "plugin", "resource_type", "name"],
                condition=models.Q(live=True),
                name="pluginresource_one_live",
            ),
            models.UniqueConstraint(
                fields=["tenant", "plugin_kind", "plugin", "resource_type", "name"],
                condition=models.Q(slated=True),
                name="pluginresource_one_slated",
            ),
        ]

    @property
    def status(self) -> str:
        if self.live:
            return "active" if self.slated else "recalled"
        return "staged" if self.slated else "inactive"

    def __str__(self) -> str:
        return f"{self.plugin}/{self.resource_type}/{self.name} v{self.version}"


class PoolHost(TenantModel):
    """One existing host (bare metal, or a VM made elsewhere) in the pool of a ``static`` provider.

    An admin registers, edits and retires hosts (``providers.pool``); the ``static`` driver hands free hosts
    to nodes and takes them back. ``state``:

    * ``free``: in the pool, ready to be handed out.
    * ``allocated``: a node holds it (``node_key``); ``allocations`` counts hand-outs and is part of the
      machine id, so a late delete for an earlier allocation can never clean up the current one.
    * ``cleaning``: its node is gone and the admin's cleanup script is running (since ``cleaning_since``).
    * ``broken``: out of service (a cleanup failed, see ``last_error``, or the admin took it out); never
      handed out until an admin returns it to the pool.
    * ``retired``: removed from the pool; the row stays as the record of what was there.

    ``host_key`` is the host's SSH host key, given at registration or pinned on first contact, and verified
    on every later connection, so a host that was replaced or tampered with is refused rather than trusted.
    """

    class State(models.TextChoices):
        FREE = "free", "Free"
        ALLOCATED = "allocated", "Allocated"
        CLEANING = "cleaning", "Cleaning"
        BROKEN = "broken", "Broken"
        RETIRED = "retired", "Retired"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="pool_hosts")
    address = models.CharField(max_length=255, help_text="IP address or DNS name Loom connects to.")
    ssh_port = models.PositiveIntegerField(default=22)
    ssh_user = models.CharField(
        max_length=64, blank=True, default="", help_text="Login user for this host; empty: the provider's SSH user."
    )
    host_key = models.TextField(
        blank=True, default="", help_text="OpenSSH public host key line; empty: pinned on first contact."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.FREE)
    state_changed_at = models.DateTimeField(default=timezone.now)
    node_key = models.CharField(max_length=255, blank=True, default="", help_text="The node holding the host.")
    machine_name = models.CharField(max_length=255, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    allocations = models.PositiveIntegerField(default=0)
    allocated_at = models.DateTimeField(null=True, blank=True)
    cleaning_since = models.DateTimeField(null=True, blank=True)
    hostname = models.CharField(max_length=255, blank=True, default="", help_text="As the host reported it.")
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["provider", "pk"]
        constraints = [
            # One live registration per endpoint and pool; a retired host may be registered again.
            models.UniqueConstraint(
                fields=["provider", "address", "ssh_port"],
                condition=~models.Q(state="retired"),
                name="poolhost_unique_endpoint",
            ),
            # The other half of idempotent creates: one node never holds two hosts, even when two creates
            # of it race (the loser's update fails and it finds the winner's host).
            models.UniqueConstraint(
                fields=["provider", "node_key"], condition=~models.Q(node_key=""), name="poolhost_unique_node"
            ),
            models.CheckConstraint(
                condition=models.Q(ssh_port__gte=1, ssh_port__lte=65535), name="poolhost_ssh_port_range"
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=["allocated", "cleaning"], node_key__gt="")
                | (~models.Q(state__in=["allocated", "cleaning"]) & models.Q(node_key="")),
                name="poolhost_node_key_iff_held",
            ),
        ]
        indexes = [models.Index(fields=["provider", "state"], name="poolhost_provider_state")]

    @property
    def endpoint(self) -> str:
        """``address:port`` (IPv6 addresses in brackets), as shown in messages and the audit trail."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{address}:{self.ssh_port}"

    def __str__(self) -> str:
        return self.endpoint
