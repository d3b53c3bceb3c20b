"""Static host pools: the hosts an admin registers for a ``static`` provider, and how nodes borrow them.

Two kinds of callers:

* **Admins** (API ``/api/v2/providers/{name}/hosts`` and the admin) register, edit and retire hosts, take
  a host out of service (``broken``) or return a repaired one to the pool (``free``). These services check
  that the actor administers the provider's tenant, validate every field (errors name the field), refuse
  to touch a host a node holds (409 naming the node), and write an AuditEvent.
* **The ``static`` driver** (``providers/drivers/static.py``) allocates a free host to a node, pins its
  host key, and returns it to the pool after the cleanup script, or marks it broken. Each of these is one
  short transaction with a conditional UPDATE on the state it expects (never check-then-act), so any
  number of workers may allocate and release at once; SSH runs outside every transaction.

Also here: the ``static:<provider pk>/<host pk>`` credentials resolver, so nodes on pool hosts carry only
a reference and SSH resolves it to the provider's current ``ssh_private_key`` when it connects (a key the
admin rotates applies to running clusters at once, as the hosts' authorized_keys do).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from tenants.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from tenants.models import Role, Tenant
from tenants.selectors import user_role
from tenants.services import audit

from .credentials import SshCredentials, register_resolver
from .drivers.base import TAG_CLUSTER, MachineSpec, TerminalError, TransientError
from .egress import EgressRefused, check_host_field
from .models import PoolHost, Provider
from .secrets import decrypt_json
from .ssh import parse_host_key

logger = logging.getLogger(__name__)

STATIC_TYPE = "static"
CREDENTIALS_SCHEME = "static"
AUDIT_KIND = "pool host"
DEFAULT_SSH_USER = "root"
MAX_ALLOCATION_TRIES = 20
ERROR_MAX_CHARS = 4000

State = PoolHost.State
HELD = (State.ALLOCATED, State.CLEANING)
SETTABLE_STATES = (State.FREE, State.BROKEN)
"""The states an admin may put a host in; ``allocated`` and ``cleaning`` belong to the driver, retiring
is its own action (DELETE)."""

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MACHINE_ID = re.compile(r"^static-(\d{1,18})-(\d{1,9})$")


# --- validation ---------------------------------------------------------------------------------------------


def _invalid(problems: Mapping[str, str]) -> ApplicationError:
    """One error naming every field that is wrong; the message leads with the first."""
    field, problem = next(iter(problems.items()))
    return ApplicationError(f"{field}: {problem}", fields={name: [text] for name, text in problems.items()})


def _check_address(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, str) or not value.strip():
        return None, "is required: an IP address or a DNS name"
    address = value.strip()
    try:
        return str(ipaddress.ip_address(address)), None
    except ValueError:
        pass
    labels = address.removesuffix(".").split(".")
    if re.fullmatch(r"[0-9.]+", address) or len(address) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        return None, f"must be an IP address or a DNS name, got {address!r}"
    return address.lower().removesuffix("."), None


def _check_port(value: Any) -> tuple[int | None, str | None]:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None, f"must be a whole number between 1 and 65535, got {value!r}"
    try:
        port = int(value)
    except ValueError:
        return None, f"must be a whole number between 1 and 65535, got {value!r}"
    if not 1 <= port <= 65535:
        return None, f"must be between 1 and 65535, got {port}"
    return port, None


def _check_user(value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return "", None
    if not isinstance(value, str):
        return None, f"must be a user name, got {value!r}"
    user = value.strip()
    if user and not _USER.fullmatch(user):
        return None, f"must be a user name (letters, digits, '_', '.', '-'; at most 64), got {user!r}"
    return user, None


def _check_host_key(value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return "", None
    if not isinstance(value, str):
        return None, "must be an OpenSSH public key line such as 'ssh-ed25519 AAAA...'"
    line = " ".join(value.split()[:2])  # a trailing comment (user@host) is not part of the key
    if not line:
        return "", None
    try:
        parse_host_key(line)
    except TerminalError:
        return None, "must be an OpenSSH public key line such as 'ssh-ed25519 AAAA...' (as in ssh_host_*_key.pub)"
    return line, None


def _check_state(value: Any) -> tuple[str | None, str | None]:
    if value in SETTABLE_STATES:
        return str(value), None
    return None, (
        f"can be set to {' or '.join(SETTABLE_STATES)}, got {value!r} (nodes allocate hosts; DELETE retires one)"
    )


_CHECKS = {
    "address": _check_address,
    "ssh_port": _check_port,
    "ssh_user": _check_user,
    "host_key": _check_host_key,
    "state": _check_state,
}


def _validated(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every given field checked at once, so one answer names every problem."""
    unknown = sorted(set(values) - set(_CHECKS))
    if unknown:
        raise _invalid({name: f"is not a field of a pool host (fields: {', '.join(_CHECKS)})" for name in unknown})
    cleaned: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, value in values.items():
        result, problem = _CHECKS[name](value)
        if problem is not None:
            problems[name] = problem
        else:
            cleaned[name] = result
    if problems:
        raise _invalid(problems)
    if cleaned.get("address"):
        try:
            check_host_field("address", cleaned["address"], cleaned.get("ssh_port") or 22)
        except EgressRefused as error:
            raise _invalid({"address": f"refused by the egress policy: {error.message.partition(': ')[2]}"}) from None
    return cleaned


