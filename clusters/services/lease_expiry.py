"""Lease expiry, run by beat every ``LOOM_LEASE_JANITOR_SECONDS`` (the policy is ``clusters/features/leases.py``).

It sends ``cluster.lease_warning`` once per expiry, ``LOOM_LEASE_WARNING_SECONDS`` before it, and deletes
expired clusters through ``cluster_delete`` (no user; a ``cluster.lease_expired`` event). It lives among the
services because it calls them: the lease policy below them stays free of any service import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from clusters.engine.signals import JobEvent, JobEventData, send_job_event
from clusters.models import Cluster, Job
from clusters.planning.planner import Operation
from clusters.services.lifecycle import cluster_delete
from clusters.services.operations import cluster_retry, latest_job
from tenants.errors import Conflict

logger = logging.getLogger(__name__)


@dataclass
class LeaseJanitorReport:
    warned: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


def lease_janitor_run(*, now: datetime | None = None) -> LeaseJanitorReport:
    """One pass: warn about leases ending within ``LOOM_LEASE_WARNING_SECONDS``, delete expired clusters.

    Each cluster is handled in its own transaction, so one that cannot be deleted does not hold back the
    others. Safe to run concurrently (two beats): the warning is a conditional UPDATE on the expiry it is
    about, and the delete locks the cluster row and re-checks the expiry under the lock.
    """
    now = now or timezone.now()
    report = LeaseJanitorReport()
    _warn(report, now=now)
    _expire(report, now=now)
    if report.expired or report.retried or report.skipped:
        logger.info(
            "lease janitor",
            extra={"expired": report.expired, "retried": report.retried, "skipped": report.skipped},
        )
    return report


def _warn(report: LeaseJanitorReport, *, now: datetime) -> None:
    horizon = now + timedelta(seconds=settings.LOOM_LEASE_WARNING_SECONDS)
    due = (
        Cluster.objects.filter(expires_at__gt=now, expires_at__lte=horizon, lease_warned_at__isnull=True)
        .exclude(status=Cluster.Status.TERMINATED)
        .values_list("pk", "tenant_id", "name", "expires_at")
    )
    for pk, tenant_id, name, expires_at in list(due):
        with transaction.atomic():
            # Conditional on the expiry it warns about: an extension meanwhile resets the warning instead.
            if Cluster.objects.filter(pk=pk, expires_at=expires_at, lease_warned_at__isnull=True).update(
                lease_warned_at=now
            ):
                message = f"the lease of cluster {name} ends at {expires_at.isoformat()}"
                send_job_event(JobEventData(JobEvent.LEASE_WARNING, tenant_id, pk, None, message))
                report.warned.append(pk)


def _expire(report: LeaseJanitorReport, *, now: datetime) -> None:
    due = Cluster.objects.filter(expires_at__lte=now).exclude(status=Cluster.Status.TERMINATED)
    for pk in list(due.order_by("expires_at", "pk").values_list("pk", flat=True)):
        try:
            with transaction.atomic():
                # Re-read under the lock: an extension committed since the scan wins.
                cluster = Cluster.objects.select_for_update().filter(pk=pk, expires_at__lte=now).first()
                if cluster is None:
                    continue
                if cluster.status == Cluster.Status.PENDING:
                    raise Conflict(f"cluster {cluster.name} is busy with a job")
                last = latest_job(cluster)
                if last.operation == Operation.DELETE and last.status in (Job.Status.FAILED, Job.Status.ABORTED):
                    # Its delete failed: run the failed part again rather than pile up a new delete job per
                    # run. Nothing of that job runs (the cluster has settled), so no finish holds its lock.
                    cluster_retry(user=None, cluster=cluster, reason="lease expired")
                    report.retried.append(pk)
                    continue
                job = cluster_delete(user=None, cluster=cluster, reason="lease expired")
                message = f"the lease of cluster {cluster.name} ended at {cluster.expires_at.isoformat()}"
                send_job_event(JobEventData(JobEvent.LEASE_EXPIRED, cluster.tenant_id, cluster.pk, job.pk, message))
        except Conflict as error:
            logger.info("expired cluster %s not deleted yet: %s", pk, error, extra={"cluster": pk})
            report.skipped.append(pk)
            continue
        report.expired.append(pk)


@shared_task(name="clusters.tasks.lease_janitor", ignore_result=True)
def lease_janitor() -> dict[str, int]:
    """Beat entry point of ``lease_janitor_run``: lease warnings and expired-cluster deletes."""
    report = lease_janitor_run()
    return {name: len(pks) for name, pks in vars(report).items()}
