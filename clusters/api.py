"""Cluster API: create (idempotent), list, read, delete, the job operations, leases, jobs, tasks and attempts.

- ``POST /clusters`` takes the Loom create request and answers 202 with the cluster and its create job, the
  job's URL in ``Location``. With an ``Idempotency-Key`` header the answer is stored: the same key with the
  same request replays it, with a different request is a 422 naming the header (``idempotent``).
- ``GET /clusters`` (filters ``status``, ``template``, ``owner``, ``name``, ``live``), ``GET /clusters/{id}``
  (config, lease, the first nodes, the latest job with live progress), ``DELETE /clusters/{id}`` (202 + job).
- ``POST /clusters/{id}/abort|pause|resume|retry`` act on the latest job (202 + job);
  ``POST /clusters/{id}/lease`` extends the lease; ``GET /clusters/{id}/jobs`` and ``/nodes`` list.
- ``GET /jobs/{id}`` (progress, why tasks wait), ``GET /jobs/{id}/tasks`` (every task with its attempts),
  ``GET /tasks/{id}``, ``GET /tasks/{id}/attempts/{n}`` (one attempt with its whole redacted log).
- ``POST /clusters/preview``: what a create would do, nothing created.
- Day-2 operations (``clusters.services.day2``), each ``?preview=true`` for what it would do (200) and 202 +
  job otherwise: ``POST /clusters/{id}/config``, ``/services/start|stop|restart``, ``/services`` (add),
  ``/services/remove``, ``/scale-out``, ``/scale-in``, ``/sync``, ``/repair``; ``GET /health``, ``GET /inventory``.

Users see and act on their own clusters and those shared with them (guardian grants), tenant admins on all
of the tenant's; another tenant's cluster, job or task is a 404. Every list costs a constant number of
queries whatever the page size: per-page data (latest jobs, progress) is fetched in bulk and handed to the
serializers in their context.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable
from typing import Any

import django_filters
from django.db import IntegrityError, transaction
from django.db.models import Count, Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from clusters.features.leases import cluster_lease
from clusters.models import Cluster, IdempotencyRecord, Job, Task, TaskAttempt
from clusters.planning.planner import Action
from clusters.selectors import (
    cluster_get,
    cluster_health,
    cluster_inventory,
    clusters_for,
    job_progress,
    latest_jobs,
)
from clusters.serializers import (
    ClusterCreateInputSerializer,
    ClusterDetailSerializer,
    ClusterHealthSerializer,
    ClusterOperationSerializer,
    ClusterPreviewInputSerializer,
    ClusterSerializer,
    JobDetailSerializer,
    JobSerializer,
    LeaseExtendInputSerializer,
    NodeSerializer,
    ReconfigureInputSerializer,
    RepairInputSerializer,
    ScaleInInputSerializer,
    ScaleOutInputSerializer,
    ServicesChangeInputSerializer,
    ServicesScopeInputSerializer,
    SyncInputSerializer,
    TaskAttemptDetailSerializer,
    TaskSerializer,
)
from clusters.services.day2 import (
    Day2Outcome,
    cluster_reconfigure,
    cluster_repair,
    cluster_scale_in,
    cluster_scale_out,
    cluster_services_add,
    cluster_services_remove,
    cluster_services_restart,
    cluster_services_start,
    cluster_services_stop,
    cluster_sync,
)
from clusters.services.lifecycle import cluster_create, cluster_delete
from clusters.services.operations import (
    cluster_abort,
    cluster_lease_extend,
    cluster_pause,
    cluster_resume,
    cluster_retry,
)
from clusters.services.preview import NODE_LIST_LIMIT, cluster_preview
from loom_site.input_guards import StrictJSONParser
from tenants.api import TENANT_PARAMETER, TenantScopedMixin
from tenants.errors import ApplicationError, NotFound

PK_PATTERN = r"[0-9]{1,18}"  # beyond that, not a bigint: a 404 rather than a database error
WAITING_REASONS_SHOWN = 5

# --- idempotent creates --------------------------------------------------------------------------------------

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Up to 255 printable ASCII characters. Retrying with the same key and the same request replays "
    "the first answer instead of creating again; the same key with a different request is a 422.",
)
_KEY_CHARACTERS = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


class IdempotencyKeyReused(ApplicationError):
    code = "idempotency_key_reused"
    status = 422


def _fingerprint(request: Request) -> str:
    """Method, path and the parsed body in a canonical form (key order and spacing do not matter)."""
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotent(request: Request, *, tenant: Any, produce: Callable[[], Response]) -> Response:
    """``produce()`` once per ``Idempotency-Key`` (per tenant and user); without the header, just ``produce()``.

    The key's record is inserted first, in the same transaction as everything ``produce`` writes, and filled
    with the answer before commit. A concurrent request with the same key blocks on the record's unique
    index until the first commits, then finds the stored answer and replays it: two clusters cannot come of
    one key. An answer that is an error rolls the record back with everything else, so the request may be
    retried with the same key once the problem is fixed.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return produce()
    if not key or len(key) > 255 or not set(key) <= _KEY_CHARACTERS:
        problem = "must be 1-255 printable ASCII characters"
        raise ApplicationError(f"{IDEMPOTENCY_HEADER} {problem}", fields={IDEMPOTENCY_HEADER: [problem]})
    fingerprint = _fingerprint(request)
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    tenant=tenant, user=request.user, key=key, fingerprint=fingerprint
                )
        except IntegrityError:
            stored = IdempotencyRecord.objects.get(tenant=tenant, user=request.user, key=key)
            if stored.fingerprint != fingerprint:
                problem = "was already used with a different request; use a new key for a new request"
                raise IdempotencyKeyReused(
                    f"{IDEMPOTENCY_HEADER} {key!r} {problem}", fields={IDEMPOTENCY_HEADER: [problem]}
                ) from None
            location = (stored.body or {}).get("job", {}).get("url")
            headers = {"Idempotent-Replayed": "true", **({"Location": location} if location else {})}
            return Response(stored.body, status=stored.status_code, headers=headers)
        response = produce()
        record.status_code, record.body = response.status_code, response.data
        record.save(update_fields=["status_code", "body"])
    return response


