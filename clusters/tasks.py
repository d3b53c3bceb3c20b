"""Celery tasks of the engine: thin, ids only (house-style item 19).

The broker carries "run task N" and nothing else; the database decides whether N may run (the claim), so a
duplicate delivery is a no-op. Workers use the thread pool (I/O-bound work), so the worker id names the
host and the thread.
"""

from __future__ import annotations

import threading

from celery import shared_task

from .engine import Claimed, Ready


def enqueue(ready: list[Ready]) -> None:
    """Hand ready tasks to the broker. Only ever called through ``transaction.on_commit`` (the engine's
    ``on_ready`` callback), so a worker never receives a task whose row is not committed. A task the finish
    claimed for its own worker (``Ready.claimed``) is that worker's to run, never published."""
    for item in ready:
        if item.claimed is None:
            task_run_task.apply_async((item.task_pk,), countdown=item.countdown or None)


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


@shared_task(bind=True, ignore_result=True, acks_late=True)
def task_run_task(self: object, task_pk: int) -> None:
    from .runner import task_run

    hostname = getattr(getattr(self, "request", None), "hostname", None) or "local"
    worker = f"{hostname}/{threading.current_thread().name}"
    next_pk: int | None = task_pk
    claimed: Claimed | None = None
    step = 0
    while next_pk is not None:
        keep = step < MAX_CONTINUATIONS
        continuation = _Continuation(keep=keep)
        task_run(task_pk=next_pk, worker=worker, on_ready=continuation, claimed=claimed, claim_next=keep)
        next_pk, claimed, step = continuation.kept, continuation.claimed, step + 1


@shared_task(ignore_result=True)
def engine_janitor() -> dict[str, int]:
    """Beat entry point of ``clusters.janitor.janitor_run``; returns counts for the worker log."""
    from .janitor import janitor_run

    report = janitor_run(on_ready=enqueue)
    return {name: value if isinstance(value, int) else len(value) for name, value in vars(report).items()}


@shared_task(ignore_result=True)
def lease_janitor() -> dict[str, int]:
    """Beat entry point of ``clusters.leases.lease_janitor_run``: lease warnings and expired-cluster deletes."""
    from .leases import lease_janitor_run

    report = lease_janitor_run()
    return {name: len(pks) for name, pks in vars(report).items()}


@shared_task(ignore_result=True)
def provider_reaper() -> dict[str, int]:
    """Beat entry point of ``clusters.reaper.reaper_run``; returns counts for the worker log."""
    from .reaper import reaper_run

    reports = reaper_run()
    return {
        "providers": len(reports),
        "orphans": sum(len(r.orphans) for r in reports),
        "deleted": sum(len(r.deleted) for r in reports),
    }


@shared_task(ignore_result=True, acks_late=True)
def webhook_delivery_send_task(delivery_pk: int) -> None:
    """One try of a webhook delivery; a duplicate message finds it claimed or not due and does nothing."""
    from .webhooks import webhook_delivery_send

    webhook_delivery_send(delivery_pk=delivery_pk)


@shared_task(ignore_result=True)
def webhook_deliveries_resend_due_task() -> int:
    """Beat entry point of ``clusters.webhooks.webhook_deliveries_resend_due``; returns how many were queued."""
    from .webhooks import webhook_deliveries_resend_due

    return len(webhook_deliveries_resend_due())
