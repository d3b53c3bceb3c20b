"""Serializers of the cluster API: the create request in the Loom format, and what clusters, nodes, jobs, tasks
and attempts look like.

Serializers run no queries (house-style item 15): the views hand them rows fetched with ``select_related`` /
``prefetch_related``, and what is computed per page (the latest job of each cluster, job progress, the lease)
comes in through the serializer context, keyed by primary key.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.reverse import reverse

from clusters.features.leases import Lease
from clusters.models import Cluster, Health, HealthEvent, Job, Node, Task, TaskAttempt
from clusters.selectors import JobProgress
from clusters.services.preview import PreviewRequest
from tenants.models import NAME_PATTERN

MAX_LEASE_MS = 100 * 365 * 86_400_000
"""A century: the longest lease or extension a request may name (beyond it, date arithmetic overflows)."""


# --- input ---------------------------------------------------------------------------------------------------


class ClusterPreviewInputSerializer(serializers.Serializer):
    """A create request in the Loom format (camelCase keys as the original's API and CLI sent them)."""

    name = serializers.RegexField(NAME_PATTERN, max_length=255)
    clusterTemplate = serializers.RegexField(NAME_PATTERN, max_length=255)
    numMachines = serializers.IntegerField(min_value=1)
    provider = serializers.RegexField(NAME_PATTERN, max_length=255, required=False, allow_null=True)
    hardwaretype = serializers.RegexField(NAME_PATTERN, max_length=255, required=False, allow_null=True)
    imagetype = serializers.RegexField(NAME_PATTERN, max_length=255, required=False, allow_null=True)
    services = serializers.ListField(child=serializers.RegexField(NAME_PATTERN, max_length=255), required=False)
    config = serializers.DictField(required=False, allow_null=True)
    dnsSuffix = serializers.CharField(max_length=191, required=False, allow_null=True, allow_blank=True)
    providerFields = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        allow_null=True,
        help_text="Provider fields this cluster sets: the provider type's user fields and its admin fields marked "
        "override (see /api/v2/plugins/providertypes/{type}).",
    )

    def to_request(self) -> PreviewRequest:
        data = self.validated_data
        return PreviewRequest(
            name=data["name"],
            template=data["clusterTemplate"],
            size=data["numMachines"],
            provider=data.get("provider") or None,
            hardware=data.get("hardwaretype") or None,
            image=data.get("imagetype") or None,
            services=tuple(dict.fromkeys(data.get("services") or ())),
            config=data.get("config"),
            dns_suffix=data.get("dnsSuffix") or None,
            provider_fields=data.get("providerFields") or None,
        )


class ClusterCreateInputSerializer(ClusterPreviewInputSerializer):
    """The preview's request plus what only a real cluster has: a description and a first lease."""

    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    initialLeaseDuration = serializers.IntegerField(
        min_value=1,
        max_value=MAX_LEASE_MS,
        required=False,
        allow_null=True,
        help_text="First lease in milliseconds, at most the template's initial lease; omit for the template's.",
    )


class LeaseExtendInputSerializer(serializers.Serializer):
    """Either the new expiry or how much to add to the current one."""

    expires_at = serializers.DateTimeField(required=False, help_text="The new expiry (ISO 8601).")
    extend_by = serializers.IntegerField(
        min_value=1,
        max_value=MAX_LEASE_MS,
        required=False,
        help_text="Milliseconds to add to the current expiry.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("expires_at" in attrs) == ("extend_by" in attrs):
            message = "give exactly one of expires_at and extend_by"
            raise serializers.ValidationError({"expires_at": [message], "extend_by": [message]})
        return attrs


# --- day-2 operations (clusters.services.day2) --------------------------------------------------------------


class ReconfigureInputSerializer(serializers.Serializer):
    """The whole new config (it replaces the old one) and whether services restart around the configure."""

    config = serializers.DictField(help_text="The cluster's new config; macros are checked on its nodes.")
    restart = serializers.BooleanField(default=True, help_text="Stop before and start after configuring.")


class ServicesScopeInputSerializer(serializers.Serializer):
    """Services to start, stop or restart; none (or an empty list) means all of the cluster's."""

    services = serializers.ListField(
        child=serializers.RegexField(NAME_PATTERN, max_length=255), max_length=1000, required=False, default=list
    )


class ServicesChangeInputSerializer(serializers.Serializer):
    """Services to add to, or remove from, the cluster."""

    services = serializers.ListField(
        child=serializers.RegexField(NAME_PATTERN, max_length=255), max_length=1000, min_length=1
    )


class ScaleOutInputSerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=1, max_value=100_000, help_text="Nodes to add.")


