"""What the pages read, gathered in one place so views stay thin and never touch models themselves.

Everything here starts from the restricted selectors (``clusters_for``, ``tenant_list``, the catalog's
``restrict``), so a page can only ever show what the API would show the same user: another tenant's cluster
is "not found". Per-page data (latest jobs, progress) is fetched in bulk, as the API does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.db.models import Prefetch, QuerySet

from clusters.features.leases import Lease, cluster_lease
from clusters.models import Cluster, Job, Node, Task, TaskAttempt, TaskEdge
from clusters.planning.macros import MacroContext, MacroError, expand_string
from clusters.planning.planner import Action
from clusters.planning.specs import NodeSpec
from clusters.selectors import JobProgress, clusters_for, job_progress, latest_jobs
from clusters.services.lifecycle import ACTIVE_JOB_STATUSES
from clusters.services.preview import PreviewRequest, cluster_preview
from templates_app.models import ClusterTemplate
from templates_app.services import catalog_view
from templates_app.validation import resolve_template, template_launch_reasons
from tenants.errors import ApplicationError, NotFound
from tenants.models import ApiToken, Role, Tenant
from tenants.selectors import api_token_list, tenant_list, user_role

CLUSTERS_PER_PAGE = 25
PICTURE_TASK_LIMIT = 400
"""Above this many tasks the Gantt shows the first ones only and the DAG shows stages, not tasks."""


# --- tenants -------------------------------------------------------------------------------------------------


def tenants_for(*, user: Any) -> list[Tenant]:
    return list(tenant_list(user=user).order_by("name"))


def is_tenant_admin(*, user: Any, tenant: Tenant | None) -> bool:
    return tenant is not None and user_role(user=user, tenant=tenant) == Role.ADMIN


def tokens_for(*, user: Any) -> QuerySet[ApiToken]:
    return api_token_list(user=user).order_by("-created_at")


def token_for(*, user: Any, pk: int) -> ApiToken:
    token = api_token_list(user=user).filter(pk=pk).first()
    if token is None:
        raise NotFound(f"token {pk} not found")
    return token


# --- catalog -------------------------------------------------------------------------------------------------


@dataclass
class CatalogEntry:
    """A template as the catalog page shows it: resolved defaults, size limits, a priced default layout, and
    why it cannot launch when it cannot (the card then shows the reasons instead of a create button)."""

    name: str
    description: str
    version: int
    defaults: dict[str, Any]
    size_min: int
    size_max: int | None
    default_size: int
    hourly_cost: float | None = None
    cost_note: str = ""
    launch_reasons: list[str] = field(default_factory=list)
    currency: str = field(default_factory=lambda: settings.LOOM_COST_CURRENCY)


def _size_limits(resolved: dict[str, Any]) -> tuple[int, int | None]:
    size = (resolved.get("constraints") or {}).get("size") or {}
    return max(int(size.get("min") or 1), 1), (int(size["max"]) if size.get("max") else None)


def catalog_entries(*, user: Any, tenant: Tenant) -> list[CatalogEntry]:
    """The templates ``user`` may launch in ``tenant``; each priced by previewing it at its smallest size.

    The cost comes from the same ``cluster_preview`` a create runs, so what the catalog says an hour costs
    is what the create page will say for the same size; a template that cannot launch (or be previewed)
    says why, with the reasons the API gives."""
    templates = ClusterTemplate.objects.restrict(user, "view").filter(tenant=tenant).order_by("name")
    view = catalog_view(tenant)
    entries = []
    for template in templates:
        resolved, problems = resolve_template(template.name, view)
        if problems.errors:
            messages = [f"{p.field}: {p.message}" if p.field else p.message for p in problems.errors]
            entries.append(CatalogEntry(template.name, template.description, template.version, {}, 1, None, 1,
                                        launch_reasons=messages))  # fmt: skip
            continue
        low, high = _size_limits(resolved)
        entry = CatalogEntry(
            name=template.name,
            description=resolved.get("description") or template.description,
            version=template.version,
            defaults=resolved.get("defaults") or {},
            size_min=low,
            size_max=high,
            default_size=low,
            launch_reasons=template_launch_reasons(template.name, view),
        )
        if entry.launch_reasons:
            entries.append(entry)
            continue
        try:
            total, unknown, entry.default_size = _cheapest_preview(user, tenant, template.name, low, high)
        except ApplicationError as error:
            entry.cost_note = error.message
        else:
            entry.hourly_cost = total
            if unknown:
                entry.cost_note = f"no cost known for {', '.join(unknown)}"
        entries.append(entry)
    return entries


SIZE_PROBES = 8


def _cheapest_preview(
    user: Any, tenant: Tenant, name: str, low: int, high: int | None
) -> tuple[float | None, list[str], int]:
    """(cost, hardware types without a cost, size) of the smallest size that has a layout, trying up to
    ``SIZE_PROBES`` sizes from the template's minimum: a template without a size constraint may still need
    several nodes (services that cannot share one), and its minimum of 1 would then price nothing."""
    top = min(high or low + SIZE_PROBES - 1, low + SIZE_PROBES - 1)
    for size in range(low, top + 1):
        try:
            preview = cluster_preview(user=user, tenant=tenant, request=PreviewRequest("catalog", name, size))
        except ApplicationError as error:
            if "layout" not in error.fields or size == top:
                raise
            continue
        total, unknown = preview.hourly_cost()
        return total, unknown, size
    raise ApplicationError(f"no layout of {name} between {low} and {top} machines")


def template_resolved(*, user: Any, tenant: Tenant, name: str) -> dict[str, Any]:
    """A template the user may see, with ``extends`` and ``includes`` applied (NotFound otherwise)."""
    if not ClusterTemplate.objects.restrict(user, "view").filter(tenant=tenant, name=name).exists():
        raise NotFound(f"cluster template {name} not found")
    resolved, problems = resolve_template(name, catalog_view(tenant))
    if problems.errors:
        raise ApplicationError(problems.errors[0].message, fields={"template": [p.message for p in problems.errors]})
    return resolved


def catalog_names(*, user: Any, tenant: Tenant) -> dict[str, list[str]]:
    """Names the create form offers: templates the user may see, and the tenant's providers, hardware and
    image types and services (members may read the whole catalog)."""
    view = catalog_view(tenant)
    templates = ClusterTemplate.objects.restrict(user, "view").filter(tenant=tenant).order_by("name")
    return {
        "templates": list(templates.values_list("name", flat=True)),
        **{kind: sorted(view[kind]) for kind in ("providers", "hardwaretypes", "imagetypes", "services")},
    }


# --- clusters ------------------------------------------------------------------------------------------------


@dataclass
class ClusterRow:
    cluster: Cluster
    job: Job | None
    progress: JobProgress | None


def cluster_rows(*, user: Any, tenant: Tenant, filters: dict[str, str], page: int) -> tuple[Page, list[ClusterRow]]:
    """One page of the clusters ``user`` sees in ``tenant``, newest first, each with its latest job's progress.

    ``filters``: ``live`` ("true" live only, "false" terminated only, else all), ``status``, ``template``,
    ``name`` (contains). Three queries whatever the page size."""
    clusters = clusters_for(user=user).filter(tenant=tenant).select_related("owner").order_by("-created_at", "-pk")
    live = filters.get("live")
    if live == "true":
        clusters = clusters.exclude(status=Cluster.Status.TERMINATED)
    elif live == "false":
        clusters = clusters.filter(status=Cluster.Status.TERMINATED)
    if filters.get("status"):
        clusters = clusters.filter(status=filters["status"])
    if filters.get("template"):
        clusters = clusters.filter(template_name=filters["template"])
    if filters.get("name"):
        clusters = clusters.filter(name__icontains=filters["name"])
    paged = Paginator(clusters, CLUSTERS_PER_PAGE).get_page(page)
    jobs = latest_jobs([cluster.pk for cluster in paged])
    progress = job_progress(job.pk for job in jobs.values())
    rows = []
    for cluster in paged:
        job = jobs.get(cluster.pk)
        rows.append(ClusterRow(cluster, job, progress.get(job.pk) if job else None))
    return paged, rows


def cluster_for_page(*, user: Any, pk: int, action: str = "view") -> Cluster:
    """A cluster ``user`` may ``action``, in whichever of their tenants it is; NotFound otherwise (another
    tenant's cluster, or a member's cluster they were not granted)."""
    cluster = (
        clusters_for(user=user, action="view")
        .filter(pk=pk)
        .select_related("tenant", "owner", "template_version", "provider_version")
        .first()
    )
    if cluster is None:
        raise NotFound(f"cluster {pk} not found")
    return cluster


def may_change(*, user: Any, cluster: Cluster) -> bool:
    return clusters_for(user=user, action="change").filter(pk=cluster.pk).exists()


@dataclass
class NodeHistory:
    """One node with every task run on it in the cluster's jobs, newest job first, failures with output."""

    node: Node
    tasks: list[Task] = field(default_factory=list)


