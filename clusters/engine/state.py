"""The one place that changes ``status`` on clusters, jobs and tasks (house-style item 6).

Each table maps a target status to the statuses it may be reached from. A transition is a single conditional
``UPDATE ... SET status = <to> WHERE pk = <pk> AND status IN (<allowed from>)``; the row count says whether it
happened. Never read the status and then write it: between the two, a worker, the janitor or a user may have
moved the row, and the conditional UPDATE is what makes concurrent finishes, duplicate deliveries and
retries safe.

A target that no transition leads to (or a status the model does not have) is a programming error and raises
``IllegalTransition``. A legal target whose row is not in an allowed from-state is a lost race, not an error:
the call returns False (or 0) and the caller decides what that means.

Querysets passed in must not join other tables (filter with ``Exists`` instead): Django turns an UPDATE over
a join into ``WHERE pk IN (SELECT ...)``, and PostgreSQL re-checks only the outer WHERE against a row that
changed concurrently, so the status condition must stay on the updated table itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import models

from clusters.models import Cluster, Job, Task

C, J, T = Cluster.Status, Job.Status, Task.Status

CLUSTER_TRANSITIONS: Mapping[str, frozenset[str]] = {
    # A new operation starts on a cluster that is not busy; terminated is final (loom-reference §3.3).
    C.PENDING: frozenset({C.ACTIVE, C.INCOMPLETE, C.INCONSISTENT}),
    # Active ↔ inconsistent without a job is the health sweep: a machine deleted, stopped or moved out of band
    # (drift), and back once the provider reports the machine as Loom made it again (clusters/features/health.py).
    C.ACTIVE: frozenset({C.PENDING, C.INCONSISTENT}),
    C.INCOMPLETE: frozenset({C.PENDING}),
    C.INCONSISTENT: frozenset({C.PENDING, C.ACTIVE}),
    C.TERMINATED: frozenset({C.PENDING}),
}

JOB_TRANSITIONS: Mapping[str, frozenset[str]] = {
    # Failed or aborted → running is the user's retry.
    J.RUNNING: frozenset({J.NOT_STARTED, J.PAUSED, J.FAILED, J.ABORTED}),
    J.PAUSED: frozenset({J.RUNNING}),
    J.COMPLETED: frozenset({J.RUNNING}),
    J.FAILED: frozenset({J.NOT_STARTED, J.RUNNING, J.PAUSED}),
    J.ABORTED: frozenset({J.NOT_STARTED, J.RUNNING, J.PAUSED}),
}

TASK_TRANSITIONS: Mapping[str, frozenset[str]] = {
    # Running → queued is a retryable failure or a lost worker; failed/dropped come back through a retry.
    T.QUEUED: frozenset({T.WAITING, T.RUNNING}),
    T.WAITING: frozenset({T.FAILED, T.DROPPED}),
    T.RUNNING: frozenset({T.QUEUED}),
    # Waiting → completed is a JOIN, which has no work and is completed by the engine when released.
    T.COMPLETED: frozenset({T.RUNNING, T.WAITING}),
    T.FAILED: frozenset({T.RUNNING}),
    T.DROPPED: frozenset({T.WAITING, T.QUEUED}),
}

TRANSITIONS: Mapping[type[models.Model], Mapping[str, frozenset[str]]] = {
    Cluster: CLUSTER_TRANSITIONS,
    Job: JOB_TRANSITIONS,
    Task: TASK_TRANSITIONS,
}


class IllegalTransition(ValueError):
    """No transition of this model leads to the requested status (a bug in the caller, not a race)."""


def allowed_from(model: type[models.Model], to: str) -> frozenset[str]:
    """The statuses from which ``model`` may move to ``to``; raises IllegalTransition when there are none."""
    table = TRANSITIONS.get(model)
    if table is None:
        raise IllegalTransition(f"{model.__name__} has no state machine")
    sources = table.get(to)
    if not sources:
        valid = sorted(str(status) for status in table)
        raise IllegalTransition(f"{model.__name__} cannot be moved to {to!r}; targets are {valid}")
    return sources


def _queryset(model_or_queryset: type[models.Model] | models.QuerySet[Any]) -> models.QuerySet[Any]:
    if isinstance(model_or_queryset, models.QuerySet):
        return model_or_queryset
    return model_or_queryset._default_manager.all()


def _updates(to: str, extra_updates: Mapping[str, Any] | None) -> dict[str, Any]:
    updates = dict(extra_updates or {})
    if "status" in updates:
        raise IllegalTransition("status is set by the transition itself, not through extra_updates")
    updates["status"] = to
    return updates


def transition(
    model_or_queryset: type[models.Model] | models.QuerySet[Any],
    pk: int,
    *,
    to: str,
    extra_updates: Mapping[str, Any] | None = None,
) -> bool:
    """Move row ``pk`` to ``to`` if it is in an allowed from-state; True when the row changed.

    ``model_or_queryset`` may be a queryset carrying further conditions (no joins; see the module docstring),
    e.g. "only if this is still the attempt that claimed it". ``extra_updates`` are written in the same UPDATE
    (expressions such as ``F("attempts") + 1`` are fine).
    """
    queryset = _queryset(model_or_queryset)
    sources = allowed_from(queryset.model, to)
    return queryset.filter(pk=pk, status__in=sources).update(**_updates(to, extra_updates)) == 1


def transition_many(queryset: models.QuerySet[Any], *, to: str, extra_updates: Mapping[str, Any] | None = None) -> int:
    """Move every row of ``queryset`` that is in an allowed from-state to ``to``; returns how many moved.

    For the engine's bulk moves (drop a failed job's unstarted tasks, queue released successors) that would
    otherwise be one UPDATE per row.
    """
    sources = allowed_from(queryset.model, to)
    return queryset.filter(status__in=sources).update(**_updates(to, extra_updates))
