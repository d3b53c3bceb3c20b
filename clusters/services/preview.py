"""``cluster_preview``: what creating a cluster would do, without creating anything.

Resolves the template (``extends`` / ``includes``), solves the layout on the chosen provider's hardware and
image mappings, plans the create, checks that the config's macros can all be expanded on the nodes the
layout would have, and prices the layout when hardware costs are known. A template or provider that cannot
launch now (a missing default service, a provider type with no driver, sample credentials) is refused first,
with the same reasons the catalog API gives under ``reasons``. Every input problem is raised as
an ``ApplicationError`` naming the field, so the API answers 400 with the explanation (for an impossible
layout, the solver's reasons).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from clusters.planning.macros import MacroContext, config_problems
from clusters.planning.naming import FIRST_NODE_NUMBER, node_hostname
from clusters.planning.planner import Operation, Plan, PlanError, plan
from clusters.planning.solver import LayoutError, LayoutRequest, solve
from clusters.planning.specs import (
    ClusterLayout,
    HardwareOption,
    NodeSpec,
    provider_options,
    service_spec,
    template_spec,
)
from templates_app.models import ClusterTemplate
from templates_app.plugin_types import FieldSchema, registry
from templates_app.services import catalog_view
from templates_app.validation import provider_launch_reasons, resolve_template, template_launch_reasons
from tenants.errors import ApplicationError, NotFound
from tenants.models import Tenant

NODE_LIST_LIMIT = 200
TASK_LIST_LIMIT = 2000


@dataclass(frozen=True)
class PreviewRequest:
    """A create request in the Loom format's terms (``clusterTemplate``, ``numMachines``, ...)."""

    name: str
    template: str
    size: int
    provider: str | None = None
    hardware: str | None = None
    image: str | None = None
    services: tuple[str, ...] = ()
    config: dict[str, Any] | None = None
    dns_suffix: str | None = None
    provider_fields: dict[str, Any] | None = None


@dataclass
class Preview:
    template: str
    provider: str
    services: list[str]
    layout: ClusterLayout
    nodes: list[NodeSpec]
    plan: Plan
    hardware: dict[str, HardwareOption]
    flavors: dict[str, str]
    images: dict[str, tuple[str, str]]
    warnings: list[str] = field(default_factory=list)
    provider_fields: dict[str, Any] = field(default_factory=dict)

    def hourly_cost(self) -> tuple[float | None, list[str]]:
        """Total hourly cost, or None with the hardware types whose cost the provider map lacks."""
        unknown = sorted({r.hardware for r in self.layout.roles if self.hardware[r.hardware].cost is None})
        if unknown:
            return None, unknown
        total = sum(role.count * (self.hardware[role.hardware].cost or 0.0) for role in self.layout.roles)
        return round(total, 6), []

    def to_json(self, *, include_tasks: bool = False) -> dict[str, Any]:
        total, unknown = self.hourly_cost()
        roles = []
        for index, role in enumerate(self.layout.roles):
            cost = self.hardware[role.hardware].cost
            image, ssh_user = self.images[role.image]
            roles.append(
                {
                    "role": index,
                    "hardwaretype": role.hardware,
                    "imagetype": role.image,
                    "flavor": self.flavors[role.hardware],
                    "image": image,
                    "sshuser": ssh_user,
                    "services": sorted(role.services),
                    "count": role.count,
                    "hourly_cost": None if cost is None else round(cost * role.count, 6),
                }
            )
        result: dict[str, Any] = {
            "template": self.template,
            "provider": self.provider,
            "size": self.layout.size,
            "services": self.services,
            "layout": {"roles": roles},
            "cost": {
                "hourly": total,
                "currency": settings.LOOM_COST_CURRENCY,
                "complete": not unknown,
                "unknown_hardwaretypes": unknown,
            },
            "plan": plan_json(self.plan, self.nodes, include_tasks=include_tasks),
            "warnings": self.warnings,
        }
        if len(self.nodes) <= NODE_LIST_LIMIT:
            result["nodes"] = [
                {"number": n.number, "hostname": n.hostname, "hardwaretype": n.hardware, "imagetype": n.image,
                 "services": sorted(n.services)}
                for n in self.nodes
            ]  # fmt: skip
        return result


