"""Cluster operations as services: abort, pause, resume and retry of the latest job, who may do them, what they
audit; create and delete permissions and audit; quotas; job progress.

Jobs are driven by hand (``run_by_hand`` claims and finishes queued tasks as workers would) on the fake
provider's catalog, so nothing here needs a broker: ``cluster_create`` starts the job, and what it would hand
to the broker on commit stays queued in the database for the test to run.
"""

from __future__ import annotations

from typing import Any

import pytest
from guardian.shortcuts import assign_perm

from clusters.features.hooks import JobRequest, JobVetoed, _hooks
from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from clusters.planning.planner import Action
from clusters.selectors import cluster_get, clusters_for, job_progress
from clusters.services.lifecycle import QuotaExceeded, cluster_create, cluster_delete, tenant_quota_check
from clusters.services.operations import cluster_abort, cluster_pause, cluster_resume, cluster_retry
from clusters.services.preview import PreviewRequest
from templates_app.services import catalog_import
from tenants.errors import Conflict, NotFound, PermissionDenied
from tenants.models import AuditEvent, Role, Tenant
from tests.factories import member

from .engine_helpers import run_by_hand
from .workers import catalog

pytestmark = pytest.mark.django_db


# --- helpers shared with tests/api/test_clusters_api.py and tests/clusters/test_leases.py ----------------------


def fleet_catalog(*, lease: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """The fake provider's catalog (``workers.catalog``): template ``fleet``, and ``leased`` with ``lease`` as its
    ``administration.leaseduration`` when given."""
    data = catalog()
    if lease is not None:
        leased = {**data["clustertemplates"][0], "name": "leased", "administration": {"leaseduration": lease}}
        data["clustertemplates"].append(leased)
    return data


def create(user: Any, tenant: Tenant, name: str = "c1", size: int = 2, template: str = "fleet", **kwargs: Any):
    return cluster_create(user=user, tenant=tenant, request=PreviewRequest(name, template, size), **kwargs)


def fails_app_install(task: Task) -> bool:
    return task.action == Action.INSTALL and task.service == "app"


def audit_actions(tenant: Tenant) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant, entity_kind="cluster").order_by("pk").values_list("action", flat=True))  # fmt: skip


@pytest.fixture
def fleet(tenant_a: Tenant) -> None:
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog())


# --- pause, resume, abort ------------------------------------------------------------------------------------


def test_pause_resume_abort_move_the_latest_job_and_audit(fleet, tenant_a, user_a):
    cluster, job = create(user_a, tenant_a)
    assert job.status == Job.Status.RUNNING

    assert cluster_pause(user=user_a, cluster=cluster).status == Job.Status.PAUSED
    queued = Task.objects.filter(job=job, status=Task.Status.QUEUED)
    assert queued.exists() and set(queued.values_list("waiting_reason", flat=True)) == {"job paused"}
    assert run_by_hand(job).status == Job.Status.PAUSED  # nothing can be claimed while paused
    with pytest.raises(Conflict, match=rf"latest job {job.pk} \(create\) is paused; pause needs a running job"):
        cluster_pause(user=user_a, cluster=cluster)

    assert cluster_resume(user=user_a, cluster=cluster).status == Job.Status.RUNNING
    with pytest.raises(Conflict, match=rf"job {job.pk} \(create\) is running; resume needs a paused job"):
        cluster_resume(user=user_a, cluster=cluster)

    aborted = cluster_abort(user=user_a, cluster=cluster)
    cluster.refresh_from_db()
    assert (aborted.status, aborted.message) == (Job.Status.ABORTED, "Aborted by arthur.")
    assert not Task.objects.filter(job=job, status__in=(Task.Status.QUEUED, Task.Status.WAITING)).exists()
    assert cluster.status == Cluster.Status.TERMINATED  # nothing had been created
    with pytest.raises(Conflict, match=rf"job {job.pk} \(create\) is aborted; abort needs a running"):
        cluster_abort(user=user_a, cluster=cluster)
    assert audit_actions(tenant_a) == ["create", "pause", "resume", "abort"]
    abort = AuditEvent.objects.get(tenant=tenant_a, action="abort")
    assert abort.actor == user_a and abort.summary == {"cluster": cluster.pk, "job": job.pk, "operation": "create"}


