"""The provider driver contract: what the engine may ask of a cloud, and what it gets back.

Pure Python on purpose: a driver receives plain frozen dataclasses and returns plain results, so
``providers`` never needs to import ``clusters`` and the contract can be exercised without a database.

Every create is idempotent and leak-proof (architecture, section 3): the machine carries a deterministic
name, a deterministic client token and the tags ``loom-cluster`` / ``loom-node``, and ``create`` first
looks for a machine it may already have made before making a new one. A create that made the machine and
then failed (a timeout on the response, a 5xx after the side effect) is exactly how real clouds leak, and
the retry finds that machine instead of making a second one.

Errors are classified so the engine needs no knowledge of any cloud:

* ``TransientError`` (network, 5xx, 429, "not found" right after a create): retry with backoff.
* ``TerminalError`` (auth, 4xx, validation, unknown provider type): fail the task at once.
* ``NotReady`` is not a failure: the machine is still booting. The caller re-enqueues the confirm with
  ``retry_after`` as the countdown instead of holding a worker thread ("waiting is not working").
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

TAG_CLUSTER = "loom-cluster"
TAG_NODE = "loom-node"


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy, so a frozen dataclass is not mutable through its mappings."""
    return MappingProxyType(dict(values))


def machine_name(cluster_key: str, node_number: int) -> str:
    """The deterministic machine name ``loom-<cluster>-<node number>``, DNS-label safe (≤ 63 chars).

    Clouds disagree on what a name may contain; lower-case letters, digits and '-' are accepted by all of
    them, and a retried create must produce the very same name, so it is derived, never random.
    """
    cluster = re.sub(r"[^a-z0-9-]+", "-", cluster_key.lower()).strip("-") or "cluster"
    suffix = f"-{node_number}"
    return ("loom-" + cluster)[: 63 - len(suffix)].rstrip("-") + suffix


def client_token(cluster_key: str, node_key: str) -> str:
    """A deterministic per-node idempotency token (EC2 ``ClientToken`` allows 64 ASCII characters)."""
    digest = hashlib.sha256(f"{cluster_key}\x00{node_key}".encode()).hexdigest()
    return f"loom-{digest[:40]}"


@dataclass(frozen=True)
class MachineSpec:
    """What to create for one node. Built by the engine; everything a retry needs is deterministic.

    ``fields`` are the provider's admin fields merged with the request's user fields, secrets already
    decrypted: it is kept out of ``repr`` so a spec in a log line or a traceback never shows a credential.
    ``tags`` always include ``loom-cluster`` and ``loom-node`` (added here when missing; a conflicting value
    is a programming error), because the reaper and the idempotent create find machines by them.
    """

    cluster_key: str
    node_key: str
    name: str
    client_token: str
    flavor: str
    image: str
    ssh_user: str = "root"
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tag, expected in ((TAG_CLUSTER, self.cluster_key), (TAG_NODE, self.node_key)):
            if self.tags.get(tag, expected) != expected:
                raise ValueError(f"tag {tag}={self.tags[tag]!r} contradicts the spec's {expected!r}")
        if not self.cluster_key or not self.node_key or not self.name or not self.client_token:
            raise ValueError("cluster_key, node_key, name and client_token must not be empty")
        tags = {**self.tags, TAG_CLUSTER: self.cluster_key, TAG_NODE: self.node_key}
        object.__setattr__(self, "tags", _frozen(tags))
        object.__setattr__(self, "fields", _frozen(self.fields))

    @classmethod
    def for_node(
        cls,
        *,
        cluster_key: str,
        node_key: str,
        node_number: int,
        flavor: str,
        image: str,
        ssh_user: str = "root",
        fields: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MachineSpec:
        """A spec with the name and client token derived from the cluster and node, the usual way to make one."""
        return cls(
            cluster_key=cluster_key,
            node_key=node_key,
            name=machine_name(cluster_key, node_number),
            client_token=client_token(cluster_key, node_key),
            flavor=flavor,
            image=image,
            ssh_user=ssh_user,
            fields=fields or {},
            tags=tags or {},
        )


@dataclass(frozen=True)
class Machine:
    """A machine as the provider reports it. ``state`` is the provider's word (e.g. pending, running);
    ``addresses`` what it reports now under the names of ``Reachable.ip_addresses`` (empty when it reports
    none in a listing), so the health sweep sees a machine that moved."""

    machine_id: str
    name: str
    tags: Mapping[str, str]
    state: str
    created_at: datetime
    addresses: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", _frozen(self.tags))
        object.__setattr__(self, "addresses", _frozen(self.addresses))

    @property
    def cluster_key(self) -> str | None:
        return self.tags.get(TAG_CLUSTER)

    @property
    def node_key(self) -> str | None:
        return self.tags.get(TAG_NODE)


@dataclass(frozen=True)
class Reachable:
    """A booted machine and how to reach it.

    ``ip_addresses`` uses the original's names: ``access_v4`` (what Loom connects to) and ``bind_v4``
    (what services on the node bind to, usually the private address). ``credentials_ref`` names where the
    SSH credentials are kept (e.g. a plugin resource), never the key itself; ``host_key`` is the OpenSSH
    public host key line when the provider reports one, recorded on first contact.
    """

    machine_id: str
    hostname: str
    ip_addresses: Mapping[str, str]
    ssh_user: str
    ssh_port: int = 22
    host_key: str | None = None
    credentials_ref: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip_addresses", _frozen(self.ip_addresses))


class DriverError(Exception):
    """A classified provider failure. ``retryable`` tells the engine whether a retry can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments break the default exception pickling (used by result backends).
        return (_rebuild_error, (type(self), self.__dict__.copy()))


def _rebuild_error(cls: type[Exception], state: dict[str, Any]) -> Exception:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class TransientError(DriverError):
    """Network, 5xx, 429 or eventual-consistency 404: retry with backoff.

    ``retry_after`` carries a server's hint (e.g. a 429's Retry-After) in seconds when there is one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after = retry_after


