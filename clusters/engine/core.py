"""The engine's database layer: persist a plan, claim a task, finish a task, retry a job (architecture.md §3).

No Celery here. Whoever dispatches work passes an ``on_ready`` callback; it is called through
``transaction.on_commit`` with the tasks that became ready, so a worker can never be handed a task whose row
is not committed yet (house-style item 20).

Concurrency model, and why:

* **Claim** is one conditional UPDATE (queued → running, attempts + 1) that also requires the job to be
  running. A duplicate broker delivery finds nothing to claim and gets None.
* **Finish** runs in one transaction that starts by locking the job row, in one of two modes. The common
  finish (a task with successors completes, or a task is requeued for a retry) takes it ``FOR SHARE``:
  such finishes run side by side, and successors are locked in primary-key order, so two of them releasing
  overlapping successors cannot deadlock. A finish that may end the job or must settle it (a task without
  successors completes, a task fails the job, any finish of a job that already failed or was aborted)
  takes it ``FOR NO KEY UPDATE``, which waits for every shared holder to commit. So (a) of two "last" tasks
  finishing at once, the one that locks second sees the other's completion and completes the job, (b) the
  drop of a failed job's unstarted tasks runs alone among that job's finishes, and (c) the "no task is
  running any more" check that settles a failed job's cluster is race-free. Holding the exclusive lock only
  where it is needed is what lets one large job finish hundreds of tasks a second (one lock for every
  finish serialized them all behind a commit each). Finishes of different jobs never contend; claims take
  no job lock. The PostgreSQL function path goes one step further: a task without successors takes the
  lock shared too, and whether the job ended is checked after every finish that queued nothing has
  committed (``_complete_if_done``), so such finishes no longer make every other finish of the job wait.
* Successors are released with ``pending_deps = pending_deps - n`` and moved (waiting → queued, a JOIN →
  completed) in the same UPDATE. JOIN tasks reaching 0 are completed here and release their own successors
  in the same transaction.
* Every status change goes through ``clusters/engine/state.py``.

On PostgreSQL the hot path, a claim and a successful finish (lock, close the attempt, complete, release,
dispatch, "is the job done?", and claiming the worker's next task), runs as PL/pgSQL functions: one round
trip each instead of seven or eight ORM statements, which is what lets one worker process move several
hundred tasks a second (``clusters/engine/pg_functions.py`` says how they are generated, installed and kept in
step with this module). Everything else, and all of it on SQLite, is the ORM code below; the engine tests
run both.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Exists, F, Max, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from clusters.engine.backoff import jittered_backoff
from clusters.engine.rows import node_from_row
from clusters.engine.signals import JobEvent, JobEventData, send_job_event
from clusters.engine.state import transition, transition_many
from clusters.models import LOG_TAIL_LIMIT, Cluster, Job, Node, Task, TaskAttempt, TaskEdge
from clusters.planning.planner import Action, Operation, Plan
from providers.secrets import redact
from tenants.errors import Conflict
from tenants.models import Tenant

logger = logging.getLogger(__name__)

TASK_BATCH_SIZE = 10_000
EDGE_BATCH_SIZE = 50_000

UNFINISHED_TASK_STATUSES = (
    Task.Status.WAITING,
    Task.Status.QUEUED,
    Task.Status.RUNNING,
    Task.Status.FAILED,
    Task.Status.DROPPED,
)

_JOIN = Action.JOIN.value
PAUSED_REASON = "job paused"
ACTIVE_JOB_STATUSES = (Job.Status.RUNNING, Job.Status.PAUSED)
"""Job statuses in which a finish only moves the DAG forward (a failed or aborted job is settled instead).
A paused job's failed task is requeued too: it simply is not handed out until the job resumes."""


@dataclass(frozen=True, slots=True)
class Ready:
    """A task to hand to a worker, after ``countdown`` seconds (non-zero for a retry after backoff)."""

    task_pk: int
    countdown: float = 0.0
    claimed: Claimed | None = None
    """Set when the finish that handed it out also claimed it for the finishing worker (``claim_next_for``):
    that worker runs it next, so it must not be published."""


OnReady = Callable[[list[Ready]], object]


# --- cluster state per operation (loom-reference.md §3.1, §3.3) --------------------------------------------


def cluster_status_on_success(operation: str) -> str:
    return Cluster.Status.TERMINATED if operation == Operation.DELETE else Cluster.Status.ACTIVE


def cluster_status_on_failure(operation: str) -> str:
    """Create and delete leave an INCOMPLETE cluster (still deletable); any later action INCONSISTENT."""
    if operation in (Operation.CREATE, Operation.DELETE):
        return Cluster.Status.INCOMPLETE
    return Cluster.Status.INCONSISTENT


def retry_delay(attempt: int, *, rng: random.Random | None = None) -> float:
    """Backoff before retry number ``attempt`` (1 = after the first failure): ``LOOM_RETRY_BACKOFF_SECONDS``
    (5 s) doubling up to ``LOOM_RETRY_BACKOFF_CAP_SECONDS`` (5 min), with "equal jitter" (between half and
    all of it) so a burst of failures does not come back in lockstep."""
    return jittered_backoff(
        attempt, base=settings.LOOM_RETRY_BACKOFF_SECONDS, cap=settings.LOOM_RETRY_BACKOFF_CAP_SECONDS, rng=rng
    )