def test_a_conflict_names_the_job_and_its_state(fleet, tenant_a, admin_a):
    cluster, job = create(admin_a, tenant_a)
    run_by_hand(job)
    with pytest.raises(Conflict) as caught:
        cluster_abort(user=admin_a, cluster=cluster)
    assert caught.value.extra == {"job": {"id": job.pk, "operation": "create", "status": "completed"}}
    assert f"latest job {job.pk} (create) is completed" in caught.value.message


# --- retry ---------------------------------------------------------------------------------------------------


def test_retry_reruns_only_what_failed(fleet, tenant_a, admin_a):
    cluster, job = create(admin_a, tenant_a, size=2)
    with pytest.raises(Conflict, match=rf"job {job.pk} \(create\) is running; retry needs a failed or aborted job"):
        cluster_retry(user=admin_a, cluster=cluster)
    run_by_hand(job, fail=fails_app_install)
    cluster.refresh_from_db()
    assert (job.status, cluster.status) == (Job.Status.FAILED, Cluster.Status.INCOMPLETE)
    completed = set(Task.objects.filter(job=job, status=Task.Status.COMPLETED).values_list("pk", flat=True))
    failed = Task.objects.get(job=job, status=Task.Status.FAILED)

    retried = cluster_retry(user=admin_a, cluster=cluster)
    cluster.refresh_from_db()
    assert (retried.pk, retried.status, cluster.status) == (job.pk, Job.Status.RUNNING, Cluster.Status.PENDING)
    run_by_hand(job)
    cluster.refresh_from_db()
    assert (job.status, cluster.status) == (Job.Status.COMPLETED, Cluster.Status.ACTIVE)
    # What had completed ran once; the failed install ran again (attempt numbers run on across the retry).
    assert set(TaskAttempt.objects.filter(task_id__in=completed).values_list("number", flat=True)) == {1}
    assert list(failed.task_attempts.values_list("number", "outcome")) == [(1, "failed"), (2, "succeeded")]
    assert audit_actions(tenant_a) == ["create", "retry"]


def refuse_retries(request: JobRequest) -> None:
    if request.cluster_id is not None and request.operation == "create":
        raise JobVetoed("retries of creates are frozen")


def test_a_hook_can_veto_a_retry(fleet, tenant_a, admin_a, settings):
    cluster, job = create(admin_a, tenant_a)
    run_by_hand(job, fail=fails_app_install)
    settings.LOOM_JOB_HOOKS = [f"{__name__}.refuse_retries"]
    _hooks.cache_clear()
    try:
        with pytest.raises(Conflict, match="retries of creates are frozen"):
            cluster_retry(user=admin_a, cluster=cluster)
    finally:
        settings.LOOM_JOB_HOOKS = []
        _hooks.cache_clear()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and audit_actions(tenant_a) == ["create"]


def test_a_terminated_cluster_cannot_be_retried(fleet, tenant_a, admin_a):
    cluster, job = create(admin_a, tenant_a)
    run_by_hand(job, fail=lambda task: True)  # the first creates fail: nothing was made
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED
    with pytest.raises(
        Conflict, match=f"cannot retry job {job.pk} of cluster c1: the cluster is still busy or terminated"
    ):
        cluster_retry(user=admin_a, cluster=cluster)


# --- who may act ---------------------------------------------------------------------------------------------


@pytest.fixture
def colleague(tenant_a: Tenant) -> Any:
    return member(tenant_a, Role.USER, username="carla")


def test_owners_admins_and_grant_holders_may_act_others_may_not(fleet, tenant_a, admin_a, user_a, colleague, admin_b):
    cluster, _ = create(user_a, tenant_a)
    assert cluster_pause(user=user_a, cluster=cluster).status == Job.Status.PAUSED  # the owner
    assert cluster_resume(user=admin_a, cluster=cluster).status == Job.Status.RUNNING  # a tenant admin
    with pytest.raises(NotFound):
        cluster_pause(user=colleague, cluster=cluster)  # someone else's cluster is invisible
    with pytest.raises(NotFound):
        cluster_pause(user=admin_b, cluster=cluster)  # another tenant's too
    assign_perm("clusters.view_cluster", colleague, cluster)
    with pytest.raises(PermissionDenied, match="may view cluster c1 but not change it"):
        cluster_pause(user=colleague, cluster=cluster)
    with pytest.raises(PermissionDenied, match="not delete it"):
        cluster_delete(user=colleague, cluster=cluster)
    assign_perm("clusters.change_cluster", colleague, cluster)
    assert cluster_pause(user=colleague, cluster=cluster).status == Job.Status.PAUSED
    assert cluster_get(user=colleague, tenant=tenant_a, pk=cluster.pk, action="change") == cluster
    assert set(clusters_for(user=colleague, action="change")) == {cluster}
    assert set(clusters_for(user=colleague, action="delete")) == set()


