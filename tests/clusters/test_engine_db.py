"""The engine's database layer on PostgreSQL: persist a plan, claim, finish, fail, retry, state transitions.

Jobs are driven here by hand (claim a ready task, finish it) exactly as workers will; the Celery layer on
top only carries "run task N". ``transactional_db`` where ``transaction.on_commit`` must really fire.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from bench.planner_cases import hadoop_nodes, hadoop_services
from clusters.engine import core as engine
from clusters.engine.core import (
    Ready,
    job_persist_plan,
    job_retry,
    job_start,
    log_tail,
    retry_delay,
    task_claim,
    task_finish,
)
from clusters.engine.state import IllegalTransition, allowed_from, transition, transition_many
from clusters.models import Cluster, Job, Node, Task, TaskAttempt, TaskEdge
from clusters.planning.planner import Action, Operation, plan
from clusters.planning.specs import NodeSpec
from clusters.services.preview import PreviewRequest, cluster_preview
from providers.secrets import register_secrets
from tenants.errors import Conflict

from .engine_helpers import FAILED, OK, Driver, make_cluster, persist, refresh

# --- persist -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite-fallback"])
def test_job_persist_plan_stores_one_row_per_task_and_edge(tenant_a, admin_a, catalog_a, monkeypatch, vendor):
    if vendor != "postgresql":  # the portable bulk_create path, run on the same PostgreSQL database
        monkeypatch.setattr(connection, "vendor", "sqlite")
    preview = cluster_preview(
        user=admin_a, tenant=tenant_a, request=PreviewRequest(name="shop", template="lamp", size=3)
    )
    cluster = make_cluster(tenant_a, admin_a)
    planned = preview.plan
    job = persist(cluster, planned, preview.nodes)
    tasks = {t.key: t for t in Task.objects.filter(job=job)}
    assert len(tasks) == len(planned.tasks) and planned.join_count >= 1
    edges = {(e.predecessor.key, e.successor.key) for e in TaskEdge.objects.filter(job=job).select_related(
        "predecessor", "successor")}  # fmt: skip
    assert edges == set(planned.edges)
    pending = planned.pending_counts()
    for spec in planned.tasks:
        task = tasks[spec.key]
        assert (task.action, task.service, task.stage, task.pending_deps) == (
            spec.action, spec.service, spec.stage, pending[spec.key])  # fmt: skip
        assert (task.node_id is None) == spec.is_join
        assert task.status == ("queued" if pending[spec.key] == 0 else "waiting")
        assert task.tenant_id == cluster.tenant_id and task.max_attempts == job.max_attempts
    assert {tasks[k].action for k, n in enumerate(pending) if n == 0} == {Action.CREATE}
    with pytest.raises(Conflict):
        job_persist_plan(job=job, plan=planned, nodes_by_key={})


def test_job_persist_plan_of_10000_nodes_takes_a_bounded_number_of_queries(
    tenant_a, admin_a, catalog_a, django_assert_max_num_queries
):
    specs = hadoop_nodes(10_000)
    planned = plan(before=[], after=specs, operation=Operation.CREATE, services=hadoop_services())
    cluster = make_cluster(tenant_a, admin_a, name="big", size=len(specs))
    nodes = Node.objects.bulk_create(
        [Node(cluster=cluster, number=n.number, hostname=n.node_id, hardware=n.hardware, image=n.image) for n in specs],
        batch_size=5000,
    )
    job = Job.objects.create(cluster=cluster, operation=Operation.CREATE)
    by_key = {spec.node_id: node for spec, node in zip(specs, nodes, strict=True)}
    # 3 reads + ceil(tasks / 10,000) + ceil(edges / 50,000) inserts: 28 for 170,016 tasks and 330,012 edges.
    bound = 5 + -(-len(planned.tasks) // engine.TASK_BATCH_SIZE) + -(-len(planned.edges) // engine.EDGE_BATCH_SIZE)
    with django_assert_max_num_queries(bound):
        queued = job_persist_plan(job=job, plan=planned, nodes_by_key=by_key)
    assert len(planned.tasks) > 150_000
    assert Task.objects.filter(job=job).count() == len(planned.tasks)
    assert TaskEdge.objects.filter(job=job).count() == len(planned.edges)
    assert len(queued) == 10_000  # every node's CREATE


# --- claim ---------------------------------------------------------------------------------------------------


def test_task_claim_is_atomic_and_a_duplicate_delivery_gets_none(lamp):
    _, _, job = lamp
    job_start(job=job, on_ready=lambda ready: None)
    task = Task.objects.filter(job=job, status="queued").first()
    attempt = task_claim(task_pk=task.pk, worker="w1")
    assert attempt is not None and attempt.number == 1 and attempt.worker == "w1"
    assert task_claim(task_pk=task.pk, worker="w2") is None
    task.refresh_from_db()
    assert (task.status, task.attempts, task.worker) == ("running", 1, "w1") and task.heartbeat_at is not None
    assert TaskAttempt.objects.filter(task=task).count() == 1
    waiting = Task.objects.filter(job=job, status="waiting").first()
    assert task_claim(task_pk=waiting.pk, worker="w1") is None


def test_task_claim_refuses_tasks_of_a_job_that_is_not_running(lamp):
    _, _, job = lamp
    task = Task.objects.filter(job=job, status="queued").first()
    assert task_claim(task_pk=task.pk, worker="w1") is None  # not started yet


# --- whole jobs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite-fallback"])
@pytest.mark.parametrize("seed", [1, 2])
def test_driving_a_lamp_create_completes_the_job_and_activates_the_cluster(
    transactional_db, lamp, monkeypatch, vendor, seed
):
    if vendor != "postgresql":  # the portable two-statement path, run on the same PostgreSQL database
        monkeypatch.setattr(connection, "vendor", "sqlite")
    cluster, planned, job = lamp
    driver = Driver(seed=seed)
    job_start(job=job, on_ready=driver.on_ready)  # on_commit fires at once outside a transaction
    driver.run()
    refresh(cluster, job)
    assert job.status == "completed" and job.finished_at is not None and job.started_at is not None
    assert cluster.status == "active"
    assert len(driver.claimed) == planned.real_task_count == len(set(driver.claimed))
    assert not Task.objects.filter(job=job).exclude(status="completed").exists()
    assert set(TaskAttempt.objects.filter(task__job=job).values_list("outcome", flat=True)) == {"succeeded"}


def test_ready_tasks_are_handed_out_only_on_commit(transactional_db, lamp):
    from django.db import transaction

    _, _, job = lamp
    seen: list[Ready] = []
    with transaction.atomic():
        ready = job_start(job=job, on_ready=seen.extend)
        assert ready and seen == []
    assert seen == ready


def test_a_transient_failure_requeues_the_task_with_backoff(transactional_db, lamp):
    _, _, job = lamp
    job_start(job=job, on_ready=lambda ready: None)
    task = Task.objects.filter(job=job, status="queued").first()
    attempt = task_claim(task_pk=task.pk, worker="w1")
    handed: list[Ready] = []
    before = timezone.now()
    ready = task_finish(attempt=attempt, outcome=FAILED, error_class="ConnectionError", retryable=True,
                        log="x" * 5000, on_ready=handed.extend)  # fmt: skip
    assert handed == ready and len(ready) == 1 and ready[0].task_pk == task.pk
    assert 2.5 <= ready[0].countdown <= 5.0
    task.refresh_from_db()
    assert task.status == "queued" and task.worker == "" and task.attempts == 1
    assert before + timedelta(seconds=2.5) <= task.not_before <= timezone.now() + timedelta(seconds=5)
    attempt.refresh_from_db()
    assert (attempt.outcome, attempt.error_class, attempt.retryable) == ("failed", "ConnectionError", True)
    assert len(attempt.log_tail.encode()) == 2048 and len(attempt.log) == 5000
    second = task_claim(task_pk=task.pk, worker="w2")
    assert second is not None and second.number == 2
    # A second finish of the first attempt changes nothing.
    assert task_finish(attempt=attempt, outcome=OK, on_ready=handed.extend) == []
    task.refresh_from_db()
    assert task.status == "running"


def test_exhausting_attempts_fails_the_job_drops_waiting_tasks_and_settles_the_cluster(transactional_db, lamp):
    cluster, _, job = lamp
    Task.objects.filter(job=job).update(max_attempts=2)
    job_start(job=job, on_ready=lambda ready: None)
    first, second, _ = Task.objects.filter(job=job, status="queued").order_by("key")
    done = task_claim(task_pk=first.pk, worker="w1")
    task_finish(attempt=done, outcome=OK, on_ready=lambda ready: None)
    running = task_claim(task_pk=second.pk, worker="w2")  # still running when the job fails
    failing = Task.objects.filter(job=job, status="queued").order_by("key").last()
    for _ in range(2):
        attempt = task_claim(task_pk=failing.pk, worker="w3")
        task_finish(attempt=attempt, outcome=FAILED, error_class="HTTP503", retryable=True, on_ready=lambda r: None)
    refresh(failing, job, cluster)
    assert failing.status == "failed" and failing.attempts == 2
    assert list(failing.task_attempts.values_list("number", "outcome")) == [(1, "failed"), (2, "failed")]
    assert job.status == "failed" and "HTTP503" in job.message
    assert not Task.objects.filter(job=job, status__in=["waiting", "queued"]).exists()
    assert Task.objects.filter(job=job, status="dropped").exists()
    assert cluster.status == "pending"  # a task is still running
    handed: list[Ready] = []
    assert task_finish(attempt=running, outcome=OK, on_ready=handed.extend) == [] and handed == []
    refresh(cluster)
    assert cluster.status == "incomplete"  # something was created, so the cluster is kept


def test_a_create_that_completed_nothing_terminates_the_cluster(lamp):
    cluster, _, job = lamp
    job_start(job=job, on_ready=lambda ready: None)
    task = Task.objects.filter(job=job, status="queued").first()
    attempt = task_claim(task_pk=task.pk, worker="w1")
    task_finish(attempt=attempt, outcome=FAILED, error_class="AuthError", retryable=False, on_ready=lambda r: None)
    refresh(cluster, job)
    assert job.status == "failed" and cluster.status == "terminated"
    assert "provider settings" in cluster.status_message
    with pytest.raises(Conflict):
        job_retry(job=job, on_ready=lambda ready: None)


def test_retry_reruns_only_failed_and_dropped_tasks_and_completes(transactional_db, lamp):
    cluster, _, job = lamp
    broken = {"mysql-server"}

    def fail(task: Task) -> tuple[str, bool] | None:
        return ("ScriptError", False) if task.service in broken and task.action == "install" else None

    driver = Driver(seed=3, fail=fail)
    job_start(job=job, on_ready=driver.on_ready)
    driver.run()
    refresh(cluster, job)
    assert job.status == "failed" and cluster.status == "incomplete"
    completed_before = set(Task.objects.filter(job=job, status="completed").values_list("pk", flat=True))
    rerun = set(Task.objects.filter(job=job, status__in=["failed", "dropped"]).values_list("pk", flat=True))
    assert completed_before and rerun
    broken.clear()
    retry_driver = Driver(seed=4)
    ready = job_retry(job=job, on_ready=retry_driver.on_ready)
    assert ready and {r.task_pk for r in ready} <= rerun
    refresh(cluster, job)
    assert job.status == "running" and cluster.status == "pending"
    retry_driver.run()
    refresh(cluster, job)
    assert job.status == "completed" and cluster.status == "active"
    assert set(retry_driver.claimed) <= rerun and not set(retry_driver.claimed) & completed_before
    real_rerun = set(Task.objects.filter(pk__in=rerun).exclude(action="join").values_list("pk", flat=True))
    assert set(retry_driver.claimed) == real_rerun
    with pytest.raises(Conflict):
        job_retry(job=job, on_ready=lambda ready: None)
    # Attempt numbers run on across the retry; the budget (``attempts``) starts again.
    install = Task.objects.get(job=job, service="mysql-server", action="install")
    assert list(install.task_attempts.values_list("number", "outcome")) == [(1, "failed"), (2, "succeeded")]
    assert install.attempts == 1


def test_a_delete_job_terminates_the_cluster(transactional_db, lamp):
    cluster, _, create = lamp
    Job.objects.filter(pk=create.pk).update(status="completed")
    Cluster.objects.filter(pk=cluster.pk).update(status="pending")
    nodes = list(cluster.nodes.all())
    node_specs = [NodeSpec(node_id=n.node_key, number=n.number, hardware=n.hardware, image=n.image,
                           services=frozenset()) for n in nodes]  # fmt: skip
    planned = plan(before=node_specs, after=[], operation=Operation.DELETE, services={})
    job = Job.objects.create(cluster=cluster, operation=Operation.DELETE)
    job_persist_plan(job=job, plan=planned, nodes_by_key={n.node_key: n for n in nodes})
    driver = Driver()
    job_start(job=job, on_ready=driver.on_ready)
    driver.run()
    refresh(cluster, job)
    assert job.status == "completed" and cluster.status == "terminated" and len(driver.claimed) == len(nodes)


# --- state machine -------------------------------------------------------------------------------------------


def test_illegal_transitions_are_refused(lamp):
    cluster, _, job = lamp
    task = Task.objects.filter(job=job, status="queued").first()
    with pytest.raises(IllegalTransition, match="cannot be moved to 'bogus'"):
        transition(Task, task.pk, to="bogus")
    with pytest.raises(IllegalTransition):
        transition(Job, job.pk, to=Job.Status.NOT_STARTED)  # no transition leads back to not started
    with pytest.raises(IllegalTransition):
        transition(Task, task.pk, to=Task.Status.RUNNING, extra_updates={"status": "completed"})
    with pytest.raises(IllegalTransition):
        transition(Node, 1, to="active")  # nodes have no state machine here
    # Legal targets from the wrong state are refused by the UPDATE, not by a read.
    assert transition(Task, task.pk, to=Task.Status.COMPLETED) is False  # queued → completed
    assert transition(Cluster, cluster.pk, to=Cluster.Status.PENDING) is False  # already pending
    assert transition(Job, job.pk, to=Job.Status.COMPLETED) is False  # not started → completed
    assert transition(Job, job.pk, to=Job.Status.RUNNING) is True
    assert transition(Job, job.pk, to=Job.Status.RUNNING) is False
    assert transition_many(Task.objects.filter(job=job), to=Task.Status.DROPPED) == len(
        Task.objects.filter(job=job))  # fmt: skip
    refresh(task)
    assert task.status == "dropped"


# --- helpers -------------------------------------------------------------------------------------------------


def test_retry_delay_doubles_from_5_seconds_with_jitter_and_caps_at_5_minutes():
    rng = random.Random(7)
    for attempt, base in [(1, 5), (2, 10), (3, 20), (7, 300), (20, 300)]:
        delays = [retry_delay(attempt, rng=rng) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays) and len(set(delays)) > 1


def test_log_tail_keeps_the_last_2_kib_without_splitting_characters():
    assert log_tail("short") == "short"
    tail = log_tail("é" * 3000)
    assert len(tail.encode()) <= 2048 and set(tail) == {"é"}


def test_finish_redacts_known_secrets_in_the_log(lamp):
    _, _, job = lamp
    register_secrets(["hunter2-secret"])
    job_start(job=job, on_ready=lambda ready: None)
    task = Task.objects.filter(job=job, status="queued").first()
    attempt = task_claim(task_pk=task.pk, worker="w1")
    task_finish(attempt=attempt, outcome=OK, log="password=hunter2-secret", on_ready=lambda ready: None)
    attempt.refresh_from_db()
    assert "hunter2-secret" not in attempt.log and "hunter2-secret" not in attempt.log_tail


def test_the_moves_the_release_statement_writes_in_sql_are_legal_transitions():
    """``_decrement_successors`` moves waiting successors to queued (a JOIN to completed) in SQL, for speed;
    the state machine must allow exactly those moves."""
    assert Task.Status.WAITING in allowed_from(Task, Task.Status.QUEUED)
    assert Task.Status.WAITING in allowed_from(Task, Task.Status.COMPLETED)