# --- filters -------------------------------------------------------------------------------------------------


class ChoiceInFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """A comma-separated list of choices (``?status=active,pending``); an unknown value is a 400 naming it."""


LIVE_CHOICES = [("true", "true"), ("false", "false")]


class ClusterFilter(django_filters.FilterSet):
    status = ChoiceInFilter(choices=Cluster.Status.choices, help_text="Comma-separated statuses.")
    template = django_filters.CharFilter(field_name="template_name", help_text="Cluster template name.")
    owner = django_filters.CharFilter(field_name="owner__username", help_text="Owner's username.")
    name = django_filters.CharFilter(field_name="name")
    live = django_filters.ChoiceFilter(
        choices=LIVE_CHOICES, method="filter_live", help_text="true: not terminated; false: terminated."
    )

    class Meta:
        model = Cluster
        fields: list[str] = []

    def filter_live(self, queryset: QuerySet[Cluster], name: str, value: str) -> QuerySet[Cluster]:
        terminated = Cluster.Status.TERMINATED
        return queryset.exclude(status=terminated) if value == "true" else queryset.filter(status=terminated)


class TaskFilter(django_filters.FilterSet):
    status = ChoiceInFilter(choices=Task.Status.choices, help_text="Comma-separated statuses.")
    action = django_filters.ChoiceFilter(choices=[(a.value, a.value) for a in Action if a is not Action.JOIN])
    service = django_filters.CharFilter(field_name="service")
    node = django_filters.NumberFilter(field_name="node__number", help_text="Node number (1000, 1001, ...).")

    class Meta:
        model = Task
        fields: list[str] = []


# --- clusters ------------------------------------------------------------------------------------------------


