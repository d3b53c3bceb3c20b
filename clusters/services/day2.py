"""Day-2 operations on a running cluster: reconfigure, start/stop/restart services, add and remove services,
scale out and in, and sync to the latest version of the cluster's template (issue 6).

Every operation goes the same way, solver → planner → engine:

1. ``_ClusterState`` reads the cluster once: its live nodes (as ``NodeSpec``, keyed by ``node_key``), its
   template as it pinned it (resolved against today's partial templates), the provider's hardware and
   image mappings, and the service definitions (the pinned versions of the cluster's services, the live
   catalog for services it does not have yet).
2. An operation's builder turns the request into a ``Day2Change``: the layout after the change (from
   ``solver.solve_change`` when the layout changes: existing nodes keep hardware, image and services), the
   concrete before/after node lists, the plan (``planner.plan``) and what the cluster row becomes. Bad input
   raises ``ApplicationError`` naming the field; an impossible layout names the clashing constraints.
3. ``preview=True`` stops there and returns the change (what tasks run on which nodes, which services
   restart, which nodes come and go). Otherwise ``_launch`` does it again under a lock on the cluster row
   (so nothing moved in between), runs the policy hooks, checks the node quota for growth, stores the new
   desired state (cluster services, pins, config, size; new node rows; nodes' new service lists), stores
   the plan as a job and starts it, and audits, all in one transaction.

The desired state is written when the job starts, not when it ends. The runner reads the cluster config
and the nodes' services while tasks run (a reconfigure's configure tasks need the new config; macros of a
scale-out must see the new nodes), and a failed job leaves the cluster ``inconsistent`` with the state it
was heading for, so the existing retry (``engine.job_retry``) finishes the same change: it re-runs only
the failed and dropped tasks. Nothing is ever left pending: every refusal happens before anything is
written, and the engine fails the job (never hangs it) when a task cannot be done.

A cluster accepts a day-2 operation when no job of it is active (409 naming the job otherwise), when it is
``active`` or ``inconsistent``, and when every live node has its machine (a failed scale-out's unbuilt
node must first be finished by a retry; building on it would fail every task that touches it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from clusters.engine.pins import current_service_versions, pinned_service_documents
from clusters.engine.state import transition
from clusters.features.hooks import JobRequest, check_job_start
from clusters.models import Cluster, Health, Job, Node
from clusters.planning.macros import MacroContext, config_problems
from clusters.planning.naming import node_hostname
from clusters.planning.planner import Operation, Plan, PlanError, plan
from clusters.planning.solver import LayoutError, LayoutRequest, check_layout, solve_change
from clusters.planning.specs import (
    ClusterLayout,
    HardwareOption,
    ImageOption,
    NodeRole,
    NodeSpec,
    ServiceSpec,
    TemplateSpec,
    provider_options,
    service_spec,
    template_spec,
)
from clusters.selectors import cluster_require
from clusters.services.lifecycle import ACTIVE_JOB_STATUSES, job_launch, job_limits, tenant_quota_check
from clusters.services.preview import NODE_LIST_LIMIT, plan_json
from templates_app.models import CatalogVersion
from templates_app.services import catalog_view
from templates_app.validation import resolve_template
from tenants.errors import ApplicationError, Conflict
from tenants.services import audit

NEW_NODE_PREFIX = "new-"
"""Planner node ids of nodes a scale-out adds (existing nodes are known by their ``node_key``)."""

OPERABLE_STATUSES = (Cluster.Status.ACTIVE, Cluster.Status.INCONSISTENT)


# --- what a change is ----------------------------------------------------------------------------------------


@dataclass
class Day2Change:
    """What a day-2 operation would do to ``cluster``: nodes before and after, the plan, and the new state.

    ``config`` / ``template_version`` are None when unchanged. ``machines`` maps each new node's planner id
    to its (flavor, image id, ssh user) on the cluster's provider.
    """

    cluster: Cluster
    operation: Operation
    before: list[NodeSpec]
    after: list[NodeSpec]
    plan: Plan
    services: list[str]
    service_versions: dict[str, int]
    limits: dict[str, int]
    scope: frozenset[str] | None = None
    config: dict[str, Any] | None = None
    template_version: CatalogVersion | None = None
    machines: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def new_nodes(self) -> list[NodeSpec]:
        return [node for node in self.after if node.node_id.startswith(NEW_NODE_PREFIX)]

    @property
    def leaving(self) -> list[NodeSpec]:
        kept = {node.node_id for node in self.after}
        return [node for node in self.before if node.node_id not in kept]

    def changed_nodes(self) -> list[tuple[NodeSpec, NodeSpec]]:
        """(before, after) of the nodes that stay and whose services change."""
        after = {node.node_id: node for node in self.after}
        kept = [(node, after[node.node_id]) for node in self.before if node.node_id in after]
        return [(old, new) for old, new in kept if new.services != old.services]

    def restarts(self) -> dict[str, list[int]]:
        """Service → numbers of the nodes where it is stopped and started again."""
        numbers = {node.node_id: node.number for node in [*self.before, *self.after]}
        actions: dict[tuple[str, str], set[str]] = defaultdict(set)
        for task in self.plan.tasks:
            if task.service and task.node_id:
                actions[(task.service, task.node_id)].add(str(task.action))
        restarted: dict[str, list[int]] = defaultdict(list)
        for (service, node_id), done in actions.items():
            if {"stop", "start"} <= done:
                restarted[service].append(numbers[node_id])
        return {service: sorted(nodes) for service, nodes in sorted(restarted.items())}

    def to_json(self, *, include_tasks: bool = False) -> dict[str, Any]:
        """The preview a user confirms: sizes, services, nodes added / removed / changed, restarts, the plan."""
        before_services = sorted(self.cluster.services)
        result: dict[str, Any] = {
            "cluster": self.cluster.pk,
            "operation": str(self.operation),
            "size": {"before": len(self.before), "after": len(self.after)},
            "services": {
                "before": before_services,
                "after": self.services,
                "added": sorted(set(self.services) - set(before_services)),
                "removed": sorted(set(before_services) - set(self.services)),
                "scope": sorted(self.scope) if self.scope is not None else None,
            },
            "config_changed": self.config is not None and self.config != self.cluster.config,
            "nodes": {
                "added": [_node_json(n) for n in self.new_nodes[:NODE_LIST_LIMIT]],
                "removed": [_node_json(n) for n in self.leaving[:NODE_LIST_LIMIT]],
                "changed": [
                    {
                        "number": old.number,
                        "hostname": old.hostname,
                        "services_added": sorted(new.services - old.services),
                        "services_removed": sorted(old.services - new.services),
                    }
                    for old, new in self.changed_nodes()[:NODE_LIST_LIMIT]
                ],
            },
            "restarts": self.restarts(),
            "plan": plan_json(self.plan, [*self.before, *self.after], include_tasks=include_tasks),
            **self.details,
        }
        if self.config is not None:
            result["config"] = self.config
        if self.template_version is not None:
            result["template"] = {
                "name": self.cluster.template_name,
                "version": {"before": self.cluster.template_version.version, "after": self.template_version.version},
            }
        return result


def _node_json(node: NodeSpec) -> dict[str, Any]:
    return {"number": node.number, "hostname": node.hostname, "hardwaretype": node.hardware,
            "imagetype": node.image, "services": sorted(node.services)}  # fmt: skip


@dataclass(frozen=True)
class Day2Outcome:
    """What a day-2 service returns: the change, and the job that carries it out (None for a preview, or for
    a sync that only moves the template pin)."""

    change: Day2Change
    job: Job | None


# --- reading the cluster -------------------------------------------------------------------------------------


def _node_spec(node: Node) -> NodeSpec:
    """A live node for the planner and macros; missing addresses get placeholders, as a create's preview
    does, so a macro check does not fail for an address the node does not have (only its value is unknown)."""
    placeholder = {"bind_v4": f"ip-bind<{node.number}>", "access_v4": f"ip-access<{node.number}>"}
    return NodeSpec(node_id=node.node_key, number=node.number, hardware=node.hardware, image=node.image,
                    services=frozenset(node.services), hostname=node.hostname,
                    ip_addresses={**placeholder, **(node.ip_addresses or {})})  # fmt: skip


def _layout(nodes: Iterable[NodeSpec]) -> ClusterLayout:
    """Roles of identical nodes, in the order of their first node."""
    counts: dict[tuple[str, str, frozenset[str]], int] = {}
    for node in sorted(nodes, key=lambda n: n.number):
        key = (node.hardware, node.image, node.services)
        counts[key] = counts.get(key, 0) + 1
    return ClusterLayout(tuple(NodeRole(h, i, s, count) for (h, i, s), count in counts.items()))


class _ClusterState:
    """One cluster as a day-2 operation sees it (see the module docstring, step 1)."""

    def __init__(self, cluster: Cluster, *, template_document: dict[str, Any] | None = None) -> None:
        self.cluster = cluster
        self.nodes = list(Node.objects.filter(cluster_id=cluster.pk).exclude(status=Node.Status.DELETED))
        self.before = [_node_spec(node) for node in self.nodes]
        view = catalog_view(cluster.tenant)
        # The template as the cluster pinned it (a sync passes the latest), resolved against today's partials.
        view["clustertemplates"][cluster.template_name] = template_document or cluster.template_version.document
        resolved, problems = resolve_template(cluster.template_name, view)
        if problems.errors:
            raise Conflict(
                f"template {cluster.template_name} of cluster {cluster.name} cannot be resolved: "
                f"{problems.errors[0].message}"
            )
        self.resolved = resolved
        self.template: TemplateSpec = template_spec(resolved)
        self.hardware, self.images = provider_options(
            cluster.provider_name, view["hardwaretypes"].values(), view["imagetypes"].values()
        )
        documents = dict(view["services"])
        documents.update(pinned_service_documents(cluster, cluster.services))
        self.catalog: dict[str, ServiceSpec] = {name: service_spec(doc) for name, doc in documents.items()}

    def layout_request(self) -> LayoutRequest:
        return LayoutRequest(
            template=self.template,
            services=self.catalog,
            size=len(self.before),
            requested_services=tuple(sorted(self.cluster.services)),
            hardware_options=self.hardware,
            image_options=self.images,
            max_size=settings.LOOM_MAX_CLUSTER_SIZE,
            provider=self.cluster.provider_name,
        )

    def solve(self, field_name: str, **change: Any) -> ClusterLayout:
        try:
            return solve_change(request=self.layout_request(), existing=_layout(self.before), **change)
        except LayoutError as error:
            raise ApplicationError(
                f"{field_name}: no layout satisfies the template: {error.reasons[0]}",
                fields={field_name: list(error.reasons)},
            ) from error

    def change(
        self,
        operation: Operation,
        after: list[NodeSpec],
        *,
        scope: frozenset[str] | None = None,
        config: dict[str, Any] | None = None,
        field_name: str = "services",
        restarts: dict[str, frozenset[str]] | None = None,
        **extra: Any,
    ) -> Day2Change:
        """Plan ``operation`` from the current nodes to ``after``; the cluster's services follow the nodes."""
        services = sorted(frozenset().union(*(node.services for node in after))) if after else []
        try:
            planned = plan(before=self.before, after=after, operation=operation, services=self.catalog, scope=scope,
                           restarts=restarts)  # fmt: skip
        except PlanError as error:
            raise ApplicationError(f"{field_name}: {error}", fields={field_name: [str(error)]}) from error
        added = [name for name in services if name not in self.cluster.services]
        pins = {**self.cluster.service_versions, **current_service_versions(self.cluster.tenant_id, added)}
        return Day2Change(
            cluster=self.cluster, operation=operation, before=self.before, after=after, plan=planned,
            services=services, service_versions=pins, limits=job_limits(self.resolved), scope=scope, config=config,
            **extra,
        )  # fmt: skip