def plan_json(planned: Plan, nodes: Iterable[NodeSpec], *, include_tasks: bool = False) -> dict[str, Any]:
    """A plan as previews show it: counts, stages, tasks per action; the task and edge lists (each task with
    its node's number and hostname) for plans up to ``TASK_LIST_LIMIT`` tasks or when asked."""
    real = [task for task in planned.tasks if not task.is_join]
    stage_sizes = [0] * planned.stages
    for task in real:
        stage_sizes[task.stage] += 1
    result: dict[str, Any] = {
        "tasks": planned.real_task_count,
        "join_points": planned.join_count,
        "edges": len(planned.edges),
        "edges_without_join_points": planned.expanded_edge_count,
        "stages": planned.stages,
        "critical_path": planned.critical_path,
        "by_action": dict(sorted(Counter(str(task.action) for task in real).items())),
        "stage_sizes": stage_sizes,
    }
    if include_tasks or len(planned.tasks) <= TASK_LIST_LIMIT:
        by_id = {node.node_id: node for node in nodes}
        result["task_list"] = [
            {"key": t.key, "node": by_id[t.node_id].number if t.node_id else None,
             "hostname": by_id[t.node_id].hostname if t.node_id else None, "action": str(t.action),
             "service": t.service, "stage": t.stage, **({"label": t.label} if t.is_join else {})}
            for t in planned.tasks
        ]  # fmt: skip
        result["edge_list"] = [list(edge) for edge in planned.edges]
    return result


def _nodes(name: str, layout: ClusterLayout, dns_suffix: str | None) -> list[NodeSpec]:
    """Nodes numbered from 1000 in role order, with the hostnames they would get and placeholder IPs."""
    nodes = []
    number = FIRST_NODE_NUMBER
    for role in layout.roles:
        for _ in range(role.count):
            placeholder = f"<{number}>"
            nodes.append(
                NodeSpec(
                    node_id=f"preview-{number}",
                    number=number,
                    hardware=role.hardware,
                    image=role.image,
                    services=role.services,
                    hostname=node_hostname(name, number, dns_suffix=dns_suffix),
                    ip_addresses={"bind_v4": f"ip-bind{placeholder}", "access_v4": f"ip-access{placeholder}"},
                )
            )
            number += 1
    return nodes


