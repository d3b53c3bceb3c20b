"""The engine's PostgreSQL functions (``clusters/engine/pg_functions.py``) and the worker-side shortcuts that ride on
them: a finish that claims the next task for its own worker, the node read without a compiled query, and
the per-job cluster cache. Whole-job behaviour on both paths (functions, and the ORM path run on the same
database) is covered by ``test_engine_db.py`` and ``test_engine_control.py``."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from clusters.engine import core as engine
from clusters.engine import dispatch, rows, runner
from clusters.engine.core import Ready, job_pause, job_start, task_claim_for_run, task_finish
from clusters.engine.pg_functions import FUNCTIONS, install_engine_functions
from clusters.models import Node, Task, TaskAttempt
from clusters.planning.planner import Action
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from templates_app.services import catalog_import
from tenants.models import Tenant

from .day2_helpers import stack_catalog
from .engine_helpers import OK, lamp_job, refresh


def _installed() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.proname, COUNT(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.proname = ANY(%s) GROUP BY p.proname",
            [list(FUNCTIONS)],
        )
        return dict(cursor.fetchall())


def test_migrate_installs_each_function_once_and_a_reinstall_replaces_an_old_signature(db):
    assert _installed() == dict.fromkeys(FUNCTIONS, 1)  # post_migrate ran when the test database was made
    with connection.cursor() as cursor:  # what an older release might have left: another signature
        cursor.execute("CREATE FUNCTION loom_task_succeed(bigint) RETURNS integer LANGUAGE sql AS 'SELECT 1'")
    assert _installed()["loom_task_succeed"] == 2
    install_engine_functions()
    install_engine_functions()
    assert _installed() == dict.fromkeys(FUNCTIONS, 1)


def _chain_start(lamp: Any) -> tuple[Task, list[Ready]]:
    """Start the lamp job; returns a queued create task (its confirm follows it) and what was handed out."""
    _, _, job = lamp
    handed: list[Ready] = []
    job_start(job=job, on_ready=handed.extend)
    return Task.objects.filter(job=job, action=Action.CREATE).order_by("key").first(), handed


def test_a_finish_claims_the_next_task_for_its_own_worker_in_the_same_transaction(transactional_db, lamp):
    create, _ = _chain_start(lamp)
    claimed = task_claim_for_run(task_pk=create.pk, worker="w/1")
    assert claimed is not None and (claimed.action, claimed.node_id) == (Action.CREATE, create.node_id)
    seen: list[Ready] = []
    ready = task_finish(attempt=claimed.attempt, outcome=OK, on_ready=seen.extend, claim_next_for="w/2")
    assert seen == ready
    (item,) = [r for r in ready if r.claimed is not None]
    following = Task.objects.get(pk=item.task_pk)
    assert following.action == Action.CONFIRM and following.node_id == create.node_id
    assert (following.status, following.worker, following.attempts) == ("running", "w/2", 1)
    attempt = TaskAttempt.objects.get(task=following)
    assert (attempt.pk, attempt.number, attempt.worker) == (item.claimed.attempt.pk, 1, "w/2")
    assert (item.claimed.action, item.claimed.node_id, item.claimed.job_id) == (
        Action.CONFIRM, create.node_id, create.job_id)  # fmt: skip
    # Both claims carry the node's row as it is after the create wrote to it: the runner reads nothing more.
    node = Node.objects.get(pk=create.node_id)
    assert model_to_dict(item.claimed.node) == model_to_dict(node) and item.claimed.node._state.adding is False
    assert claimed.node is not None and claimed.node.pk == node.pk


def test_with_a_budget_the_task_claimed_next_may_be_another_jobs_and_says_so(
    transactional_db, tenant_a, admin_a, catalog_a
):
    """A finish frees a budget slot for whatever of the tenant waits longest, here another job's create: the
    claim must name that job, or the worker would run the task against the wrong cluster."""
    Tenant.objects.filter(pk=tenant_a.pk).update(workers=1)
    _, _, first = lamp_job(tenant_a, admin_a, name="first")
    _, _, second = lamp_job(tenant_a, admin_a, name="second")
    (sent,) = job_start(job=first, on_ready=lambda _: None)  # the one slot
    assert job_start(job=second, on_ready=lambda _: None) == []
    claimed = task_claim_for_run(task_pk=sent.task_pk, worker="w/1")
    job_pause(job=first)  # what the first job releases now waits for its resume; the slot goes to the second
    ready = task_finish(attempt=claimed.attempt, outcome=OK, on_ready=lambda _: None, claim_next_for="w/1")
    (item,) = ready
    assert item.claimed is not None and item.claimed.job_id == second.pk
    assert Task.objects.get(pk=item.task_pk).job_id == second.pk
    assert runner.job_cluster(item.claimed.job_id).pk == second.cluster_id


def test_without_claim_next_for_nothing_is_claimed(transactional_db, lamp):
    create, _ = _chain_start(lamp)
    claimed = task_claim_for_run(task_pk=create.pk, worker="w/1")
    ready = task_finish(attempt=claimed.attempt, outcome=OK, on_ready=lambda _: None)
    assert ready and all(r.claimed is None for r in ready)
    assert not Task.objects.filter(pk__in=[r.task_pk for r in ready]).exclude(status="queued").exists()


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What ``clusters.tasks`` sends to the broker, task by task: batches (``publish``) and single tasks with a
    countdown. Nothing here is a worker with idle threads, so nothing is spilled."""
    sent: list[int] = []
    monkeypatch.setattr(dispatch, "publish", sent.extend)
    monkeypatch.setattr(dispatch.task_run_task, "apply_async", lambda args, countdown=None: sent.append(args[0]))
    return sent