def check_operable(cluster: Cluster) -> None:
    """Raise Conflict unless a day-2 operation may start on ``cluster`` now (module docstring, last part)."""
    running = Job.objects.filter(cluster_id=cluster.pk, status__in=ACTIVE_JOB_STATUSES).order_by("-pk").first()
    if running is not None:
        raise Conflict(
            f"cluster {cluster.name} is busy: {running.operation} job {running.pk} is {running.status}",
            extra={"job": {"id": running.pk, "operation": running.operation, "status": running.status}},
        )
    if cluster.status not in OPERABLE_STATUSES:
        hint = "retry its create job or delete it" if cluster.status == Cluster.Status.INCOMPLETE else ""
        raise Conflict(
            f"cluster {cluster.name} is {cluster.status}; day-2 operations need an active or inconsistent cluster"
            + (f" ({hint})" if hint else "")
        )
    unbuilt = list(
        Node.objects.filter(cluster_id=cluster.pk)
        .exclude(status__in=(Node.Status.ACTIVE, Node.Status.DELETED))
        .order_by("number")
        .values_list("number", flat=True)[:5]
    )
    if unbuilt:
        raise Conflict(
            f"cluster {cluster.name} has nodes without a machine ({', '.join(map(str, unbuilt))}): retry its "
            "latest job to finish them, then try again"
        )