def test_create_needs_membership_and_delete_needs_permission(fleet, tenant_a, admin_a, user_a, admin_b, colleague):
    with pytest.raises(PermissionDenied, match="not a member of tenant acme"):
        create(admin_b, tenant_a)
    cluster, job = create(user_a, tenant_a)
    run_by_hand(job)
    with pytest.raises(NotFound):
        cluster_delete(user=colleague, cluster=cluster)
    assign_perm("clusters.delete_cluster", colleague, cluster)
    delete = cluster_delete(user=colleague, cluster=cluster)
    assert (delete.operation, delete.requested_by) == ("delete", colleague)
    event = AuditEvent.objects.get(tenant=tenant_a, action="delete")
    assert event.actor == colleague and event.summary == {"cluster": cluster.pk, "job": delete.pk, "reason": None}
    created = AuditEvent.objects.get(tenant=tenant_a, action="create")
    assert created.actor == user_a and created.entity_name == "c1"
    assert created.summary == {"cluster": cluster.pk, "job": job.pk, "template": "fleet", "provider": "fakecloud",
                               "size": 2, "expires_at": None}  # fmt: skip


# --- quotas --------------------------------------------------------------------------------------------------


def test_quotas_count_live_clusters_and_their_undeleted_nodes(fleet, tenant_a, admin_a):
    Tenant.objects.filter(pk=tenant_a.pk).update(max_clusters=2, max_nodes=5)
    first, _ = create(admin_a, tenant_a, "one", size=3)
    with pytest.raises(QuotaExceeded) as caught:
        create(admin_a, tenant_a, "two", size=3)
    error = caught.value
    assert (error.code, error.status) == ("quota_exceeded", 409)
    assert error.extra == {"quota": {"name": "max_nodes", "limit": 5, "in_use": 3, "requested": 3}}
    assert "numMachines" in error.fields and "3 node(s) in use, 3 more requested, limit 5" in error.message
    assert Cluster.objects.filter(tenant=tenant_a).count() == 1  # nothing created

    create(admin_a, tenant_a, "two", size=2)
    with pytest.raises(QuotaExceeded, match="max_clusters of tenant acme exceeded: 2 live cluster") as caught:
        create(admin_a, tenant_a, "three", size=1)
    assert caught.value.extra["quota"] == {"name": "max_clusters", "limit": 2, "in_use": 2, "requested": 1}

    # Deleted nodes stop counting; a terminated cluster stops counting altogether.
    Node.objects.filter(cluster=first, number=1000).update(status=Node.Status.DELETED)
    tenant_quota_check(tenant=tenant_a, clusters=0, nodes=1, lock=False)
    Cluster.objects.filter(pk=first.pk).update(status=Cluster.Status.TERMINATED)
    tenant_quota_check(tenant=tenant_a, clusters=1, nodes=3, lock=True)
    Tenant.objects.filter(pk=tenant_a.pk).update(max_clusters=None, max_nodes=None)
    tenant_quota_check(tenant=tenant_a, clusters=100, nodes=10_000, lock=False)


# --- progress ------------------------------------------------------------------------------------------------


def test_job_progress_counts_real_tasks_by_status(fleet, tenant_a, admin_a):
    _, job = create(admin_a, tenant_a, size=2)
    real = Task.objects.filter(job=job).exclude(action=Action.JOIN)
    stages = max(real.values_list("stage", flat=True)) + 1
    progress = job_progress([job.pk, 999_999])
    assert progress[999_999].total == 0 and progress[999_999].stage is None
    start = progress[job.pk]
    assert start.total == real.count() and start.completed == 0 and start.percent == 0.0
    assert start.tasks == {"queued": 2, "waiting": real.count() - 2}  # the two creates
    assert (start.stage, start.stages) == (0, stages)
    run_by_hand(job)
    done = job_progress([job.pk])[job.pk]
    assert (done.tasks, done.completed, done.percent, done.stage) == (
        {"completed": real.count()},
        real.count(),
        100.0,
        None,
    )
