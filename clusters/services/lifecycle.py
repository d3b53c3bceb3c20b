"""Cluster lifecycle: create and delete, as jobs the engine runs (architecture.md §3), and who may act.

``cluster_create`` checks the tenant's quotas, solves and plans exactly as the preview does (it calls
``cluster_preview``), then in one transaction stores the cluster (pinned to the latest template and provider
versions, with its first lease), its nodes, the job and its plan, re-checks the quotas under a lock on the
tenant row, and starts the job. The ready tasks reach the broker through ``transaction.on_commit`` only
(``engine.job_start`` → ``clusters.engine.dispatch.enqueue``), so no worker ever sees an uncommitted row.

``cluster_delete`` plans a DELETE over every node that may still have a machine and starts it the same way.

Who may see or act on a cluster is decided in ``clusters.selectors``. Both services audit what they did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from clusters.engine import core as engine
from clusters.engine.dispatch import enqueue
from clusters.engine.pins import current_service_versions, pinned_service_documents
from clusters.engine.state import transition
from clusters.features.hooks import JobRequest, check_job_start
from clusters.features.leases import LeasePolicy, lease_end
from clusters.models import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TASK_TIMEOUT_SECONDS,
    UNFINISHED_JOB_STATUSES,
    Cluster,
    Job,
    Node,
)
from clusters.planning.planner import Operation, Plan, PlanError, plan, staged
from clusters.planning.specs import NodeSpec, service_spec
from clusters.selectors import cluster_require, live_clusters
from clusters.services.preview import PreviewRequest, cluster_preview, template_dns_suffix
from templates_app.models import CatalogVersion
from templates_app.services import catalog_view
from templates_app.validation import resolve_template
from tenants.errors import Conflict, NotFound, PermissionDenied
from tenants.models import Tenant
from tenants.selectors import user_role
from tenants.services import audit

ACTIVE_JOB_STATUSES = UNFINISHED_JOB_STATUSES


# --- quotas --------------------------------------------------------------------------------------------------


class QuotaExceeded(Conflict):
    """A create (or growth) that would take the tenant past ``max_clusters`` or ``max_nodes``."""

    code = "quota_exceeded"


def tenant_quota_check(*, tenant: Tenant, clusters: int, nodes: int, lock: bool, new: Cluster | None = None) -> None:
    """Raise QuotaExceeded when ``clusters`` more live clusters with ``nodes`` more nodes would exceed the
    tenant's quotas (null = unlimited); the error names the quota, its limit, what is in use and what was
    asked for. ``new`` is the caller's own, not yet committed cluster that makes the request: not "in use".

    With ``lock`` the tenant row is locked first (inside the caller's transaction), so two creates racing
    for the last slot are serialised: the second counts the first's cluster once the first commits. Nodes
    in use are the live clusters' nodes not yet deleted, so a half-deleted cluster frees what it freed.
    """
    limits = Tenant.objects.filter(pk=tenant.pk)
    if lock:
        limits = limits.select_for_update()
    max_clusters, max_nodes = limits.values_list("max_clusters", "max_nodes").get()
    live = live_clusters(tenant.pk)
    if new is not None:
        live = live.exclude(pk=new.pk)
    if max_clusters is not None and clusters:
        in_use = live.count()
        if in_use + clusters > max_clusters:
            raise QuotaExceeded(
                f"quota max_clusters of tenant {tenant.name} exceeded: {in_use} live cluster(s) in use, "
                f"{clusters} more requested, limit {max_clusters}",
                extra={"quota": {"name": "max_clusters", "limit": max_clusters, "in_use": in_use,
                                 "requested": clusters}},
            )  # fmt: skip
    if max_nodes is not None and nodes:
        in_use = Node.objects.filter(cluster__in=live).exclude(status=Node.Status.DELETED).count()
        if in_use + nodes > max_nodes:
            detail = f"{in_use} node(s) in use, {nodes} more requested, limit {max_nodes}"
            raise QuotaExceeded(
                f"quota max_nodes of tenant {tenant.name} exceeded: {detail}",
                fields={"numMachines": [f"exceeds the tenant's max_nodes quota: {detail}"]},
                extra={"quota": {"name": "max_nodes", "limit": max_nodes, "in_use": in_use, "requested": nodes}},
            )


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


def job_launch(
    *,
    cluster: Cluster,
    operation: Operation,
    user: Any,
    planned: Plan,
    nodes_by_key: Mapping[str, Node],
    limits: dict[str, int],
    before_start: Callable[[], None] | None = None,
) -> Job:
    """Store ``planned`` as a new job of ``cluster`` and start it: what create, delete and the day-2
    operations share. The caller has moved the cluster to pending inside its transaction and made the Node
    rows ``nodes_by_key`` names; ``before_start`` runs after the (bulk) inserts, just before the dispatch
    (create re-checks the quotas there, under the tenant lock, which it then holds only briefly).

    A plan without tasks (a delete of a cluster with no machine left, a stop of services that define no stop)
    completes the job at once (``engine.job_start``) and gives the cluster the operation's success status.
    The ready tasks reach the broker on commit only (``engine.job_start``).
    """
    job = Job.objects.create(cluster=cluster, operation=operation, requested_by=user, **limits)
    engine.job_persist_plan(job=job, plan=scheduled(planned), nodes_by_key=nodes_by_key)
    if before_start is not None:
        before_start()
    engine.job_start(job=job, on_ready=enqueue)  # an empty plan completes at once, with its events
    return job


def _latest_version(tenant: Tenant, kind: str, name: str) -> CatalogVersion:
    version = CatalogVersion.objects.filter(tenant=tenant, kind=kind, name=name).order_by("-version").first()
    if version is None:
        raise NotFound(f"{kind} {name} has no stored version")
    return version


def cluster_create(
    *, user: Any, tenant: Tenant, request: PreviewRequest, lease_ms: int | None = None, description: str = ""
) -> tuple[Cluster, Job]:
    """Create the cluster ``request`` describes and start its create job.

    ``lease_ms`` asks for a first lease shorter than the template's (``initialLeaseDuration``); None takes
    the template's. Raises PermissionDenied when ``user`` is not a member of ``tenant``, QuotaExceeded
    (checked before solving, and again under the tenant lock before storing), what ``cluster_preview``
    raises for a bad request, ApplicationError for a lease the template does not allow, Conflict when a
    policy hook vetoes the create or a live cluster of the tenant already has the name. The nodes are
    numbered and named as the preview showed them. Writes a ``create`` AuditEvent.
    """
    if user_role(user=user, tenant=tenant) is None:
        raise PermissionDenied(f"you are not a member of tenant {tenant.name}")
    # Early and unlocked, so an over-quota request is refused before the solver runs.
    tenant_quota_check(tenant=tenant, clusters=1, nodes=request.size, lock=False)
    preview = cluster_preview(user=user, tenant=tenant, request=request)
    check_job_start(
        JobRequest(tenant=tenant, user=user, operation=Operation.CREATE, cluster_name=request.name,
                   size=len(preview.nodes), template=preview.template, services=tuple(preview.services))
    )  # fmt: skip
    resolved, _ = resolve_template(request.template, catalog_view(tenant))
    config = request.config if request.config is not None else resolved["defaults"]["config"]
    dns_suffix = request.dns_suffix or template_dns_suffix(resolved) or ""
    lease = LeasePolicy.from_administration(resolved.get("administration")).initial_lease_ms(lease_ms)
    with transaction.atomic():
        now = timezone.now()
        template_version = _latest_version(tenant, "clustertemplates", preview.template)
        provider_version = _latest_version(tenant, "providers", preview.provider)
        try:
            with transaction.atomic():
                cluster = Cluster.objects.create(
                    tenant=tenant,
                    owner=user,
                    name=request.name,
                    description=description,
                    template_name=preview.template,
                    template_version=template_version,
                    provider_name=preview.provider,
                    provider_version=provider_version,
                    size=len(preview.nodes),
                    services=preview.services,
                    service_versions=current_service_versions(tenant.pk, preview.services),
                    provider_fields=preview.provider_fields,
                    config=config,
                    dns_suffix=dns_suffix,
                    expires_at=lease_end(now, lease) if lease else None,
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
        by_key = {spec.node_id: node for spec, node in zip(preview.nodes, nodes, strict=True)}
        # The quotas again, under the tenant lock (held to commit, as job_start's dispatch holds it anyway): a
        # concurrent create either committed before (and is counted) or waits here. Checked after the plan
        # is stored so the lock is held only for the short tail of the transaction, not the bulk inserts
        # (which would stall the dispatch of the tenant's other jobs); refused, everything rolls back.
        job = job_launch(
            cluster=cluster, operation=Operation.CREATE, user=user, planned=preview.plan, nodes_by_key=by_key,
            limits=job_limits(resolved),
            before_start=lambda: tenant_quota_check(tenant=tenant, clusters=1, nodes=len(preview.nodes), lock=True,
                                                    new=cluster),
        )  # fmt: skip
        audit(tenant=tenant, actor=user, action="create", kind="cluster", name=cluster.name,
              summary={"cluster": cluster.pk, "job": job.pk, "template": preview.template,
                       "provider": preview.provider, "size": cluster.size,
                       "expires_at": cluster.expires_at.isoformat() if cluster.expires_at else None})  # fmt: skip
    job.refresh_from_db()
    return cluster, job


def cluster_delete(*, user: Any, cluster: Cluster, reason: str = "") -> Job:
    """Start deleting every machine of ``cluster``; returns the delete job.

    ``user`` None is Loom itself (the lease janitor, with a ``reason``); a user must be allowed to delete
    the cluster (NotFound / PermissionDenied otherwise). Raises Conflict when a job of the cluster is still
    running (naming it), the cluster is already terminated, or a policy hook vetoes the delete. Nodes
    already deleted are left out; nodes whose create failed are included, since a lost create reply may
    have left a machine (the runner finds it by tag). Writes a ``delete`` AuditEvent.
    """
    if user is not None:
        cluster_require(user=user, cluster=cluster, action="delete")
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
        job = job_launch(cluster=locked, operation=Operation.DELETE, user=user, planned=planned,
                         nodes_by_key={node.node_key: node for node in nodes}, limits=limits)  # fmt: skip
        audit(tenant=locked.tenant, actor=user, action="delete", kind="cluster", name=locked.name,
              summary={"cluster": locked.pk, "job": job.pk, "reason": reason or None})  # fmt: skip
    job.refresh_from_db()
    return job