class OperationMixin:
    """Builds the 202 answer of an operation: the cluster as it is now and the job, ``Location`` = job URL."""

    request: Request
    get_serializer_context: Callable[[], dict[str, Any]]

    def cluster_detail(self, cluster: Cluster) -> dict[str, Any]:
        jobs = latest_jobs([cluster.pk])
        nodes = list(cluster.nodes.all()[:NODE_LIST_LIMIT])
        context = {
            **self.get_serializer_context(),
            "latest_jobs": jobs,
            "progress": job_progress(job.pk for job in jobs.values()),
            "lease": cluster_lease(cluster),
            "nodes": nodes,
            "node_count": len(nodes) if len(nodes) < NODE_LIST_LIMIT else cluster.nodes.count(),
        }
        return ClusterDetailSerializer(cluster, context=context).data

    def accepted(self, cluster: Cluster, job: Job) -> Response:
        cluster = Cluster.objects.select_related("owner", "template_version", "provider_version").get(pk=cluster.pk)
        context = {**self.get_serializer_context(), "progress": job_progress([job.pk])}
        body = {"cluster": self.cluster_detail(cluster), "job": JobSerializer(job, context=context).data}
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": str(body["job"]["url"])})


OPERATION_RESPONSES = {
    202: OpenApiResponse(ClusterOperationSerializer, description="Accepted; Location is the job's URL."),
}
DAY2_RESPONSES = {
    **OPERATION_RESPONSES,
    200: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="With ?preview=true: what the operation would do (sizes, services, nodes added, removed and "
        "changed, restarts per service, the plan with its tasks per node); nothing is done.",
    ),
}
DAY2_PARAMETERS = [
    OpenApiParameter("preview", bool, description="Only show what the operation would do (200), start nothing."),
    OpenApiParameter("tasks", bool, description="With preview: the full task and edge lists even for large plans."),
]


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in {"1", "true", "yes"}


