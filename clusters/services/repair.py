"""The health sweep's beat task and the auto-repair policy it applies.

A template opts in with ``administration.autorepair``: ``{"after": N, "maxperhour": M}``. After each sweep, a
node that N sweeps in a row found unhealthy (degraded, unreachable or missing) is repaired
(``cluster_repair``: a new machine in its role, or its failed services restarted in place) by Loom itself,
never while another job runs on the cluster (the repair would be refused as busy anyway), and at most M
automatic repair jobs an hour per cluster; each is a job like any other, and an ``auto-repair`` audit event.
A repair the policy may not start now is left for a later sweep; one that is refused (the template no longer
resolves, a hook vetoes it) is logged and tried again at the next sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.utils import timezone

from clusters.features.health import health_sweep
from clusters.models import UNFINISHED_JOB_STATUSES, Cluster, Job, Node
from clusters.planning.planner import Operation
from clusters.services.day2 import cluster_repair
from tenants.errors import ApplicationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepairPolicy:
    after: int
    per_hour: int


def repair_policy(template_document: dict[str, Any]) -> RepairPolicy | None:
    """The template's ``administration.autorepair`` (the codec stores both keys, defaults filled in)."""
    section = (template_document.get("administration") or {}).get("autorepair")
    if not section:
        return None
    return RepairPolicy(after=section["after"], per_hour=section["maxperhour"])


@dataclass
class AutoRepairReport:
    launched: dict[int, int] = field(default_factory=dict)
    """Cluster → the repair job started for it."""
    held: dict[int, str] = field(default_factory=dict)
    """Cluster → why its repair waits (the hourly limit, a job running, a refusal)."""


def autorepair_run(*, now: datetime | None = None) -> AutoRepairReport:
    """Start the repairs the policy calls for (module docstring)."""
    now = now or timezone.now()
    report = AutoRepairReport()
    failing = Node.objects.filter(status=Node.Status.ACTIVE, health_failures__gt=0).values_list("cluster_id", flat=True)
    clusters = Cluster.objects.filter(
        pk__in=failing.distinct(), status__in=(Cluster.Status.ACTIVE, Cluster.Status.INCONSISTENT)
    )
    for cluster in clusters.select_related("template_version", "tenant", "owner").order_by("pk"):  # fmt: skip
        policy = repair_policy(cluster.template_version.document or {})
        if policy is None:
            continue
        due = list(
            Node.objects.filter(cluster_id=cluster.pk, status=Node.Status.ACTIVE, health_failures__gte=policy.after)
            .order_by("number")
            .values_list("number", flat=True)
        )
        if not due:
            continue
        if Job.objects.filter(cluster_id=cluster.pk, status__in=UNFINISHED_JOB_STATUSES).exists():
            report.held[cluster.pk] = "another job runs on the cluster"
            continue
        recent = Job.objects.filter(cluster_id=cluster.pk, operation=Operation.REPAIR, requested_by__isnull=True,
                                    created_at__gte=now - timedelta(hours=1)).count()  # fmt: skip
        if recent >= policy.per_hour:
            report.held[cluster.pk] = (
                f"{recent} automatic repair(s) in the last hour, the template allows {policy.per_hour}"
            )
            continue
        try:
            outcome = cluster_repair(user=None, cluster=cluster, nodes=due)
        except ApplicationError as error:  # Conflict (busy, vetoed) and bad layouts alike
            report.held[cluster.pk] = str(error)
            logger.warning("auto-repair of cluster %s refused: %s", cluster.pk, error, extra={"cluster": cluster.pk})
            continue
        if outcome.job is not None:
            report.launched[cluster.pk] = outcome.job.pk
            logger.info("auto-repair started", extra={"cluster": cluster.pk, "job": outcome.job.pk, "nodes": due})
    return report


@shared_task(name="clusters.tasks.health_sweep_task", ignore_result=True)
def health_sweep_task() -> dict[str, int]:
    """Beat entry point: the policy acts on what earlier sweeps found, then this sweep checks what is due."""
    repairs = autorepair_run()
    sweep = health_sweep()
    return {"clusters": sweep.clusters, "nodes": sweep.nodes, "dispatched": len(sweep.dispatched),
            "deferred": len(sweep.deferred), "repairs": len(repairs.launched)}  # fmt: skip
