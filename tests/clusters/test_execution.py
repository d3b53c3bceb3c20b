"""Clusters are real: a create goes solver → planner → engine and a real Celery worker runs it.

A ``celery worker --pool threads`` subprocess works on the test database (committed rows, hence
``transaction=True``) through Redis, against the fake provider and the noop automator; delete removes every
machine. Nothing here is eager: each task is a broker message, each finish publishes its successors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.db import connection

from clusters.engine import Ready, job_retry, task_claim, task_release
from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from clusters.planner import Action
from clusters.runner import task_run
from clusters.services.lifecycle import cluster_create, cluster_delete
from clusters.services.preview import PreviewRequest
from clusters.state import transition
from clusters.tasks import enqueue
from loom_site.celery import app
from providers.models import FakeCallCount, FakeMachine, Provider
from providers.services import provider_key
from templates_app.services import catalog_import
from tenants.errors import Conflict

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379"
CLAIM_KEY = "loom-test-execution-claim"
TIMEOUT_S = 120


def _database_url() -> str:
    settings = connection.settings_dict
    password = f":{quote(settings['PASSWORD'])}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    return f"postgres://{quote(settings['USER'])}{password}@{host}:{port}/{settings['NAME']}"


def _claim_redis_db() -> int:
    """A Redis database no one else is using: claimed with SET NX (expiring), emptied before use."""
    for number in range(14, 0, -1):  # 15 is tests/loom_site's round-trip test's, 0 the default
        client = redis.Redis.from_url(f"{REDIS}/{number}")
        if client.set(CLAIM_KEY, str(os.getpid()), nx=True, ex=900):
            for key in client.scan_iter():
                if key != CLAIM_KEY.encode():
                    client.delete(key)
            return number
    pytest.fail("no free Redis database among 1-14: stale claims? they expire after 15 minutes")


def _forget_connections() -> None:
    """Drop what this process's Celery app cached for the broker and result backend it was configured with
    (connection and producer pools, the thread's backend), so a changed ``broker_url`` takes effect here and
    later tests in this process start from the configuration they set themselves."""
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    vars(app._local).pop("backend", None)


@pytest.fixture
def worker(transactional_db: None, tmp_path: Path) -> Iterator[Path]:
    """A real worker process on the test database; this process publishes to the same broker."""
    number = _claim_redis_db()
    broker = f"{REDIS}/{number}"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_worker",
        "LOOM_WORKER_DATABASE_URL": _database_url(),
        "LOOM_BROKER_URL": broker,
        "LOOM_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "celery", "-A", "loom_site", "worker", "--pool", "threads", "-c", "8",
               "-n", f"test-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    saved = {key: app.conf[key] for key in ("broker_url", "task_always_eager")}
    app.conf.update(broker_url=broker, task_always_eager=False)
    _forget_connections()
    try:
        yield log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        app.conf.update(saved)
        _forget_connections()
        client = redis.Redis.from_url(broker)
        client.flushdb()


def catalog(failure_rate: str = "0", seed: str = "") -> dict[str, list[Any]]:
    action = {"type": "noop", "fields": {"latency_ms": "20"}}
    return {
        "providers": [
            {"name": "fakecloud", "providertype": "fake",
             "provisioner": {"latency_ms": "300", "failure_rate": failure_rate, "call_latency_ms": "5", "seed": seed}},
        ],
        "hardwaretypes": [{"name": "small", "providermap": {"fakecloud": {"flavor": "f1", "cost": "0.01"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"fakecloud": {"image": "deb12", "sshuser": "loom"}}}],
        "services": [
            {"name": "base", "dependencies": {},
             "provisioner": {"actions": {"install": action, "configure": action}}},
            {"name": "app", "dependencies": {"install": {"requires": ["base"]}, "runtime": {"requires": ["base"]}},
             "provisioner": {"actions": {"install": action, "configure": action, "start": action}}},
        ],
        "clustertemplates": [
            {"name": "fleet", "description": "noop services on fake machines",
             "defaults": {"services": ["base", "app"], "provider": "fakecloud", "hardwaretype": "small",
                          "imagetype": "debian", "config": {}},
             "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"], "services": ["base", "app"]}},
        ],
    }  # fmt: skip


def wait_for_job(job: Job, timeout: float = TIMEOUT_S) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in (Job.Status.COMPLETED, Job.Status.FAILED, Job.Status.ABORTED):
            cluster = Cluster.objects.get(pk=job.cluster_id)
            if cluster.status != Cluster.Status.PENDING:  # a failed job settles once nothing runs
                return job
        time.sleep(0.1)
    counts = Counter(Task.objects.filter(job=job).values_list("status", flat=True))
    raise AssertionError(f"job {job.pk} still {job.status} after {timeout} s; tasks {dict(counts)}")


def run_to_completion(job: Job, log: Path, retries: int = 0) -> Job:
    """Wait for the job; a failed one is retried (as a user would) up to ``retries`` times."""
    job = wait_for_job(job)
    for _ in range(retries):
        if job.status != Job.Status.FAILED:
            break
        job_retry(job=job, on_ready=enqueue)
        job = wait_for_job(job)
    assert job.status == Job.Status.COMPLETED, f"{job.message}\n--- worker log ---\n{log.read_text()[-4000:]}"
    return job


def machines(provider: Provider) -> Any:
    return FakeMachine.objects.filter(provider_key=provider_key(provider=provider))


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
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="7"))
    create_and_delete(admin_a, tenant_a, worker, size=20, retries=0)


def test_transient_provider_failures_neither_leak_nor_duplicate_machines(worker, tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog(failure_rate="0.3"))
    # With a 30 % failure rate some task may exhaust its 3 attempts; the user retries the job then.
    create_and_delete(admin_a, tenant_a, worker, size=20, retries=5)


# --- the same pieces in-process, without a broker --------------------------------------------------------------


def drive(job: Job) -> None:
    """Run a job's tasks in this process, in the order the engine hands them out, sleeping out countdowns."""
    ready = [Ready(pk) for pk in Task.objects.filter(job=job, status=Task.Status.QUEUED).values_list("pk", flat=True)]
    while ready:
        ready.sort(key=lambda item: item.countdown)
        item = ready.pop(0)
        if item.countdown:
            time.sleep(item.countdown)
            ready = [Ready(r.task_pk, max(0.0, r.countdown - item.countdown)) for r in ready]
        ready += task_run(task_pk=item.task_pk, worker="test/1", on_ready=lambda _: None)


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
