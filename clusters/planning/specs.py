"""Frozen inputs and outputs shared by the pure cores (solver, planner, macros). No Django here.

The catalog stores canonical Loom JSON documents; ``template_spec`` and ``service_spec`` turn a resolved
template and service documents into these typed values once, so the solver and planner never touch
dicts. Layout results (``NodeRole``, ``ClusterLayout``) and per-node values (``NodeSpec``) are shared by the
solver (which produces them), the planner (which diffs them) and the engine (which persists them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

SERVICE_ACTIONS = ("install", "configure", "initialize", "start", "stop", "remove")


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its dependencies and which actions it defines."""

    name: str
    provides: frozenset[str] = frozenset()
    conflicts: frozenset[str] = frozenset()
    install_requires: frozenset[str] = frozenset()
    install_uses: frozenset[str] = frozenset()
    runtime_requires: frozenset[str] = frozenset()
    runtime_uses: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ServiceConstraint:
    """Per-service limits of a template. ``max`` None means unlimited; empty type sets mean any."""

    min: int = 0
    max: int | None = None
    hardware_types: frozenset[str] = frozenset()
    image_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TemplateSpec:
    """A resolved cluster template. Empty ``compatible_*`` sets mean everything is allowed."""

    name: str
    compatible_services: frozenset[str] = frozenset()
    compatible_hardware: frozenset[str] = frozenset()
    compatible_images: frozenset[str] = frozenset()
    default_services: tuple[str, ...] = ()
    default_provider: str | None = None
    default_hardware: str | None = None
    default_image: str | None = None
    size_min: int = 1
    size_max: int | None = None
    must_coexist: tuple[frozenset[str], ...] = ()
    cant_coexist: tuple[frozenset[str], ...] = ()
    service_constraints: Mapping[str, ServiceConstraint] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class HardwareOption:
    """A hardware type as one provider offers it. ``cost`` is hourly, None when unknown."""

    name: str
    flavor: str
    cost: float | None = None


@dataclass(frozen=True)
class ImageOption:
    name: str
    image: str
    ssh_user: str = "root"


@dataclass(frozen=True)
class NodeRole:
    """``count`` identical nodes: same hardware, image and services."""

    hardware: str
    image: str
    services: frozenset[str]
    count: int


@dataclass(frozen=True)
class ClusterLayout:
    roles: tuple[NodeRole, ...]

    @property
    def size(self) -> int:
        return sum(role.count for role in self.roles)

    @property
    def services(self) -> frozenset[str]:
        return frozenset().union(*(role.services for role in self.roles)) if self.roles else frozenset()

    def service_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for role in self.roles:
            for service in role.services:
                counts[service] = counts.get(service, 0) + role.count
        return counts


@dataclass(frozen=True)
class NodeSpec:
    """One concrete node, for the planner and macros. ``number`` orders nodes (the original's nodenum)."""

    node_id: str
    number: int
    hardware: str
    image: str
    services: frozenset[str]
    hostname: str = ""
    ip_addresses: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _names(values: Iterable[str] | None) -> frozenset[str]:
    return frozenset(values or ())


def service_spec(doc: Mapping[str, Any]) -> ServiceSpec:
    """A ServiceSpec from a canonical service document."""
    deps = doc.get("dependencies", {})
    install, runtime = deps.get("install", {}), deps.get("runtime", {})
    return ServiceSpec(
        name=doc["name"],
        provides=_names(deps.get("provides")),
        conflicts=_names(deps.get("conflicts")),
        install_requires=_names(install.get("requires")),
        install_uses=_names(install.get("uses")),
        runtime_requires=_names(runtime.get("requires")),
        runtime_uses=_names(runtime.get("uses")),
        actions=frozenset(doc.get("provisioner", {}).get("actions", {})),
    )


def template_spec(doc: Mapping[str, Any]) -> TemplateSpec:
    """A TemplateSpec from a canonical, *resolved* template document (see validation.resolve_template)."""
    compat, defaults, constraints = doc["compatibility"], doc["defaults"], doc["constraints"]
    service_constraints = {
        name: ServiceConstraint(
            min=spec["quantities"].get("min", 0),
            max=spec["quantities"].get("max"),
            hardware_types=_names(spec.get("hardwaretypes")),
            image_types=_names(spec.get("imagetypes")),
        )
        for name, spec in constraints.get("services", {}).items()
    }
    return TemplateSpec(
        name=doc["name"],
        compatible_services=_names(compat.get("services")),
        compatible_hardware=_names(compat.get("hardwaretypes")),
        compatible_images=_names(compat.get("imagetypes")),
        default_services=tuple(defaults.get("services", ())),
        default_provider=defaults.get("provider"),
        default_hardware=defaults.get("hardwaretype"),
        default_image=defaults.get("imagetype"),
        size_min=constraints["size"].get("min", 1),
        size_max=constraints["size"].get("max"),
        must_coexist=tuple(frozenset(group) for group in constraints["layout"]["mustcoexist"]),
        cant_coexist=tuple(frozenset(group) for group in constraints["layout"]["cantcoexist"]),
        service_constraints=MappingProxyType(service_constraints),
    )


def provider_options(
    provider: str, hardware_docs: Iterable[Mapping[str, Any]], image_docs: Iterable[Mapping[str, Any]]
) -> tuple[tuple[HardwareOption, ...], tuple[ImageOption, ...]]:
    """The hardware and image types that ``provider`` maps (flavor / image present), with costs."""
    hardware = []
    for doc in hardware_docs:
        mapping = doc.get("providermap", {}).get(provider)
        if mapping and mapping.get("flavor"):
            cost = mapping.get("cost")
            try:
                cost_value = float(cost) if cost not in (None, "") else None
            except (TypeError, ValueError):
                cost_value = None
            hardware.append(HardwareOption(doc["name"], str(mapping["flavor"]), cost_value))
    images = []
    for doc in image_docs:
        mapping = doc.get("providermap", {}).get(provider)
        if mapping and mapping.get("image"):
            images.append(ImageOption(doc["name"], str(mapping["image"]), str(mapping.get("sshuser") or "root")))
    return tuple(sorted(hardware, key=lambda h: h.name)), tuple(sorted(images, key=lambda i: i.name))
