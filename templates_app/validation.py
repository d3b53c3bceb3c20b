"""Cross-entity catalog checks and template resolution (``extends`` / ``includes``).

Works on a *catalog view*: ``{kind_key: {name: canonical document}}``. A single save validates the
tenant's catalog with the changed entity substituted; an import validates the catalog as it would be after
the import. So a template is checked against the services that will exist, and a service change that
creates a dependency cycle is caught when it is saved, not when a cluster is launched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from .codec import LOOM_ADMINISTRATION
from .problems import Problem, Problems

Doc = dict[str, Any]
CatalogView = dict[str, dict[str, Doc]]

DEFAULT_SIZE = {"min": 1}

ProviderCheck = Callable[[Doc], list[str]]
_provider_checks: list[ProviderCheck] = []


def register_provider_check(check: ProviderCheck) -> None:
    """Add a check that says why a provider document cannot launch here (``providers`` registers the driver
    and credential checks at start-up; the catalog app knows no driver)."""
    if check not in _provider_checks:
        _provider_checks.append(check)


def provider_launch_reasons(doc: Doc) -> list[str]:
    """Why clusters cannot be created on this provider now, in words; [] when they can."""
    return [reason for check in _provider_checks for reason in check(doc)]


FOREVER_LEASE = {"leaseduration": {"initial": 0, "max": 0, "step": 0}}


# --- services ---------------------------------------------------------------------------------------


def _providers_index(services: dict[str, Doc]) -> dict[str, set[str]]:
    """alias → services that provide it (a service also 'provides' its own name)."""
    index: dict[str, set[str]] = {}
    for name, doc in services.items():
        index.setdefault(name, set()).add(name)
        for alias in doc.get("dependencies", {}).get("provides", []):
            index.setdefault(alias, set()).add(name)
    return index


def dependency_graph(services: dict[str, Doc], section: str) -> dict[str, set[str]]:
    """service → services it waits for in ``section`` (install or runtime), aliases resolved."""
    index = _providers_index(services)
    graph: dict[str, set[str]] = {}
    for name, doc in services.items():
        deps = doc.get("dependencies", {}).get(section, {})
        targets: set[str] = set()
        for dep in [*deps.get("requires", []), *deps.get("uses", [])]:
            targets |= index.get(dep, set()) - {name}
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Elementary cycles found by DFS, each reported once as a path that returns to its start."""
    cycles: list[list[str]] = []
    seen_sets: set[frozenset[str]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                key = frozenset(cycle)
                if key not in seen_sets:
                    seen_sets.add(key)
                    cycles.append(cycle)
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _check_services(view: CatalogView, targets: set[str] | None) -> list[Problem]:
    services = view.get("services", {})
    index = _providers_index(services)
    problems: list[Problem] = []
    for name, doc in sorted(services.items()):
        if targets is not None and name not in targets:
            continue
        found = Problems("service", name)
        deps = doc.get("dependencies", {})
        for section in ("install", "runtime"):
            for dep in deps.get(section, {}).get("requires", []):
                if dep not in index:
                    found.warning(
                        f"dependencies.{section}.requires",
                        f"requires {dep!r}, which is neither a service nor provided by any service (yet): "
                        "templates using this service cannot launch until it exists",
                    )
        for other in deps.get("conflicts", []):
            requires = deps.get("install", {}).get("requires", []) + deps.get("runtime", {}).get("requires", [])
            if other in requires:
                found.error("dependencies.conflicts", f"{name} both requires and conflicts with {other}")
        problems.extend(found.items)
    for section in ("install", "runtime"):
        for cycle in find_cycles(dependency_graph(services, section)):
            if targets is not None and not targets & set(cycle):
                continue
            start = cycle[0] if targets is None or cycle[0] in targets else sorted(targets & set(cycle))[0]
            problems.append(
                Problem(
                    "service",
                    start,
                    f"dependencies.{section}",
                    f"{section} dependency cycle: {' → '.join(cycle)}",
                )
            )
    return problems


# --- templates ----------------------------------------------------------------------------------------


def merge_order(name: str, view: CatalogView, problems: Problems) -> list[tuple[str, Doc]]:
    """Templates to merge, oldest ancestor first: parent's list, own includes, self."""
    order: list[tuple[str, Doc]] = []
    chain: list[str] = []

    def walk(template_name: str) -> None:
        if template_name in chain:
            problems.error("extends", f"template inheritance cycle: {' → '.join([*chain, template_name])}")
            return
        doc = view.get("clustertemplates", {}).get(template_name)
        if doc is None:
            problems.error("extends.name", f"parent template {template_name!r} does not exist")
            return
        chain.append(template_name)
        if doc.get("extends"):
            walk(doc["extends"]["name"])
        for index, include in enumerate(doc.get("includes", [])):
            partial = view.get("partialtemplates", {}).get(include["name"])
            if partial is None:
                problems.error(f"includes[{index}].name", f"partial template {include['name']!r} does not exist")
            else:
                order.append(("partialtemplates", partial))
        order.append(("clustertemplates", doc))
        chain.pop()

    walk(name)
    return order


def _union(*lists: Iterable[str]) -> list[str]:
    result: list[str] = []
    for items in lists:
        for item in items:
            if item not in result:
                result.append(item)
    return result


def resolve_template(name: str, view: CatalogView) -> tuple[Doc, Problems]:
    """The effective template after applying ``extends`` and ``includes``.

    Fixes two quirks of the original: resolution happens whenever a template is used (not only on an
    explicit resolve call), and a later template that says nothing about size keeps the inherited size.
    """
    problems = Problems("clustertemplate", name)
    own = view.get("clustertemplates", {}).get(name)
    if own is None:
        problems.error("name", f"cluster template {name!r} does not exist")
        return {}, problems
    result: Doc = {key: own.get(key) for key in ("name", "label", "description", "icon", "extends", "includes")}
    compatibility: Doc = {"hardwaretypes": [], "imagetypes": [], "services": []}
    defaults: Doc = {"services": [], "provider": None, "hardwaretype": None, "imagetype": None,
                     "dnsSuffix": None, "config": {}}  # fmt: skip
    constraints: Doc = {"size": dict(DEFAULT_SIZE), "layout": {"mustcoexist": [], "cantcoexist": []},
                        "services": {}}  # fmt: skip
    administration: Doc = copy.deepcopy(FOREVER_LEASE)
    links: list[dict[str, str]] = []
    immutable_keys: dict[str, str] = {}
    for kind, doc in merge_order(name, view, problems):
        for key in ("hardwaretypes", "imagetypes", "services"):
            compatibility[key] = _union(compatibility[key], doc["compatibility"][key])
        element_defaults = doc["defaults"]
        defaults["services"] = _union(defaults["services"], element_defaults["services"])
        for key in ("provider", "hardwaretype", "imagetype", "dnsSuffix"):
            if element_defaults.get(key):
                defaults[key] = element_defaults[key]
        for key, value in element_defaults["config"].items():
            if key in immutable_keys:
                problems.error(
                    f"defaults.config.{key}",
                    f"{key} can't be overridden: it comes from immutable partial template {immutable_keys[key]}",
                )
                continue
            defaults["config"][key] = value
            if kind == "partialtemplates" and doc.get("immutable"):
                immutable_keys[key] = doc["name"]
        links = links + [link for link in doc.get("links", []) if link not in links]
        if kind == "clustertemplates":
            element = doc["constraints"]
            if element["size"] != DEFAULT_SIZE:
                constraints["size"] = element["size"]
            for group_key in ("mustcoexist", "cantcoexist"):
                for group in element["layout"][group_key]:
                    if sorted(group) not in [sorted(g) for g in constraints["layout"][group_key]]:
                        constraints["layout"][group_key].append(group)
            constraints["services"].update(element["services"])
            # Per setting, the deepest template that sets it wins: a child that only sets ``maxattempts``
            # keeps its parent's lease.
            own = doc["administration"]
            if own.get("leaseduration", FOREVER_LEASE["leaseduration"]) != FOREVER_LEASE["leaseduration"]:
                administration["leaseduration"] = own["leaseduration"]
            administration.update({key: own[key] for key in LOOM_ADMINISTRATION if key in own})
    result.update(
        compatibility=compatibility,
        defaults=defaults,
        constraints=constraints,
        administration=administration,
        links=links,
    )
    return result, problems


def _check_template(doc: Doc, view: CatalogView, problems: Problems) -> None:
    services = view.get("services", {})
    hardware = view.get("hardwaretypes", {})
    images = view.get("imagetypes", {})
    providers = view.get("providers", {})
    compat = doc["compatibility"]
    defaults = doc["defaults"]
    constraints = doc["constraints"]
    allowed_services = set(compat["services"]) | set(defaults["services"])

    for name in compat["services"]:
        if name not in services:
            problems.warning("compatibility.services", f"service {name!r} is not in the catalog (ignored until it is)")
    for key, known, label in (("hardwaretypes", hardware, "hardware type"), ("imagetypes", images, "image type")):
        for name in compat[key]:
            if name not in known:
                problems.warning(f"compatibility.{key}", f"{label} {name!r} is not in the catalog (ignored)")
    for name in defaults["services"]:
        if name not in services:
            problems.unlaunchable("defaults.services", f"default service {name!r} is not in the catalog")
        elif compat["services"] and name not in compat["services"]:
            problems.unlaunchable("defaults.services", f"default service {name!r} is not in compatibility.services")
    for key, known, label in (("hardwaretype", hardware, "hardware type"), ("imagetype", images, "image type")):
        value = defaults.get(key)
        if value and value not in known:
            problems.unlaunchable(f"defaults.{key}", f"default {label} {value!r} is not in the catalog")
        elif value and compat[key + "s"] and value not in compat[key + "s"]:
            problems.unlaunchable(f"defaults.{key}", f"default {label} {value!r} is not in compatibility.{key}s")
    provider = defaults.get("provider")
    if provider and provider not in providers:
        problems.unlaunchable("defaults.provider", f"default provider {provider!r} is not in the catalog")
    elif provider:
        for reason in provider_launch_reasons(providers[provider]):
            problems.unlaunchable("defaults.provider", f"provider {provider}: {reason}")
    for key, label in (("hardwaretype", "flavor"), ("imagetype", "image")):
        value = defaults.get(key)
        known = hardware if key == "hardwaretype" else images
        if provider and value in known and provider not in known[value].get("providermap", {}):
            problems.warning(f"defaults.{key}", f"{value!r} has no {label} for provider {provider!r}")

    def check_member(name: str, path: str) -> None:
        if name not in services:
            problems.warning(path, f"service {name!r} is not in the catalog (the constraint waits for it)")
        elif compat["services"] and name not in allowed_services:
            problems.error(path, f"constraint on service {name!r}, which is not part of this template")

    for name, spec in constraints["services"].items():
        path = f"constraints.services.{name}"
        check_member(name, path)
        for key, known, label in (("hardwaretypes", hardware, "hardware type"), ("imagetypes", images, "image type")):
            for value in spec[key]:
                if value not in known:
                    problems.warning(f"{path}.{key}", f"{label} {value!r} is not in the catalog (ignored)")
                elif compat[key] and value not in compat[key]:
                    problems.error(f"{path}.{key}", f"{label} {value!r} is not in compatibility.{key}")
        quantities = spec["quantities"]
        size_max = constraints["size"].get("max")
        if size_max is not None and quantities["min"] > size_max:
            problems.error(
                f"{path}.quantities.min",
                f"{name} needs at least {quantities['min']} nodes but the template allows at most {size_max}",
            )
        if quantities.get("max") == 0 and name in defaults["services"]:
            problems.error(f"{path}.quantities.max", f"{name} is a default service but may be on 0 nodes")
    layout = constraints["layout"]
    for key in ("mustcoexist", "cantcoexist"):
        for index, group in enumerate(layout[key]):
            for name in group:
                check_member(name, f"constraints.layout.{key}[{index}]")
    for must_index, must in enumerate(layout["mustcoexist"]):
        for cant_index, cant in enumerate(layout["cantcoexist"]):
            if set(cant) <= set(must):
                problems.error(
                    f"constraints.layout.cantcoexist[{cant_index}]",
                    f"contradicts mustcoexist[{must_index}]: {sorted(must)} must share nodes, "
                    f"but {sorted(cant)} can never be on one node",
                )
        ranges = {name: constraints["services"][name]["quantities"] for name in must if name in constraints["services"]}
        if len(ranges) > 1:
            low = max(r["min"] for r in ranges.values())
            highs = [r["max"] for r in ranges.values() if "max" in r]
            if highs and low > min(highs):
                detail = ", ".join(f"{n} {r['min']}..{r.get('max', '∞')}" for n, r in sorted(ranges.items()))
                problems.error(
                    f"constraints.layout.mustcoexist[{must_index}]",
                    f"members must be on the same nodes, so their node counts must match, "
                    f"but their quantities cannot agree: {detail}",
                )
    index = _providers_index({n: services[n] for n in defaults["services"] if n in services})
    for name in defaults["services"]:
        deps = services.get(name, {}).get("dependencies")
        if not deps:
            continue
        for section in ("install", "runtime"):
            for dep in deps[section]["requires"]:
                if dep not in index and dep not in _providers_index(services):
                    problems.unlaunchable(
                        "defaults.services", f"{name} requires {dep}, which no service in the catalog provides"
                    )
                elif dep not in index:
                    problems.error(
                        "defaults.services",
                        f"{name} requires {dep}, which is not among the default services or provided by one",
                    )
        for other in deps["conflicts"]:
            if other in index and other != name:
                problems.error("defaults.services", f"{name} conflicts with {other}")


def _check_templates(view: CatalogView, targets: dict[str, set[str]] | None) -> list[Problem]:
    problems: list[Problem] = []
    for name in sorted(view.get("clustertemplates", {})):
        if targets is not None and name not in targets.get("clustertemplates", set()):
            continue
        resolved, found = resolve_template(name, view)
        if not found.errors:
            _check_template(resolved, view, found)
        problems.extend(found.items)
    for name, doc in sorted(view.get("partialtemplates", {}).items()):
        if targets is not None and name not in targets.get("partialtemplates", set()):
            continue
        found = Problems("partialtemplate", name)
        for service in _union(doc["compatibility"]["services"], doc["defaults"]["services"]):
            if service not in view.get("services", {}):
                found.warning("defaults.services", f"service {service!r} is not in the catalog (yet)")
        problems.extend(found.items)
    return problems


def affected_templates(view: CatalogView, changed: dict[str, set[str]]) -> dict[str, set[str]]:
    """Templates whose validity may change when ``changed`` entities change (they use them)."""
    targets = {key: set(names) for key, names in changed.items()}
    template_targets = targets.setdefault("clustertemplates", set())
    for name in view.get("clustertemplates", {}):
        refs = references(view, "clustertemplates", name)
        if any(name_ in changed.get(kind, set()) for kind, name_ in refs):
            template_targets.add(name)
    return targets


def references(view: CatalogView, kind: str, name: str) -> set[tuple[str, str]]:
    """(kind, name) pairs that the entity refers to."""
    doc = view.get(kind, {}).get(name)
    if doc is None:
        return set()
    refs: set[tuple[str, str]] = set()
    if kind == "services":
        deps = doc["dependencies"]
        for section in ("install", "runtime"):
            for dep in deps[section]["requires"] + deps[section]["uses"]:
                refs.add(("services", dep))
    if kind in ("clustertemplates", "partialtemplates"):
        refs |= {("services", s) for s in doc["compatibility"]["services"] + doc["defaults"]["services"]}
        refs |= {("services", s) for s in doc["constraints"]["services"]}
        refs |= {("hardwaretypes", h) for h in doc["compatibility"]["hardwaretypes"]}
        refs |= {("imagetypes", i) for i in doc["compatibility"]["imagetypes"]}
        for key, ref_kind in (
            ("hardwaretype", "hardwaretypes"),
            ("imagetype", "imagetypes"),
            ("provider", "providers"),
        ):
            if doc["defaults"].get(key):
                refs.add((ref_kind, doc["defaults"][key]))
        for spec in doc["constraints"]["services"].values():
            refs |= {("hardwaretypes", h) for h in spec["hardwaretypes"]}
            refs |= {("imagetypes", i) for i in spec["imagetypes"]}
        for group in doc["constraints"]["layout"]["mustcoexist"] + doc["constraints"]["layout"]["cantcoexist"]:
            refs |= {("services", s) for s in group}
    if kind == "clustertemplates":
        if doc.get("extends"):
            refs.add(("clustertemplates", doc["extends"]["name"]))
        refs |= {("partialtemplates", include["name"]) for include in doc.get("includes", [])}
    return refs


def dependents(view: CatalogView, kind: str, name: str) -> list[str]:
    """Entities that refer to (kind, name): what a delete would break. Soft references (a service's
    ``uses``, a template's compatibility hardware/image lists) do not block."""
    found: list[str] = []
    for other_kind in ("services", "partialtemplates", "clustertemplates"):
        for other_name in sorted(view.get(other_kind, {})):
            if (other_kind, other_name) == (kind, name):
                continue
            refs = references(view, other_kind, other_name)
            if (kind, name) not in refs:
                continue
            doc = view[other_kind][other_name]
            if other_kind == "services":
                hard = any(name in doc["dependencies"][s]["requires"] for s in ("install", "runtime"))
                if not hard:
                    continue
            if other_kind != "services" and kind in ("hardwaretypes", "imagetypes"):
                in_compat_only = name in doc["compatibility"][kind] and not (
                    doc["defaults"].get(kind[:-1]) == name
                    or any(name in spec[kind] for spec in doc["constraints"]["services"].values())
                )
                if in_compat_only:
                    continue
            found.append(f"{other_kind[:-1]} {other_name}")
    return found


def validate_catalog(view: CatalogView, changed: dict[str, set[str]] | None = None) -> list[Problem]:
    """Every cross-entity problem, or only those touching ``changed`` entities and their users."""
    targets = affected_templates(view, changed) if changed is not None else None
    service_targets = targets.get("services", set()) if targets is not None else None
    problems = _check_services(view, service_targets)
    problems += _check_templates(view, targets)
    return problems


def template_launch_reasons(name: str, view: CatalogView, *, overridden: Iterable[str] = ()) -> list[str]:
    """Why template ``name`` cannot launch with the catalog as it is now, each reason in words naming the
    field; [] when it can. Computed on every call, so adding a missing service makes it launchable without
    touching the template. ``overridden`` names the defaults a create request replaces (``provider``,
    ``services``, ``hardwaretype``, ``imagetype``): a reason about a default the request does not use does
    not keep it from launching."""
    skipped = {f"defaults.{key}" for key in overridden}
    resolved, problems = resolve_template(name, view)
    if not problems.errors:
        _check_template(resolved, view, problems)
    reasons = [
        f"{p.field}: {p.message}"
        for p in problems.items
        if (p.severity == "error" or p.blocks_launch) and p.field not in skipped
    ]
    if not reasons and not resolved.get("defaults", {}).get("provider") and "defaults.provider" not in skipped:
        providers = view.get("providers", {})
        if not any(not provider_launch_reasons(doc) for doc in providers.values()):
            reasons.append("defaults.provider: no provider in the catalog can launch clusters")
    return reasons