def cluster_preview(*, user: Any, tenant: Tenant, request: PreviewRequest) -> Preview:
    """Solve, plan and price a create request. Read-only; raises ApplicationError subclasses."""
    if not ClusterTemplate.objects.restrict(user, "view").filter(tenant=tenant, name=request.template).exists():
        raise NotFound(f"cluster template {request.template} not found")
    if request.size > settings.LOOM_MAX_CLUSTER_SIZE:
        raise ApplicationError(
            f"numMachines {request.size} is above the maximum cluster size {settings.LOOM_MAX_CLUSTER_SIZE}",
            fields={"numMachines": [f"at most {settings.LOOM_MAX_CLUSTER_SIZE}"]},
        )
    view = catalog_view(tenant)
    resolved, problems = resolve_template(request.template, view)
    if problems.errors:
        raise ApplicationError(
            f"template {request.template} cannot be resolved: {problems.errors[0].message}",
            fields={"clusterTemplate": [p.message for p in problems.errors]},
        )
    asked = {"provider": request.provider, "services": request.services, "hardwaretype": request.hardware,
             "imagetype": request.image}  # fmt: skip
    overridden = [key for key, value in asked.items() if value]
    if reasons := template_launch_reasons(request.template, view, overridden=overridden):
        raise ApplicationError(
            f"template {request.template} cannot launch: {reasons[0]}", fields={"clusterTemplate": reasons}
        )
    template = template_spec(resolved)
    provider = request.provider or template.default_provider
    if not provider:
        raise ApplicationError("no provider given and the template names none", fields={"provider": ["required"]})
    if provider not in view["providers"]:
        raise NotFound(f"provider {provider} not found")
    if reasons := provider_launch_reasons(view["providers"][provider]):
        raise ApplicationError(
            f"provider {provider} cannot launch clusters: {'; '.join(reasons)}", fields={"provider": reasons}
        )
    provider_fields = check_provider_fields(view["providers"][provider], request.provider_fields or {})
    hardware, images = provider_options(provider, view["hardwaretypes"].values(), view["imagetypes"].values())
    services = {name: service_spec(doc) for name, doc in view["services"].items()}
    layout_request = LayoutRequest(
        template=template,
        services=services,
        size=request.size,
        requested_services=request.services,
        hardware=request.hardware,
        image=request.image,
        hardware_options=hardware,
        image_options=images,
        max_size=settings.LOOM_MAX_CLUSTER_SIZE,
        provider=provider,
    )
    try:
        layout = solve(layout_request)
    except LayoutError as error:
        raise ApplicationError(
            f"no layout satisfies the template: {error.reasons[0] if error.reasons else error}",
            fields={"layout": list(error.reasons) or [str(error)]},
        ) from error
    nodes = _nodes(request.name, layout, request.dns_suffix or template_dns_suffix(resolved))
    try:
        planned = plan(before=[], after=nodes, operation=Operation.CREATE, services=services)
    except PlanError as error:
        raise ApplicationError(f"the create cannot be planned: {error}", fields={"plan": [str(error)]}) from error
    config = request.config if request.config is not None else resolved["defaults"]["config"]
    representatives = list({role_key(n): n for n in nodes}.values())
    context = MacroContext(nodes=nodes, owner=getattr(user, "username", ""))
    macro_errors = list(config_problems(config, context=context, nodes=representatives))
    if macro_errors:
        raise ApplicationError(
            f"config macro {macro_errors[0].macro} at {macro_errors[0].path}: {macro_errors[0].message}",
            fields={f"config{e.path}": [f"{e.macro}: {e.message}"] for e in macro_errors},
        )
    by_name = {h.name: h for h in hardware}
    return Preview(
        template=request.template,
        provider=provider,
        services=sorted(layout.services),
        layout=layout,
        nodes=nodes,
        plan=planned,
        hardware=by_name,
        flavors={h.name: h.flavor for h in hardware},
        images={i.name: (i.image, i.ssh_user) for i in images},
        provider_fields=provider_fields,
    )


def user_provider_fields(provider_document: dict[str, Any]) -> dict[str, FieldSchema]:
    """The fields a cluster request may set for this provider: its type's user fields and the admin fields
    marked ``override`` (the original's ``providerFields``). Secrets are never among them: they are the
    admin's, stored encrypted on the provider."""
    plugin = registry.get("provider", str(provider_document.get("providertype", "")))
    if plugin is None:
        return {}
    fields = {name: schema for name, schema in plugin.admin.fields.items() if schema.override}
    fields.update(plugin.user.fields)
    return {name: schema for name, schema in fields.items() if not schema.sensitive}


def check_provider_fields(provider_document: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked against ``user_provider_fields``; ApplicationError naming every bad field."""
    allowed = user_provider_fields(provider_document)
    problems: dict[str, list[str]] = {}
    for name, value in values.items():
        schema = allowed.get(name)
        if schema is None:
            known = ", ".join(sorted(allowed)) or "none"
            problems[f"providerFields.{name}"] = [f"not a field a cluster request may set (it may set: {known})"]
        elif (problem := schema.check_value(value)) is not None:
            problems[f"providerFields.{name}"] = [problem]
    if problems:
        first, messages = next(iter(problems.items()))
        raise ApplicationError(f"{first}: {messages[0]}", fields=problems)
    return {name: value for name, value in values.items() if value not in (None, "")}


def role_key(node: NodeSpec) -> tuple[str, str, frozenset[str]]:
    return (node.hardware, node.image, node.services)


def template_dns_suffix(resolved: dict[str, Any]) -> str | None:
    return resolved["defaults"].get("dnsSuffix")
