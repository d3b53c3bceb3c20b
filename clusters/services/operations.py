"""Operations on a cluster's latest job — abort, pause, resume, retry — and lease extension.

Each service checks that the user may change the cluster (its owner, a tenant admin, or a member with a
guardian ``change`` grant; ``cluster_require``), refuses with Conflict naming the job and its state when the
operation does not apply, does the work through the engine (which re-checks the state with conditional
UPDATEs under the job's lock, so a race with a finishing task is decided there), and writes an AuditEvent.

None of them locks the cluster row before the job's: a finishing task locks its job and then updates the
cluster, so taking the two in the other order here could deadlock against it. The lease extension locks
only the cluster row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from clusters.engine import core as engine
from clusters.engine.dispatch import enqueue
from clusters.features.hooks import JobRequest, check_job_start
from clusters.features.leases import lease_end, lease_policy
from clusters.models import Cluster, Job
from clusters.selectors import cluster_require
from clusters.services.lifecycle import ACTIVE_JOB_STATUSES
from tenants.errors import Conflict
from tenants.services import audit


def latest_job(cluster: Cluster) -> Job:
    """The cluster's most recent job; every cluster has at least its create job."""
    job = Job.objects.filter(cluster_id=cluster.pk).order_by("-pk").first()
    if job is None:
        raise Conflict(f"cluster {cluster.name} has no job")
    return job


def _refuse(cluster: Cluster, job: Job, operation: str, needs: str) -> Conflict:
    return Conflict(
        f"cannot {operation} cluster {cluster.name}: its latest job {job.pk} ({job.operation}) is {job.status}; "
        f"{operation} needs a {needs} job",
        extra={"job": {"id": job.pk, "operation": job.operation, "status": job.status}},
    )


def _audit(user: Any, cluster: Cluster, action: str, **summary: Any) -> None:
    audit(tenant=cluster.tenant, actor=user, action=action, kind="cluster", name=cluster.name,
          summary={"cluster": cluster.pk, **summary})  # fmt: skip


@transaction.atomic
def cluster_abort(*, user: Any, cluster: Cluster) -> Job:
    """End the cluster's running, paused or not-started job now (``engine.job_abort``): unstarted tasks are
    dropped, running ones end on their own, then the cluster takes the operation's failure status. The job
    can be retried later. Raises Conflict when the latest job has already ended."""
    cluster_require(user=user, cluster=cluster, action="change")
    job = latest_job(cluster)
    if job.status not in ACTIVE_JOB_STATUSES:
        raise _refuse(cluster, job, "abort", "running, paused or not started")
    engine.job_abort(job=job, message=f"Aborted by {user.get_username()}.", on_ready=enqueue)
    _audit(user, cluster, "abort", job=job.pk, operation=job.operation)
    job.refresh_from_db()
    return job


@transaction.atomic
def cluster_pause(*, user: Any, cluster: Cluster) -> Job:
    """Stop handing out the latest job's tasks (``engine.job_pause``); running tasks finish. Raises Conflict
    unless the job is running."""
    cluster_require(user=user, cluster=cluster, action="change")
    job = latest_job(cluster)
    if job.status != Job.Status.RUNNING:
        raise _refuse(cluster, job, "pause", "running")
    engine.job_pause(job=job)
    _audit(user, cluster, "pause", job=job.pk, operation=job.operation)
    job.refresh_from_db()
    return job


@transaction.atomic
def cluster_resume(*, user: Any, cluster: Cluster) -> Job:
    """Run a paused job again (``engine.job_start``); its queued tasks are handed out within the tenant's
    worker budget. Raises Conflict unless the latest job is paused."""
    cluster_require(user=user, cluster=cluster, action="change")
    job = latest_job(cluster)
    if job.status != Job.Status.PAUSED:
        raise _refuse(cluster, job, "resume", "paused")
    engine.job_start(job=job, on_ready=enqueue)
    _audit(user, cluster, "resume", job=job.pk, operation=job.operation)
    job.refresh_from_db()
    return job