class TerminalError(DriverError):
    """Auth, 4xx, validation, an unknown provider type: retrying the same call cannot succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class NotReady(Exception):
    """Not a failure: the machine exists but is not reachable yet. Confirm again after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.__dict__.copy()))


@runtime_checkable
class Driver(Protocol):
    """The provider driver contract. One instance serves one provider (``provider_key``).

    Implementations must be safe to call from many worker processes at once, keep no state that matters
    in process memory, and raise only ``DriverError`` subclasses or ``NotReady``.
    """

    provider_key: str

    def create(self, spec: MachineSpec) -> Machine:
        """Make the machine, or return the one already made for this spec (same token, name or node tag)."""
        ...

    def confirm(self, spec: MachineSpec, machine_id: str) -> Reachable:
        """Return how to reach the machine; raise ``NotReady`` while it boots. Never blocks for the boot."""
        ...

    def delete(self, machine_id: str) -> None:
        """Delete the machine. A machine that no longer exists is success, so deletes can be retried."""
        ...

    def list_tagged(self) -> list[Machine]:
        """Every machine of this provider that carries a ``loom-cluster`` tag (the reaper's input)."""
        ...


# Provider type name -> "module:Class". Imported lazily so that this module stays free of Django and of
# every cloud SDK: asking for the fake driver must not import libcloud, and vice versa.
DRIVERS: dict[str, str] = {
    "fake": "providers.drivers.fake:FakeDriver",
    "local": "providers.drivers.local:LocalDriver",
    "static": "providers.drivers.static:StaticDriver",
    "aws": "providers.drivers.aws:AwsDriver",
    "openstack": "providers.drivers.openstack:OpenStackDriver",
    "google": "providers.drivers.gce:GoogleDriver",
    "digitalocean": "providers.drivers.digitalocean:DigitalOceanDriver",
    "rackspace": "providers.drivers.rackspace:RackspaceDriver",
}


def driver_for(provider_type: str, fields: Mapping[str, Any], *, provider_key: str) -> Driver:
    """The driver for ``provider_type``, configured with the provider's ``fields``.

    ``provider_key`` identifies the provider (and so its tenant) to the driver: two providers never see
    each other's machines. An unknown type is a ``TerminalError``, since no retry will make it known.
    """
    target = DRIVERS.get(provider_type)
    if target is None:
        known = ", ".join(sorted(DRIVERS)) or "none"
        raise TerminalError(f"no driver for provider type {provider_type!r}; drivers exist for: {known}")
    module_name, _, class_name = target.partition(":")
    driver_class = getattr(importlib.import_module(module_name), class_name)
    driver: Driver = driver_class(fields, provider_key=provider_key)
    return driver
