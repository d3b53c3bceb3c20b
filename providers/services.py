"""Provider services: building a provider's driver, and the orphan reaper.

The reaper is the second half of leak-proof creates: idempotent creates stop a retry from making a second
machine, and the reaper removes machines whose node is gone (a create that succeeded for a node later
deleted, a delete that never ran, a crashed worker). It works for every driver because it needs only
``list_tagged`` and ``delete``. The caller supplies the live node keys, so ``providers`` never imports
``clusters``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from tenants.services import audit

from .catalog_kind import OPERATOR_ONLY_TYPES, is_url_field
from .drivers.base import Driver, DriverError, Machine, TerminalError, driver_for
from .egress import EgressRefused, resolve_checked, url_host_port
from .models import OrphanSighting, Provider
from .secrets import decrypt_json

logger = logging.getLogger(__name__)


def provider_key(*, provider: Provider) -> str:
    """The driver-facing identity of a provider: stable across edits, distinct per provider and tenant."""
    return f"tenant-{provider.tenant_id}/provider-{provider.pk}"


def provider_fields(*, provider: Provider, user_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The provider's admin fields with secrets decrypted, overlaid with a request's user fields.

    For workers only: the result holds credentials and must never be logged or put in a task payload.
    """
    fields: dict[str, Any] = dict(provider.document.get("provisioner") or {})
    fields.update(decrypt_json(provider.secret_data))
    fields.update(user_fields or {})
    return fields


def provider_driver(*, provider: Provider, user_fields: Mapping[str, Any] | None = None) -> Driver:
    """The driver for ``provider``. Raises ``TerminalError`` for an unknown type or unusable fields, for an
    operator-only type in a tenant the operator has not enabled (checked here too, not only when the
    provider is saved: the flag may have been turned off since), and for an endpoint or auth URL the egress
    policy refuses as it resolves now. (libcloud resolves the name again when it connects: the window
    between the two is the one place the policy cannot pin the address.)"""
    if provider.provider_type in OPERATOR_ONLY_TYPES and not provider.tenant.operator_providers:
        raise TerminalError(
            f"provider type {provider.provider_type} is operator-only and tenant {provider.tenant.name} is not enabled"
        )
    fields = provider_fields(provider=provider, user_fields=user_fields)
    for name, value in fields.items():
        target = url_host_port(value) if is_url_field(name) and isinstance(value, str) else None
        if target is not None:
            try:
                resolve_checked(*target, what=f"provider field {name}")
            except EgressRefused as error:
                raise TerminalError(error.message) from None
    return driver_for(provider.provider_type, fields, provider_key=provider_key(provider=provider))


@dataclass(frozen=True)
class Orphan:
    """A tagged machine with no live node, as the reaper last saw it."""

    machine_id: str
    name: str
    cluster_key: str
    node_key: str
    first_seen: datetime
    deleted: bool
    error: str = ""


@dataclass(frozen=True)
class ReaperReport:
    """One scan of one provider.

    ``orphans`` are every tagged machine without a live node, in grace or not; ``deleted`` the ids deleted
    by this scan; ``waiting`` those still inside the grace period (reported, not touched); ``failed`` the
    ids whose delete raised (tried again next scan); ``cleared`` the ids no longer orphaned since the last
    scan (their node is live again, or the machine went away by itself).
    """

    provider_pk: int
    scanned: int
    orphans: tuple[Orphan, ...]
    deleted: tuple[str, ...]
    waiting: tuple[str, ...]
    failed: tuple[str, ...]
    cleared: tuple[str, ...]