# --- who may, and lookups -----------------------------------------------------------------------------------


def pool_require_admin(*, actor: Any, tenant: Tenant) -> None:
    """Pools are managed by the tenant's admins: addresses and keys of the tenant's own machines."""
    if actor is None or user_role(user=actor, tenant=tenant) != Role.ADMIN:
        raise PermissionDenied(f"only admins of tenant {tenant.name} manage host pools")


def _require_static(provider: Provider) -> None:
    if provider.provider_type != STATIC_TYPE:
        problem = f"{provider.name} is of type {provider.provider_type}; only {STATIC_TYPE} providers have a host pool"
        raise ApplicationError(f"provider: {problem}", fields={"provider": [problem]})


def pool_provider_get(*, user: Any, tenant: Tenant, name: str) -> Provider:
    """The tenant's static provider ``name`` for an admin. Another tenant's (or an unknown) provider is a
    404; a member who is not an admin gets 403 (the provider itself is visible to them); a provider of
    another type is a 400 naming it."""
    provider = Provider.objects.restrict(user, "view").filter(tenant=tenant, name=name).first()
    if provider is None:
        raise NotFound(f"provider {name} not found")
    pool_require_admin(actor=user, tenant=tenant)
    _require_static(provider)
    return provider


def pool_host_list(*, user: Any, provider: Provider, states: list[str] | None = None) -> QuerySet[PoolHost]:
    """The provider's hosts, oldest first; every state but ``retired`` unless ``states`` names some."""
    hosts = PoolHost.objects.restrict(user, "view").filter(provider=provider).select_related("provider")
    if states is None:
        return hosts.exclude(state=State.RETIRED).order_by("pk")
    unknown = [state for state in states if state not in State.values]
    if unknown:
        problem = f"unknown state {unknown[0]!r}; states: {', '.join(State.values)}"
        raise ApplicationError(f"state: {problem}", fields={"state": [problem]})
    return hosts.filter(state__in=states).order_by("pk")


def pool_host_get(*, user: Any, provider: Provider, pk: int) -> PoolHost:
    host = PoolHost.objects.restrict(user, "view").filter(provider=provider, pk=pk).select_related("provider").first()
    if host is None:
        raise NotFound(f"host {pk} of pool {provider.name} not found")
    return host


def _label(host: PoolHost) -> str:
    return f"{host.provider.name}/{host.endpoint}"


