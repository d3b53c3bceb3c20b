"""Cluster leases: how long a cluster may live, extensions, warnings, and expiry (loom-reference §6.6).

A template's ``administration.leaseduration`` is ``{initial, max, step}`` in milliseconds, 0 meaning
unlimited. A cluster gets ``expires_at = created + initial`` (or no expiry when ``initial`` is 0); an
extension may move the expiry by at most ``step`` at a time and never beyond ``created + max``. The original
skipped the step check whenever ``max`` was 0; here every limit that is set applies on its own.

The policy is the one the cluster was created under: its pinned template version, and for a template that
inherits its lease through ``extends``, each parent as it stood when the cluster was made. A later catalog
edit does not change the rules of clusters that already exist.

Expiry lives with the services it calls (``clusters/services/lease_expiry.py``): ``lease_janitor_run`` (beat,
every ``LOOM_LEASE_JANITOR_SECONDS``) sends ``cluster.lease_warning`` once per
expiry, ``LOOM_LEASE_WARNING_SECONDS`` before it, and deletes expired clusters through ``cluster_delete``
(no user; a ``cluster.lease_expired`` event). A cluster that is busy (a job still active, or a policy hook
vetoing the delete) is skipped and tried again on the next run; one whose delete failed has that delete job
retried (only what failed runs again), so an expired cluster never keeps its machines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clusters.models import Cluster
from templates_app.models import CatalogVersion
from templates_app.validation import FOREVER_LEASE
from tenants.errors import ApplicationError

logger = logging.getLogger(__name__)

INITIAL_LEASE_FIELD = "initialLeaseDuration"
"""The create request's field for a shorter first lease than the template's (the original's name)."""


def format_ms(ms: int) -> str:
    """``90000000`` → ``"1d 1h"``: durations in messages, in the units templates use."""
    parts = []
    rest = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return " ".join(parts[:2]) or f"{ms} ms"


def lease_end(start: datetime, ms: int) -> datetime:
    """``start + ms``, or the last representable moment for a lease too long for the calendar (a template may
    say ``max: 10^15``), so date arithmetic on leases never fails."""
    try:
        return start + timedelta(milliseconds=ms)
    except OverflowError:
        return datetime.max.replace(tzinfo=start.tzinfo)


@dataclass(frozen=True)
class LeasePolicy:
    """``administration.leaseduration`` of a template, in milliseconds; 0 means unlimited."""

    initial_ms: int = 0
    max_ms: int = 0
    step_ms: int = 0

    @classmethod
    def from_administration(cls, administration: dict[str, Any] | None) -> LeasePolicy:
        lease = (administration or {}).get("leaseduration") or {}
        return cls(int(lease.get("initial") or 0), int(lease.get("max") or 0), int(lease.get("step") or 0))

    def initial_lease_ms(self, requested_ms: int | None) -> int:
        """The first lease of a new cluster (0: it never expires); raises ApplicationError naming
        ``initialLeaseDuration`` when the request asks for more than the template allows.

        Without a request, the template's ``initial``. A request may ask for less than ``initial``; when the
        template sets no ``initial``, for anything up to ``max``.
        """
        if requested_ms is None:
            return self.initial_ms
        ceiling, source = (self.initial_ms, "initial") if self.initial_ms else (self.max_ms, "max")
        if ceiling and requested_ms > ceiling:
            message = (
                f"{requested_ms} ms ({format_ms(requested_ms)}) is longer than the template's {source} lease "
                f"of {ceiling} ms ({format_ms(ceiling)})"
            )
            raise ApplicationError(f"{INITIAL_LEASE_FIELD}: {message}", fields={INITIAL_LEASE_FIELD: [message]})
        return requested_ms

    def latest_expiry(self, created_at: datetime) -> datetime | None:
        """The furthest any extension may go, or None when ``max`` is unlimited."""
        return lease_end(created_at, self.max_ms) if self.max_ms else None

    def next_limit(self, *, created_at: datetime, expires_at: datetime) -> datetime | None:
        """The furthest one extension from ``expires_at`` may go (step and max together), None if unlimited."""
        limits = [limit for limit in (self.latest_expiry(created_at),) if limit is not None]
        if self.step_ms:
            limits.append(lease_end(expires_at, self.step_ms))
        return min(limits) if limits else None

    def check_extension(self, *, created_at: datetime, expires_at: datetime, new: datetime, now: datetime,
                        field_name: str) -> None:  # fmt: skip
        """Raise ApplicationError naming ``field_name`` (with every rule broken) unless moving the expiry to
        ``new`` is allowed."""
        problems = []
        if new <= now:
            problems.append(f"the new expiry {new.isoformat()} is not in the future")
        if self.step_ms and new > (limit := lease_end(expires_at, self.step_ms)):
            problems.append(
                f"one extension may add at most {self.step_ms} ms ({format_ms(self.step_ms)}) to the current "
                f"expiry {expires_at.isoformat()}, so at most until {limit.isoformat()}"
            )
        if (latest := self.latest_expiry(created_at)) is not None and new > latest:
            problems.append(
                f"the lease may last at most {self.max_ms} ms ({format_ms(self.max_ms)}) from the cluster's "
                f"creation, so until {latest.isoformat()}"
            )
        if problems:
            raise ApplicationError(f"{field_name}: {problems[0]}", fields={field_name: problems})


def lease_policy(cluster: Cluster) -> LeasePolicy:
    """The lease policy ``cluster`` was created under (see the module docstring); one query per template in
    its ``extends`` chain up to the first that sets a lease."""
    document: dict[str, Any] | None = (
        CatalogVersion.objects.filter(pk=cluster.template_version_id).values_list("document", flat=True).first()
    )
    seen: set[str] = set()
    while document is not None:
        # The same test as ``resolve_template``, so the rules an extension checks are the ones the create used:
        # the deepest template that sets a lease wins (other administration settings do not count).
        administration = document.get("administration") or FOREVER_LEASE
        if administration.get("leaseduration", FOREVER_LEASE["leaseduration"]) != FOREVER_LEASE["leaseduration"]:
            return LeasePolicy.from_administration(administration)
        parent = (document.get("extends") or {}).get("name")
        if not parent or parent in seen:
            break
        seen.add(parent)
        document = (
            CatalogVersion.objects.filter(
                tenant_id=cluster.tenant_id, kind="clustertemplates", name=parent, created_at__lte=cluster.created_at
            )
            .order_by("-version")
            .values_list("document", flat=True)
            .first()
        )
    return LeasePolicy()


@dataclass(frozen=True)
class Lease:
    """A cluster's lease as the API shows it: when it ends, the rules, and how far it can be extended."""

    expires_at: datetime | None
    warned_at: datetime | None
    policy: LeasePolicy
    latest_expiry: datetime | None
    next_limit: datetime | None


def cluster_lease(cluster: Cluster) -> Lease:
    policy = lease_policy(cluster)
    next_limit = (
        policy.next_limit(created_at=cluster.created_at, expires_at=cluster.expires_at)
        if cluster.expires_at is not None
        else None
    )
    return Lease(
        expires_at=cluster.expires_at,
        warned_at=cluster.lease_warned_at,
        policy=policy,
        latest_expiry=policy.latest_expiry(cluster.created_at) if cluster.expires_at is not None else None,
        next_limit=next_limit,
    )
