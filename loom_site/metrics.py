"""``/metrics``: Prometheus text exposition of the engine's state, computed from the database at scrape time.

Why from the database rather than counters in each process: Loom runs any number of web and worker processes
and the database already holds every job, task and attempt, so one scrape of any web process sees the whole
installation, nothing is lost when a worker dies, and no metrics library or push gateway is needed. The cost
is bounded: a scrape runs ``SCRAPE_QUERIES`` aggregate queries (see ``collect``), whatever the number of
tenants, jobs or workers; the two that read every attempt row grow with history, not with live load.

Access: a superuser (session or API token), or ``Authorization: Bearer <LOOM_METRICS_TOKEN>`` for a
Prometheus server that holds no user account. Anything else is 401 (no or bad credentials) or 403 (a user
who is not a superuser). Label values are tenant names, worker ids, provider names, actions and states:
never secrets.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from rest_framework import exceptions

from clusters.models import Cluster, Health, Job, Node, Task, TaskAttempt
from clusters.planning.planner import Action
from tenants.authentication import ApiTokenAuthentication

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Upper bounds (seconds) of the task duration histogram: fake and noop actions take under a second, cloud
creates and package installs minutes, the default task timeout is 30 minutes."""

SCRAPE_QUERIES = 8
"""Queries ``collect`` runs (asserted by the tests), one per ``_collect_*`` function."""