@dataclass
class RoleGroup:
    services: list[str]
    hardware: str
    image: str
    nodes: list[NodeHistory]


@dataclass
class ClusterLive:
    """Everything the live part of a cluster page shows, read in a fixed number of queries."""

    cluster: Cluster
    job: Job | None
    progress: JobProgress | None
    roles: list[RoleGroup]
    tasks: list[Task]
    edges: list[tuple[int, int]]
    lease: Lease
    links: list[dict[str, str]]
    jobs: list[Job]

    @property
    def is_busy(self) -> bool:
        return self.job is not None and self.job.status in ACTIVE_JOB_STATUSES

    @property
    def is_settling(self) -> bool:
        """Still worth polling: a job is active, or the cluster has not taken its final status yet."""
        return self.is_busy or self.cluster.status == Cluster.Status.PENDING


def _node_spec(node: Node) -> NodeSpec:
    return NodeSpec(node_id=node.node_key, number=node.number, hardware=node.hardware, image=node.image,
                    services=frozenset(node.services), hostname=node.hostname,
                    ip_addresses=node.ip_addresses or {})  # fmt: skip


def expanded_links(cluster: Cluster, nodes: list[Node]) -> list[dict[str, str]]:
    """The template's links with their macros expanded on the live nodes; a link whose macro cannot be
    expanded yet (a node without an address) says so instead of showing a half-made URL."""
    document = cluster.template_version.document or {}
    live = [_node_spec(node) for node in nodes if node.status != Node.Status.DELETED]
    if not live:
        return []
    context = MacroContext(nodes=live, owner=cluster.owner.get_username())
    links = []
    for link in document.get("links") or []:
        label, url = str(link.get("label") or link.get("url") or ""), str(link.get("url") or "")
        try:
            links.append({"label": label, "url": expand_string(url, context=context, node=live[0])})
        except MacroError as error:
            links.append({"label": label, "url": "", "problem": error.message})
    return links


