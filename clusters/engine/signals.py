"""Job lifecycle events, for webhooks and anything else that wants to react to a job.

The engine sends them through ``transaction.on_commit``, so a receiver never hears of a job state that was
rolled back, and a slow receiver never holds the job's row lock. Receivers must not raise (an exception is
logged and swallowed by ``send_robust``); they get plain ids, never model instances, so they re-read what
they need in their own transaction.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)


class JobEvent(enum.StrEnum):
    STARTED = "job.started"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    ABORTED = "job.aborted"
    LEASE_WARNING = "cluster.lease_warning"
    LEASE_EXPIRED = "cluster.lease_expired"
    HEALTH_CHANGED = "cluster.health_changed"


@dataclass(frozen=True, slots=True)
class JobEventData:
    event: JobEvent
    tenant_id: int
    cluster_id: int
    job_id: int | None = None
    message: str = ""


job_event = Signal()
"""Sent with ``data=JobEventData`` after the change that caused it has committed."""


def send_job_event(data: JobEventData) -> None:
    """Send ``data`` once the current transaction commits (at once outside a transaction)."""

    def send() -> None:
        for receiver, result in job_event.send_robust(sender=JobEventData, data=data):
            if isinstance(result, Exception):
                logger.error("job event receiver %r failed: %s", receiver, result, extra={"event": data.event})

    transaction.on_commit(send)
