"""Handing ready tasks to workers: this worker's idle threads first, the broker for the rest.

The two Celery tasks that run engine tasks live here (thin, ids only: house-style item 19); their names stay
``clusters.tasks.*`` so messages already queued by an older release are still understood.

The broker carries "run task N" or "run tasks N, M, ..." and nothing else; the database decides whether a
task may run (the claim), so a duplicate delivery is a no-op. Workers use the thread pool (I/O-bound work),
so the worker id names the host and the thread. What a worker's own finishes make ready runs on that
worker's idle threads without the broker (``local_dispatch``).
"""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from celery.signals import worker_init, worker_ready, worker_shutting_down
from django.conf import settings
from django.db import connection
from kombu.exceptions import OperationalError

from clusters.engine.broker_watch import hand_back, reconnect_step, worker_restarted
from clusters.engine.core import Claimed, Ready
from clusters.engine.local_dispatch import attach_to_worker, detach_from_worker, local
from clusters.engine.runner import task_run

logger = logging.getLogger(__name__)

worker_ready.connect(attach_to_worker, dispatch_uid="clusters.engine.local_dispatch.attach")
worker_shutting_down.connect(detach_from_worker, dispatch_uid="clusters.engine.local_dispatch.detach")


@worker_ready.connect(dispatch_uid="clusters.engine.broker_watch.worker_restarted")
def _take_back_after_restart(sender: object = None, **kwargs: object) -> None:
    """A worker that starts takes back what its previous life left (``broker_watch.worker_restarted``)."""
    hostname = str(getattr(sender, "hostname", "") or "")
    if not hostname:
        return
    broker_url = str(getattr(getattr(sender, "app", None), "conf", {}).get("broker_url") or "")
    try:
        worker_restarted(hostname=hostname, on_ready=enqueue, filesystem_broker=broker_url.startswith("filesystem"))
    except Exception:  # the janitor takes the same tasks back later; a worker must start regardless
        logger.exception("taking back a restarted worker's tasks failed")
    finally:
        connection.close()


@worker_init.connect(dispatch_uid="clusters.engine.broker_watch.reconnect")
def _add_reconnect_step(sender: object = None, **kwargs: object) -> None:
    """Before the worker builds its consumer: check the broker each time the consumer reconnects."""
    sender.app.steps["consumer"].add(reconnect_step(enqueue))  # type: ignore[attr-defined]


def enqueue(ready: list[Ready]) -> None:
    """Hand ready tasks to this worker's idle threads (``local_dispatch``), the rest to the broker: those ready
    at once in batches (``publish``), those with a countdown one by one. Only ever called through
    ``transaction.on_commit`` (the engine's ``on_ready`` callback), so a worker never receives a task whose
    row is not committed. A task the finish claimed for its own worker (``Ready.claimed``) is that worker's to
    run, never published."""
    unclaimed = [item for item in ready if item.claimed is None]
    _hand_out([item.task_pk for item in unclaimed if not item.countdown])
    for item in unclaimed:
        if item.countdown:
            _send([item.task_pk], task_run_task, (item.task_pk,), countdown=item.countdown)


def _hand_out(task_pks: list[int]) -> None:
    """Tasks that may run at once: to this worker's idle threads, what they cannot take to the broker."""
    spilled = set(local.spill(task_pks, run=_run_spilled))
    publish([task_pk for task_pk in task_pks if task_pk not in spilled])


def publish(task_pks: list[int]) -> None:
    """Send tasks that may run at once to the broker, ``LOOM_DISPATCH_BATCH`` to a message.

    A job's start readies every node's create at once, and the web process that starts it has no worker
    threads to spill into: a message per task would cost the receiving worker's one consumer thread a
    millisecond or two of Python each, with the machines waiting in line. One message per batch is received
    once; the thread that gets it runs the first task and spills the others to its idle threads, and what
    they cannot take goes on, batched again, to the next worker with a free thread (``task_run_batch_task``).
    The size bounds a message, and how many tasks one worker's queue may hold back while it hands them on."""
    size = max(1, settings.LOOM_DISPATCH_BATCH)
    for start in range(0, len(task_pks), size):
        batch = task_pks[start : start + size]
        if len(batch) == 1:
            _send(batch, task_run_task, (batch[0],))
        else:
            _send(batch, task_run_batch_task, (batch,))


