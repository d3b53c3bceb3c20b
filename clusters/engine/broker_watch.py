"""Telling a lost broker from a slow task: the broker marker, and what is sent again when the broker lost its
messages or could not be reached.

The database says which tasks were sent (``dispatched_at``) but not whether the broker still holds their
messages. One lost message is found by the janitor's lost-message pass once it is ``LOOM_REDISPATCH_SECONDS``
overdue: a long wait is right there, since a task not claimed yet may only be stuck behind slow ones. A broker
that was killed and came back empty has lost every message at once, and waiting that long would stall every
job in the installation for five minutes.

So the broker carries a marker: one persistent message in a queue of its own that no worker consumes,
declared like Celery's own queues (durable, persistent delivery). Whatever keeps or loses Celery's messages
keeps or loses the marker with them: a restart with the data kept (RabbitMQ's durable queues, Redis with
persistence) keeps both; a restart that loses them (Redis without persistence, a new RabbitMQ node, a wiped
broker folder) loses both. Checking it costs one queue declare. When it is gone (``broker_recover``) a new
marker is placed first, then every task sent before that moment and not claimed yet is sent again, with its
remaining backoff: a duplicate of a message that did survive is harmless, since the claim decides.

Who checks: the janitor on every pass (``LOOM_JANITOR_SECONDS``), and every worker as soon as its consumer
has reconnected after losing the broker (``reconnect_step``), which is what brings jobs back within
seconds of the broker's return instead of at the next janitor pass. Tasks whose publish failed while the
broker was unreachable are handed back to the database (``dispatched_at`` cleared, ``hand_back``), and the
same two callers send them again (``dispatch_unsent``), so a broker outage never costs a whole redispatch
interval either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import bootsteps, current_app
from django.db import connection
from django.db.models import Exists, OuterRef
from django.utils import timezone
from kombu import Exchange, Queue

from clusters.engine.core import OnReady, Ready, task_finish, tenant_dispatch
from clusters.models import Job, Task, TaskAttempt

logger = logging.getLogger(__name__)

MARKER_NAME = "loom.broker-marker"
MARKER = Queue(MARKER_NAME, Exchange(MARKER_NAME, type="direct", durable=True), routing_key=MARKER_NAME, durable=True)


def marker_check() -> bool:
    """Whether the broker still holds its marker; a missing one is placed again before this returns False.

    Raises the transport's connection error when the broker cannot be reached: nothing can be said then,
    and nothing should be sent."""
    with current_app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1)
        with broker.channel() as channel:
            _, count, _ = MARKER(channel).queue_declare()
            if count:
                return True
            producer = broker.Producer(channel)
            producer.publish(
                {"placed_at": timezone.now().isoformat()},
                exchange=MARKER.exchange,
                routing_key=MARKER_NAME,
                declare=[MARKER],
                delivery_mode=2,
                retry=False,
            )
    return False


def broker_recover(*, on_ready: OnReady, now: datetime | None = None) -> list[int]:
    """If the broker lost its messages, send again every task it held; returns their pks (none otherwise).

    The check comes first and stamps the moment: a task sent after the new marker went in was sent to the
    broker as it is now and is left alone."""
    if marker_check():
        return []
    placed_at = now or timezone.now()
    pks = _send_again(_sent_not_claimed().filter(dispatched_at__lt=placed_at), now=placed_at, on_ready=on_ready)
    if pks:
        logger.warning("broker lost its messages: tasks sent again", extra={"tasks": len(pks)})
    else:
        logger.info("broker marker placed", extra={"marker": MARKER_NAME})
    return pks


def _sent_not_claimed() -> Any:
    """Queued tasks of running jobs that were sent to the broker (and not claimed since)."""
    return Task.objects.filter(
        Exists(Job.objects.filter(pk=OuterRef("job_id"), status=Job.Status.RUNNING)),
        status=Task.Status.QUEUED,
        dispatched_at__isnull=False,
    )


def _send_again(tasks: Any, *, now: datetime, on_ready: OnReady) -> list[int]:
    """Send ``tasks`` again, each with what is left of its backoff; returns their pks."""
    rows = list(tasks.order_by("pk").values_list("pk", "not_before"))
    pks = [pk for pk, _ in rows]
    if pks:
        # Conditional on the same facts, so a task claimed since the SELECT is not sent again.
        tasks.filter(pk__in=pks).update(dispatched_at=now)
        on_ready([Ready(pk, countdown_until(not_before, now)) for pk, not_before in rows])
    return pks


def dispatch_unsent(*, on_ready: OnReady) -> list[int]:
    """Dispatch the queued tasks of running jobs that were never sent (a budget that was full, a publish that
    failed and was handed back); returns their pks."""
    tenants = (
        Task.objects.filter(
            Exists(Job.objects.filter(pk=OuterRef("job_id"), status=Job.Status.RUNNING)),
            status=Task.Status.QUEUED,
            dispatched_at__isnull=True,
        )
        .values_list("tenant_id", flat=True)
        .distinct()
    )
    sent: list[int] = []
    for tenant_id in list(tenants):
        sent.extend(ready.task_pk for ready in tenant_dispatch(tenant_id=tenant_id, on_ready=on_ready))
    return sent


def hand_back(task_pks: Sequence[int], error: Exception) -> None:
    """Publishing these tasks failed: mark them not sent, so the next ``dispatch_unsent`` (the janitor's, or a
    worker's on reconnect) sends them instead of the lost-message pass, minutes later. Only tasks still
    queued: one claimed meanwhile (a duplicate that did arrive) is running and stays so."""
    if not task_pks:
        return
    Task.objects.filter(pk__in=list(task_pks), status=Task.Status.QUEUED).update(dispatched_at=None)
    logger.warning(
        "broker unreachable: tasks handed back for the next dispatch",
        extra={"tasks": len(task_pks), "error": f"{type(error).__name__}: {error}"},
    )


def countdown_until(not_before: datetime | None, now: datetime) -> float:
    """Seconds from ``now`` until a task's backoff ends (0 when it has none or it is over)."""
    return 0.0 if not_before is None else max(0.0, (not_before - now).total_seconds())


def recover_after_reconnect(on_ready: OnReady) -> None:
    """What a worker does once its consumer is connected again: the marker check and the unsent tasks. Its
    own thread and database connection; a failure is logged, since the janitor's next pass tries again."""
    try:
        resent = broker_recover(on_ready=on_ready)
        unsent = dispatch_unsent(on_ready=on_ready)
        logger.info("broker reconnected", extra={"resent": len(resent), "unsent_dispatched": len(unsent)})
    except Exception:
        logger.exception("recovery after the broker reconnected failed; the janitor will try again")
    finally:
        connection.close()


def reconnect_step(on_ready: OnReady) -> type[bootsteps.StartStopStep]:
    """A consumer step that runs ``recover_after_reconnect`` with ``on_ready`` each time the consumer has
    reconnected. Celery starts the consumer's steps again after every reconnection, so every start after
    the first means the broker was lost and is back. The check runs in a thread of its own: the consumer
    must go on receiving while the database is asked."""

    class BrokerReconnected(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.starts = 0

        def start(self, parent: Any) -> None:
            self.starts += 1
            if self.starts > 1:
                threading.Thread(
                    target=recover_after_reconnect, args=(on_ready,), name="loom-broker-reconnected", daemon=True
                ).start()

    return BrokerReconnected


def worker_restarted(*, hostname: str, on_ready: OnReady, filesystem_broker: bool) -> tuple[list[int], list[int]]:
    """What a worker named ``hostname`` does when it starts; returns the pks it took back (running) and sent
    again (queued).

    What a worker of the same name was running when it died cannot still be running (Celery worker names are
    unique among live workers; ``deploy/loom-serve`` and the systemd units give each its own), so it is taken
    back now, as the janitor would after ``LOOM_HEARTBEAT_TIMEOUT``. On the embedded mode's filesystem broker
    a message is gone once a worker has taken it, and the one worker there took them all: every task sent and
    not claimed is sent again (a duplicate is harmless, the claim decides)."""
    lost: list[int] = []
    redispatched: list[int] = []  # the filesystem broker's, below
    # Queued tasks first: a running task taken back is queued and sent again by its own finish.
    if filesystem_broker:
        redispatched = _send_again(_sent_not_claimed(), now=timezone.now(), on_ready=on_ready)
    running = Task.objects.filter(status=Task.Status.RUNNING, worker__startswith=f"{hostname}/")
    for task_pk, worker in running.values_list("pk", "worker"):
        attempt = TaskAttempt.objects.filter(task_id=task_pk, finished_at__isnull=True).order_by("-number").first()
        if attempt is None:
            continue
        log = f"worker {worker} was restarted while running this task\n"
        task_finish(attempt=attempt, outcome=TaskAttempt.Outcome.LOST, error_class="WorkerLost", retryable=True,
                    log=log, on_ready=on_ready)  # fmt: skip
        lost.append(task_pk)
    if lost or redispatched:
        logger.warning(
            "worker restarted: took back its tasks",
            extra={"worker": hostname, "lost": lost, "redispatched": redispatched},
        )
    return lost, redispatched