@transaction.atomic
def cluster_retry(*, user: Any, cluster: Cluster, reason: str = "") -> Job:
    """Re-run the failed and dropped tasks of the cluster's failed or aborted latest job (``engine.job_retry``);
    what completed is not run again. ``user`` None is Loom itself (the lease janitor, with a ``reason``).

    The policy hooks see the retry as the job's operation (a change freeze that refuses creates refuses
    retrying one too). Raises Conflict when the job has not failed, when a hook vetoes, or when the cluster
    has not settled yet (a task of the failed job is still running) or was terminated.
    """
    if user is not None:
        cluster_require(user=user, cluster=cluster, action="change")
    job = latest_job(cluster)
    if job.status not in (Job.Status.FAILED, Job.Status.ABORTED):
        raise _refuse(cluster, job, "retry", "failed or aborted")
    check_job_start(
        JobRequest(tenant=cluster.tenant, user=user, operation=job.operation, cluster_name=cluster.name,
                   cluster_id=cluster.pk, size=cluster.size, template=cluster.template_name,
                   services=tuple(cluster.services))
    )  # fmt: skip
    try:
        engine.job_retry(job=job, on_ready=enqueue)
    except Conflict as error:
        raise Conflict(f"cannot retry job {job.pk} of cluster {cluster.name}: {error.message}") from error
    _audit(user, cluster, "retry", job=job.pk, operation=job.operation, **({"reason": reason} if reason else {}))
    job.refresh_from_db()
    return job


@transaction.atomic
def cluster_lease_extend(
    *,
    user: Any,
    cluster: Cluster,
    expires_at: datetime | None = None,
    extend_by_ms: int | None = None,
    now: datetime | None = None,
) -> Cluster:
    """Move the cluster's expiry to ``expires_at``, or ``extend_by_ms`` past the current one (exactly one).

    The template's lease policy decides: one extension adds at most ``step``, and the lease never lasts
    beyond ``max`` from the cluster's creation (an ApplicationError naming the field used otherwise); a
    shorter lease is allowed as long as it ends in the future. The warning is sent again for the new
    expiry. Raises Conflict for a cluster that never expires, is terminated, or is being deleted.
    """
    cluster_require(user=user, cluster=cluster, action="change")
    if (expires_at is None) == (extend_by_ms is None):
        raise ValueError("give exactly one of expires_at and extend_by_ms")
    now = now or timezone.now()
    # Locked against the lease janitor, which re-checks the expiry under this lock before deleting.
    locked = Cluster.objects.select_for_update().select_related("tenant").get(pk=cluster.pk)
    if locked.status == Cluster.Status.TERMINATED:
        raise Conflict(f"cluster {locked.name} is terminated; its lease cannot be changed")
    if locked.expires_at is None:
        raise Conflict(f"cluster {locked.name} never expires; there is no lease to extend")
    deleting = Job.objects.filter(cluster_id=locked.pk, operation="delete", status__in=ACTIVE_JOB_STATUSES).first()
    if deleting is not None:
        raise Conflict(f"cluster {locked.name} is being deleted by job {deleting.pk}; its lease cannot be changed")
    if expires_at is not None:
        new, field_name = expires_at, "expires_at"
    else:
        new, field_name = lease_end(locked.expires_at, extend_by_ms or 0), "extend_by"
    lease_policy(locked).check_extension(
        created_at=locked.created_at, expires_at=locked.expires_at, new=new, now=now, field_name=field_name
    )
    before = locked.expires_at
    Cluster.objects.filter(pk=locked.pk).update(expires_at=new, lease_warned_at=None)
    locked.expires_at, locked.lease_warned_at = new, None
    _audit(user, locked, "extend-lease", before=before.isoformat(), after=new.isoformat())
    return locked