def test_a_claimed_task_is_never_published(transactional_db, lamp, published):
    create, _ = _chain_start(lamp)
    claimed = task_claim_for_run(task_pk=create.pk, worker="w/1")
    ready = task_finish(attempt=claimed.attempt, outcome=OK, on_ready=dispatch.enqueue, claim_next_for="w/1")
    assert published == [r.task_pk for r in ready if r.claimed is None]
    assert any(r.claimed is not None for r in ready)


def test_a_worker_runs_a_chain_claiming_each_step_once_and_leaves_nothing_running(
    transactional_db, tenant_a, admin_a, published
):
    """``task_run_task`` as a worker thread runs it, on the fake provider: the finish of each step claims the
    next for the thread, which runs it without a claim of its own; what else became ready is published.
    When the thread stops, no task is left claimed and unrun, and every task ran exactly once."""
    catalog_import(tenant=tenant_a, user=None, data=stack_catalog(boot_ms="0"))
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("chain", "stack", 3))
    first, queue = published[0], published[1:]
    published.clear()
    dispatch.task_run_task(first)
    done = Task.objects.filter(job=job, status="completed").exclude(action=Action.JOIN)
    assert done.count() > 3  # create, confirm, bootstrap and on: the chain ran in this thread
    assert not Task.objects.filter(job=job, status="running").exists()
    queue += published
    while queue:  # everything else went to the broker: run it all the same way until the job is done
        published.clear()
        dispatch.task_run_task(queue.pop(0))
        queue += published
    refresh(cluster, job)
    assert job.status == "completed" and cluster.status == "active"
    runs = Task.objects.filter(job=job).exclude(action=Action.JOIN)
    assert set(runs.values_list("attempts", flat=True)) == {1}
    assert TaskAttempt.objects.filter(task__job=job, outcome="succeeded").count() == runs.count()
    assert not TaskAttempt.objects.filter(task__job=job).exclude(outcome="succeeded").exists()


def test_node_read_returns_what_the_orm_returns(tenant_a, admin_a, lamp):
    cluster, _, _ = lamp
    node = Node.objects.filter(cluster=cluster).first()
    Node.objects.filter(pk=node.pk).update(ip_addresses={"access_v4": "10.0.0.7"}, services=["base", "mysql"])
    read, orm = rows.node_read(node.pk), Node.objects.get(pk=node.pk)
    assert model_to_dict(read) == model_to_dict(orm) and read.created_at == orm.created_at
    assert read.ip_addresses == {"access_v4": "10.0.0.7"} and read._state.adding is False
    with pytest.raises(Node.DoesNotExist):
        rows.node_read(node.pk + 10_000)