def log_tail(text: str, limit: int = LOG_TAIL_LIMIT) -> str:
    """The last ``limit`` bytes of ``text`` (UTF-8), never cutting a character in half."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[-limit:].decode(errors="ignore")


# --- persist -------------------------------------------------------------------------------------------------


@transaction.atomic
def job_persist_plan(*, job: Job, plan: Plan, nodes_by_key: Mapping[str, Node]) -> list[int]:
    """Store ``plan`` as the job's tasks and edges; returns the pks of the tasks that are ready at once.

    Preconditions: the job has no tasks yet and is not started; ``nodes_by_key`` maps every planner
    ``node_id`` of the plan to a saved Node. Tasks and edges are inserted in batches (array INSERTs on
    PostgreSQL, ``bulk_create`` elsewhere) and edges mapped to task pks by key, so a 170,000-task plan costs
    about two dozen statements, not one per row. A task's counter is its in-degree; tasks at 0 are stored
    queued, and the caller hands them out when it starts the job (``job_start``). Raises Conflict when the
    job already has tasks.
    """
    if job.status != Job.Status.NOT_STARTED or Task.objects.filter(job_id=job.pk).exists():
        raise Conflict(f"job {job.pk} already has a plan")
    tenant_id = Cluster.objects.filter(pk=job.cluster_id).values_list("tenant_id", flat=True).get()
    pending = plan.pending_counts()
    statuses = _initial_statuses(plan, pending)
    node_pks = {key: node.pk for key, node in nodes_by_key.items()}
    missing = {t.node_id for t in plan.tasks if t.node_id is not None and t.node_id not in node_pks}
    if missing:
        raise ValueError(f"no Node for planner node ids {sorted(missing)[:5]}")
    node_of = [None if spec.node_id is None else node_pks[spec.node_id] for spec in plan.tasks]
    if connection.vendor == "postgresql":
        pks = _insert_tasks_postgresql(job=job, tenant_id=tenant_id, plan=plan, node_of=node_of,
                                       pending=pending, statuses=statuses)  # fmt: skip
        _insert_edges_postgresql(job_pk=job.pk, edges=[(pks[a], pks[b]) for a, b in plan.edges])
    else:
        rows = [
            Task(
                tenant_id=tenant_id,
                job_id=job.pk,
                node_id=node_of[spec.key],
                key=spec.key,
                action=spec.action.value,
                service=spec.service,
                label=spec.label,
                stage=spec.stage,
                pending_deps=pending[spec.key],
                status=statuses[spec.key],
                max_attempts=job.max_attempts,
                timeout_seconds=job.task_timeout_seconds,
            )
            for spec in plan.tasks
        ]
        pks = [task.pk for task in Task.objects.bulk_create(rows, batch_size=TASK_BATCH_SIZE)]
        TaskEdge.objects.bulk_create(
            [TaskEdge(job_id=job.pk, predecessor_id=pks[a], successor_id=pks[b]) for a, b in plan.edges],
            batch_size=EDGE_BATCH_SIZE,
        )
    return [pks[key] for key, status in enumerate(statuses) if status == Task.Status.QUEUED]


def _insert_tasks_postgresql(
    *, job: Job, tenant_id: int, plan: Plan, node_of: list[int | None], pending: list[int], statuses: list[str]
) -> list[int]:
    """``INSERT ... SELECT FROM unnest(<one array per column>) RETURNING id, key``, one statement per
    TASK_BATCH_SIZE tasks. Building 170,000 model instances for ``bulk_create`` costs more than the insert
    itself; arrays skip that. Pks are mapped back by key, since RETURNING order is not guaranteed."""
    table = connection.ops.quote_name(Task._meta.db_table)
    sql = (
        f"INSERT INTO {table} (tenant_id, job_id, node_id, key, action, service, label, stage, pending_deps, "
        "status, attempts, max_attempts, timeout_seconds, waiting_reason, worker) "
        "SELECT %s, %s, t.node_id, t.key, t.action, t.service, t.label, t.stage, t.pending_deps, t.status, "
        "0, %s, %s, '', '' FROM unnest(%s::bigint[], %s::integer[], %s::text[], %s::text[], %s::text[], "
        "%s::integer[], %s::integer[], %s::text[]) "
        "AS t(node_id, key, action, service, label, stage, pending_deps, status) RETURNING id, key"
    )
    timeout = job.task_timeout_seconds
    pks = [0] * len(plan.tasks)
    with connection.cursor() as cursor:
        for start in range(0, len(plan.tasks), TASK_BATCH_SIZE):
            chunk = plan.tasks[start : start + TASK_BATCH_SIZE]
            columns = [
                [node_of[t.key] for t in chunk],
                [t.key for t in chunk],
                [t.action.value for t in chunk],
                [t.service for t in chunk],
                [t.label for t in chunk],
                [t.stage for t in chunk],
                [pending[t.key] for t in chunk],
                [str(statuses[t.key]) for t in chunk],
            ]
            cursor.execute(sql, [tenant_id, job.pk, job.max_attempts, timeout, *columns])
            for pk, key in cursor.fetchall():
                pks[key] = pk
    return pks


def _insert_edges_postgresql(*, job_pk: int, edges: list[tuple[int, int]]) -> None:
    table = connection.ops.quote_name(TaskEdge._meta.db_table)
    sql = (
        f"INSERT INTO {table} (job_id, predecessor_id, successor_id) "
        "SELECT %s, e.predecessor_id, e.successor_id FROM unnest(%s::bigint[], %s::bigint[]) "
        "AS e(predecessor_id, successor_id)"
    )
    with connection.cursor() as cursor:
        for start in range(0, len(edges), EDGE_BATCH_SIZE):
            chunk = edges[start : start + EDGE_BATCH_SIZE]
            cursor.execute(sql, [job_pk, [a for a, _ in chunk], [b for _, b in chunk]])


def _initial_statuses(plan: Plan, pending: list[int]) -> list[str]:
    """Queued for tasks without predecessors, waiting for the rest. A JOIN with no predecessor (the planner
    does not emit one, but nothing would ever release it) is stored completed and releases its successors
    here, in memory; keys are topological, so one pass in key order settles cascades."""
    statuses: list[str] = []
    successors: list[list[int]] | None = None
    for spec in plan.tasks:
        if pending[spec.key] == 0 and spec.action is Action.JOIN:
            statuses.append(Task.Status.COMPLETED)
            successors = successors if successors is not None else plan.successors()
            for successor in successors[spec.key]:
                pending[successor] -= 1
        elif pending[spec.key] == 0:
            statuses.append(Task.Status.QUEUED)
        else:
            statuses.append(Task.Status.WAITING)
    return statuses


# --- start / resume ------------------------------------------------------------------------------------------


@transaction.atomic
def job_start(*, job: Job, on_ready: OnReady) -> list[Ready]:
    """Move a not-started or paused job to running and dispatch its queued tasks (on commit).

    Raises Conflict when the job is in neither state. Queued tasks with a backoff keep their countdown. What
    is handed out is limited by the tenant's worker budget (see ``_dispatch``); the rest waits, saying why.
    """
    now = timezone.now()
    was = Job.objects.filter(pk=job.pk).values_list("status", "cluster__tenant_id").first()
    started = transition(
        Job, job.pk, to=Job.Status.RUNNING, extra_updates={"started_at": Coalesce(F("started_at"), Value(now))}
    )
    if not started or was is None:
        raise Conflict(f"job {job.pk} cannot be started from {job.status}")
    status, tenant_id = was
    queued = Task.objects.filter(job_id=job.pk, status=Task.Status.QUEUED)
    queued.filter(waiting_reason=PAUSED_REASON).update(waiting_reason="")
    ready = _dispatch(tenant_id, fresh=list(queued.order_by("key").values_list("pk", flat=True)), now=now)
    if status == Job.Status.NOT_STARTED:
        send_job_event(JobEventData(JobEvent.STARTED, tenant_id, job.cluster_id, job.pk))
    if not Task.objects.filter(job_id=job.pk, status__in=UNFINISHED_TASK_STATUSES).exists():
        # Nothing to run (an empty plan, or a paused job whose last task ended meanwhile): it is done now.
        _settle(_lock_job(job.pk), now=now, may_be_done=True)
    _enqueue(ready, on_ready)
    return ready


@transaction.atomic
def job_pause(*, job: Job) -> None:
    """Stop handing out the job's tasks; running tasks finish, their successors wait queued for a resume
    (``job_start``). Raises Conflict unless the job is running."""
    job = _lock_job(job.pk)
    if not transition(Job, job.pk, to=Job.Status.PAUSED):
        raise Conflict(f"only a running job can be paused; job {job.pk} is {job.status}")
    # Messages already sent find a paused job and claim nothing; the tasks stop counting against the budget.
    Task.objects.filter(job_id=job.pk, status=Task.Status.QUEUED).update(
        dispatched_at=None, waiting_reason="job paused"
    )


@transaction.atomic
def job_abort(*, job: Job, message: str, on_ready: OnReady) -> list[Ready]:
    """End a running or paused job now: unstarted tasks are dropped, running ones end on their own, and the
    cluster takes the operation's failure status once nothing runs (delete it, or retry is not offered:
    an aborted job is final). Raises Conflict for a job that has already ended."""
    now = timezone.now()
    job = _lock_job(job.pk)
    if not transition(Job, job.pk, to=Job.Status.ABORTED, extra_updates={"finished_at": now, "message": message}):
        raise Conflict(f"job {job.pk} has already ended ({job.status})")
    job.status = Job.Status.ABORTED
    transition_many(Task.objects.filter(job_id=job.pk), to=Task.Status.DROPPED)
    tenant_id = Cluster.objects.filter(pk=job.cluster_id).values_list("tenant_id", flat=True).get()
    send_job_event(JobEventData(JobEvent.ABORTED, tenant_id, job.cluster_id, job.pk, message))
    _settle(job, now=now, may_be_done=False)
    ready = _dispatch(tenant_id, fresh=[], now=now)  # the dropped tasks freed budget for other jobs
    _enqueue(ready, on_ready)
    return ready


def _countdown(not_before: object, now: datetime) -> float:
    if not_before is None:
        return 0.0
    return max(0.0, (not_before - now).total_seconds())


# --- claim ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed task: its attempt, and what the runner needs to know to do its work."""

    attempt: TaskAttempt
    action: str
    service: str
    node_id: int | None
    job_id: int
    node: Node | None = None
    """The task's node as read by the claim (PostgreSQL), or None (a join point, or read by the runner)."""


