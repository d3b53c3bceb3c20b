"""The engine janitor, run by beat every ``LOOM_JANITOR_SECONDS``: it recovers what a dead worker or a lost
message left behind, so no job waits forever (architecture.md §3, "Timeouts and lost workers").

1. **Lost workers.** A running task whose heartbeat is older than ``LOOM_HEARTBEAT_TIMEOUT``: its attempt
   ends as ``lost`` and the task is retried (it counts as an attempt: a task that kills its worker every
   time must not loop forever) or, with no attempts left, fails the job.
2. **Timeouts.** A running attempt older than its task's ``timeout_seconds`` ends as ``timed_out`` the same
   way. The thread running it cannot be killed; when it returns, its finish finds the attempt closed and
   changes nothing (``task_finish`` is idempotent per attempt), and creates/deletes are idempotent anyway.
3. **Lost messages.** A task sent to the broker but not claimed within ``LOOM_REDISPATCH_SECONDS`` of when
   it was due (a message lost with a killed worker; Redis would hand an unacknowledged one back only after
   its visibility timeout, an hour by default) is sent again. A duplicate is harmless: the claim decides.
   A broker that lost every message at once (killed and back empty) is told apart by its marker
   (``broker_watch``) and everything it held is sent again at once, without that wait.
4. **Budgets.** Tenants with queued tasks not sent yet get a dispatch, in case nothing else would trigger
   one (a budget raised by an admin, say).
5. **Idempotency records** older than ``LOOM_IDEMPOTENCY_TTL_SECONDS`` are deleted: a client retries a
   create within minutes, not days, and the table would otherwise only grow.

Everything goes through the engine's own finish and dispatch functions, so the janitor adds no new way for
a task to change state.

A worker that starts does part of this at once for itself (``broker_watch.worker_restarted``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from clusters.engine.broker_watch import broker_recover, dispatch_unsent
from clusters.engine.core import OnReady, Ready, task_finish
from clusters.engine.dispatch import enqueue
from clusters.models import IdempotencyRecord, Job, Task, TaskAttempt

logger = logging.getLogger(__name__)


@dataclass
class JanitorReport:
    lost: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    redispatched: list[int] = field(default_factory=list)
    broker_lost: list[int] = field(default_factory=list)
    dispatched: list[int] = field(default_factory=list)
    idempotency_records_deleted: int = 0


def janitor_run(*, on_ready: OnReady, now: datetime | None = None) -> JanitorReport:
    """One janitor pass; returns the task pks it acted on, by kind."""
    now = now or timezone.now()
    report = JanitorReport()
    _recover_running(report, now=now, on_ready=on_ready)
    try:
        report.broker_lost = broker_recover(on_ready=on_ready, now=now)
    except OperationalError as error:  # the broker is down: what can be done in the database still is
        logger.warning("janitor cannot reach the broker", extra={"error": f"{type(error).__name__}: {error}"})
    _redispatch(report, now=now, on_ready=on_ready)
    report.dispatched = dispatch_unsent(on_ready=on_ready)
    expired = now - timedelta(seconds=settings.LOOM_IDEMPOTENCY_TTL_SECONDS)
    report.idempotency_records_deleted = IdempotencyRecord.objects.filter(created_at__lt=expired).delete()[0]
    if report.lost or report.timed_out or report.redispatched or report.broker_lost:
        logger.warning(
            "janitor recovered tasks",
            extra={
                "lost": report.lost,
                "timed_out": report.timed_out,
                "redispatched": report.redispatched,
                "broker_lost": report.broker_lost,
            },
        )
    return report


def _recover_running(report: JanitorReport, *, now: datetime, on_ready: OnReady) -> None:
    stale_before = now - timedelta(seconds=settings.LOOM_HEARTBEAT_TIMEOUT)
    running = Task.objects.filter(status=Task.Status.RUNNING).values_list(
        "pk", "heartbeat_at", "timeout_seconds", "worker"
    )
    for task_pk, heartbeat_at, timeout_seconds, worker in running:
        attempt = TaskAttempt.objects.filter(task_id=task_pk, finished_at__isnull=True).order_by("-number").first()
        if attempt is None:
            continue  # claimed a moment ago; the attempt row is being written in the claim's transaction
        if heartbeat_at is None or heartbeat_at < stale_before:
            outcome, error_class, kind = TaskAttempt.Outcome.LOST, "WorkerLost", report.lost
            timeout = settings.LOOM_HEARTBEAT_TIMEOUT
            log = f"no heartbeat from worker {worker} since {heartbeat_at} (timeout {timeout} s)\n"
        elif attempt.started_at + timedelta(seconds=timeout_seconds) < now:
            outcome, error_class, kind = TaskAttempt.Outcome.TIMED_OUT, "TaskTimeout", report.timed_out
            log = f"still running after {timeout_seconds} s on worker {worker}\n"
        else:
            continue
        task_finish(
            attempt=attempt, outcome=outcome, error_class=error_class, retryable=True, log=log, on_ready=on_ready
        )
        kind.append(task_pk)


def _redispatch(report: JanitorReport, *, now: datetime, on_ready: OnReady) -> None:
    overdue = now - timedelta(seconds=settings.LOOM_REDISPATCH_SECONDS)
    lost = Task.objects.filter(
        Exists(Job.objects.filter(pk=OuterRef("job_id"), status=Job.Status.RUNNING)),
        Q(not_before__isnull=True) | Q(not_before__lt=overdue),
        status=Task.Status.QUEUED,
        dispatched_at__lt=overdue,
    )
    pks = list(lost.order_by("pk").values_list("pk", flat=True)[:1000])
    if not pks:
        return
    # Conditional on the same facts, so a task claimed since the SELECT is not sent again.
    lost.filter(pk__in=pks).update(dispatched_at=now)
    report.redispatched.extend(pks)
    on_ready([Ready(pk) for pk in pks])


@shared_task(name="clusters.tasks.engine_janitor", ignore_result=True)
def engine_janitor() -> dict[str, int]:
    """Beat entry point of ``janitor_run``; returns counts for the worker log."""
    report = janitor_run(on_ready=enqueue)
    return {name: value if isinstance(value, int) else len(value) for name, value in vars(report).items()}