@extend_schema_view(
    list=extend_schema(summary="List clusters"),
    retrieve=extend_schema(summary="A cluster with its config, lease, nodes and latest job"),
)
@extend_schema(parameters=[TENANT_PARAMETER])
class ClusterViewSet(OperationMixin, TenantScopedMixin, viewsets.GenericViewSet):
    """Clusters of the current tenant that the caller may see."""

    serializer_class = ClusterSerializer
    filterset_class = ClusterFilter
    parser_classes = [StrictJSONParser]
    lookup_value_regex = PK_PATTERN

    def get_queryset(self) -> QuerySet[Cluster]:
        if self.is_schema_view:
            return Cluster.objects.none()
        return (
            clusters_for(user=self.request.user)
            .filter(tenant=self.tenant)
            .select_related("owner", "template_version", "provider_version")
            .order_by("-created_at", "-pk")
        )

    def get_object(self) -> Cluster:
        return cluster_get(user=self.request.user, tenant=self.tenant, pk=int(self.kwargs["pk"]))

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        jobs = latest_jobs([cluster.pk for cluster in page])
        context = {
            **self.get_serializer_context(),
            "latest_jobs": jobs,
            "progress": job_progress(job.pk for job in jobs.values()),
        }
        return self.get_paginated_response(ClusterSerializer(page, many=True, context=context).data)

    @extend_schema(responses=ClusterDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self.cluster_detail(self.get_object()))

    @extend_schema(
        summary="Create a cluster",
        request=ClusterCreateInputSerializer,
        responses=OPERATION_RESPONSES,
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    def create(self, request: Request) -> Response:
        """Check quotas, solve, plan and start creating; 202 with the cluster and its create job.

        400 names the field for bad input (or the clashing constraints when no layout exists), 404 an unknown
        template or provider, 409 ``quota_exceeded`` (naming the quota, its limit, what is in use and what was
        asked for) or a vetoed create or a duplicate live name.
        """

        def produce() -> Response:
            serializer = ClusterCreateInputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
            cluster, job = cluster_create(
                user=request.user,
                tenant=self.tenant,
                request=serializer.to_request(),
                lease_ms=data.get("initialLeaseDuration"),
                description=data.get("description") or "",
            )
            return self.accepted(cluster, job)

        return idempotent(request, tenant=self.tenant, produce=produce)

    @extend_schema(summary="Delete a cluster's machines", responses=OPERATION_RESPONSES)
    def destroy(self, request: Request, pk: str) -> Response:
        """Start a delete job for every machine of the cluster; 409 while another job of it is active."""
        cluster = self.get_object()
        return self.accepted(cluster, cluster_delete(user=request.user, cluster=cluster))

    def _operate(self, service: Callable[..., Job]) -> Response:
        cluster = self.get_object()
        return self.accepted(cluster, service(user=self.request.user, cluster=cluster))

    @extend_schema(request=None, responses=OPERATION_RESPONSES)
    @action(detail=True, methods=["post"])
    def abort(self, request: Request, pk: str) -> Response:
        """End the latest job now: unstarted tasks are dropped, running ones finish. It can be retried."""
        return self._operate(cluster_abort)

    @extend_schema(request=None, responses=OPERATION_RESPONSES)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        """Stop handing out the running job's tasks; running tasks finish."""
        return self._operate(cluster_pause)

    @extend_schema(request=None, responses=OPERATION_RESPONSES)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        """Run the paused job again."""
        return self._operate(cluster_resume)

    @extend_schema(request=None, responses=OPERATION_RESPONSES)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """Re-run only the failed and dropped tasks of the failed (or aborted) latest job."""
        return self._operate(cluster_retry)

    # --- day-2 operations: each previews with ?preview=true (200, nothing done) or starts a job (202) -------

    def _day2(self, serializer_class: type[Serializer], run: Callable[..., Day2Outcome]) -> Response:
        cluster = self.get_object()
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        preview = _flag(self.request, "preview")
        outcome = run(user=self.request.user, cluster=cluster, preview=preview, **serializer.validated_data)
        if preview:
            return Response(outcome.change.to_json(include_tasks=_flag(self.request, "tasks")))
        if outcome.job is None:  # a sync that only moved the template pin
            return Response({"cluster": self.cluster_detail(self.get_object()), "job": None})
        return self.accepted(cluster, outcome.job)

    @extend_schema(request=ReconfigureInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="config")
    def reconfigure(self, request: Request, pk: str) -> Response:
        """Replace the whole config (macros checked on the nodes) and configure every service, restarting
        them around it unless ``restart`` is false."""
        return self._day2(ReconfigureInputSerializer, cluster_reconfigure)

    @extend_schema(request=ServicesScopeInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="services/start")
    def services_start(self, request: Request, pk: str) -> Response:
        """Start the named services (all when none) and, first, what they depend on."""
        return self._day2(ServicesScopeInputSerializer, cluster_services_start)

    @extend_schema(request=ServicesScopeInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="services/stop")
    def services_stop(self, request: Request, pk: str) -> Response:
        """Stop the named services (all when none) and, first, what depends on them."""
        return self._day2(ServicesScopeInputSerializer, cluster_services_stop)

    @extend_schema(request=ServicesScopeInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="services/restart")
    def services_restart(self, request: Request, pk: str) -> Response:
        """Stop the named services (all when none) and their dependents, then start them with their
        dependencies."""
        return self._day2(ServicesScopeInputSerializer, cluster_services_restart)

    @extend_schema(request=ServicesChangeInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="services")
    def services_add(self, request: Request, pk: str) -> Response:
        """Add services on existing nodes (incremental solving) and install, configure and start them."""
        return self._day2(ServicesChangeInputSerializer, cluster_services_add)

    @extend_schema(request=ServicesChangeInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="services/remove")
    def services_remove(self, request: Request, pk: str) -> Response:
        """Stop and remove services; 400 naming any service that still requires one of them."""
        return self._day2(ServicesChangeInputSerializer, cluster_services_remove)

    @extend_schema(request=ScaleOutInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="scale-out")
    def scale_out(self, request: Request, pk: str) -> Response:
        """Add ``count`` nodes (409 ``quota_exceeded`` past the tenant's max_nodes); peers are reconfigured."""
        return self._day2(ScaleOutInputSerializer, cluster_scale_out)

    @extend_schema(request=ScaleInInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="scale-in")
    def scale_in(self, request: Request, pk: str) -> Response:
        """Remove ``count`` nodes chosen within the template's constraints, or the named ``nodes``; the rest
        are reconfigured once they are gone."""
        return self._day2(ScaleInInputSerializer, cluster_scale_in)

    @extend_schema(request=SyncInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="sync")
    def sync(self, request: Request, pk: str) -> Response:
        """Move to the template's latest version: 400 when the cluster breaks its constraints; config defaults
        the cluster still has are updated by a reconfigure (200 with ``job`` null when only the pin moves)."""
        return self._day2(SyncInputSerializer, cluster_sync)

    @extend_schema(request=RepairInputSerializer, responses=DAY2_RESPONSES, parameters=DAY2_PARAMETERS)
    @action(detail=True, methods=["post"], url_path="repair")
    def repair(self, request: Request, pk: str) -> Response:
        """Replace the nodes whose machine is missing or unreachable by new ones in the same role (the peers
        are reconfigured), and restart in place the failed services of degraded nodes; 400 when nothing needs
        a repair."""
        return self._day2(RepairInputSerializer, cluster_repair)

    @extend_schema(responses=ClusterHealthSerializer)
    @action(detail=True, methods=["get"], url_path="health", filter_backends=[], filterset_class=None)
    def health(self, request: Request, pk: str) -> Response:
        """The cluster's health, its nodes that are not healthy (worst first) and its latest health changes."""
        return Response(ClusterHealthSerializer(cluster_health(cluster=self.get_object())).data)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"], url_path="inventory", filter_backends=[], filterset_class=None)
    def inventory(self, request: Request, pk: str) -> Response:
        """The live nodes as an Ansible JSON inventory (what an inventory script answers to ``--list``): a
        group per service and per role, ``_meta.hostvars`` with address, SSH port and user, services and the
        pinned host key. ``loom inventory ID`` prints it; docs/api.md shows ``ansible-inventory -i`` on it."""
        return Response(cluster_inventory(cluster=self.get_object()))

    @extend_schema(request=LeaseExtendInputSerializer, responses=ClusterDetailSerializer)
    @action(detail=True, methods=["post"], url_path="lease")
    def lease(self, request: Request, pk: str) -> Response:
        """Extend (or shorten) the lease: at most ``step`` per extension, never beyond ``max`` from creation."""
        cluster = self.get_object()
        serializer = LeaseExtendInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cluster_lease_extend(
            user=request.user,
            cluster=cluster,
            expires_at=serializer.validated_data.get("expires_at"),
            extend_by_ms=serializer.validated_data.get("extend_by"),
        )
        return Response(self.cluster_detail(self.get_object()))

    @extend_schema(responses=JobSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[], filterset_class=None)
    def jobs(self, request: Request, pk: str) -> Response:
        """The cluster's jobs, newest first, each with its progress."""
        cluster = self.get_object()
        page = self.paginate_queryset(Job.objects.filter(cluster=cluster).select_related("requested_by"))
        context = {**self.get_serializer_context(), "progress": job_progress(job.pk for job in page)}
        return self.get_paginated_response(JobSerializer(page, many=True, context=context).data)

    @extend_schema(responses=NodeSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[], filterset_class=None)
    def nodes(self, request: Request, pk: str) -> Response:
        """Every node of the cluster, by number."""
        cluster = self.get_object()
        page = self.paginate_queryset(cluster.nodes.order_by("number"))
        return self.get_paginated_response(NodeSerializer(page, many=True).data)


# --- jobs, tasks, attempts -----------------------------------------------------------------------------------


class VisibleThroughClusterMixin(TenantScopedMixin):
    """Jobs and tasks are visible exactly when their cluster is."""

    def visible_clusters(self) -> QuerySet[Cluster]:
        return clusters_for(user=self.request.user).filter(tenant=self.tenant)


def task_queryset() -> QuerySet[Task]:
    """Real tasks (JOIN points are the engine's bookkeeping) with their node and attempts, logs left out."""
    attempts = TaskAttempt.objects.defer("log").order_by("number")
    return (
        Task.objects.exclude(action=Action.JOIN)
        .select_related("node")
        .prefetch_related(Prefetch("task_attempts", queryset=attempts))
    )


@extend_schema(parameters=[TENANT_PARAMETER])
class JobViewSet(VisibleThroughClusterMixin, viewsets.GenericViewSet):
    """Jobs of the clusters the caller may see."""

    serializer_class = JobDetailSerializer
    filterset_class: type[django_filters.FilterSet] | None = None  # the task list sets TaskFilter
    lookup_value_regex = PK_PATTERN

    def get_queryset(self) -> QuerySet[Any]:
        """The jobs the caller may see; for the task list, the tasks it lists (what its filters apply to)."""
        if self.action == "tasks":
            return Task.objects.none() if self.is_schema_view else task_queryset().filter(job=self.get_object())
        if self.is_schema_view:
            return Job.objects.none()
        return Job.objects.filter(cluster__in=self.visible_clusters()).select_related("requested_by")

    def get_object(self) -> Job:
        jobs = Job.objects.filter(cluster__in=self.visible_clusters()).select_related("requested_by")
        job = jobs.filter(pk=int(self.kwargs["pk"])).first()
        if job is None:
            raise NotFound(f"job {self.kwargs['pk']} not found")
        return job

    def retrieve(self, request: Request, pk: str) -> Response:
        """A job with its live progress and the most common reasons its tasks are waiting."""
        job = self.get_object()
        waiting = (
            Task.objects.filter(job=job, status__in=(Task.Status.WAITING, Task.Status.QUEUED))
            .exclude(waiting_reason="")
            .order_by()
            .values_list("waiting_reason")
            .annotate(n=Count("pk"))
            .order_by("-n", "waiting_reason")[:WAITING_REASONS_SHOWN]
        )
        context = {**self.get_serializer_context(), "progress": job_progress([job.pk]), "waiting": list(waiting)}
        return Response(JobDetailSerializer(job, context=context).data)

    @extend_schema(responses=TaskSerializer(many=True))
    @action(detail=True, methods=["get"], filterset_class=TaskFilter)
    def tasks(self, request: Request, pk: str) -> Response:
        """The job's tasks in plan order, each with its attempts (log tails; whole logs per attempt)."""
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset().order_by("key")))
        return self.get_paginated_response(TaskSerializer(page, many=True, context=self.get_serializer_context()).data)