class ScaleInInputSerializer(serializers.Serializer):
    """Either how many nodes to remove (chosen within the template's constraints) or which ones."""

    count = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    nodes = serializers.ListField(
        child=serializers.CharField(max_length=255),
        max_length=100_000,
        min_length=1,
        required=False,
        help_text="Node numbers or hostnames.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("count" in attrs) == ("nodes" in attrs):
            message = "give exactly one of count and nodes"
            raise serializers.ValidationError({"count": [message], "nodes": [message]})
        return attrs


class RepairInputSerializer(serializers.Serializer):
    nodes = serializers.ListField(
        child=serializers.CharField(max_length=255),
        max_length=10_000,
        min_length=1,
        required=False,
        help_text="Node numbers or hostnames to repair (default: every degraded, unreachable or missing node); a "
        "named node that is not degraded is replaced whatever its health.",
    )


class SyncInputSerializer(serializers.Serializer):
    restart = serializers.BooleanField(default=False, help_text="Restart services around a config change.")


# --- output --------------------------------------------------------------------------------------------------


def _url(context: dict[str, Any], name: str, **kwargs: Any) -> str:
    return reverse(name, kwargs=kwargs, request=context.get("request"))


class JobProgressSerializer(serializers.Serializer):
    tasks = serializers.DictField(child=serializers.IntegerField(), help_text="Real tasks by status.")
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    percent = serializers.FloatField(help_text="Share of the tasks completed, 0-100.")
    stage = serializers.IntegerField(
        allow_null=True, help_text="Lowest stage with unfinished tasks (0-based); null when none is left."
    )
    stages = serializers.IntegerField()


class JobSerializer(serializers.ModelSerializer):
    """A job, with its live progress from ``context["progress"]`` (pk → JobProgress)."""

    url = serializers.HyperlinkedIdentityField(view_name="job-detail")
    tasks_url = serializers.HyperlinkedIdentityField(view_name="job-tasks")
    cluster = serializers.PrimaryKeyRelatedField(read_only=True)
    requested_by = serializers.CharField(
        source="requested_by.username",
        default=None,
        allow_null=True,
        read_only=True,
        help_text="Who asked for it; null for a job Loom started itself.",
    )
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["id", "url", "cluster", "operation", "status", "message", "requested_by", "created_at", "started_at",
                  "finished_at", "max_attempts", "task_timeout_seconds", "progress", "tasks_url"]  # fmt: skip
        read_only_fields = fields

    @cached_property
    def _progress(self) -> JobProgressSerializer:
        """One nested serializer for every row (see ``ClusterSerializer._latest_job``)."""
        return JobProgressSerializer()

    @extend_schema_field(JobProgressSerializer)
    def get_progress(self, job: Job) -> dict[str, Any]:
        progress: JobProgress = self.context.get("progress", {}).get(job.pk) or JobProgress()
        return self._progress.to_representation(progress)


class WaitingSerializer(serializers.Serializer):
    reason = serializers.CharField()
    tasks = serializers.IntegerField()


class JobDetailSerializer(JobSerializer):
    """A job with the most common reasons its tasks are waiting (``context["waiting"]``)."""

    waiting = serializers.SerializerMethodField()

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "waiting"]
        read_only_fields = fields

    @extend_schema_field(WaitingSerializer(many=True))
    def get_waiting(self, job: Job) -> list[dict[str, Any]]:
        return [{"reason": reason, "tasks": count} for reason, count in self.context.get("waiting", [])]


VERSIONED_NAME = inline_serializer(
    "VersionedName", {"name": serializers.CharField(), "version": serializers.IntegerField(allow_null=True)}
)


class HealthSerializer(serializers.Serializer):
    """What the last health sweep found (``clusters/features/health.py``)."""

    state = serializers.ChoiceField(source="health", choices=Health.choices)
    message = serializers.CharField(source="health_message", help_text="Why it is not healthy, in words.")
    checked_at = serializers.DateTimeField(source="health_checked_at", allow_null=True)