# --- the operations' builders (pure reads) -------------------------------------------------------------------


def _validated_config(state: _ClusterState, config: Any) -> dict[str, Any]:
    """The new config: a JSON object whose macros all expand on the cluster's nodes (400 naming each)."""
    if not isinstance(config, dict):
        raise ApplicationError("config: must be a JSON object", fields={"config": ["must be a JSON object"]})
    representatives = list({(n.hardware, n.image, n.services): n for n in state.before}.values())
    context = MacroContext(nodes=state.before, owner=state.cluster.owner.get_username())
    errors = list(config_problems(config, context=context, nodes=representatives))
    if errors:
        raise ApplicationError(
            f"config macro {errors[0].macro} at {errors[0].path}: {errors[0].message}",
            fields={f"config{e.path}": [f"{e.macro}: {e.message}"] for e in errors},
        )
    return config


def _reconfigure(state: _ClusterState, *, config: Any, restart: bool) -> Day2Change:
    config = _validated_config(state, config)
    operation = Operation.CONFIGURE_WITH_RESTART if restart else Operation.CONFIGURE
    return state.change(operation, state.before, config=config, field_name="config")


def _scope(state: _ClusterState, services: Sequence[str] | None) -> frozenset[str] | None:
    if not services:
        return None
    missing = sorted(set(services) - set(state.cluster.services))
    if missing:
        problem = f"not on cluster {state.cluster.name}: {', '.join(missing)}"
        raise ApplicationError(f"services: {problem}", fields={"services": [problem]})
    return frozenset(services)


