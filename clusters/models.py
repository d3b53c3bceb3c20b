"""Clusters, their nodes, and the engine's rows: jobs, tasks, task edges and task attempts.

The database is the engine's source of truth (architecture.md §3): a job's DAG is stored as Task rows with a
``pending_deps`` counter plus TaskEdge rows, so a worker that finishes a task can find and release its
successors with one indexed UPDATE, and the broker only ever carries "run task N".

Statuses are changed only by ``clusters/engine/state.py`` (a conditional UPDATE on the from-state); nothing here
contains business logic. Models carry invariants only: unique keys, non-negative counters.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from clusters.planning.planner import Action, Operation
from tenants.models import Tenant, TenantModel, name_validator

LOG_TAIL_LIMIT = 2048
"""Bytes of redacted output kept on an attempt for display (Coopr's ``max.log.length``)."""

DEFAULT_TASK_TIMEOUT_SECONDS = 1800
DEFAULT_MAX_ATTEMPTS = 3


def new_node_key() -> str:
    return uuid.uuid4().hex


class Health(models.TextChoices):
    """What the last health sweep found (``clusters/features/health.py``); a cluster's is the worst of its nodes'.

    Ordered from best to worst in ``HEALTH_SEVERITY``: a node whose machine is gone is worse than one that does
    not answer, which is worse than one that answers with a failing service check."""

    HEALTHY = "healthy", "Healthy"
    UNKNOWN = "unknown", "Unknown"
    DEGRADED = "degraded", "Degraded"
    UNREACHABLE = "unreachable", "Unreachable"
    MISSING = "missing", "Missing"


HEALTH_SEVERITY = {state: rank for rank, state in enumerate(Health.values)}


class Cluster(TenantModel):
    """A cluster, pinned to the exact template and provider versions it was created from.

    Pinning (rather than naming only) keeps a cluster reproducible when the catalog moves on; the names are
    kept beside the pins for display and for lookups that survive a catalog re-import.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACTIVE = "active", "Active"
        INCOMPLETE = "incomplete", "Incomplete"
        INCONSISTENT = "inconsistent", "Inconsistent"
        TERMINATED = "terminated", "Terminated"

    owner_field = "owner"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="clusters")
    name = models.CharField(max_length=255, validators=[name_validator])
    description = models.TextField(blank=True, default="")
    template_name = models.CharField(max_length=255)
    template_version = models.ForeignKey("templates_app.CatalogVersion", on_delete=models.PROTECT, related_name="+")
    provider_name = models.CharField(max_length=255)
    provider_version = models.ForeignKey("templates_app.CatalogVersion", on_delete=models.PROTECT, related_name="+")
    size = models.PositiveIntegerField()
    services = models.JSONField(default=list, blank=True)
    service_versions = models.JSONField(
        default=dict, blank=True, help_text="The catalog version of every service, pinned at create: name → version."
    )
    config = models.JSONField(default=dict, blank=True)
    provider_fields = models.JSONField(
        default=dict, blank=True, help_text="Provider fields the request set (the original's providerFields)."
    )
    dns_suffix = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_message = models.TextField(blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    lease_warned_at = models.DateTimeField(
        null=True, blank=True, help_text="When the lease warning for the current expiry was sent."
    )
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_message = models.TextField(blank=True, default="", help_text="Why the cluster is not healthy, in words.")
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_due_at = models.DateTimeField(
        null=True, blank=True, help_text="When the next health sweep checks this cluster (empty: at the next one)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            # Hostnames derive from the name, so two live clusters of one tenant may not share it; a terminated
            # cluster frees its name.
            models.UniqueConstraint(
                fields=["tenant", "name"], condition=~Q(status="terminated"), name="cluster_unique_live_name"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "status"], name="cluster_tenant_status"),
            # The lists' order within a tenant: the newest page is read off the index instead of sorting every
            # cluster of the tenant (72 → 3 ms at 10,000 clusters, bench/load.py, tests/api/test_query_budget.py).
            models.Index(fields=["tenant", "-created_at", "-id"], name="cluster_tenant_recent"),
            models.Index(fields=["tenant", "template_name"], name="cluster_tenant_template"),
            models.Index(fields=["expires_at"], condition=Q(expires_at__isnull=False), name="cluster_expiry"),
            # The health sweep: live clusters whose next check is due.
            models.Index(
                fields=["health_due_at"], condition=Q(status__in=["active", "inconsistent"]), name="cluster_health_due"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    """One machine of a cluster. ``node_key`` is the stable client token and provider tag (idempotent creates)."""

    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        ACTIVE = "active", "Active"
        FAILED = "failed", "Failed"
        DELETED = "deleted", "Deleted"

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="nodes")
    number = models.PositiveIntegerField()
    node_key = models.CharField(max_length=64, unique=True, default=new_node_key, editable=False)
    hostname = models.CharField(max_length=255)
    hardware = models.CharField(max_length=255)
    image = models.CharField(max_length=255)
    flavor = models.CharField(max_length=255, blank=True, default="")
    image_id = models.CharField(max_length=255, blank=True, default="")
    services = models.JSONField(default=list, blank=True)
    machine_id = models.CharField(max_length=255, blank=True, default="")
    ip_addresses = models.JSONField(default=dict, blank=True)
    ssh_user = models.CharField(max_length=64, blank=True, default="")
    ssh_port = models.PositiveIntegerField(default=22, help_text="Where the node's sshd listens (pool hosts vary).")
    credentials_ref = models.CharField(max_length=255, blank=True, default="", help_text="A secret reference.")
    host_key = models.TextField(blank=True, default="", help_text="SSH host key pinned at first contact.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLANNED)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_message = models.TextField(
        blank=True, default="", help_text="What the failing check said (its output, redacted), or why it is unknown."
    )
    health_failing = models.JSONField(default=list, blank=True, help_text="Services whose check failed last.")
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_failures = models.PositiveIntegerField(
        default=0, help_text="Sweeps in a row that found the node unhealthy (the auto-repair policy counts them)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cluster", "number"]
        constraints = [models.UniqueConstraint(fields=["cluster", "number"], name="node_unique_number")]

    def __str__(self) -> str:
        return self.hostname or f"node {self.number}"


class HealthEvent(models.Model):
    """One change of a node's or a cluster's health (``node`` empty: the cluster's), kept as its history."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="health_events")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, null=True, blank=True, related_name="health_events")
    previous = models.CharField(max_length=16, choices=Health.choices)
    state = models.CharField(max_length=16, choices=Health.choices)
    message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["cluster", "-created_at"], name="healthevent_cluster_recent")]

    def __str__(self) -> str:
        return f"{self.node or self.cluster}: {self.previous} -> {self.state}"