def _connection(host: PoolHost) -> dict[str, Any]:
    return {"address": host.address, "ssh_port": host.ssh_port, "ssh_user": host.ssh_user, "state": host.state,
            "host_key": bool(host.host_key)}  # fmt: skip


def _endpoint_taken(provider: Provider, address: str, port: int, *, other_than: int | None = None) -> Conflict | None:
    taken = PoolHost.objects.filter(provider=provider, address=address, ssh_port=port).exclude(state=State.RETIRED)
    if other_than is not None:
        taken = taken.exclude(pk=other_than)
    existing = taken.first()
    if existing is None:
        return None
    problem = f"{existing.endpoint} is already host {existing.pk} of pool {provider.name} ({existing.state})"
    return Conflict(f"address: {problem}", fields={"address": [problem]})


# --- admin services -----------------------------------------------------------------------------------------


@transaction.atomic
def pool_host_register(
    *,
    actor: Any,
    provider: Provider,
    address: Any,
    ssh_port: Any = 22,
    ssh_user: Any = "",
    host_key: Any = "",
    state: Any = State.FREE,
) -> PoolHost:
    """Add a host to the pool of ``provider`` (free, or ``broken`` to register it out of service).

    Raises ``PermissionDenied`` unless ``actor`` administers the provider's tenant, ``ApplicationError``
    naming each bad field, ``Conflict`` when the address and port are already a live host of this pool.
    Side effect: an AuditEvent.
    """
    pool_require_admin(actor=actor, tenant=provider.tenant)
    _require_static(provider)
    values = _validated({"address": address, "ssh_port": ssh_port, "ssh_user": ssh_user, "host_key": host_key,
                         "state": state})  # fmt: skip
    conflict = _endpoint_taken(provider, values["address"], values["ssh_port"])
    if conflict is not None:
        raise conflict
    try:
        with transaction.atomic():
            host = PoolHost.objects.create(tenant_id=provider.tenant_id, provider=provider, **values)
    except IntegrityError:
        # Registered by a concurrent request between the check and the insert.
        conflict = _endpoint_taken(provider, values["address"], values["ssh_port"])
        raise conflict or Conflict("address: the host was registered by another request meanwhile") from None
    host.provider = provider
    audit(tenant=provider.tenant, actor=actor, action="create", kind=AUDIT_KIND, name=_label(host),
          summary={"after": _connection(host)})  # fmt: skip
    return host


def _locked(host: PoolHost) -> PoolHost:
    locked = PoolHost.objects.select_for_update().select_related("provider", "tenant").filter(pk=host.pk).first()
    if locked is None:
        raise NotFound(f"host {host.pk} not found")
    return locked


def _refuse_if_held(host: PoolHost, doing: str) -> None:
    if host.state in HELD:
        raise Conflict(
            f"host {host.pk} ({host.endpoint}) is {host.state} by node {host.node_key}: {doing} once the node's "
            "cluster is deleted and the host is back in the pool",
            extra={"host": {"id": host.pk, "state": host.state, "node": host.node_key}},
        )
    if host.state == State.RETIRED:
        raise Conflict(f"host {host.pk} ({host.endpoint}) is retired; register it again to use it")