def test_a_jobs_cluster_is_read_once_per_worker(lamp, django_assert_num_queries):
    cluster, _, job = lamp
    with django_assert_num_queries(1):
        first = runner.job_cluster(job.pk)
    with django_assert_num_queries(0):
        again = runner.job_cluster(job.pk)
        assert again is first and again.provider_version.pk == cluster.provider_version_id
    assert first.pk == cluster.pk and first.owner.pk == cluster.owner_id


def _last_two_queued(job: Any) -> list[int]:
    """Start ``job`` and run it by hand until only its last two tasks are left, both queued; their pks."""
    job_start(job=job, on_ready=lambda _: None)
    unfinished = Task.objects.filter(job=job).exclude(status="completed")
    while not (unfinished.count() == 2 and set(unfinished.values_list("status", flat=True)) == {"queued"}):
        task = Task.objects.filter(job=job, status="queued").order_by("key").first()
        claimed = task_claim_for_run(task_pk=task.pk, worker="w/0")
        task_finish(attempt=claimed.attempt, outcome=OK, on_ready=lambda _: None)
    return list(unfinished.order_by("key").values_list("pk", flat=True))


class _HeldFinish:
    """What ``_task_finish`` does for ``claimed`` on the function path, in a thread of its own, with the
    finish's transaction held open until ``commit``; then the check after the commit."""

    def __init__(self, claimed: Any, job_pk: int) -> None:
        self.claimed, self.job_pk = claimed, job_pk
        self.inside, self.released, self.errors = threading.Event(), threading.Event(), []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.inside.wait(30)

    def _run(self) -> None:
        try:
            with transaction.atomic():
                _, maybe_ended = engine._succeed_postgresql(
                    self.claimed.attempt, log="", now=timezone.now(), exclusive=False, on_ready=lambda _: None,
                    claim_next_for=None)  # fmt: skip
                self.inside.set()
                self.released.wait(30)
            assert maybe_ended == self.job_pk  # it queued nothing: it checks after its commit
            engine._complete_if_done(maybe_ended, now=timezone.now())
        except Exception as error:  # pragma: no cover - reported by commit()
            self.errors.append(error)
        finally:
            connection.close()

    def commit(self) -> None:
        self.released.set()
        self.thread.join(30)
        assert not self.errors and not self.thread.is_alive()


def _in_own_thread(work: Any) -> bool:
    """Run ``work`` in a thread with its own database connection; True when it ended within 30 s."""

    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return not thread.is_alive()


def test_two_last_tasks_finishing_side_by_side_complete_the_job_once(transactional_db, lamp):
    """The function path takes the job lock shared also for a task without successors. The last two tasks
    of a job, finished at once, each see the other still running inside their transactions; the check each
    makes after its own commit is what completes the job (exactly once), and neither waits for the other."""
    cluster, _, job = lamp
    first, second = (task_claim_for_run(task_pk=pk, worker=f"w/{pk}") for pk in _last_two_queued(job))
    held = _HeldFinish(first, job.pk)

    def finish_second() -> None:
        task_finish(attempt=second.attempt, outcome=OK, on_ready=lambda _: None)

    assert _in_own_thread(finish_second), "the second last task waited for the first one's transaction"
    refresh(job)
    assert job.status == "running"  # the second saw the first still running: not done yet
    held.commit()
    refresh(cluster, job)
    assert job.status == "completed" and cluster.status == "active"


def test_a_last_task_still_queued_when_the_other_finishes_does_not_strand_the_job(transactional_db, lamp):
    """The race a check from other tasks' states would lose: A's finish runs while B is still queued (so A
    sees work left); before A commits, B is claimed, runs and finishes, and sees A still running. Only a
    check that every finish queueing nothing makes after its own commit completes the job."""
    cluster, _, job = lamp
    first_pk, second_pk = _last_two_queued(job)
    held = _HeldFinish(task_claim_for_run(task_pk=first_pk, worker="w/1"), job.pk)

    def claim_and_finish_second() -> None:
        second = task_claim_for_run(task_pk=second_pk, worker="w/2")
        task_finish(attempt=second.attempt, outcome=OK, on_ready=lambda _: None)

    assert _in_own_thread(claim_and_finish_second)
    refresh(job)
    assert job.status == "running"  # the second saw the first still running
    held.commit()
    refresh(cluster, job)
    assert job.status == "completed" and cluster.status == "active"