def _runtime(operation: Operation) -> Callable[[_ClusterState, Sequence[str] | None], Day2Change]:
    def build(state: _ClusterState, services: Sequence[str] | None) -> Day2Change:
        return state.change(operation, state.before, scope=_scope(state, services))

    return build


def _require_services(services: Sequence[str]) -> None:
    if not services:
        raise ApplicationError("services: name at least one service", fields={"services": ["must not be empty"]})


def _add_services(state: _ClusterState, *, services: Sequence[str]) -> Day2Change:
    """Incremental solving: the added services go on existing nodes only; a role the solver splits gives
    the service to its lowest-numbered nodes."""
    _require_services(services)
    added = frozenset(services)
    layout = state.solve("services", add_services=tuple(sorted(added)))
    pools: dict[tuple[str, str, frozenset[str]], list[NodeSpec]] = defaultdict(list)
    for node in sorted(state.before, key=lambda n: n.number):
        pools[(node.hardware, node.image, node.services)].append(node)
    new_services: dict[str, frozenset[str]] = {}
    for role in layout.roles:
        pool = pools[(role.hardware, role.image, role.services - added)]
        for node in pool[: role.count]:
            new_services[node.node_id] = role.services
        del pool[: role.count]
    after = [_with(node, services=new_services.get(node.node_id, node.services)) for node in state.before]
    return state.change(Operation.ADD_SERVICES, after, scope=added)


def _remove_services(state: _ClusterState, *, services: Sequence[str]) -> Day2Change:
    """Stop, then remove; refused (naming the service that requires one of them) when the rest needs it."""
    _require_services(services)
    removed = frozenset(services)
    state.solve("services", remove_services=tuple(sorted(removed)))  # the template's rules for what remains
    after = [_with(node, services=node.services - removed) for node in state.before]
    return state.change(Operation.REMOVE_SERVICES, after, scope=removed)


def _scale_out(state: _ClusterState, *, count: int) -> Day2Change:
    """New nodes grow existing roles or form new ones (``solve_change``); numbered after every node the
    cluster ever had, so a number (and hostname) is never reused."""
    _positive(count, "count")
    layout = state.solve("count", add_nodes=count)
    have = Counter((n.hardware, n.image, n.services) for n in state.before)
    roles = []
    for role in layout.roles:
        key = (role.hardware, role.image, role.services)
        roles += [key] * (role.count - have[key])
    new, machines = _new_nodes(state, roles)
    change = state.change(Operation.SCALE_OUT, [*state.before, *new], field_name="count", machines=machines)
    change.details["hourly_cost_added"] = _cost({h.name: h for h in state.hardware}, new)
    return change


