"""Read side of clusters: who may see or act on which cluster, live clusters, and job progress.

Used by the API, the services and (later) the pages, so every reader applies the same rules: a cluster is
visible to its owner, the tenant's admins and holders of a django-guardian grant; another tenant's cluster
is "not found", never "forbidden".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Case, Count, IntegerField, Max, Min, OuterRef, QuerySet, Subquery, Value, When

from clusters.engine import core as engine
from clusters.models import HEALTH_SEVERITY, Cluster, Health, HealthEvent, Job, Node, Task
from clusters.planning.planner import Action
from tenants.errors import NotFound, PermissionDenied
from tenants.models import Tenant

# --- who may see and act on a cluster ------------------------------------------------------------------------


def clusters_for(*, user: Any, action: str = "view") -> QuerySet[Cluster]:
    """The clusters ``user`` may ``action`` (view, change or delete), in every tenant they belong to: their
    own, all of the tenants they administer, and those a django-guardian grant names (``restrict``)."""
    return Cluster.objects.restrict(user, action)


def cluster_require(*, user: Any, cluster: Cluster, action: str) -> None:
    """Raise unless ``user`` may ``action`` ``cluster``: NotFound when they cannot even see it (another
    tenant's cluster, or someone else's), PermissionDenied when they see it but may not act on it."""
    if action != "view" and clusters_for(user=user, action=action).filter(pk=cluster.pk).exists():
        return
    if not clusters_for(user=user, action="view").filter(pk=cluster.pk).exists():
        raise NotFound(f"cluster {cluster.pk} not found")
    if action != "view":
        raise PermissionDenied(
            f"you may view cluster {cluster.name} but not {action} it; its owner or a tenant admin can"
        )


def cluster_get(*, user: Any, tenant: Tenant, pk: int, action: str = "view") -> Cluster:
    """Cluster ``pk`` of ``tenant`` if ``user`` may ``action`` it (see ``cluster_require``)."""
    cluster = (
        Cluster.objects.filter(tenant=tenant, pk=pk)
        .select_related("owner", "template_version", "provider_version")
        .first()
    )
    if cluster is None:
        raise NotFound(f"cluster {pk} not found")
    cluster_require(user=user, cluster=cluster, action=action)
    return cluster


def live_clusters(tenant_id: int) -> QuerySet[Cluster]:
    """Clusters that count against the quotas: every one not terminated (any of them may hold machines)."""
    return Cluster.objects.filter(tenant_id=tenant_id).exclude(status=Cluster.Status.TERMINATED)


# --- progress of jobs, for display ---------------------------------------------------------------------------

_UNFINISHED = frozenset(engine.UNFINISHED_TASK_STATUSES)


@dataclass(frozen=True)
class JobProgress:
    """How far a job is: its real tasks (JOIN points left out) by status, the share completed, and the
    lowest stage that still has unfinished work (None once nothing is left) out of ``stages``."""

    tasks: dict[str, int] = field(default_factory=dict)
    total: int = 0
    completed: int = 0
    percent: float = 0.0
    stage: int | None = None
    stages: int = 0


def job_progress(job_ids: Iterable[int]) -> dict[int, JobProgress]:
    """Progress of every job in ``job_ids`` from one grouped query (index ``task_job_status``), so a page of
    clusters or jobs costs the same whatever its size. Jobs without tasks get an empty progress."""
    ids = list(dict.fromkeys(job_ids))
    rows = (
        Task.objects.filter(job_id__in=ids)
        .exclude(action=Action.JOIN)
        .order_by()
        .values("job_id", "status")
        .annotate(n=Count("pk"), low=Min("stage"), high=Max("stage"))
    )
    grouped: dict[int, list[dict[str, Any]]] = {pk: [] for pk in ids}
    for row in rows:
        grouped[row["job_id"]].append(row)
    progress = {}
    for pk, job_rows in grouped.items():
        counts = {str(row["status"]): row["n"] for row in job_rows}
        total = sum(counts.values())
        completed = counts.get(Task.Status.COMPLETED, 0)
        unfinished = [row["low"] for row in job_rows if row["status"] in _UNFINISHED]
        progress[pk] = JobProgress(
            tasks=dict(sorted(counts.items())),
            total=total,
            completed=completed,
            percent=round(100 * completed / total, 1) if total else 0.0,
            stage=min(unfinished) if unfinished else None,
            stages=max((row["high"] + 1 for row in job_rows), default=0),
        )
    return progress


def latest_jobs(cluster_pks: list[int]) -> dict[int, Job]:
    """The latest job of each cluster, in one query."""
    latest = Job.objects.filter(cluster_id=OuterRef("cluster_id")).order_by("-pk").values("pk")[:1]
    jobs = Job.objects.filter(cluster_id__in=cluster_pks, pk=Subquery(latest)).select_related("requested_by")
    return {job.cluster_id: job for job in jobs}


HEALTH_HISTORY_LIMIT = 100


def cluster_health(*, cluster: Cluster) -> dict[str, Any]:
    """The cluster's health, its nodes that are not healthy (worst first, then by number; not those never
    checked) and its latest
    health changes (``HEALTH_HISTORY_LIMIT``, newest first). The caller has checked the user may view it."""
    order = Case(
        *(When(health=state, then=Value(-rank)) for state, rank in HEALTH_SEVERITY.items()), output_field=IntegerField()
    )
    live = Node.objects.filter(cluster_id=cluster.pk).exclude(status=Node.Status.DELETED)
    # Unknown without a reason is a node not checked yet: noise here. Unknown with one is a check that could not
    # tell (the provider could not be listed), which a user needs to see.
    unhealthy = live.exclude(health=Health.HEALTHY).exclude(health=Health.UNKNOWN, health_message="")
    history = HealthEvent.objects.filter(cluster_id=cluster.pk).select_related("node")[:HEALTH_HISTORY_LIMIT]
    return {"cluster": cluster, "nodes": list(unhealthy.order_by(order, "number")), "history": list(history)}


def _group(name: str) -> str:
    """An Ansible group name (letters, digits and underscores, not starting with a digit)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def cluster_inventory(*, cluster: Cluster) -> dict[str, Any]:
    """The cluster's live nodes as an Ansible JSON inventory (the ``--list`` answer of an inventory script):
    a group per service (``nginx``), per role (``role_base_nginx``: the nodes with exactly those services) and
    ``loom_<cluster>`` for them all; ``_meta.hostvars`` per node: how to reach it (``ansible_host``,
    ``ansible_port``, ``ansible_user``) and what Loom knows of it (number, services, addresses, pinned host key,
    health). Hosts are the nodes' hostnames. No credential is in it: SSH keys stay where the provider put them."""
    nodes = list(Node.objects.filter(cluster_id=cluster.pk, status=Node.Status.ACTIVE).order_by("number"))
    groups: dict[str, list[str]] = {}
    hostvars: dict[str, dict[str, Any]] = {}
    for node in nodes:
        addresses = node.ip_addresses or {}
        hostvars[node.hostname] = {
            "ansible_host": addresses.get("access_v4", ""),
            "ansible_port": node.ssh_port or 22,
            "ansible_user": node.ssh_user or "root",
            "loom_node": node.number,
            "loom_services": sorted(node.services),
            "loom_bind_v4": addresses.get("bind_v4", addresses.get("access_v4", "")),
            "loom_host_key": node.host_key,
            "loom_health": node.health,
        }
        for service in sorted(node.services):
            groups.setdefault(_group(service), []).append(node.hostname)
        groups.setdefault(_group("role_" + "_".join(sorted(node.services)) if node.services else "role_none"),
                          []).append(node.hostname)  # fmt: skip
    everything = _group(f"loom_{cluster.name}")
    inventory: dict[str, Any] = {
        "_meta": {"hostvars": hostvars},
        "all": {"children": ["ungrouped", everything, *sorted(groups)],
                "vars": {"loom_cluster": cluster.name, "loom_cluster_id": cluster.pk}},
        everything: {"hosts": [node.hostname for node in nodes]},
        "ungrouped": {"hosts": []},
    }  # fmt: skip
    inventory.update({name: {"hosts": hosts} for name, hosts in sorted(groups.items())})
    return inventory
