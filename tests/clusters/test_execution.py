"""Clusters are real: a create goes solver → planner → engine and a real Celery worker runs it.

A ``celery worker --pool threads`` subprocess works on the test database (committed rows, hence
``transaction=True``) through Redis, against the fake provider and the noop automator; delete removes every
machine. Nothing here is eager: each task is a broker message, each finish publishes its successors.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from clusters.engine.core import Ready, task_claim, task_release
from clusters.engine.runner import task_run
from clusters.engine.state import transition
from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from clusters.planning.planner import Action
from clusters.services.lifecycle import cluster_create, cluster_delete
from clusters.services.preview import PreviewRequest
from providers.models import FakeCallCount, Provider
from providers.services import provider_key
from templates_app.services import catalog_import
from tenants.errors import Conflict

from .engine_helpers import drive
from .workers import catalog, machines, run_to_completion

pytestmark = pytest.mark.django_db(transaction=True)


def create_and_delete(admin: Any, tenant: Any, log: Path, *, size: int, retries: int) -> None:
    started = time.monotonic()
    cluster, job = cluster_create(
        user=admin, tenant=tenant, request=PreviewRequest(name="fleet", template="fleet", size=size)
    )
    assert job.status == Job.Status.RUNNING and cluster.status == Cluster.Status.PENDING
    with pytest.raises(Conflict, match=f"create job {job.pk}"):
        cluster_delete(user=admin, cluster=cluster)
    run_to_completion(job, log, retries=retries)
    created_in = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    provider = Provider.objects.get(tenant=tenant, name="fakecloud")
    nodes = list(Node.objects.filter(cluster=cluster))
    assert len(nodes) == size
    assert all(n.machine_id and n.ip_addresses.get("access_v4") and n.status == Node.Status.ACTIVE for n in nodes)
    # Exactly one machine ever made per node: retried creates found the machine a lost reply had made.
    made = Counter(machines(provider).values_list("node_key", flat=True))
    assert made == Counter({n.node_key: 1 for n in nodes})
    assert {n.machine_id for n in nodes} == set(machines(provider).values_list("machine_id", flat=True))
    assert not Task.objects.filter(job=job).exclude(status=Task.Status.COMPLETED).exists()
    if not retries:  # no failures: one attempt per task, however often a confirm found its machine booting
        assert set(Task.objects.filter(job=job).exclude(action=Action.JOIN).values_list("attempts", flat=True)) == {1}
        assert set(TaskAttempt.objects.filter(task__job=job).values_list("outcome", flat=True)) == {"succeeded"}
        polls = FakeCallCount.objects.filter(provider_key=provider_key(provider=provider), action="confirm")
        assert sum(polls.values_list("count", flat=True)) > size, "expected some confirms to find a booting machine"

    started = time.monotonic()
    delete_job = cluster_delete(user=admin, cluster=cluster)
    run_to_completion(delete_job, log, retries=retries)
    deleted_in = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED
    assert machines(provider).count() == size
    assert not machines(provider).filter(deleted_at__isnull=True).exists()
    assert set(Node.objects.filter(cluster=cluster).values_list("status", flat=True)) == {Node.Status.DELETED}
    print(f"{size}-node create {created_in:.1f} s, delete {deleted_in:.1f} s")


def test_a_20_node_cluster_is_created_and_deleted_by_real_workers(worker, tenant_a, admin_a):
    # Machines boot for 1.5 s, longer than a create→confirm hop takes even on a busy machine, so some
    # confirms must find their machine still booting (the assertion on polls below).
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="7", boot_ms="1500"))
    create_and_delete(admin_a, tenant_a, worker, size=20, retries=0)


# --- the same pieces in-process, without a broker --------------------------------------------------------------


@pytest.mark.django_db
def test_a_confirm_that_finds_the_machine_booting_is_requeued_without_spending_an_attempt(tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="3"))
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("one", "fleet", 1))
    create = Task.objects.get(job=job, action=Action.CREATE)
    confirm = Task.objects.get(job=job, action=Action.CONFIRM)
    assert task_run(task_pk=create.pk, worker="test/1", on_ready=lambda _: None) == [Ready(confirm.pk)]
    released = task_run(task_pk=confirm.pk, worker="test/1", on_ready=lambda _: None)
    assert len(released) == 1 and released[0].task_pk == confirm.pk and 0 < released[0].countdown <= 5
    confirm.refresh_from_db()
    assert (confirm.status, confirm.attempts, confirm.worker) == (Task.Status.QUEUED, 0, "")
    assert "booting" in confirm.waiting_reason and confirm.not_before is not None
    assert not TaskAttempt.objects.filter(task=confirm).exists()
    drive(job)
    job.refresh_from_db()
    cluster.refresh_from_db()
    confirm.refresh_from_db()
    assert (job.status, cluster.status) == (Job.Status.COMPLETED, Cluster.Status.ACTIVE)
    assert (confirm.attempts, confirm.waiting_reason) == (1, "")
    assert TaskAttempt.objects.filter(task=confirm).count() == 1


@pytest.mark.django_db
def test_a_confirm_whose_machine_is_ready_soon_waits_in_its_thread_instead(tenant_a, admin_a, settings):
    """Within ``LOOM_INLINE_WAIT_SECONDS`` the thread sleeps until the machine is ready and confirms it in the
    same attempt: no release, no second claim."""
    settings.LOOM_INLINE_WAIT_SECONDS = 5.0
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="3", boot_ms="400"))
    _, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("soon", "fleet", 1))
    create = Task.objects.get(job=job, action=Action.CREATE)
    confirm = Task.objects.get(job=job, action=Action.CONFIRM)
    task_run(task_pk=create.pk, worker="test/1", on_ready=lambda _: None)
    started = time.monotonic()
    ready = task_run(task_pk=confirm.pk, worker="test/1", on_ready=lambda _: None)
    assert confirm.pk not in [item.task_pk for item in ready] and time.monotonic() - started >= 0.1
    confirm.refresh_from_db()
    assert (confirm.status, confirm.attempts) == (Task.Status.COMPLETED, 1)
    assert list(TaskAttempt.objects.filter(task=confirm).values_list("outcome", flat=True)) == ["succeeded"]
    provider = Provider.objects.get(tenant=tenant_a, name="fakecloud")
    polls = FakeCallCount.objects.filter(provider_key=provider_key(provider=provider), action="confirm")
    assert sum(polls.values_list("count", flat=True)) >= 2  # it found the machine booting, then ready


@pytest.mark.django_db
def test_a_release_after_the_job_failed_drops_the_task_and_settles_the_cluster(tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog())
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("two", "fleet", 1))
    create = Task.objects.get(job=job, action=Action.CREATE)
    confirm = Task.objects.get(job=job, action=Action.CONFIRM)
    task_run(task_pk=create.pk, worker="test/1", on_ready=lambda _: None)
    attempt = task_claim(task_pk=confirm.pk, worker="test/1")
    assert attempt is not None
    assert transition(Job, job.pk, to=Job.Status.FAILED, extra_updates={"message": "stopped by test"})
    assert task_release(attempt=attempt, countdown=1.0, reason="booting", on_ready=lambda _: None) == []
    assert task_release(attempt=attempt, countdown=1.0, reason="booting", on_ready=lambda _: None) == []
    confirm.refresh_from_db()
    cluster.refresh_from_db()
    assert confirm.status == Task.Status.DROPPED
    assert cluster.status == Cluster.Status.INCOMPLETE  # a machine was made, so the cluster is kept


@pytest.mark.django_db
def test_a_terminal_provider_error_fails_the_job_with_its_class(tenant_a, admin_a):
    data = catalog()
    data["providers"][0]["provisioner"]["terminal_failure_rate"] = "1"
    catalog_import(tenant=tenant_a, user=None, data=data)
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("three", "fleet", 2))
    drive(job)
    job.refresh_from_db()
    cluster.refresh_from_db()
    assert job.status == Job.Status.FAILED and "TerminalError" in job.message
    attempt = TaskAttempt.objects.filter(task__job=job, outcome="failed").first()
    assert attempt.error_class == "TerminalError" and not attempt.retryable and "simulated 400" in attempt.log_tail
    assert cluster.status == Cluster.Status.TERMINATED  # nothing was created
    with pytest.raises(Conflict, match="already terminated"):
        cluster_delete(user=admin_a, cluster=cluster)