def task_claim(*, task_pk: int, worker: str) -> TaskAttempt | None:
    """Claim a queued task of a running job for ``worker``; None when there is nothing to claim.

    One conditional UPDATE (queued → running, attempts + 1, worker, heartbeat) decides; the TaskAttempt row
    is created in the same transaction. None means a duplicate delivery, a task someone else claimed, or a
    job that is paused or failed meanwhile: the caller just exits.
    """
    claimed = task_claim_for_run(task_pk=task_pk, worker=worker)
    return None if claimed is None else claimed.attempt


def task_claim_for_run(*, task_pk: int, worker: str) -> Claimed | None:
    """``task_claim``, also returning the task's action, service, node and job (on PostgreSQL from the
    claim's own round trip, ``loom_task_claim``), so the runner need not read the task again."""
    now = timezone.now()
    if connection.vendor == "postgresql":
        return _claim_postgresql(task_pk=task_pk, worker=worker, now=now)
    attempt = _claim_orm(task_pk=task_pk, worker=worker, now=now)
    if attempt is None:
        return None
    action, service, node_id, job_id = (
        Task.objects.filter(pk=task_pk).values_list("action", "service", "node_id", "job_id").get()
    )
    return Claimed(attempt, action, service, node_id, job_id)


def _claim_orm(*, task_pk: int, worker: str, now: datetime) -> TaskAttempt | None:
    job_running = Exists(Job.objects.filter(pk=OuterRef("job_id"), status=Job.Status.RUNNING))
    with transaction.atomic():
        claimed = transition(
            Task.objects.filter(job_running),
            task_pk,
            to=Task.Status.RUNNING,
            extra_updates={
                "attempts": F("attempts") + 1,
                "worker": worker,
                "heartbeat_at": now,
                "not_before": None,
                "waiting_reason": "",
            },
        )
        if not claimed:
            return None
        # Numbers run on across a job retry (which resets ``attempts``, the budget of the current run); the
        # claimed row is ours, so no one else inserts an attempt for it meanwhile.
        last = TaskAttempt.objects.filter(task_id=task_pk).aggregate(n=Max("number"))["n"] or 0
        number = last + 1
        return TaskAttempt.objects.create(task_id=task_pk, number=number, worker=worker, started_at=now)