@transaction.atomic
def pool_host_update(*, actor: Any, host: PoolHost, changes: Mapping[str, Any]) -> PoolHost:
    """Change a host's ``address``, ``ssh_port``, ``ssh_user``, ``host_key`` or ``state`` (``free`` or ``broken``).

    Only free and broken hosts change (a 409 names the node holding an allocated one): a node records the
    address and user it was given. A new address or port forgets the pinned host key unless a new one is
    given, since the key belonged to the machine at the old endpoint. Returning a broken host to ``free``
    clears its error: the admin has repaired it. Side effect: an AuditEvent when anything changed.
    """
    host = _locked(host)
    pool_require_admin(actor=actor, tenant=host.tenant)
    values = _validated(changes)
    _refuse_if_held(host, "change it")
    before = _connection(host)
    moved = any(name in values and values[name] != getattr(host, name) for name in ("address", "ssh_port"))
    if moved and "host_key" not in values:
        values["host_key"] = ""
    if moved:
        conflict = _endpoint_taken(host.provider, values.get("address", host.address),
                                   values.get("ssh_port", host.ssh_port), other_than=host.pk)  # fmt: skip
        if conflict is not None:
            raise conflict
    changed = {name: value for name, value in values.items() if getattr(host, name) != value}
    if not changed:
        return host
    if "state" in changed:
        changed["state_changed_at"] = timezone.now()
        changed["last_error"] = "" if changed["state"] == State.FREE else f"taken out of service by {actor}"
    for name, value in changed.items():
        setattr(host, name, value)
    host.save(update_fields=list(changed))
    audit(tenant=host.tenant, actor=actor, action="update", kind=AUDIT_KIND, name=_label(host),
          summary={"before": before, "after": _connection(host)})  # fmt: skip
    return host


@transaction.atomic
def pool_host_retire(*, actor: Any, host: PoolHost) -> PoolHost:
    """Take a free or broken host out of the pool for good (the row stays, as the record). A host a node
    holds is a 409 naming the node; retiring a retired host changes nothing. Side effect: an AuditEvent."""
    host = _locked(host)
    pool_require_admin(actor=actor, tenant=host.tenant)
    if host.state == State.RETIRED:
        return host
    _refuse_if_held(host, "retire it")
    before = host.state
    host.state, host.state_changed_at = State.RETIRED, timezone.now()
    host.save(update_fields=["state", "state_changed_at"])
    audit(tenant=host.tenant, actor=actor, action="retire", kind=AUDIT_KIND, name=_label(host),
          summary={"before": {"state": before}})  # fmt: skip
    return host


# --- the driver's side ----------------------------------------------------------------------------------------


def machine_id_of(host: PoolHost) -> str:
    """The id of the host's current allocation: the host and the allocation count, so every hand-out of
    one host is a different machine (a late delete of an earlier one finds nothing to do)."""
    return f"static-{host.pk}-{host.allocations}"