def _new_nodes(
    state: _ClusterState, roles: Sequence[tuple[str, str, frozenset[str]]]
) -> tuple[list[NodeSpec], dict[str, tuple[str, str, str]]]:
    """One new node per (hardware, image, services), numbered after every node the cluster ever had, so a
    number (and hostname) is never reused; with each one's machine on the cluster's provider."""
    cluster = state.cluster
    last = Node.objects.filter(cluster_id=cluster.pk).order_by("-number").values_list("number", flat=True).first()
    number = (last or 999) + 1
    flavors = {h.name: h for h in state.hardware}
    images = {i.name: i for i in state.images}
    new: list[NodeSpec] = []
    machines: dict[str, tuple[str, str, str]] = {}
    for hardware, image, services in roles:
        node_id = f"{NEW_NODE_PREFIX}{number}"
        new.append(
            NodeSpec(node_id=node_id, number=number, hardware=hardware, image=image, services=services,
                     hostname=node_hostname(cluster.name, number, dns_suffix=cluster.dns_suffix or None),
                     ip_addresses={"bind_v4": f"ip-bind<{number}>", "access_v4": f"ip-access<{number}>"})
        )  # fmt: skip
        machines[node_id] = _machine(flavors.get(hardware), images.get(image))
        number += 1
    return new, machines


REPLACED = (Health.MISSING, Health.UNREACHABLE)
"""Node health that a repair answers with a new machine (a degraded node has its failed services restarted)."""


def _repair(state: _ClusterState, *, nodes: Sequence[int | str] = ()) -> Day2Change:
    """Replace every node whose machine is missing or unreachable by a new node in the same role, and restart
    in place the services whose check failed on a degraded node (all its services when none is named).

    ``nodes`` (numbers or hostnames) limits the repair to those; a named node that is not degraded is
    replaced whatever its health, so a user can replace a node the sweep has not judged yet."""
    if nodes:
        chosen = _named_nodes(state, nodes)
    else:
        chosen = [n for n in state.nodes if n.health in (*REPLACED, Health.DEGRADED)]
        if not chosen:
            problem = f"nothing to repair: no node of cluster {state.cluster.name} is degraded, unreachable or missing"
            raise ApplicationError(f"nodes: {problem}", fields={"nodes": [problem]})
    replaced = [n for n in chosen if n.health != Health.DEGRADED]
    restarts = {n.node_key: frozenset(n.health_failing or n.services) & frozenset(n.services)
                for n in chosen if n.health == Health.DEGRADED}  # fmt: skip
    new, machines = _new_nodes(state, [(n.hardware, n.image, frozenset(n.services)) for n in replaced])
    gone = {n.node_key for n in replaced}
    after = [node for node in state.before if node.node_id not in gone] + new
    change = state.change(Operation.REPAIR, after, field_name="nodes", machines=machines,
                          restarts={key: services for key, services in restarts.items() if services})  # fmt: skip
    numbers = {n.node_key: n.number for n in state.nodes}
    change.details["repair"] = {
        "replace": [{"number": old.number, "hostname": old.hostname, "health": old.health,
                     "message": old.health_message, "by": spec.number, "by_hostname": spec.hostname}
                    for old, spec in zip(replaced, new, strict=True)],
        "restart": [{"number": numbers[key], "services": sorted(services)} for key, services in sorted(
            restarts.items(), key=lambda item: numbers[item[0]])],
    }  # fmt: skip
    return change


def _named_nodes(state: _ClusterState, nodes: Sequence[int | str]) -> list[Node]:
    by_name = {n.hostname: n for n in state.nodes} | {str(n.number): n for n in state.nodes}
    unknown = [str(name) for name in nodes if str(name) not in by_name]
    if unknown:
        problem = f"not live nodes of cluster {state.cluster.name}: {', '.join(unknown)}"
        raise ApplicationError(f"nodes: {problem}", fields={"nodes": [problem]})
    return list({by_name[str(name)].pk: by_name[str(name)] for name in nodes}.values())


def _machine(hardware: HardwareOption | None, image: ImageOption | None) -> tuple[str, str, str]:
    return (hardware.flavor if hardware else "", image.image if image else "", image.ssh_user if image else "")


def _cost(flavors: dict[str, HardwareOption], nodes: Iterable[NodeSpec]) -> float | None:
    costs = [flavors[n.hardware].cost if n.hardware in flavors else None for n in nodes]
    return None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 6)