def cluster_live(*, cluster: Cluster, job_pk: int | None = None) -> ClusterLive:
    """The cluster's nodes by role with each node's task history, and one job (the latest unless
    ``job_pk``) with its tasks, attempts and edges for the pictures."""
    cluster.refresh_from_db(fields=["status", "status_message", "size", "services", "expires_at", "config"])
    jobs = list(Job.objects.filter(cluster=cluster).select_related("requested_by").order_by("-pk")[:20])
    job = next((j for j in jobs if j.pk == job_pk), None) if job_pk else (jobs[0] if jobs else None)
    if job_pk and job is None:
        job = Job.objects.filter(cluster=cluster, pk=job_pk).select_related("requested_by").first()
        if job is None:
            raise NotFound(f"job {job_pk} of cluster {cluster.pk} not found")
    nodes = list(Node.objects.filter(cluster=cluster).order_by("number"))
    attempts = TaskAttempt.objects.defer("log").order_by("number")
    history = (
        Task.objects.filter(node__cluster=cluster)
        .exclude(action=Action.JOIN)
        .select_related("job")
        .prefetch_related(Prefetch("task_attempts", queryset=attempts))
        .order_by("-job_id", "key")
    )
    by_node: dict[int, list[Task]] = defaultdict(list)
    job_tasks: list[Task] = []
    for task in history:
        by_node[task.node_id or 0].append(task)
        if job is not None and task.job_id == job.pk:
            job_tasks.append(task)
    if job is not None:  # tasks without a node (none today, but the model allows them)
        job_tasks += list(
            Task.objects.filter(job=job, node__isnull=True)
            .exclude(action=Action.JOIN)
            .prefetch_related(Prefetch("task_attempts", queryset=attempts))
        )
    groups: dict[tuple[str, ...], RoleGroup] = {}
    for node in nodes:
        key = (node.hardware, node.image, *sorted(node.services))
        group = groups.setdefault(key, RoleGroup(sorted(node.services), node.hardware, node.image, []))
        group.nodes.append(NodeHistory(node, by_node.get(node.pk, [])))
    edges: list[tuple[int, int]] = []
    if job is not None and len(job_tasks) <= PICTURE_TASK_LIMIT:
        edges = list(TaskEdge.objects.filter(job=job).values_list("predecessor__key", "successor__key"))
    progress = job_progress([job.pk])[job.pk] if job is not None else None
    return ClusterLive(
        cluster=cluster,
        job=job,
        progress=progress,
        roles=list(groups.values()),
        tasks=sorted(job_tasks, key=lambda t: t.key),
        edges=edges,
        lease=cluster_lease(cluster),
        links=expanded_links(cluster, nodes),
        jobs=jobs,
    )


def job_join_keys(job: Job) -> dict[int, int]:
    """JOIN points of ``job`` (key → stage): the DAG picture draws edges through them as small dots."""
    return dict(Task.objects.filter(job=job, action=Action.JOIN).values_list("key", "stage"))


def task_counts(job: Job, statuses: tuple[str, ...]) -> int:
    return Task.objects.filter(job=job, status__in=statuses).exclude(action=Action.JOIN).count()


def live_nodes(cluster: Cluster) -> list[Node]:
    return list(Node.objects.filter(cluster=cluster).exclude(status=Node.Status.DELETED).order_by("number"))


def node_numbers(cluster: Cluster) -> list[tuple[int, str]]:
    return [(node.number, node.hostname) for node in live_nodes(cluster)]


def node_health(cluster: Cluster) -> list[tuple[int, str, str]]:
    """(number, hostname, health) of every live node, for the repair form."""
    return [(node.number, node.hostname, node.health) for node in live_nodes(cluster)]