@dataclass
class Family:
    """One metric family: name, type, help and its samples (label dict, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, Any], value: float, *, suffix: str = "") -> None:
        self.samples.append((suffix, {key: str(val) for key, val in labels.items()}, value))


# --- collection: one aggregate query per function ---------------------------------------------------------------


def _collect_clusters() -> Family:
    family = Family("loom_clusters", "gauge", "Clusters by tenant and status.")
    rows = Cluster.objects.order_by().values("tenant__name", "status").annotate(n=Count("pk"))
    for row in rows:
        family.add({"tenant": row["tenant__name"], "status": row["status"]}, row["n"])
    return family


def _collect_health() -> Family:
    """Live nodes by tenant and health: a state with no node is exported as 0, so an alert on
    ``loom_node_health{state="missing"} > 0`` sees it go back to 0."""
    family = Family("loom_node_health", "gauge", "Live nodes by tenant and health (clusters/features/health.py).")
    rows = (
        Node.objects.filter(status=Node.Status.ACTIVE)
        .exclude(cluster__status=Cluster.Status.TERMINATED)
        .order_by()
        .values("cluster__tenant__name", "health")
        .annotate(n=Count("pk"))
    )
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["cluster__tenant__name"], dict.fromkeys(Health.values, 0))[row["health"]] = row["n"]
    for tenant, states in sorted(counts.items()):
        for state, count in states.items():
            family.add({"tenant": tenant, "state": state}, count)
    return family


def _collect_jobs() -> Family:
    family = Family("loom_jobs", "gauge", "Jobs by operation and status (all jobs ever stored).")
    for row in Job.objects.order_by().values("operation", "status").annotate(n=Count("pk")):
        family.add({"operation": row["operation"], "status": row["status"]}, row["n"])
    return family


def _collect_tasks() -> list[Family]:
    """Real tasks (JOIN points left out) by action and status, and how many needed more than one attempt."""
    tasks = Family("loom_tasks", "gauge", "Tasks by action and status (JOIN points excluded).")
    retried = Family("loom_tasks_retried", "gauge", "Tasks that needed more than one attempt, by action and status.")
    rows = (
        Task.objects.exclude(action=Action.JOIN)
        .order_by()
        .values("action", "status")
        .annotate(n=Count("pk"), retried=Count("pk", filter=Q(attempts__gt=1)))
    )
    for row in rows:
        labels = {"action": row["action"], "status": row["status"]}
        tasks.add(labels, row["n"])
        retried.add(labels, row["retried"])
    return [tasks, retried]


def _collect_attempts() -> list[Family]:
    attempts = Family("loom_task_attempts_total", "counter", "Task attempts by outcome.")
    retries = Family("loom_task_retries_total", "counter", "Attempts beyond a task's first (retries), by outcome.")
    rows = (
        TaskAttempt.objects.order_by()
        .values("outcome")
        .annotate(n=Count("pk"), retries=Count("pk", filter=Q(number__gt=1)))
    )
    for row in rows:
        attempts.add({"outcome": row["outcome"]}, row["n"])
        retries.add({"outcome": row["outcome"]}, row["retries"])
    return [attempts, retries]


def _collect_durations(buckets: Sequence[float] = DURATION_BUCKETS) -> Family:
    """Histogram of finished attempts' durations per action and provider, bucketed by the database: one
    filtered count per bucket bound in a single grouped aggregate, so only (actions × providers) rows return."""
    family = Family(
        "loom_task_duration_seconds", "histogram", "Duration of finished task attempts, by action and provider."
    )
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    counts = {
        f"le_{index}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
        for index, bound in enumerate(buckets)
    }
    rows = (
        TaskAttempt.objects.filter(finished_at__isnull=False)
        .annotate(duration=duration)
        .order_by()
        .values("task__action", "task__job__cluster__provider_name")
        .annotate(n=Count("pk"), total=Sum("duration"), **counts)
    )
    for row in rows:
        labels = {"action": row["task__action"], "provider": row["task__job__cluster__provider_name"]}
        for index, bound in enumerate(buckets):
            family.add({**labels, "le": _number(bound)}, row[f"le_{index}"], suffix="_bucket")
        family.add({**labels, "le": "+Inf"}, row["n"], suffix="_bucket")
        total: timedelta | None = row["total"]
        family.add(labels, total.total_seconds() if total else 0.0, suffix="_sum")
        family.add(labels, row["n"], suffix="_count")
    return family


def _collect_queues(now: datetime) -> list[Family]:
    """Queued tasks per tenant: due now, in backoff, and the longest a due one has been waiting.

    A queued task has been due since ``not_before`` (the end of its backoff) when it has one; otherwise since
    it was handed to the broker (``dispatched_at``) or, when the tenant's budget still holds it back, at the
    latest since its job started: the only stamps the engine keeps, so the wait is a lower bound in the first
    two cases and an upper bound in the last.
    """
    depth = Family("loom_queue_depth", "gauge", "Queued tasks that are due (not in backoff), per tenant.")
    backoff = Family("loom_queue_backoff", "gauge", "Queued tasks waiting out a retry backoff, per tenant.")
    oldest = Family("loom_queue_oldest_wait_seconds", "gauge", "How long the oldest due queued task has waited.")
    due = Q(not_before__isnull=True) | Q(not_before__lte=now)
    rows = (
        Task.objects.filter(status=Task.Status.QUEUED)
        .order_by()
        .values("tenant__name")
        .annotate(
            due=Count("pk", filter=due),
            backoff=Count("pk", filter=~due),
            since=Min(Coalesce("not_before", "dispatched_at", "job__started_at"), filter=due),
        )
    )
    for row in rows:
        labels = {"tenant": row["tenant__name"]}
        depth.add(labels, row["due"])
        backoff.add(labels, row["backoff"])
        since: datetime | None = row["since"]
        oldest.add(labels, max(0.0, (now - since).total_seconds()) if since else 0.0)
    return [depth, backoff, oldest]


def _collect_workers(now: datetime) -> list[Family]:
    """Running tasks per worker and the age of the stalest heartbeat among them: a worker whose age nears
    LOOM_HEARTBEAT_TIMEOUT is about to have its tasks taken back by the janitor."""
    running = Family("loom_worker_running_tasks", "gauge", "Tasks running, per worker.")
    age = Family("loom_worker_heartbeat_age_seconds", "gauge", "Seconds since the stalest heartbeat of a worker.")
    last = Family("loom_worker_last_heartbeat_timestamp_seconds", "gauge", "Unix time of a worker's last heartbeat.")
    rows = (
        Task.objects.filter(status=Task.Status.RUNNING)
        .order_by()
        .values("worker")
        .annotate(n=Count("pk"), stalest=Min("heartbeat_at"), latest=Max("heartbeat_at"))
    )
    for row in rows:
        labels = {"worker": row["worker"]}
        running.add(labels, row["n"])
        if row["stalest"] is not None:
            age.add(labels, max(0.0, (now - row["stalest"]).total_seconds()))
            last.add(labels, row["latest"].timestamp())
    return [running, age, last]


def collect(now: datetime | None = None) -> list[Family]:
    """Every family, from ``SCRAPE_QUERIES`` queries."""
    now = now or timezone.now()
    return [
        _collect_clusters(),
        _collect_health(),
        _collect_jobs(),
        *_collect_tasks(),
        *_collect_attempts(),
        _collect_durations(),
        *_collect_queues(now),
        *_collect_workers(now),
    ]


# --- the text format ---------------------------------------------------------------------------------------------


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Family]) -> str:
    """The Prometheus text exposition format (0.0.4): HELP and TYPE once per family, then its samples."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            lines.append(f"{family.name}{suffix}{{{label_text}}} {_number(value)}")
    return "\n".join(lines) + "\n"


# --- the view ----------------------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message, "fields": {}}}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="loom"'
    return response


def _refusal(request: HttpRequest) -> JsonResponse | None:
    """None when the caller may scrape; otherwise the 401/403 answer."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    metrics_token: str = settings.LOOM_METRICS_TOKEN
    if (
        metrics_token
        and scheme.lower() == "bearer"
        and hmac.compare_digest(credential.strip().encode(), metrics_token.encode())
    ):
        return None
    user: Any = None
    if header:
        try:
            found = ApiTokenAuthentication().authenticate(request)
        except exceptions.AuthenticationFailed as error:
            return _error(401, "not_authenticated", str(error.detail))
        user = found[0] if found else None
    elif request.user.is_authenticated:
        user = request.user
    if user is None:
        return _error(401, "not_authenticated", "metrics need a superuser's session or token, or LOOM_METRICS_TOKEN")
    if not user.is_superuser:
        return _error(403, "permission_denied", "metrics are for superusers (or the LOOM_METRICS_TOKEN bearer)")
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: the Prometheus exposition (see the module docstring for who may read it)."""
    if request.method not in ("GET", "HEAD"):
        return _error(405, "method_not_allowed", f"method {request.method} not allowed; use GET")
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(render(collect()), content_type=CONTENT_TYPE)