def _scale_in(state: _ClusterState, *, count: int | None = None, nodes: Sequence[int | str] = ()) -> Day2Change:
    """Named nodes (numbers or hostnames) leave, if what remains still satisfies the template; or ``count``
    nodes chosen by the solver's rule (``solve_change``), newest first within each role."""
    if (count is None) == (not nodes):
        problem = "give either count or nodes"
        raise ApplicationError(problem, fields={"count": [problem], "nodes": [problem]})
    if nodes:
        leaving = {node.node_key for node in _named_nodes(state, nodes)}
        after = [node for node in state.before if node.node_id not in leaving]
        if not after:
            raise ApplicationError("nodes: a cluster cannot lose every node; delete it instead",
                                   fields={"nodes": ["would leave no node"]})  # fmt: skip
        request = state.layout_request()
        problems = check_layout(request, _layout(after))
        if problems:
            raise ApplicationError(f"nodes: the cluster would break the template: {problems[0]}",
                                   fields={"nodes": problems})  # fmt: skip
    else:
        _positive(count or 0, "count")
        layout = state.solve("count", remove_nodes=count)
        keep = Counter({(r.hardware, r.image, r.services): r.count for r in layout.roles})
        after = []
        for node in sorted(state.before, key=lambda n: n.number):
            key = (node.hardware, node.image, node.services)
            if keep[key] > 0:
                keep[key] -= 1
                after.append(node)
    return state.change(Operation.SCALE_IN, after, field_name="nodes" if nodes else "count")


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise ApplicationError(f"{name}: must be at least 1", fields={name: ["must be at least 1"]})


def _with(node: NodeSpec, *, services: frozenset[str]) -> NodeSpec:
    return NodeSpec(node_id=node.node_id, number=node.number, hardware=node.hardware, image=node.image,
                    services=services, hostname=node.hostname, ip_addresses=node.ip_addresses)  # fmt: skip


def _latest_template(cluster: Cluster) -> CatalogVersion:
    latest = (
        CatalogVersion.objects.filter(tenant_id=cluster.tenant_id, kind="clustertemplates", name=cluster.template_name)
        .order_by("-version")
        .first()
    )
    if latest is None:
        raise Conflict(f"cluster template {cluster.template_name} no longer exists")
    return latest


def _sync(state: _ClusterState, *, restart: bool = False) -> Day2Change:
    """Move the cluster to the latest version of its template.

    Compatibility: the current layout must satisfy the new version's constraints (400 listing what it would
    break). What changes: the template pin, and every config key whose default the new version changes and
    the cluster still has at the old default (a key the user set stays theirs), applied as a reconfigure
    (with restarts when ``restart``). Default services the new version adds or drops are listed, not
    applied: adding or removing services is the user's call (``services`` endpoints)."""
    cluster = state.cluster
    latest = _latest_template(cluster)
    old_defaults = state.resolved["defaults"]
    new_state = _ClusterState(cluster, template_document=latest.document)
    request = new_state.layout_request()
    problems = check_layout(request, _layout(state.before))
    if problems:
        raise ApplicationError(
            f"template: the cluster is not compatible with version {latest.version} of template "
            f"{cluster.template_name}: {problems[0]}",
            fields={"template": problems},
        )
    new_defaults = new_state.resolved["defaults"]
    config = dict(cluster.config or {})
    old_config, new_config = old_defaults.get("config") or {}, new_defaults.get("config") or {}
    changed_keys = []
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) == new_config.get(key) or config.get(key) != old_config.get(key):
            continue
        changed_keys.append(key)
        if key in new_config:
            config[key] = new_config[key]
        else:
            config.pop(key, None)
    details = {
        "sync": {
            "config_keys": changed_keys,
            "default_services_added": sorted(set(new_defaults["services"]) - set(old_defaults["services"])),
            "default_services_removed": sorted(set(old_defaults["services"]) - set(new_defaults["services"])),
        }
    }
    if changed_keys:
        config = _validated_config(new_state, config)
        operation = Operation.CONFIGURE_WITH_RESTART if restart else Operation.CONFIGURE
        change = new_state.change(operation, new_state.before, config=config, field_name="config")
    else:
        change = new_state.change(Operation.CONFIGURE, new_state.before)
        change.plan = Plan(operation=Operation.CONFIGURE, tasks=(), edges=(), stages=0, critical_path=0)
    change.template_version = latest
    change.details.update(details)
    return change


# --- launching -----------------------------------------------------------------------------------------------