class Job(models.Model):
    """One cluster operation. ``max_attempts`` and ``task_timeout_seconds`` come from the template's
    administration section and are copied onto each task when the plan is stored."""

    class Status(models.TextChoices):
        NOT_STARTED = "not_started", "Not started"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        ABORTED = "aborted", "Aborted"

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="jobs")
    operation = models.CharField(max_length=32, choices=[(o.value, o.value) for o in Operation])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NOT_STARTED)
    message = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    max_attempts = models.PositiveSmallIntegerField(default=DEFAULT_MAX_ATTEMPTS)
    task_timeout_seconds = models.PositiveIntegerField(default=DEFAULT_TASK_TIMEOUT_SECONDS)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["cluster", "-created_at"], name="job_cluster_created")]

    def __str__(self) -> str:
        return f"{self.operation} job {self.pk}"


class Task(models.Model):
    """One node of a job's DAG. ``node`` is None for a JOIN, which the engine completes itself.

    ``tenant`` is denormalised from the cluster so fair-share queries ("running tasks of tenant T") and the
    ready-task scan need no join.
    """

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        DROPPED = "dropped", "Dropped"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tasks")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="tasks", null=True, blank=True)
    key = models.PositiveIntegerField(help_text="The planner's task key, dense and topological within the job.")
    action = models.CharField(max_length=16, choices=[(a.value, a.value) for a in Action])
    service = models.CharField(max_length=255, blank=True, default="")
    label = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    pending_deps = models.IntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=DEFAULT_MAX_ATTEMPTS)
    timeout_seconds = models.PositiveIntegerField(default=DEFAULT_TASK_TIMEOUT_SECONDS)
    stage = models.PositiveIntegerField(default=0)
    waiting_reason = models.CharField(max_length=255, blank=True, default="")
    worker = models.CharField(max_length=255, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When a queued task was handed to the broker; empty while it waits."
    )

    class Meta:
        ordering = ["job", "key"]
        constraints = [
            models.UniqueConstraint(fields=["job", "key"], name="task_unique_key"),
            models.CheckConstraint(condition=Q(pending_deps__gte=0), name="task_pending_deps_not_negative"),
        ]
        indexes = [
            # Job progress, "is anything still running/unfinished", drop-on-failure.
            models.Index(fields=["job", "status"], name="task_job_status"),
            # The dispatcher's "tasks waiting for a slot, in the order they get one" is ``task_waiting_slot``,
            # made on PostgreSQL by ``clusters.engine.pg_functions`` (SQLite cannot index NULLS FIRST).
            # The janitor: running tasks whose heartbeat stopped; also the tenant budget count.
            models.Index(fields=["heartbeat_at"], condition=Q(status="running"), name="task_running_heartbeat"),
            models.Index(fields=["tenant"], condition=Q(status="running"), name="task_running_tenant"),
            # A tenant's tasks sent and not yet claimed (its budget count); the janitor: dispatched tasks
            # nobody claimed (a lost message) are sent again.
            models.Index(
                fields=["tenant", "dispatched_at"],
                condition=Q(status="queued", dispatched_at__isnull=False),
                name="task_dispatched",
            ),
        ]

    def __str__(self) -> str:
        what = f"{self.action} {self.service}" if self.service else self.action
        return f"task {self.key} ({what})"

    @property
    def is_join(self) -> bool:
        return self.action == Action.JOIN