@extend_schema(parameters=[TENANT_PARAMETER])
class TaskViewSet(VisibleThroughClusterMixin, viewsets.GenericViewSet):
    """Tasks of the clusters the caller may see."""

    serializer_class = TaskSerializer
    lookup_value_regex = PK_PATTERN

    def get_queryset(self) -> QuerySet[Task]:
        if self.is_schema_view:
            return Task.objects.none()
        return task_queryset().filter(job__cluster__in=self.visible_clusters())

    def get_object(self) -> Task:
        task = self.get_queryset().filter(pk=int(self.kwargs["pk"])).first()
        if task is None:
            raise NotFound(f"task {self.kwargs['pk']} not found")
        return task

    def retrieve(self, request: Request, pk: str) -> Response:
        """A task with every attempt it made."""
        return Response(TaskSerializer(self.get_object(), context=self.get_serializer_context()).data)

    @extend_schema(
        parameters=[OpenApiParameter("number", int, OpenApiParameter.PATH, description="Attempt number, from 1.")],
        responses=TaskAttemptDetailSerializer,
    )
    @action(detail=True, methods=["get"], url_path=r"attempts/(?P<number>[0-9]{1,5})")
    def attempt(self, request: Request, pk: str, number: str) -> Response:
        """One attempt with its whole output (redacted: no secret the engine knows of is in it)."""
        task = self.get_object()
        found = TaskAttempt.objects.filter(task=task, number=int(number)).first()
        if found is None:
            raise NotFound(f"task {task.pk} has no attempt {number}")
        return Response(TaskAttemptDetailSerializer(found, context=self.get_serializer_context()).data)


# --- preview -------------------------------------------------------------------------------------------------


@extend_schema(
    parameters=[
        TENANT_PARAMETER,
        OpenApiParameter("tasks", bool, description="Include the full task and edge lists even for large plans"),
    ],
    request=ClusterPreviewInputSerializer,
    responses=OpenApiTypes.OBJECT,
)
class ClusterPreviewApi(TenantScopedMixin, APIView):
    """Solve the layout, plan the create and price it, without creating anything.

    Answers 400 naming the field for bad input, and with the solver's reasons when no layout satisfies the
    template. Task and edge lists are included for plans of up to 2,000 tasks, or always with ``?tasks=true``.
    """

    parser_classes = [StrictJSONParser]

    def post(self, request: Request) -> Response:
        serializer = ClusterPreviewInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        preview = cluster_preview(user=request.user, tenant=self.tenant, request=serializer.to_request())
        return Response(preview.to_json(include_tasks=_flag(request, "tasks")))