def _run(
    *, user: Any, cluster: Cluster, build: Callable[[_ClusterState], Day2Change], action: str, preview: bool
) -> Day2Outcome:
    """Preview or launch: check the user and the cluster, build the change; to launch, build it again
    under the cluster's row lock and store it (module docstring, step 3). ``user`` None is Loom itself
    (the auto-repair policy)."""
    if user is not None:
        cluster_require(user=user, cluster=cluster, action="change")
    if preview:
        check_operable(cluster)
        return Day2Outcome(build(_ClusterState(cluster)), None)
    with transaction.atomic():
        locked = (
            Cluster.objects.select_for_update().select_related("tenant", "owner", "template_version").get(pk=cluster.pk)
        )
        check_operable(locked)
        change = build(_ClusterState(locked))
        check_job_start(
            JobRequest(tenant=locked.tenant, user=user, operation=str(change.operation), cluster_name=locked.name,
                       cluster_id=locked.pk, size=len(change.after), template=locked.template_name,
                       services=tuple(change.services))
        )  # fmt: skip
        if change.new_nodes:
            tenant_quota_check(tenant=locked.tenant, clusters=0, nodes=len(change.new_nodes), lock=True)
        job = _store(user=user, change=change)
        audit(tenant=locked.tenant, actor=user, action=action, kind="cluster", name=locked.name,
              summary=_audit_summary(change, job))  # fmt: skip
    if job is not None:
        job.refresh_from_db()
    return Day2Outcome(change, job)


def _store(*, user: Any, change: Day2Change) -> Job | None:
    """Write the desired state and start the job (None when there is nothing to run: a sync that only moves
    the pin). The caller holds the cluster's row lock inside its transaction."""
    cluster = change.cluster
    # health_due_at: the sweep checks the cluster as soon as the job has ended.
    updates: dict[str, Any] = {"services": change.services, "service_versions": change.service_versions,
                               "size": len(change.after), "health_due_at": None}  # fmt: skip
    if change.config is not None:
        updates["config"] = change.config
    if change.template_version is not None:
        updates["template_version"] = change.template_version
    if not change.plan.tasks and change.operation is Operation.CONFIGURE and change.template_version is not None:
        Cluster.objects.filter(pk=cluster.pk).update(**updates)
        return None
    if not transition(Cluster, cluster.pk, to=Cluster.Status.PENDING, extra_updates={"status_message": "", **updates}):
        raise Conflict(f"cluster {cluster.name} cannot start {change.operation} from {cluster.status}")
    nodes_by_key = {node.node_key: node for node in Node.objects.filter(cluster_id=cluster.pk)}
    regrouped: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for _, new in change.changed_nodes():
        regrouped[tuple(sorted(new.services))].append(new.node_id)
    for services, keys in regrouped.items():
        Node.objects.filter(cluster_id=cluster.pk, node_key__in=keys).update(services=list(services))
    if change.new_nodes:
        created = Node.objects.bulk_create(
            [
                Node(cluster=cluster, number=spec.number, hostname=spec.hostname, hardware=spec.hardware,
                     image=spec.image, flavor=change.machines[spec.node_id][0],
                     image_id=change.machines[spec.node_id][1], ssh_user=change.machines[spec.node_id][2],
                     services=sorted(spec.services))
                for spec in change.new_nodes
            ]
        )  # fmt: skip
        nodes_by_key.update({spec.node_id: node for spec, node in zip(change.new_nodes, created, strict=True)})
    return job_launch(
        cluster=cluster, operation=change.operation, user=user, planned=change.plan, nodes_by_key=nodes_by_key,
        limits=change.limits,
    )  # fmt: skip


def _audit_summary(change: Day2Change, job: Job | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"cluster": change.cluster.pk, "job": job.pk if job else None,
                               "operation": str(change.operation), "size": len(change.after),
                               "services": change.services}  # fmt: skip
    if change.scope is not None:
        summary["scope"] = sorted(change.scope)
    if change.new_nodes:
        summary["nodes_added"] = [node.number for node in change.new_nodes]
    if change.leaving:
        summary["nodes_removed"] = [node.number for node in change.leaving]
    if change.config is not None:
        summary["config_changed"] = change.config != change.cluster.config
    if change.template_version is not None:
        summary["template_version"] = change.template_version.version
    return summary


# --- the services --------------------------------------------------------------------------------------------
#
# Each takes the acting user and the cluster (NotFound / PermissionDenied unless the user may change it) and
# ``preview``. Each raises Conflict when the cluster is busy (naming the job), not active or inconsistent,
# or a policy hook vetoes; ApplicationError naming the field for bad input; QuotaExceeded for a scale-out
# past ``max_nodes``. Each writes an AuditEvent when it launches.