def reaper_scan(*, provider: Provider, live_node_keys: set[str], grace_seconds: int, now: datetime) -> ReaperReport:
    """Report tagged machines of ``provider`` whose ``loom-node`` tag is not live; delete the old ones.

    Preconditions: ``live_node_keys`` holds every node that has or may get a machine on this provider
    (including nodes whose create is still running), read *before* this call, so a machine created after
    that read is at worst reported, and the grace period keeps it from being deleted.

    Side effects: records the first sighting of each orphan in ``OrphanSighting``; deletes, through the
    driver, orphans first seen at least ``grace_seconds`` before ``now``, and writes an AuditEvent for each.
    Sightings of machines that are no longer orphans are dropped, so a machine that becomes an orphan again
    gets a fresh grace period.

    Not one transaction on purpose: provider calls are network calls and must not hold database locks.
    Each write is its own short transaction, and every step is idempotent, so a crashed scan is simply
    repeated. Raises ``DriverError`` when the listing fails (nothing is changed then); a failing delete is
    recorded on the sighting and in ``failed`` instead of stopping the scan.
    """
    driver = provider_driver(provider=provider)
    machines = driver.list_tagged()
    orphaned = [machine for machine in machines if machine.node_key not in live_node_keys]
    sightings = _record_sightings(provider=provider, orphaned=orphaned, now=now)

    cutoff = now - timedelta(seconds=grace_seconds)
    deleted: list[str] = []
    waiting: list[str] = []
    failed: list[str] = []
    orphans: list[Orphan] = []
    for machine in orphaned:
        sighting = sightings[machine.machine_id]
        error = ""
        is_deleted = False
        if sighting.first_seen > cutoff:
            waiting.append(machine.machine_id)
        else:
            error = _reap(driver=driver, provider=provider, sighting=sighting, now=now)
            is_deleted = not error
            (deleted if is_deleted else failed).append(machine.machine_id)
        orphans.append(
            Orphan(
                machine_id=machine.machine_id,
                name=machine.name,
                cluster_key=machine.cluster_key or "",
                node_key=machine.node_key or "",
                first_seen=sighting.first_seen,
                deleted=is_deleted,
                error=error,
            )
        )
    cleared = _clear_sightings(provider=provider, still_orphaned={m.machine_id for m in orphaned})
    report = ReaperReport(
        provider_pk=provider.pk,
        scanned=len(machines),
        orphans=tuple(orphans),
        deleted=tuple(deleted),
        waiting=tuple(waiting),
        failed=tuple(failed),
        cleared=tuple(cleared),
    )
    logger.info(
        "reaper scanned provider %s: %d machines, %d orphans, %d deleted, %d waiting, %d failed",
        provider.pk,
        report.scanned,
        len(report.orphans),
        len(report.deleted),
        len(report.waiting),
        len(report.failed),
        extra={"tenant": provider.tenant_id, "provider": provider.pk},
    )
    return report


@transaction.atomic
def _record_sightings(*, provider: Provider, orphaned: list[Machine], now: datetime) -> dict[str, OrphanSighting]:
    """First sightings are created, later ones only refresh ``last_seen``; ``first_seen`` never moves.

    A listed machine made after its id was reaped is a different machine (some clouds, and libcloud's dummy
    driver, reuse ids): its old sighting is restarted so it gets its own grace period.
    """
    ids = [machine.machine_id for machine in orphaned]
    known = {s.machine_id: s for s in OrphanSighting.objects.filter(provider=provider, machine_id__in=ids)}
    for machine in orphaned:
        old = known.get(machine.machine_id)
        if old is not None and old.deleted_at is not None and machine.created_at > old.deleted_at:
            OrphanSighting.objects.filter(pk=old.pk).update(first_seen=now, deleted_at=None, last_error="")
    new = [
        OrphanSighting(
            tenant_id=provider.tenant_id,
            provider=provider,
            machine_id=machine.machine_id,
            name=machine.name,
            cluster_key=machine.cluster_key or "",
            node_key=machine.node_key or "",
            first_seen=now,
            last_seen=now,
        )
        for machine in orphaned
        if machine.machine_id not in known
    ]
    # ignore_conflicts: two overlapping scans may both see a new orphan; the first row written wins.
    OrphanSighting.objects.bulk_create(new, ignore_conflicts=True)
    OrphanSighting.objects.filter(provider=provider, machine_id__in=list(known)).update(last_seen=now)
    return {s.machine_id: s for s in OrphanSighting.objects.filter(provider=provider, machine_id__in=ids)}


def _reap(*, driver: Driver, provider: Provider, sighting: OrphanSighting, now: datetime) -> str:
    """Delete one orphan. Returns the error text, or "" when deleted (a missing machine counts as deleted)."""
    try:
        driver.delete(sighting.machine_id)
    except DriverError as error:
        OrphanSighting.objects.filter(pk=sighting.pk).update(last_error=str(error)[:2000])
        logger.warning(
            "reaper could not delete machine %s: %s",
            sighting.machine_id,
            error,
            extra={"tenant": provider.tenant_id, "provider": provider.pk},
        )
        return str(error) or type(error).__name__
    with transaction.atomic():
        OrphanSighting.objects.filter(pk=sighting.pk).update(deleted_at=now, last_error="")
        audit(
            tenant=provider.tenant,
            actor=None,
            action="reap",
            kind="machine",
            name=sighting.machine_id,
            summary={
                "provider": provider.name,
                "machine": sighting.name,
                "cluster": sighting.cluster_key,
                "node": sighting.node_key,
                "first_seen": sighting.first_seen.isoformat(),
            },
        )
    return ""


def _clear_sightings(*, provider: Provider, still_orphaned: set[str]) -> list[str]:
    """Drop open sightings of machines that are no longer orphans; reaped ones stay as the record."""
    stale = OrphanSighting.objects.filter(provider=provider, deleted_at__isnull=True).exclude(
        machine_id__in=still_orphaned
    )
    cleared = sorted(stale.values_list("machine_id", flat=True))
    stale.filter(machine_id__in=cleared).delete()
    return cleared
