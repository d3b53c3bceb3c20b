"""The engine under faults, with real worker processes on PostgreSQL and Redis (nothing eager):

* 30 % transient provider failures: every cluster completes on its own (the template allows enough attempts)
  with exactly one machine per node, and a delete leaves none;
* ``kill -9`` of the worker in the middle of a create: a new worker (with beat running the janitor) finishes
  the job, nothing leaked or duplicated;
* fair share: with budgets of 2 each, one tenant's large job does not hold back another tenant's small job.

Backoff, heartbeat and janitor intervals are shortened through the workers' environment (the same
``LOOM_*`` settings production uses), so the tests take seconds, not the production minutes.
"""

from __future__ import annotations

import time

import pytest

from clusters.models import Cluster, Job, Task, TaskAttempt
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from providers.models import Provider
from templates_app.services import catalog_import
from tenants.models import Tenant

from .workers import (
    TIMEOUT_S,
    WorkerPool,
    assert_one_machine_per_node,
    catalog,
    delete_and_check_nothing_left,
    run_to_completion,
    wait_for_job,
)

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"LOOM_RETRY_BACKOFF_SECONDS": "0.2", "LOOM_RETRY_BACKOFF_CAP_SECONDS": "2"}
JANITOR = {
    **FAST,
    "LOOM_HEARTBEAT_SECONDS": "0.5",
    "LOOM_HEARTBEAT_TIMEOUT": "3",
    "LOOM_REDISPATCH_SECONDS": "4",
    "LOOM_JANITOR_SECONDS": "1",
}


def test_every_cluster_completes_through_30_percent_transient_failures(workers: WorkerPool, tenant_a, admin_a):
    workers.start(env=FAST)
    data = catalog(failure_rate="0.3", seed="30")
    data["clustertemplates"][0]["administration"] = {"maxattempts": 12}
    catalog_import(tenant=tenant_a, user=None, data=data)
    provider = Provider.objects.get(tenant=tenant_a, name="fakecloud")
    created = [
        cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest(f"flaky{i}", "fleet", 8)) for i in range(3)
    ]
    for cluster, job in created:
        run_to_completion(job, workers.log)  # no retries by hand: the engine's own retries carry it
        cluster.refresh_from_db()
        assert cluster.status == Cluster.Status.ACTIVE
        assert_one_machine_per_node(cluster, provider)
    failed = TaskAttempt.objects.filter(task__job__in=[job for _, job in created], outcome="failed").count()
    assert failed > 0, "the fake provider injected no failure: the test proves nothing"
    for cluster, _ in created:
        delete_and_check_nothing_left(admin_a, cluster, provider, workers.log)


def test_a_killed_worker_mid_create_is_recovered_by_a_new_worker(workers: WorkerPool, tenant_a, admin_a):
    first = workers.start(env=JANITOR, beat=True, concurrency=4)
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="9", boot_ms="400", action_ms="400"))
    provider = Provider.objects.get(tenant=tenant_a, name="fakecloud")
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("phoenix", "fleet", 20))
    # Kill it once it is busy: some tasks done, some running right now.
    deadline = time.monotonic() + TIMEOUT_S
    tasks = Task.objects.filter(job=job)
    while not (tasks.filter(status="completed").count() >= 10 and tasks.filter(status="running").exists()):
        assert time.monotonic() < deadline, f"the create never got busy\n{workers.tail()}"
        time.sleep(0.05)
    workers.kill(first)
    orphaned = set(tasks.filter(status="running").values_list("pk", flat=True))
    assert orphaned, "nothing was running at the kill"
    workers.start(env=JANITOR, beat=True, concurrency=4)
    job = wait_for_job(job)
    assert job.status == Job.Status.COMPLETED, f"{job.message}\n{workers.tail()}"
    lost = TaskAttempt.objects.filter(task__job=job, outcome=TaskAttempt.Outcome.LOST)
    assert set(lost.values_list("task_id", flat=True)) == orphaned, "every task the dead worker held was taken back"
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    assert_one_machine_per_node(cluster, provider)
    delete_and_check_nothing_left(admin_a, cluster, provider, workers.log)


def test_a_tenants_large_job_does_not_hold_back_another_tenants_small_job(
    workers: WorkerPool, tenant_a, tenant_b, admin_a, admin_b
):
    workers.start(env=FAST, concurrency=4)
    for tenant in (tenant_a, tenant_b):
        catalog_import(tenant=tenant, user=None, data=catalog(seed="5", boot_ms="200", action_ms="200"))
    Tenant.objects.filter(pk__in=[tenant_a.pk, tenant_b.pk]).update(workers=2)
    _, big = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("big", "fleet", 20))
    # A's 20 creates are ready at once; 2 went out, the rest wait for A's budget and say so.
    assert Task.objects.filter(job=big, waiting_reason="tenant budget 2/2 busy").count() >= 18
    _, small = cluster_create(user=admin_b, tenant=tenant_b, request=PreviewRequest("small", "fleet", 1))
    small = wait_for_job(small)
    big.refresh_from_db()
    assert small.status == Job.Status.COMPLETED
    assert big.status == Job.Status.RUNNING, "B's small job should finish while A's large job is still running"
    assert wait_for_job(big).status == Job.Status.COMPLETED