class NodeHealthSerializer(HealthSerializer):
    failing = serializers.ListField(source="health_failing", child=serializers.CharField(),
                                    help_text="Services whose check failed.")  # fmt: skip
    failures = serializers.IntegerField(source="health_failures", help_text="Unhealthy sweeps in a row.")


class HealthEventSerializer(serializers.ModelSerializer):
    node = serializers.IntegerField(source="node.number", allow_null=True, default=None,
                                    help_text="The node's number; null for the cluster's own health.")  # fmt: skip

    class Meta:
        model = HealthEvent
        fields = ["node", "previous", "state", "message", "created_at"]
        read_only_fields = fields


class ClusterSerializer(serializers.ModelSerializer):
    """A cluster as lists show it: its latest job (``context["latest_jobs"]``: cluster pk → Job) with progress."""

    url = serializers.HyperlinkedIdentityField(view_name="cluster-detail")
    owner = serializers.CharField(source="owner.username", read_only=True)
    template = serializers.SerializerMethodField()
    provider = serializers.SerializerMethodField()
    latest_job = serializers.SerializerMethodField()
    health = HealthSerializer(source="*", read_only=True)

    class Meta:
        model = Cluster
        fields = ["id", "url", "name", "description", "owner", "status", "status_message", "health", "template",
                  "provider", "size", "services", "created_at", "expires_at", "latest_job"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(VERSIONED_NAME)
    def get_template(self, cluster: Cluster) -> dict[str, Any]:
        return {"name": cluster.template_name, "version": cluster.template_version.version}

    @extend_schema_field(VERSIONED_NAME)
    def get_provider(self, cluster: Cluster) -> dict[str, Any]:
        return {"name": cluster.provider_name, "version": cluster.provider_version.version}

    @cached_property
    def _latest_job(self) -> JobSerializer:
        """One nested serializer for every row of a list: DRF builds a serializer's fields the first time it
        is asked for them, and a new one per cluster cost ~1 ms a row, most of a 50-cluster page's time
        (bench/load.py)."""
        return JobSerializer(context=self.context)

    @extend_schema_field(JobSerializer(allow_null=True))
    def get_latest_job(self, cluster: Cluster) -> dict[str, Any] | None:
        job = self.context.get("latest_jobs", {}).get(cluster.pk)
        return None if job is None else self._latest_job.to_representation(job)


class LeaseSerializer(serializers.Serializer):
    expires_at = serializers.DateTimeField(allow_null=True, help_text="Null: the cluster never expires.")
    warned_at = serializers.DateTimeField(allow_null=True, help_text="When the warning for this expiry was sent.")
    initial_ms = serializers.IntegerField(source="policy.initial_ms", help_text="Template's initial lease; 0 = none.")
    max_ms = serializers.IntegerField(source="policy.max_ms", help_text="Longest lease from creation; 0 = unlimited.")
    step_ms = serializers.IntegerField(source="policy.step_ms", help_text="Most one extension adds; 0 = unlimited.")
    latest_expiry = serializers.DateTimeField(allow_null=True, help_text="Creation + max; null when unlimited.")
    next_limit = serializers.DateTimeField(
        allow_null=True, help_text="The furthest one extension can move the expiry now; null when unlimited."
    )


class NodeSerializer(serializers.ModelSerializer):
    hardwaretype = serializers.CharField(source="hardware")
    imagetype = serializers.CharField(source="image")
    image = serializers.CharField(source="image_id")
    ipaddresses = serializers.DictField(source="ip_addresses", child=serializers.CharField())
    sshuser = serializers.CharField(source="ssh_user")
    services = serializers.ListField(child=serializers.CharField())
    health = NodeHealthSerializer(source="*", read_only=True)

    class Meta:
        model = Node
        fields = ["id", "number", "hostname", "status", "health", "hardwaretype", "imagetype", "flavor", "image",
                  "sshuser", "ipaddresses", "services", "machine_id", "created_at"]  # fmt: skip
        read_only_fields = fields


class ClusterDetailSerializer(ClusterSerializer):
    """A cluster with its config, lease (``context["lease"]``) and first nodes (``context["nodes"]``; all of
    them at ``nodes_url``)."""

    lease = serializers.SerializerMethodField()
    nodes = serializers.SerializerMethodField()
    node_count = serializers.SerializerMethodField()
    nodes_url = serializers.HyperlinkedIdentityField(view_name="cluster-nodes")
    jobs_url = serializers.HyperlinkedIdentityField(view_name="cluster-jobs")

    class Meta(ClusterSerializer.Meta):
        fields = [*ClusterSerializer.Meta.fields, "dns_suffix", "config", "provider_fields", "service_versions",
                  "lease", "node_count", "nodes", "nodes_url", "jobs_url"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(LeaseSerializer)
    def get_lease(self, cluster: Cluster) -> dict[str, Any]:
        lease: Lease = self.context["lease"]
        return LeaseSerializer(lease).data

    @extend_schema_field(NodeSerializer(many=True))
    def get_nodes(self, cluster: Cluster) -> list[dict[str, Any]]:
        return NodeSerializer(self.context.get("nodes", []), many=True).data

    @extend_schema_field(OpenApiTypes.INT)
    def get_node_count(self, cluster: Cluster) -> int:
        return self.context.get("node_count", 0)


class ClusterHealthSerializer(serializers.Serializer):
    health = HealthSerializer(source="cluster")
    nodes = NodeSerializer(many=True, help_text="The nodes that are not healthy, worst first.")
    history = HealthEventSerializer(many=True, help_text="The latest changes, newest first.")


class ClusterOperationSerializer(serializers.Serializer):
    """The answer to an operation (create, delete, abort, pause, resume, retry): the cluster and its job."""

    cluster = ClusterDetailSerializer()
    job = JobSerializer()


class TaskAttemptSerializer(serializers.ModelSerializer):
    log_url = serializers.SerializerMethodField()

    class Meta:
        model = TaskAttempt
        fields = ["number", "worker", "started_at", "finished_at", "outcome", "error_class", "retryable", "log_tail",
                  "log_url"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_log_url(self, attempt: TaskAttempt) -> str:
        return _url(self.context, "task-attempt", pk=attempt.task_id, number=attempt.number)


class TaskAttemptDetailSerializer(TaskAttemptSerializer):
    """One attempt with its whole (redacted) output."""

    class Meta(TaskAttemptSerializer.Meta):
        fields = [*TaskAttemptSerializer.Meta.fields, "log"]
        read_only_fields = fields


NODE_REF = inline_serializer(
    "TaskNode",
    {"id": serializers.IntegerField(), "number": serializers.IntegerField(), "hostname": serializers.CharField()},
    allow_null=True,
)


class TaskSerializer(serializers.ModelSerializer):
    """A task with every attempt it made (prefetched, without the full logs)."""

    url = serializers.HyperlinkedIdentityField(view_name="task-detail")
    node = serializers.SerializerMethodField()
    attempts_used = serializers.IntegerField(
        source="attempts", help_text="Attempts spent in the current run (a job retry gives them back)."
    )
    started_at = serializers.SerializerMethodField()
    finished_at = serializers.SerializerMethodField()
    attempts = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = ["id", "url", "job", "key", "node", "action", "service", "status", "stage", "attempts_used",
                  "max_attempts", "timeout_seconds", "waiting_reason", "not_before", "worker", "heartbeat_at",
                  "started_at", "finished_at", "attempts"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(NODE_REF)
    def get_node(self, task: Task) -> dict[str, Any] | None:
        node = task.node
        return None if node is None else {"id": node.pk, "number": node.number, "hostname": node.hostname}

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_started_at(self, task: Task) -> Any:
        tries = list(task.task_attempts.all())
        return serializers.DateTimeField().to_representation(tries[0].started_at) if tries else None

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_finished_at(self, task: Task) -> Any:
        tries = list(task.task_attempts.all())
        if not tries or task.status not in (Task.Status.COMPLETED, Task.Status.FAILED) or not tries[-1].finished_at:
            return None
        return serializers.DateTimeField().to_representation(tries[-1].finished_at)

    @extend_schema_field(TaskAttemptSerializer(many=True))
    def get_attempts(self, task: Task) -> list[dict[str, Any]]:
        return TaskAttemptSerializer(task.task_attempts.all(), many=True, context=self.context).data
