"""Cluster lifecycle: create and delete, as jobs the engine runs (architecture.md §3).

``cluster_create`` solves and plans exactly as the preview does (it calls ``cluster_preview``), then in one
transaction stores the cluster (pinned to the latest template and provider versions), its nodes, the job
and its plan, and starts the job. The ready tasks reach the broker through ``transaction.on_commit`` only
(``engine.job_start`` → ``clusters.tasks.enqueue``), so no worker ever sees an uncommitted row.

``cluster_delete`` plans a DELETE over every node that may still have a machine and starts it the same way.
Quotas and leases are not handled here.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from templates_app.models import CatalogVersion
from templates_app.services import catalog_view
from templates_app.validation import resolve_template
from tenants.errors import Conflict, NotFound
from tenants.models import Tenant

from .. import engine
from ..hooks import JobRequest, check_job_start
from ..models import DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_TIMEOUT_SECONDS, Cluster, Job, Node
from ..pins import current_service_versions, pinned_service_documents
from ..planner import Operation, Plan, PlanError, plan, staged
from ..specs import NodeSpec, service_spec
from ..state import transition
from ..tasks import enqueue
from .preview import PreviewRequest, cluster_preview, template_dns_suffix

ACTIVE_JOB_STATUSES = (Job.Status.NOT_STARTED, Job.Status.RUNNING, Job.Status.PAUSED)


def job_limits(template_document: dict[str, Any]) -> dict[str, int]:
    """``Job`` fields from the template's administration section: attempts per task and task timeout."""
    administration = template_document.get("administration") or {}
    timeout_ms = administration.get("tasktimeout")
    return {
        "max_attempts": administration.get("maxattempts") or DEFAULT_MAX_ATTEMPTS,
        "task_timeout_seconds": max(1, timeout_ms // 1000) if timeout_ms else DEFAULT_TASK_TIMEOUT_SECONDS,
    }


def scheduled(planned: Plan) -> Plan:
    """The plan as the engine should run it: as is (``dag``), or with the original's stage barriers."""
    return staged(planned) if settings.LOOM_SCHEDULING == "staged" else planned


def _latest_version(tenant: Tenant, kind: str, name: str) -> CatalogVersion:
    version = CatalogVersion.objects.filter(tenant=tenant, kind=kind, name=name).order_by("-version").first()
    if version is None:
        raise NotFound(f"{kind} {name} has no stored version")
    return version


def cluster_create(*, user: Any, tenant: Tenant, request: PreviewRequest) -> tuple[Cluster, Job]:
    """Create the cluster ``request`` describes and start its create job.

    Raises what ``cluster_preview`` raises for a bad request, and Conflict when a live cluster of the tenant
    already has the name. The nodes are numbered and named as the preview showed them.
    """
    preview = cluster_preview(user=user, tenant=tenant, request=request)
    check_job_start(
        JobRequest(tenant=tenant, user=user, operation=Operation.CREATE, cluster_name=request.name,
                   size=len(preview.nodes), template=preview.template, services=tuple(preview.services))
    )  # fmt: skip
    resolved, _ = resolve_template(request.template, catalog_view(tenant))
    config = request.config if request.config is not None else resolved["defaults"]["config"]
    dns_suffix = request.dns_suffix or template_dns_suffix(resolved) or ""
    with transaction.atomic():
        template_version = _latest_version(tenant, "clustertemplates", preview.template)
        provider_version = _latest_version(tenant, "providers", preview.provider)
        try:
            with transaction.atomic():
                cluster = Cluster.objects.create(
                    tenant=tenant,
                    owner=user,
                    name=request.name,
                    template_name=preview.template,
                    template_version=template_version,
                    provider_name=preview.provider,
                    provider_version=provider_version,
                    size=len(preview.nodes),
                    services=preview.services,
                    service_versions=current_service_versions(tenant.pk, preview.services),
                    config=config,
                    dns_suffix=dns_suffix,
                )
        except IntegrityError as error:
            raise Conflict(f"a cluster named {request.name} already exists") from error
        nodes = Node.objects.bulk_create(
            [
                Node(
                    cluster=cluster,
                    number=spec.number,
                    hostname=spec.hostname,
                    hardware=spec.hardware,
                    image=spec.image,
                    flavor=preview.flavors[spec.hardware],
                    image_id=preview.images[spec.image][0],
                    ssh_user=preview.images[spec.image][1] or "",
                    services=sorted(spec.services),
                )
                for spec in preview.nodes
            ]
        )
        job = Job.objects.create(cluster=cluster, operation=Operation.CREATE, requested_by=user, **job_limits(resolved))
        by_key = {spec.node_id: node for spec, node in zip(preview.nodes, nodes, strict=True)}
        engine.job_persist_plan(job=job, plan=scheduled(preview.plan), nodes_by_key=by_key)
        engine.job_start(job=job, on_ready=enqueue)
    job.refresh_from_db()
    return cluster, job


def cluster_delete(*, user: Any, cluster: Cluster) -> Job:
    """Start deleting every machine of ``cluster``; returns the delete job.

    Raises Conflict when a job of the cluster is still running (naming it) or the cluster is already
    terminated. Nodes already deleted are left out; nodes whose create failed are included, since a lost
    create reply may have left a machine (the runner finds it by tag).
    """
    with transaction.atomic():
        locked = Cluster.objects.select_for_update().get(pk=cluster.pk)
        running = Job.objects.filter(cluster_id=locked.pk, status__in=ACTIVE_JOB_STATUSES).order_by("-pk").first()
        if running is not None:
            raise Conflict(f"cluster {locked.name} has {running.operation} job {running.pk} {running.status}")
        if locked.status == Cluster.Status.TERMINATED:
            raise Conflict(f"cluster {locked.name} is already terminated")
        check_job_start(
            JobRequest(tenant=locked.tenant, user=user, operation=Operation.DELETE, cluster_name=locked.name,
                       cluster_id=locked.pk, size=locked.size, template=locked.template_name,
                       services=tuple(locked.services))
        )  # fmt: skip
        nodes = list(Node.objects.filter(cluster_id=locked.pk).exclude(status=Node.Status.DELETED))
        specs = [
            NodeSpec(node_id=node.node_key, number=node.number, hardware=node.hardware, image=node.image,
                     services=frozenset(node.services), hostname=node.hostname)
            for node in nodes
        ]  # fmt: skip
        names = {service for node in nodes for service in node.services}
        services = {name: service_spec(doc) for name, doc in pinned_service_documents(locked, names).items()}
        try:
            planned = plan(before=specs, after=[], operation=Operation.DELETE, services=services)
        except PlanError as error:
            raise Conflict(f"the delete cannot be planned: {error}") from error
        if not transition(Cluster, locked.pk, to=Cluster.Status.PENDING, extra_updates={"status_message": ""}):
            raise Conflict(f"cluster {locked.name} cannot be deleted from {locked.status}")
        template = CatalogVersion.objects.filter(pk=locked.template_version_id).values_list("document", flat=True)
        limits = job_limits(template.first() or {})
        job = Job.objects.create(cluster=locked, operation=Operation.DELETE, requested_by=user, **limits)
        engine.job_persist_plan(job=job, plan=scheduled(planned), nodes_by_key={node.node_key: node for node in nodes})
        if not planned.tasks:
            # Nothing to delete: the job is complete at once.
            transition(Job, job.pk, to=Job.Status.RUNNING)
            transition(Job, job.pk, to=Job.Status.COMPLETED)
            transition(Cluster, locked.pk, to=Cluster.Status.TERMINATED)
        else:
            engine.job_start(job=job, on_ready=enqueue)
    job.refresh_from_db()
    return job