def _claim_postgresql(*, task_pk: int, worker: str, now: datetime) -> Claimed | None:
    """The claim as one call of ``loom_task_claim`` (``clusters/engine/pg_functions.py``): the conditional UPDATE,
    the attempt INSERT and the task's particulars in a single round trip and commit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM loom_task_claim(%s, %s, %s)", [task_pk, worker, now])
        row = cursor.fetchone()
    if row is None:
        return None
    return _claimed(task_pk, *row, worker=worker, now=now)


def _claimed(
    task_pk: int, attempt_pk: int, number: int, action: str, service: str, node_id: int | None, job_id: int,
    *node_row: Any, worker: str, now: datetime
) -> Claimed:  # fmt: skip
    """A Claimed from the columns ``loom_task_claim`` returns (``pg_functions.claim_columns``); the attempt
    row exists, so the instance is marked as loaded from the database."""
    attempt = TaskAttempt(id=attempt_pk, task_id=task_pk, number=number, worker=worker, started_at=now)
    attempt._state.adding = False
    attempt._state.db = connection.alias
    node = node_from_row(node_row) if node_id is not None else None
    return Claimed(attempt, action, service, node_id, job_id, node)


# --- finish --------------------------------------------------------------------------------------------------


class _NeedExclusive(Exception):
    """A finish that took the shared job lock found it needs the exclusive one (the job ended meanwhile)."""


def task_finish(
    *,
    attempt: TaskAttempt,
    outcome: str,
    error_class: str | None = None,
    retryable: bool = False,
    log: str = "",
    on_ready: OnReady,
    claim_next_for: str | None = None,
) -> list[Ready]:
    """Record how ``attempt`` ended and move the job forward; returns the tasks handed out as a result.

    Success: the task completes, its successors' counters drop, those at 0 are queued (JOINs completed and
    cascaded), and the last task completes the job and the cluster. Failure: with ``retryable`` and attempts
    left, the task is queued again with a backoff (returned with its countdown); otherwise the task and the
    job fail, every waiting/queued task of the job is dropped, and once nothing runs any more the cluster
    takes the operation's failure status. What is handed out reaches ``on_ready`` on commit, only while the
    job runs (a paused job's queued tasks are handed out by ``job_start`` on resume), within the tenant's
    worker budget (``_dispatch``).

    ``claim_next_for`` (a worker id): on PostgreSQL a successful finish also claims, in its own transaction,
    the first task it hands out that may run at once, for that worker; it comes back (and reaches ``on_ready``)
    with ``claimed`` set, and the caller must run it (``runner.task_run(claimed=...)``). A chain then costs
    one database round trip per step instead of two.

    Idempotent: a second finish of the same attempt, or the finish of an attempt that no longer owns the task
    (the janitor requeued it), records nothing more on the task and returns []. See the module docstring for
    the two lock modes; a deadlock PostgreSQL breaks (possible only against another tenant job's drop) is
    retried.
    """
    exclusive: bool | None = None
    for tries_left in (3, 2, 1, 0):
        try:
            return _task_finish(attempt=attempt, outcome=outcome, error_class=error_class, retryable=retryable,
                                log=log, on_ready=on_ready, exclusive=exclusive,
                                claim_next_for=claim_next_for)  # fmt: skip
        except _NeedExclusive:
            exclusive = True
        except OperationalError as error:
            if not tries_left or connection.in_atomic_block or not _is_deadlock(error):
                raise
            logger.warning("task finish deadlocked; retrying", extra={"attempt": attempt.pk})
    raise AssertionError("unreachable: the last try returns or raises")


def _is_deadlock(error: OperationalError) -> bool:
    return getattr(error.__cause__, "pgcode", None) == "40P01"


def _task_finish(
    *,
    attempt: TaskAttempt,
    outcome: str,
    error_class: str | None,
    retryable: bool,
    log: str,
    on_ready: OnReady,
    exclusive: bool | None,
    claim_next_for: str | None,
) -> list[Ready]:
    now = timezone.now()
    text = redact(log)
    succeeded = outcome == TaskAttempt.Outcome.SUCCEEDED
    if succeeded and connection.vendor == "postgresql":
        # One statement is its own transaction: no BEGIN/COMMIT round trips (on_commit then fires at once,
        # after it committed; inside a caller's transaction it waits for that one as usual).
        finished = _succeed_postgresql(attempt, log=text, now=now, exclusive=bool(exclusive), on_ready=on_ready,
                                       claim_next_for=claim_next_for)  # fmt: skip
        if finished is not None:
            dispatched, maybe_ended = finished
            if maybe_ended is not None:
                _complete_if_done(maybe_ended, now=now)
            return dispatched
        exclusive = True  # "defer": the job has ended; the ORM path below settles it
    with transaction.atomic():
        task = (
            Task.objects.filter(pk=attempt.task_id)
            .annotate(
                is_sink=~Exists(TaskEdge.objects.filter(predecessor_id=OuterRef("pk"))),
                job_status=F("job__status"),
            )
            .only("pk", "tenant_id", "job_id", "key", "attempts", "max_attempts")
            .get()
        )
        requeue = not succeeded and retryable and task.attempts < task.max_attempts
        if exclusive is None:  # decided on an unlocked read; a job that ended since is caught below
            active = task.job_status in ACTIVE_JOB_STATUSES
            exclusive = not active or (task.is_sink if succeeded else not requeue)
        job = _lock_job(task.job_id, shared=not exclusive)
        if not exclusive and job.status not in ACTIVE_JOB_STATUSES:
            raise _NeedExclusive
        closed = TaskAttempt.objects.filter(pk=attempt.pk, finished_at__isnull=True).update(
            outcome=outcome,
            finished_at=now,
            error_class=error_class or "",
            retryable=retryable,
            log=text,
            log_tail=log_tail(text),
        )
        if not closed:
            return []
        # The attempt still owns the task only if no later attempt exists (the janitor may have requeued it).
        owner = Task.objects.filter(
            ~Exists(TaskAttempt.objects.filter(task_id=OuterRef("pk"), number__gt=attempt.number))
        )
        ready: list[Ready] = []
        if succeeded:
            if not transition(owner, task.pk, to=Task.Status.COMPLETED, extra_updates={"heartbeat_at": None}):
                return []
            ready = [Ready(pk) for pk in _release([task.pk])]
        elif requeue and job.status in ACTIVE_JOB_STATUSES:
            delay = retry_delay(task.attempts)
            requeued = transition(
                owner,
                task.pk,
                to=Task.Status.QUEUED,
                extra_updates={
                    "not_before": now + timedelta(seconds=delay),
                    "worker": "",
                    "heartbeat_at": None,
                    "dispatched_at": None,
                    "waiting_reason": _retry_reason(task, error_class or outcome),
                },
            )
            if not requeued:
                return []
            ready = [Ready(task.pk, delay)]
        else:
            if not exclusive:
                raise _NeedExclusive
            if not transition(owner, task.pk, to=Task.Status.FAILED, extra_updates={"heartbeat_at": None}):
                return []
            reason = error_class or outcome
            _job_fail(job, message=f"task {task.key} failed after {task.attempts} attempt(s): {reason}", now=now)
        if exclusive:
            _settle(job, now=now, may_be_done=succeeded and task.is_sink)
        fresh = [item.task_pk for item in ready] if job.status == Job.Status.RUNNING else []
        dispatched = _dispatch(task.tenant_id, fresh=fresh, now=now)
        _enqueue(dispatched, on_ready)
        logger.debug(
            "task finished",
            extra={"job": job.pk, "task": task.pk, "attempt": attempt.pk, "outcome": outcome, "ready": len(ready)},
        )
        return dispatched


def _succeed_postgresql(
    attempt: TaskAttempt, *, log: str, now: datetime, exclusive: bool, on_ready: OnReady, claim_next_for: str | None
) -> tuple[list[Ready], int | None] | None:
    """A successful finish in one call of ``loom_task_succeed`` (``clusters/engine/pg_functions.py``): one statement,
    so one transaction of its own (or part of the caller's). Returns the tasks handed out and, when this may
    have been the job's last task, the job to check once it has committed (``_complete_if_done``); None when
    the job has ended and the ORM path must settle it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM loom_task_succeed(%s, %s, %s, %s, %s, %s, %s, %s)",
            [attempt.pk, attempt.number, attempt.task_id, now, log, log_tail(log), exclusive, claim_next_for],
        )
        row = cursor.fetchone()
    verdict, job_id, released, dispatched, not_before, done = row[:6]
    next_task, next_claim = row[6], row[7:]  # the claimed task and the rest of loom_task_claim's columns
    if verdict == "need_exclusive":
        raise _NeedExclusive
    if verdict == "defer":
        return None
    if verdict == "stale":
        return [], None
    claimed = None
    if next_task is not None and claim_next_for is not None:
        claimed = _claimed(next_task, *next_claim, worker=claim_next_for, now=now)
    ready = [
        Ready(pk, _countdown(moment, now), claimed if pk == next_task else None)
        for pk, moment in zip(dispatched, not_before, strict=True)
    ]
    _enqueue(ready, on_ready)
    logger.debug("task finished", extra={"job": job_id, "task": attempt.task_id, "attempt": attempt.pk,
                                         "outcome": TaskAttempt.Outcome.SUCCEEDED, "ready": released})  # fmt: skip
    return ready, job_id if done else None


_UNFINISHED_SQL = f'SELECT 1 FROM "{Task._meta.db_table}" WHERE job_id = %s AND status = ANY(%s) LIMIT 1'
_UNFINISHED = [status.value for status in UNFINISHED_TASK_STATUSES]


def _complete_if_done(job_pk: int, *, now: datetime) -> None:
    """Complete the job if nothing of it is unfinished; called after a finish that may have been its last
    has committed (the function path takes the job lock shared even for a task without successors).

    Why after the commit: two last tasks finishing side by side under the shared lock each see the other
    still running. Every finish that queued nothing (only such a finish can be a job's last) checks after
    its own commit, so the one that commits last sees all the others ended. Both may find the job done;
    the exclusive lock and ``_settle``'s conditional transition let one complete it. The first query is
    unlocked and stops at the first unfinished task: most of these checks cost one index probe. It is written
    as SQL: it runs after most finishes, and compiling the ORM query took as long as the finish itself."""
    with connection.cursor() as cursor:
        cursor.execute(_UNFINISHED_SQL, [job_pk, _UNFINISHED])
        if cursor.fetchone() is not None:
            return
    with transaction.atomic():
        _settle(_lock_job(job_pk), now=now, may_be_done=True)


def task_release(*, attempt: TaskAttempt, countdown: float, reason: str, on_ready: OnReady) -> list[Ready]:
    """Give the claim of ``attempt`` back without spending an attempt: the work was found not ready yet.

    For "waiting is not working" (architecture.md §3): a confirm that finds the machine still booting is a
    poll, not a try. The poll's TaskAttempt row is deleted and ``attempts`` decremented, so the retry budget
    counts only real failures; the task is queued again with ``not_before = now + countdown`` and
    ``waiting_reason = reason``, and handed to ``on_ready`` with that countdown on commit while the job runs.
    A paused job's task waits queued for ``job_start``; a failed or aborted job's task is dropped and the
    cluster settled, as a failing finish would. Idempotent like ``task_finish``: an attempt that is already
    closed or no longer owns the task changes nothing and returns [].
    """
    now = timezone.now()
    with transaction.atomic():
        task = Task.objects.only("pk", "tenant_id", "job_id").get(pk=attempt.task_id)
        job = _lock_job(task.job_id)
        owner = Task.objects.filter(
            ~Exists(TaskAttempt.objects.filter(task_id=OuterRef("pk"), number__gt=attempt.number))
        )
        requeued = transition(
            owner,
            task.pk,
            to=Task.Status.QUEUED,
            extra_updates={
                "attempts": F("attempts") - 1,
                "not_before": now + timedelta(seconds=countdown),
                "worker": "",
                "heartbeat_at": None,
                "dispatched_at": None,
                "waiting_reason": reason[:255],
            },
        )
        if not requeued or not TaskAttempt.objects.filter(pk=attempt.pk, finished_at__isnull=True).delete()[0]:
            transaction.set_rollback(True)
            return []
        fresh: list[int] = []
        if job.status == Job.Status.RUNNING:
            fresh = [task.pk]
        elif job.status not in ACTIVE_JOB_STATUSES:
            transition_many(Task.objects.filter(pk=task.pk), to=Task.Status.DROPPED)
            _settle(job, now=now, may_be_done=False)
        ready = _dispatch(task.tenant_id, fresh=fresh, now=now)
        _enqueue(ready, on_ready)
        return ready


def _retry_reason(task: Task, cause: str) -> str:
    return f"retry {task.attempts + 1} of {task.max_attempts} after {cause}"[:255]


def _lock_job(job_pk: int, *, shared: bool = False) -> Job:
    """Lock the job row (not the cluster's) and read what finishing needs, including the tenant.

    ``shared`` takes ``FOR SHARE`` (PostgreSQL; Django's ORM cannot say it), otherwise ``FOR NO KEY UPDATE``
    (which, unlike ``FOR UPDATE``, does not block inserts of rows referencing the job). SQLite has no row
    locks: its transactions take the database's write lock at BEGIN, so finishes run one at a time anyway.
    """
    if shared and connection.vendor == "postgresql":
        job_table = connection.ops.quote_name(Job._meta.db_table)
        cluster_table = connection.ops.quote_name(Cluster._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT j.id, j.status, j.operation, j.cluster_id, c.tenant_id FROM {job_table} j "
                f"JOIN {cluster_table} c ON c.id = j.cluster_id WHERE j.id = %s FOR SHARE OF j",
                [job_pk],
            )
            pk, status, operation, cluster_id, tenant_id = cursor.fetchone()
        job = Job(id=pk, status=status, operation=operation, cluster_id=cluster_id)
        job.tenant_id = tenant_id  # type: ignore[attr-defined]
        return job
    return (
        Job.objects.select_for_update(no_key=True, of=("self",))
        .only("pk", "status", "operation", "cluster_id")
        .annotate(tenant_id=F("cluster__tenant_id"))
        .get(pk=job_pk)
    )


def _enqueue(ready: list[Ready], on_ready: OnReady) -> None:
    if ready:
        transaction.on_commit(partial(on_ready, list(ready)))


def _job_fail(job: Job, *, message: str, now: datetime) -> None:
    """Fail the job (if it is not already) and drop every task that has not started."""
    if transition(Job, job.pk, to=Job.Status.FAILED, extra_updates={"finished_at": now, "message": message}):
        job.status = Job.Status.FAILED
        logger.warning("job failed", extra={"job": job.pk, "cluster": job.cluster_id, "reason": message})
        send_job_event(JobEventData(JobEvent.FAILED, job.tenant_id, job.cluster_id, job.pk, message))
    transition_many(Task.objects.filter(job_id=job.pk), to=Task.Status.DROPPED)


def _settle(job: Job, *, now: datetime, may_be_done: bool) -> None:
    """Complete the job and the cluster after its last task, or give a failed job's cluster its failure
    status once nothing of the job is running. The caller holds the job lock, so exactly one finish sees
    the job's end."""
    if job.status == Job.Status.RUNNING and may_be_done:
        if Task.objects.filter(job_id=job.pk, status__in=UNFINISHED_TASK_STATUSES).exists():
            return
        if transition(Job, job.pk, to=Job.Status.COMPLETED, extra_updates={"finished_at": now}):
            job.status = Job.Status.COMPLETED
            transition(
                Cluster,
                job.cluster_id,
                to=cluster_status_on_success(job.operation),
                extra_updates={"status_message": ""},
            )
            logger.info("job completed", extra={"job": job.pk, "cluster": job.cluster_id})
            send_job_event(JobEventData(JobEvent.SUCCEEDED, job.tenant_id, job.cluster_id, job.pk))
    elif job.status in (Job.Status.FAILED, Job.Status.ABORTED):
        if Task.objects.filter(job_id=job.pk, status=Task.Status.RUNNING).exists():
            return
        status, message = _failure_status(job)
        transition(Cluster, job.cluster_id, to=status, extra_updates={"status_message": message})


def _failure_status(job: Job) -> tuple[str, str]:
    """A create that completed no task at all created nothing to keep: the cluster is TERMINATED, as in the
    original (loom-reference §3.3). Otherwise the operation's failure status."""
    message = Job.objects.filter(pk=job.pk).values_list("message", flat=True).get()
    if (
        job.operation == Operation.CREATE
        and not Task.objects.filter(job_id=job.pk, status=Task.Status.COMPLETED).exclude(action=_JOIN).exists()
    ):
        return Cluster.Status.TERMINATED, "Unable to create nodes, please check your provider settings"
    return cluster_status_on_failure(job.operation), message


def _release(completed: Sequence[int]) -> list[int]:
    """Decrement the successors of ``completed``; queue real tasks reaching 0, complete JOINs reaching 0 and
    release theirs in turn. Returns the pks of the newly queued tasks.

    Only waiting successors move: in a failed job they are dropped and stay so (``job_retry`` recomputes
    their counters from the edges).
    """
    queued: list[int] = []
    frontier = list(completed)
    while frontier:
        rows = _decrement_successors(frontier)
        queued.extend(sorted(pk for pk, _, action, status in rows if status == Task.Status.QUEUED))
        frontier = sorted(pk for pk, _, action, status in rows if action == _JOIN)
    return queued


def _decrement_successors(predecessors: Iterable[int]) -> list[tuple[int, int, str, str]]:
    """``pending_deps -= <edges from predecessors>`` on every successor, and in the same step a waiting
    successor that reaches 0 becomes queued (a JOIN: completed). Returns (pk, pending, action, status) of the
    successors that just moved, after the change.

    PostgreSQL: one statement, which first locks the successors in primary-key order (``l``), so finishes
    running side by side under the shared job lock can never deadlock on them; the moves are the ones
    ``state.py`` allows (waiting → queued, waiting → completed for a JOIN), spelled in SQL for speed.
    Elsewhere: the decrement and the moves as ORM statements (SQLite runs one writer at a time).
    """
    predecessors = list(predecessors)
    if connection.vendor == "postgresql":
        task_table = connection.ops.quote_name(Task._meta.db_table)
        edge_table = connection.ops.quote_name(TaskEdge._meta.db_table)
        sql = (  # only table names are interpolated
            f"WITH e AS (SELECT successor_id, COUNT(*) AS n FROM {edge_table} "
            f"WHERE predecessor_id = ANY(%s) GROUP BY successor_id), "
            f"l AS MATERIALIZED (SELECT t.id FROM {task_table} t WHERE t.id IN (SELECT successor_id FROM e) "
            f"ORDER BY t.id FOR NO KEY UPDATE) "
            f"UPDATE {task_table} AS t SET pending_deps = t.pending_deps - e.n, "
            f"status = CASE WHEN t.pending_deps - e.n = 0 AND t.status = %s "
            f"THEN (CASE WHEN t.action = %s THEN %s ELSE %s END) ELSE t.status END "
            f"FROM e WHERE t.id = e.successor_id AND t.id IN (SELECT id FROM l) "
            f"RETURNING t.id, t.pending_deps, t.action, t.status"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [predecessors, Task.Status.WAITING, _JOIN, Task.Status.COMPLETED, Task.Status.QUEUED])
            rows = cursor.fetchall()
        return [(pk, pending, action, status) for pk, pending, action, status in rows
                if pending == 0 and status in (Task.Status.QUEUED, Task.Status.COMPLETED)]  # fmt: skip
    edges = TaskEdge.objects.filter(predecessor_id__in=predecessors)
    count = edges.filter(successor_id=OuterRef("pk")).order_by().values("successor_id").annotate(n=Count("pk"))
    successors = Task.objects.filter(pk__in=edges.values("successor_id"))
    successors.update(pending_deps=F("pending_deps") - Subquery(count.values("n")))
    released = list(successors.filter(pending_deps=0, status=Task.Status.WAITING).values_list("pk", "action"))
    real = [pk for pk, action in released if action != _JOIN]
    joins = [pk for pk, action in released if action == _JOIN]
    transition_many(Task.objects.filter(pk__in=real), to=Task.Status.QUEUED)
    transition_many(Task.objects.filter(pk__in=joins), to=Task.Status.COMPLETED)
    return [(pk, 0, _JOIN, Task.Status.COMPLETED) for pk in joins] + [(pk, 0, "", Task.Status.QUEUED) for pk in real]


# --- retry ---------------------------------------------------------------------------------------------------


@transaction.atomic
def job_retry(*, job: Job, on_ready: OnReady) -> list[Ready]:
    """Re-run a failed job's failed and dropped tasks; completed tasks are not run again.

    Preconditions: the job failed, it is the cluster's latest job, and the cluster has settled into a
    failure state (no task of the job still running). Each re-run task gets its attempts back and a counter
    recomputed from its edges whose predecessor has not completed; job → running, cluster → pending.
    Raises Conflict otherwise. The tasks ready at once reach ``on_ready`` on commit.
    """
    now = timezone.now()
    job = _lock_job(job.pk)
    if job.status not in (Job.Status.FAILED, Job.Status.ABORTED):
        raise Conflict(f"only a failed or aborted job can be retried; job {job.pk} is {job.status}")
    if Job.objects.filter(cluster_id=job.cluster_id, pk__gt=job.pk).exists():
        raise Conflict(f"job {job.pk} is not the cluster's latest job")
    if not transition(Cluster, job.cluster_id, to=Cluster.Status.PENDING, extra_updates={"status_message": ""}):
        raise Conflict("the cluster is still busy or terminated; a job can be retried once its tasks have ended")
    transition(Job, job.pk, to=Job.Status.RUNNING, extra_updates={"finished_at": None, "message": ""})
    unfinished_predecessors = (
        TaskEdge.objects.filter(successor_id=OuterRef("pk"))
        .exclude(Exists(Task.objects.filter(pk=OuterRef("predecessor_id"), status=Task.Status.COMPLETED)))
        .order_by()
        .values("successor_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    rerun = Task.objects.filter(job_id=job.pk, status__in=(Task.Status.FAILED, Task.Status.DROPPED))
    rerun.update(pending_deps=Coalesce(Subquery(unfinished_predecessors), Value(0)))
    transition_many(
        rerun,
        to=Task.Status.WAITING,
        extra_updates={"attempts": 0, "worker": "", "not_before": None, "dispatched_at": None, "waiting_reason": ""},
    )
    free = Task.objects.filter(job_id=job.pk, status=Task.Status.WAITING, pending_deps=0)
    joins = list(free.filter(action=_JOIN).values_list("pk", flat=True))
    real = list(free.exclude(action=_JOIN).order_by("key").values_list("pk", flat=True))
    if real:
        transition_many(Task.objects.filter(pk__in=real), to=Task.Status.QUEUED)
    if joins:
        transition_many(Task.objects.filter(pk__in=joins), to=Task.Status.COMPLETED)
    ready = _dispatch(job.tenant_id, fresh=[*real, *_release(joins)], now=now)
    logger.info("job retried", extra={"job": job.pk, "cluster": job.cluster_id, "ready": len(ready)})
    send_job_event(JobEventData(JobEvent.STARTED, job.tenant_id, job.cluster_id, job.pk, "retry"))
    _enqueue(ready, on_ready)
    return ready


# --- dispatch within the tenant's worker budget (architecture.md §3, fair share) ------------------------------


def _dispatch(tenant_id: int, *, fresh: Sequence[int], now: datetime, scan: bool = False) -> list[Ready]:
    """Decide which queued tasks go to the broker now; returns them, with their backoff countdowns.

    A tenant's ``workers`` budget caps its tasks in flight (running, or queued and already sent). With a
    budget, the tenant row is locked so two finishes cannot both fill the last slot; the oldest-ready tasks
    of the tenant's running jobs (``fresh`` ones included) go first, and the ones left behind record
    ``tenant budget N/N busy``. Any finish of the tenant's tasks calls this again, so nothing waits forever:
    a slot is either free (and filled here) or held by a task whose end dispatches again. A budget of 0
    means unlimited: ``fresh`` is sent as is, without the lock (``scan`` also sends every other queued task
    not sent yet, for the janitor).

    Why here and not in the broker: one tenant's 1,000-task job would otherwise fill the queue ahead of
    another tenant's 3 tasks. Capping what each tenant has in the broker keeps another tenant's small job
    at most ``budget`` tasks behind.
    """
    tasks = Task.objects.filter(tenant_id=tenant_id)
    budget = tenant_budget(tenant_id)
    job_running = Exists(Job.objects.filter(pk=OuterRef("job_id"), status=Job.Status.RUNNING))
    waiting = tasks.filter(job_running, status=Task.Status.QUEUED, dispatched_at__isnull=True)
    if budget == 0:
        if not fresh and not scan:
            return []
        if not scan and connection.vendor == "postgresql":
            return _mark_dispatched_postgresql(fresh, now)
        chosen = waiting if scan else tasks.filter(pk__in=fresh, status=Task.Status.QUEUED)
        rows = list(chosen.order_by("job_id", "key").values_list("pk", "not_before"))
        tasks.filter(pk__in=[pk for pk, _ in rows]).update(dispatched_at=now)
        return [Ready(pk, _countdown(nb, now)) for pk, nb in rows]
    if connection.vendor == "postgresql":  # the same steps as below, in one call (clusters/engine/pg_functions.py)
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM loom_dispatch(%s, %s, %s, %s)", [tenant_id, budget, now, bool(fresh)])
            return [Ready(pk, _countdown(moment, now)) for pk, moment in cursor.fetchall()]
    if not fresh and not waiting.exists():
        return []  # nothing waits for a slot: no need to take the tenant lock
    Tenant.objects.select_for_update(no_key=True).filter(pk=tenant_id).values_list("pk", flat=True).get()
    in_flight = tasks.filter(
        Q(status=Task.Status.RUNNING) | Q(status=Task.Status.QUEUED, dispatched_at__isnull=False)
    ).count()
    free = max(0, budget - in_flight)
    rows = list(
        waiting.order_by(F("not_before").asc(nulls_first=True), "job_id", "key").values_list("pk", "not_before")[
            :free
        ]
    ) if free else []  # fmt: skip
    if rows:
        tasks.filter(pk__in=[pk for pk, _ in rows]).update(dispatched_at=now)
    if free <= len(rows):
        reason = f"tenant budget {budget}/{budget} busy"
        waiting.exclude(pk__in=[pk for pk, _ in rows]).exclude(waiting_reason=reason).update(waiting_reason=reason)
    return [Ready(pk, _countdown(nb, now)) for pk, nb in rows]


_budgets: dict[int, tuple[int, float]] = {}


def tenant_budget(tenant_id: int) -> int:
    """The tenant's worker budget (0 = unlimited), cached for ``LOOM_BUDGET_CACHE_SECONDS`` per process: it
    is read on every finish and changes rarely; a change is seen within that time (and by the janitor)."""
    ttl = settings.LOOM_BUDGET_CACHE_SECONDS
    cached = _budgets.get(tenant_id)
    if ttl and cached is not None and cached[1] > time.monotonic():
        return cached[0]
    budget = Tenant.objects.filter(pk=tenant_id).values_list("workers", flat=True).first() or 0
    _budgets[tenant_id] = (budget, time.monotonic() + ttl)
    return budget


def _mark_dispatched_postgresql(fresh: Sequence[int], now: datetime) -> list[Ready]:
    """Unlimited budget: stamp ``dispatched_at`` on the still-queued ``fresh`` tasks in one statement."""
    task_table = connection.ops.quote_name(Task._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {task_table} SET dispatched_at = %s WHERE id = ANY(%s) AND status = %s RETURNING id, not_before",
            [now, list(fresh), Task.Status.QUEUED],
        )
        rows = dict(cursor.fetchall())
    return [Ready(pk, _countdown(rows[pk], now)) for pk in fresh if pk in rows]


def tenant_dispatch(*, tenant_id: int, on_ready: OnReady) -> list[Ready]:
    """Dispatch whatever the tenant's budget allows now (the janitor's safety net, or after a budget
    change); the normal path dispatches from ``job_start``, ``task_finish`` and ``task_release``."""
    with transaction.atomic():
        ready = _dispatch(tenant_id, fresh=[], now=timezone.now(), scan=True)
        _enqueue(ready, on_ready)
    return ready