def _send(task_pks: list[int], celery_task: object, args: tuple[object, ...], **options: object) -> None:
    """Publish one message; when the broker cannot take it (down, restarting, unreachable: Celery's own
    publish retries are spent), the tasks are handed back to the database to be sent again as soon as the
    broker is back (``broker_watch``), not a redispatch interval later, and the caller (a finish, or the
    web request that started a job, all committed already) goes on instead of failing."""
    try:
        celery_task.apply_async(args, **options)  # type: ignore[attr-defined]
    except OperationalError as error:
        hand_back(task_pks, error)


MAX_CONTINUATIONS = 50
"""Ready tasks a worker thread may run itself, one after another, before it goes back to the broker."""


class _Continuation:
    """An ``on_ready`` that keeps the first task ready at once (no countdown) for the calling thread and
    publishes the rest. Running a chain's next task in the thread that finished its predecessor saves a
    broker round trip per step (publish, deliver, a new Celery task), which on a long chain is most of the
    time between two tasks.

    On PostgreSQL the finish itself claims that task for this worker (``Ready.claimed``, one round trip
    instead of a claim of its own); elsewhere, or when the finish claimed nothing, the first ready task is
    kept unclaimed and claimed when it runs. Either way it is dispatched in the database like any other, so
    should this worker die before running it, the janitor takes it back (a claimed one once its heartbeat
    stops, an unclaimed one by its lost-message pass)."""

    def __init__(self, *, keep: bool) -> None:
        self.keep = keep
        self.kept: int | None = None
        self.claimed: Claimed | None = None

    def __call__(self, ready: list[Ready]) -> None:
        rest = list(ready)
        self.claimed = next((item.claimed for item in rest if item.claimed is not None), None)
        if self.claimed is not None:  # enqueue leaves it out
            self.kept = self.claimed.attempt.task_id
        elif self.keep and self.kept is None:
            first = next((index for index, item in enumerate(rest) if not item.countdown), None)
            if first is not None:
                self.kept = rest.pop(first).task_pk
        enqueue(rest)


@shared_task(name="clusters.tasks.task_run_task", bind=True, ignore_result=True, acks_late=True)
def task_run_task(self: object, task_pk: int) -> None:
    with local.busy():
        run_chain(task_pk, worker=_worker_name(self))


@shared_task(name="clusters.tasks.task_run_batch_task", bind=True, ignore_result=True, acks_late=True)
def task_run_batch_task(self: object, task_pks: list[int]) -> None:
    """Several tasks ready at once (``publish``): this thread runs the first; the others go to this worker's
    idle threads, and what finds none goes back to the broker, batched again, for other workers. A worker
    with no thread free takes no message (``local_dispatch`` keeps its prefetch count in step), so a batch
    only ever lands where at least its first task runs at once. Acknowledged once this thread is done
    (``acks_late``): should the worker die first, the batch is delivered again and tasks already claimed
    are skipped by their claims."""
    with local.busy():  # this thread is taken (by the first task) before it counts the idle ones
        _hand_out(list(task_pks[1:]))
        run_chain(task_pks[0], worker=_worker_name(self))


def _worker_name(task: object) -> str:
    return _worker_id(getattr(getattr(task, "request", None), "hostname", None) or "local")


def _worker_id(hostname: str) -> str:
    """``host/thread``: the attempt's worker id, which the heartbeat and the janitor go by."""
    return f"{hostname}/{threading.current_thread().name}"


def _run_spilled(task_pk: int) -> None:
    """What an idle thread of this worker runs for a task spilled to it (``local_dispatch``)."""
    run_chain(task_pk, worker=_worker_id(local.hostname))


def run_chain(task_pk: int, *, worker: str) -> None:
    """Run task ``task_pk``, then the ready tasks its finishes keep for this thread (``_Continuation``)."""
    next_pk: int | None = task_pk
    claimed: Claimed | None = None
    step = 0
    while next_pk is not None:
        keep = step < MAX_CONTINUATIONS
        continuation = _Continuation(keep=keep)
        task_run(task_pk=next_pk, worker=worker, on_ready=continuation, claimed=claimed, claim_next=keep)
        next_pk, claimed, step = continuation.kept, continuation.claimed, step + 1