UNFINISHED_JOB_STATUSES = (Job.Status.NOT_STARTED, Job.Status.RUNNING, Job.Status.PAUSED)
"""A job in one of these has not ended: no other job may start on its cluster, and the health sweep leaves it."""


class TaskEdge(models.Model):
    """``successor`` waits for ``predecessor``. Both foreign keys are indexed: finish walks successors of a
    task, retry counts the unfinished predecessors of a task."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")
    predecessor = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="successor_edges")
    successor = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="predecessor_edges")

    def __str__(self) -> str:
        return f"{self.predecessor_id} -> {self.successor_id}"


class TaskAttempt(models.Model):
    """One try of a task: who ran it, when, how it ended, and its redacted output."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        TIMED_OUT = "timed_out", "Timed out"
        LOST = "lost", "Worker lost"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="task_attempts")
    number = models.PositiveSmallIntegerField()
    worker = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    error_class = models.CharField(max_length=255, blank=True, default="")
    retryable = models.BooleanField(default=False)
    log_tail = models.TextField(blank=True, default="", help_text="The last 2 KiB of the output, redacted.")
    log = models.TextField(blank=True, default="", help_text="The full output, redacted.")

    class Meta:
        ordering = ["task", "number"]
        constraints = [models.UniqueConstraint(fields=["task", "number"], name="taskattempt_unique_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of task {self.task_id}"


class Webhook(TenantModel):
    """A tenant's endpoint for lifecycle events, signed with HMAC-SHA256 over the body with ``secret``.

    The secret is a MultiFernet token (``providers.secrets``), write-only in the API like provider secrets.
    An empty ``events`` list means every event.
    """

    name = models.CharField(max_length=255, validators=[name_validator])
    url = models.URLField(max_length=2000)
    secret_data = models.TextField(blank=True, default="")
    events = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="webhook_unique_name")]

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one webhook: the delivery log, retried with backoff."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="webhookdelivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id} ({self.status})"


class IdempotencyRecord(models.Model):
    """The stored answer to a POST made with an ``Idempotency-Key`` header, replayed for the same key.

    ``fingerprint`` hashes method, path and body: the same key with a different request is refused (422)
    rather than answered with the first request's result.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user", "key"], name="idempotency_unique_key"),
        ]
        # The janitor deletes records older than LOOM_IDEMPOTENCY_TTL_SECONDS.
        indexes = [models.Index(fields=["created_at"], name="idempotency_created")]

    def __str__(self) -> str:
        return self.key