def parse_machine_id(machine_id: str) -> tuple[int, int] | None:
    match = _MACHINE_ID.fullmatch(machine_id or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def pool_host_of_machine(*, provider_pk: int, machine_id: str) -> PoolHost | None:
    """The host of allocation ``machine_id`` while that allocation lasts (allocated or cleaning), else None."""
    parsed = parse_machine_id(machine_id)
    if parsed is None:
        return None
    host_pk, allocation = parsed
    return (
        PoolHost.objects.select_related("provider", "tenant")
        .filter(provider_id=provider_pk, pk=host_pk, allocations=allocation, state__in=HELD)
        .first()
    )


def _no_free_host(provider_pk: int) -> TransientError:
    counts = dict(
        PoolHost.objects.filter(provider_id=provider_pk).values_list("state").annotate(n=Count("pk")).order_by()
    )
    name = Provider.objects.filter(pk=provider_pk).values_list("name", flat=True).first() or f"#{provider_pk}"
    message = (
        f"pool {name} has no free host ({counts.get(State.ALLOCATED, 0)} allocated, "
        f"{counts.get(State.BROKEN, 0)} broken)"
    )
    if counts.get(State.CLEANING):
        message += f"; {counts[State.CLEANING]} being cleaned"
    if not any(counts.get(state) for state in (State.ALLOCATED, State.CLEANING, State.BROKEN)):
        message += "; register hosts in the pool"
    # Transient: hosts come back when other clusters are deleted, when cleanups end or when an admin adds
    # or repairs hosts, so the engine's retries (and a later retry of the job) can succeed.
    return TransientError(message)


def pool_host_allocate(*, provider_pk: int, spec: MachineSpec) -> PoolHost:
    """The host ``spec``'s node holds, or a free host allocated to it now.

    Safe under concurrency: a free host is chosen with ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent
    creates do not wait on each other or pick the same row; only when every free host is locked does a
    create wait, to learn whether any is left) and taken with a conditional UPDATE on
    ``state = free`` (so even a database without row locks, SQLite, never hands one host out twice).
    Idempotent: the node's host is returned again, and when two creates of one node race, the unique
    (provider, node key) constraint fails the second, which then finds the first's host.

    Raises ``TransientError`` "pool <name> has no free host (N allocated, M broken)" when none is free, and
    when the node's host is still being cleaned from an earlier allocation.
    """
    for _ in range(MAX_ALLOCATION_TRIES):
        try:
            with transaction.atomic():
                held = PoolHost.objects.filter(provider_id=provider_pk, node_key=spec.node_key).first()
                if held is not None:
                    if held.state == State.ALLOCATED:
                        return held
                    raise TransientError(
                        f"node {spec.node_key} is still returning host {held.endpoint} to the pool ({held.state})"
                    )
                # The host free the longest goes first, giving a just-cleaned one time to settle.
                free = PoolHost.objects.filter(provider_id=provider_pk, state=State.FREE).order_by(
                    "state_changed_at", "pk"
                )
                candidate = free.select_for_update(skip_locked=True).values_list("pk", flat=True).first()
                if candidate is None:
                    # Every free host may be locked by allocations in flight: wait for them (short
                    # transactions, and this one holds no lock) and look again, so "no free host" is said only
                    # when none is left, with counts that include those allocations.
                    candidate = free.select_for_update().values_list("pk", flat=True).first()
                if candidate is None:
                    raise _no_free_host(provider_pk)
                now = timezone.now()
                taken = PoolHost.objects.filter(pk=candidate, state=State.FREE).update(
                    state=State.ALLOCATED,
                    state_changed_at=now,
                    node_key=spec.node_key,
                    machine_name=spec.name,
                    tags=dict(spec.tags),
                    allocations=F("allocations") + 1,
                    allocated_at=now,
                    last_error="",
                )
                if taken:
                    host = PoolHost.objects.select_related("provider", "tenant").get(pk=candidate)
                    audit(tenant=host.tenant, actor=None, action="allocate", kind=AUDIT_KIND, name=_label(host),
                          summary={"node": spec.node_key, "cluster": spec.cluster_key,
                                   "machine": machine_id_of(host)})  # fmt: skip
                    return host
        except IntegrityError:
            logger.debug("concurrent create of node %s: looking for the host the other create took", spec.node_key)
    raise TransientError(f"could not allocate a host of pool #{provider_pk} to {spec.node_key}: too much contention")


def pool_host_pin(*, host: PoolHost, host_key: str, hostname: str) -> None:
    """Record the host key seen on first contact (only if none is pinned yet) and the reported hostname."""
    if host_key:
        PoolHost.objects.filter(pk=host.pk, host_key="").update(host_key=host_key)
    if hostname and hostname != host.hostname:
        PoolHost.objects.filter(pk=host.pk).update(hostname=hostname[:255])


def pool_host_start_cleaning(*, host: PoolHost, stale_after: timedelta) -> bool:
    """Claim the return of an allocated host: ``allocated -> cleaning``. True when this caller now runs the
    cleanup. A host already cleaning is taken over only once its cleanup is older than ``stale_after`` (the
    delete running it died); a younger one raises ``TransientError`` so the caller retries later rather
    than running the script twice at once."""
    now = timezone.now()
    claimed = PoolHost.objects.filter(pk=host.pk, allocations=host.allocations, state=State.ALLOCATED).update(
        state=State.CLEANING, state_changed_at=now, cleaning_since=now
    )
    if claimed:
        return True
    current = PoolHost.objects.filter(pk=host.pk, allocations=host.allocations, state=State.CLEANING).first()
    if current is None:
        return False  # freed, broken or allocated again meanwhile: this allocation is over
    since = current.cleaning_since or now
    if now - since < stale_after:
        raise TransientError(f"host {host.endpoint} is being cleaned since {since.isoformat()} by another delete")
    return bool(
        PoolHost.objects.filter(pk=host.pk, state=State.CLEANING, cleaning_since=current.cleaning_since).update(
            cleaning_since=now
        )
    )


def _release_fields(now: datetime) -> dict[str, Any]:
    return {"state_changed_at": now, "node_key": "", "machine_name": "", "tags": {}, "allocated_at": None,
            "cleaning_since": None}  # fmt: skip


@transaction.atomic
def pool_host_finish_cleaning(*, host: PoolHost, error: str | None, output: str = "") -> None:
    """End a cleanup: the host goes back to the pool (``free``), or to ``broken`` with the error when the
    cleanup failed, so it is never handed out again until an admin repairs it. Audited either way."""
    now = timezone.now()
    held = PoolHost.objects.filter(pk=host.pk, allocations=host.allocations, state=State.CLEANING)
    summary: dict[str, Any] = {"node": host.node_key, "cluster": (host.tags or {}).get(TAG_CLUSTER, ""),
                               "machine": machine_id_of(host)}  # fmt: skip
    if error is None:
        done = held.update(state=State.FREE, last_error="", **_release_fields(now))
        action = "release"
    else:
        tail = f"\n--- output (tail) ---\n{output[-1500:]}" if output.strip() else ""
        text = f"cleanup after node {host.node_key} failed at {now.isoformat()}: {error}{tail}"[:ERROR_MAX_CHARS]
        done = held.update(state=State.BROKEN, last_error=text, **_release_fields(now))
        action, summary["error"] = "broken", error[:500]
    if done:
        audit(tenant=host.tenant, actor=None, action=action, kind=AUDIT_KIND, name=_label(host), summary=summary)


def pool_hosts_held(*, provider_pk: int) -> QuerySet[PoolHost]:
    """Hosts of the pool that nodes hold (allocated, or being cleaned after their node was deleted)."""
    return PoolHost.objects.filter(provider_id=provider_pk, state__in=HELD).filter(~Q(node_key="")).order_by("pk")


def effective_user(host: PoolHost, provider_user: str | None) -> str:
    """The login user for ``host``: its own, else the provider's ``ssh_user``, else root."""
    return host.ssh_user or (provider_user or "").strip() or DEFAULT_SSH_USER


# --- credentials ------------------------------------------------------------------------------------------------


def credentials_ref(host: PoolHost) -> str:
    return f"{CREDENTIALS_SCHEME}:{host.provider_id}/{host.pk}"


def _static_resolver(rest: str, user: str) -> SshCredentials:
    """``static:<provider pk>/<host pk>`` → the provider's current ``ssh_private_key``, logging in as the
    host's user (its own, else the provider's). The user asked for is replaced: the pool decides who logs
    in to its hosts."""
    match = re.fullmatch(r"(\d{1,18})/(\d{1,18})", rest)
    if match is None:
        raise TerminalError(f"credentials reference {CREDENTIALS_SCHEME}:{rest} is not static:<provider>/<host>")
    host = (
        PoolHost.objects.select_related("provider")
        .filter(provider_id=int(match.group(1)), pk=int(match.group(2)))
        .exclude(state=State.RETIRED)
        .first()
    )
    if host is None:
        raise TerminalError(f"SSH key {CREDENTIALS_SCHEME}:{rest}: the pool host is no longer registered")
    fields = {**(host.provider.document.get("provisioner") or {}), **decrypt_json(host.provider.secret_data)}
    key = fields.get("ssh_private_key")
    if not isinstance(key, str) or not key.strip():
        provider = host.provider.name
        raise TerminalError(f"SSH key {CREDENTIALS_SCHEME}:{rest}: provider {provider} has no ssh_private_key")
    return SshCredentials(user=effective_user(host, fields.get("ssh_user")), private_key=key)


register_resolver(CREDENTIALS_SCHEME, _static_resolver)