def cluster_reconfigure(
    *, user: Any, cluster: Cluster, config: Any, restart: bool = True, preview: bool = False
) -> Day2Outcome:
    """Replace the whole config (macros checked on the cluster's nodes); configure every service, with a
    stop before and a start after when ``restart``."""
    return _run(user=user, cluster=cluster, build=lambda s: _reconfigure(s, config=config, restart=restart),
                action="reconfigure", preview=preview)  # fmt: skip


def cluster_services_start(
    *, user: Any, cluster: Cluster, services: Sequence[str] | None = None, preview: bool = False
) -> Day2Outcome:
    """Start ``services`` (all when empty) and, first, what they depend on at runtime."""
    build = _runtime(Operation.START_SERVICES)
    return _run(user=user, cluster=cluster, build=lambda s: build(s, services), action="start-services",
                preview=preview)  # fmt: skip


def cluster_services_stop(
    *, user: Any, cluster: Cluster, services: Sequence[str] | None = None, preview: bool = False
) -> Day2Outcome:
    """Stop ``services`` (all when empty) and, first, what depends on them at runtime."""
    build = _runtime(Operation.STOP_SERVICES)
    return _run(user=user, cluster=cluster, build=lambda s: build(s, services), action="stop-services",
                preview=preview)  # fmt: skip


def cluster_services_restart(
    *, user: Any, cluster: Cluster, services: Sequence[str] | None = None, preview: bool = False
) -> Day2Outcome:
    """Stop ``services`` (all when empty) and their dependents, then start those and their dependencies."""
    build = _runtime(Operation.RESTART_SERVICES)
    return _run(user=user, cluster=cluster, build=lambda s: build(s, services), action="restart-services",
                preview=preview)  # fmt: skip


def cluster_services_add(*, user: Any, cluster: Cluster, services: Sequence[str], preview: bool = False) -> Day2Outcome:
    """Add services on existing nodes (pinned at their current catalog version); install, configure,
    initialize and start them there."""
    return _run(user=user, cluster=cluster, build=lambda s: _add_services(s, services=services),
                action="add-services", preview=preview)  # fmt: skip


def cluster_services_remove(
    *, user: Any, cluster: Cluster, services: Sequence[str], preview: bool = False
) -> Day2Outcome:
    """Stop and remove services; 400 naming the service that still requires one of them."""
    return _run(user=user, cluster=cluster, build=lambda s: _remove_services(s, services=services),
                action="remove-services", preview=preview)  # fmt: skip


def cluster_scale_out(*, user: Any, cluster: Cluster, count: int, preview: bool = False) -> Day2Outcome:
    """Add ``count`` nodes (quota checked); existing nodes are reconfigured once the new ones have addresses."""
    return _run(user=user, cluster=cluster, build=lambda s: _scale_out(s, count=count), action="scale-out",
                preview=preview)  # fmt: skip


def cluster_scale_in(
    *,
    user: Any,
    cluster: Cluster,
    count: int | None = None,
    nodes: Sequence[int | str] = (),
    preview: bool = False,
) -> Day2Outcome:
    """Remove the named nodes, or ``count`` nodes chosen within the template's constraints: their services
    stop, their machines are deleted, then the remaining nodes are reconfigured."""
    return _run(user=user, cluster=cluster, build=lambda s: _scale_in(s, count=count, nodes=nodes),
                action="scale-in", preview=preview)  # fmt: skip


def cluster_repair(
    *, user: Any, cluster: Cluster, nodes: Sequence[int | str] = (), preview: bool = False
) -> Day2Outcome:
    """Replace the missing and unreachable nodes and restart the failed services of the degraded ones (see
    ``_repair``); ``user`` None is the auto-repair policy, audited as ``auto-repair``."""
    return _run(user=user, cluster=cluster, build=lambda s: _repair(s, nodes=nodes),
                action="repair" if user is not None else "auto-repair", preview=preview)  # fmt: skip


def cluster_sync(*, user: Any, cluster: Cluster, restart: bool = False, preview: bool = False) -> Day2Outcome:
    """Move the cluster to its template's latest version (see ``_sync``); the job is None when only the pin
    moves."""
    return _run(user=user, cluster=cluster, build=lambda s: _sync(s, restart=restart), action="sync",
                preview=preview)  # fmt: skip
