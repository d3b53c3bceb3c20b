"""The layout solver: which services go on how many nodes, with which hardware and image.

Pure Python (no Django): it takes a frozen ``LayoutRequest`` and returns a frozen ``ClusterLayout`` or raises
``LayoutError`` whose ``reasons`` name the constraints that clash.

How it works, and why it does not enumerate subsets of services as the original did:

1. **Units.** Must-coexist groups, restricted to the cluster's services, are merged where they intersect
   (if a node holds any member of a merged group it must hold all of them). Each merged group, and each other
   constrained service, is a *unit*: nodes hold whole units. Services with no quantity or type constraint and
   in no group are *free* and go on every node, as in the original; they can never break a constraint.
2. **Node compatibility is downward closed.** A set of units can share a node when no can't-coexist group is
   inside it and some allowed hardware type and image type is common to all of them. Dropping a unit from a
   node never makes it invalid, which gives a simple exact feasibility test: a layout of N nodes exists iff
   (a) every unit fits on a node by itself with ``low <= high`` (``low`` = the largest ``quantities.min``,
   at least 1 so every requested service is placed; ``high`` = the smallest ``quantities.max``), (b) ``low``
   copies of every unit can be packed onto at most N nodes, and (c) free services exist or the units'
   maxima can fill N nodes. Extra nodes are then filled by growing a role or adding one more role.
3. **Packing** (b) is done greedily with a few fixed unit orders (largest ``low`` first, tightest types
   first, most conflicts first; whole roles before splitting one, splitting before new nodes), then, only if
   all of them fail, with a fail-first order (DSATUR-like: the unit with the least room goes next). That is
   polynomial in units and roles and treats the size as a number, so 10,000 nodes cost what 10 do. If no
   greedy pass works, an exhaustive search over how many copies of each unit go to each node class decides
   (fail-first branching, memoised, pruned; bounded by ``SEARCH_BUDGET`` steps). It is exact, so on small
   instances a failure proves that no layout exists. Packing is NP-hard in general (it contains graph
   colouring), so that search is exponential in the worst case; typical templates never reach it.
4. **Filling** the other nodes follows the original's "most services first": grow the densest roles while
   their units allow, then add one role of the free services plus every compatible unit with room (the
   worker role), then put units with room on further whole roles.
5. **Preference** among the candidate layouts: fewest roles, then most service placements, then the lowest
   hourly cost of known hardware prices, then names. Each role takes its cheapest allowed hardware type
   (known costs first, then name) and the first allowed image by name. Role minimisation is a heuristic, not
   a proven optimum, and services per node rank above cost (a unit that needs large hardware and has no
   maximum spreads over the big role, making it large).

Every candidate layout is checked against the same rules as ``check_layout`` before it is returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clusters.planning.specs import (
    ClusterLayout,
    HardwareOption,
    ImageOption,
    NodeRole,
    ServiceConstraint,
    ServiceSpec,
    TemplateSpec,
)

# Steps of the exhaustive packing search before it gives up: well under a second of work. Small instances
# (the property tests, real templates that the greedy pass misses) need at most a few hundred; the bound
# keeps a hopeless request on an adversarial template fast.
SEARCH_BUDGET = 20_000

_UNCONSTRAINED = ServiceConstraint()


class LayoutError(ValueError):
    """No layout satisfies the request. ``reasons`` are sentences naming the clashing constraints."""

    def __init__(self, reasons: Iterable[str]) -> None:
        self.reasons: tuple[str, ...] = tuple(reasons) or ("no layout found",)
        super().__init__("no valid cluster layout: " + " | ".join(self.reasons))


@dataclass(frozen=True, kw_only=True)
class LayoutRequest:
    """Everything the solver needs, already resolved by the caller.

    ``services`` maps catalog service names to specs (at least the template's and the request's).
    ``requested_services`` empty means the template's default services. ``hardware`` / ``image`` are request
    overrides; without them the template defaults apply, else any type the template allows and the provider
    maps (``hardware_options`` / ``image_options`` are the provider's mappings, with hourly costs).
    """

    template: TemplateSpec
    services: Mapping[str, ServiceSpec]
    size: int
    requested_services: tuple[str, ...] = ()
    hardware: str | None = None
    image: str | None = None
    hardware_options: tuple[HardwareOption, ...]
    image_options: tuple[ImageOption, ...]
    max_size: int = 10_000
    provider: str = ""  # only for messages: "provider rackspace maps ..." rather than "this provider"

    @property
    def provider_label(self) -> str:
        return f"provider {self.provider}" if self.provider else "this provider"


class _SearchExhaustedError(Exception):
    pass


# --- request checks ----------------------------------------------------------------------------------


def _resolve_services(request: LayoutRequest) -> tuple[str, ...]:
    names = request.requested_services or request.template.default_services
    return tuple(dict.fromkeys(names))


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def _constraint(template: TemplateSpec, service: str) -> ServiceConstraint:
    return template.service_constraints.get(service, _UNCONSTRAINED)


def _size_reasons(request: LayoutRequest, size: int) -> list[str]:
    template = request.template
    reasons = []
    if size < 1:
        reasons.append(f"a cluster needs at least 1 node; the requested size is {size}")
    elif size < template.size_min or (template.size_max is not None and size > template.size_max):
        limits = (
            f"at least {template.size_min}"
            if template.size_max is None
            else f"from {template.size_min} to {template.size_max}"
        )
        reasons.append(f"template {template.name} allows {limits} nodes; the requested size is {size}")
    if size > request.max_size:
        reasons.append(f"size {size} exceeds the maximum cluster size of {request.max_size}")
    return reasons


def _service_reasons(request: LayoutRequest, services: Sequence[str]) -> list[str]:
    """Unknown, incompatible, unmet requires and conflicts, with the original's wording where it had one."""
    template = request.template
    if not services:
        return [f"no services were requested and template {template.name} has no default services"]
    reasons = [f"service {name} does not exist" for name in services if name not in request.services]
    incompatible = [
        name for name in services if template.compatible_services and name not in template.compatible_services
    ]
    if incompatible:
        verb = "is" if len(incompatible) == 1 else "are"
        reasons.append(f"{', '.join(incompatible)} {verb} not compatible with template {template.name}")
    known = [request.services[name] for name in services if name in request.services]
    offered: dict[str, set[str]] = {}
    for spec in known:
        for alias in {spec.name, *spec.provides}:
            offered.setdefault(alias, set()).add(spec.name)
    for spec in known:
        for dependency in sorted(spec.install_requires | spec.runtime_requires):
            if dependency not in offered:
                reasons.append(
                    f"{spec.name} requires {dependency}, which is neither on the cluster nor provided by one of "
                    "its services"
                )
        for other in sorted(spec.conflicts):
            clashing = offered.get(other, set()) - {spec.name}
            if clashing:
                reasons.append(f"{spec.name} conflicts with {other} ({_names(clashing)} is on the cluster)")
    return reasons


# --- the solving context -----------------------------------------------------------------------------


def _hardware_types(constraint: ServiceConstraint) -> frozenset[str]:
    return constraint.hardware_types


def _image_types(constraint: ServiceConstraint) -> frozenset[str]:
    return constraint.image_types


def _popcount(value: int) -> int:
    return value.bit_count()


def _lowest(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


@dataclass
class _Unit:
    """Services that always share nodes, with their combined limits and allowed types (as bit masks)."""

    index: int
    services: tuple[str, ...]
    mask: int
    low: int
    high: int | None
    hardware_legal: int
    image_legal: int
    hardware_candidate: int
    image_candidate: int
    cant_edges: tuple[int, ...]

    @property
    def bit(self) -> int:
        return 1 << self.index

    def hardware(self, legal: bool) -> int:
        return self.hardware_legal if legal else self.hardware_candidate

    def image(self, legal: bool) -> int:
        return self.image_legal if legal else self.image_candidate


@dataclass(eq=False)
class _Draft:
    """A role under construction: service bits, unit bits, allowed hardware/image bits and a node count.

    ``is_fixed`` drafts are existing nodes: their hardware and image are one bit each and never change.
    """

    content: int
    units: int
    hardware: int
    image: int
    count: int
    is_fixed: bool = False

    def copy(self, **changes: Any) -> _Draft:
        return dataclasses.replace(self, **changes)


class _Context:
    """The request turned into bit masks, plus every reason found so far."""

    def __init__(
        self,
        request: LayoutRequest,
        services: tuple[str, ...],
        size: int,
        *,
        extra_hardware: Iterable[str] = (),
        extra_images: Iterable[str] = (),
    ) -> None:
        self.request = request
        self.provider_label = request.provider_label
        self.template = template = request.template
        self.services = services
        self.size = size
        self.service_bit = {name: 1 << index for index, name in enumerate(services)}
        self.request_reasons = _size_reasons(request, size) + _service_reasons(request, services)
        self.candidate_reasons: list[str] = []
        self.unit_reasons: list[str] = []

        def cost_key(option: HardwareOption) -> tuple[bool, float, str]:
            return (option.cost is None, option.cost or 0.0, option.name)

        hardware_names = [option.name for option in sorted(request.hardware_options, key=cost_key)]
        hardware_names += sorted(set(extra_hardware) - set(hardware_names))
        image_names = sorted({option.name for option in request.image_options} | set(extra_images))
        self.hardware_names, self.image_names = hardware_names, image_names
        self.hardware_bit = {name: 1 << index for index, name in enumerate(hardware_names)}
        self.image_bit = {name: 1 << index for index, name in enumerate(image_names)}
        self.hardware_cost = {option.name: option.cost for option in request.hardware_options}
        self.offered_hardware = offered_hardware = {option.name for option in request.hardware_options}
        self.offered_images = offered_images = {option.name for option in request.image_options}
        self.legal_hardware = self._mask(
            self.hardware_bit, offered_hardware, template.compatible_hardware or offered_hardware
        )
        self.legal_image = self._mask(self.image_bit, offered_images, template.compatible_images or offered_images)
        self.candidate_hardware, self.hardware_source = self._candidates(
            "hardware type", request.hardware, template.default_hardware, template.compatible_hardware,
            offered_hardware, self.hardware_bit, self.legal_hardware, "flavor",
        )  # fmt: skip
        self.candidate_image, self.image_source = self._candidates(
            "image type", request.image, template.default_image, template.compatible_images,
            offered_images, self.image_bit, self.legal_image, "image",
        )  # fmt: skip
        self._build_units()

    @staticmethod
    def _mask(bits: Mapping[str, int], *sets: Iterable[str]) -> int:
        names = set(bits)
        for values in sets:
            names &= set(values)
        mask = 0
        for name in names:
            mask |= bits[name]
        return mask

    def _candidates(
        self,
        label: str,
        requested: str | None,
        default: str | None,
        compatible: frozenset[str],
        offered: set[str],
        bits: Mapping[str, int],
        legal: int,
        mapping_key: str,
    ) -> tuple[int, str]:
        """Types new nodes may use: the request override, else the template default, else every legal one."""
        template = self.template.name
        if requested or default:
            name = requested or default
            assert name is not None
            source = f"the requested {label} {name}" if requested else f"template {template}'s default {label} {name}"
            if compatible and name not in compatible:
                self.candidate_reasons.append(f"{source} is not compatible with template {template}")
            elif name not in offered:
                self.candidate_reasons.append(
                    f"{source} has no {mapping_key} for {self.provider_label} (it maps: {_names(offered) or 'nothing'})"
                )
            else:
                return bits[name], source
            return 0, source
        if not legal:
            allowed = _names(compatible) if compatible else "any"
            self.candidate_reasons.append(
                f"no {label} is available to template {template} with {self.provider_label} "
                f"(template allows: {allowed}; provider maps: {_names(offered) or 'nothing'})"
            )
        names = [name for name, bit in bits.items() if bit & legal]
        return legal, f"the {label}s template {template} allows and {self.provider_label} maps ({', '.join(names)})"

    def _allowed(self, bits: Mapping[str, int], base: int, allowed: frozenset[str]) -> int:
        return base & self._mask(bits, allowed) if allowed else base

    def _build_units(self) -> None:
        template, present = self.template, set(self.services)
        self.must_groups = [
            (group, group & present) for group in template.must_coexist if len(group & present) >= 2
        ]  # fmt: skip
        self.cant_groups = [group for group in template.cant_coexist if group and group <= present]
        grouped = set().union(*(part for _, part in self.must_groups), *self.cant_groups)
        parent = {name: name for name in self.services}

        def find(name: str) -> str:
            while parent[name] != name:
                parent[name] = parent[parent[name]]
                name = parent[name]
            return name

        for _, part in self.must_groups:
            first, *rest = sorted(part)
            for name in rest:
                parent[find(name)] = find(first)
        components: dict[str, list[str]] = {}
        self.free_mask = 0
        for name in self.services:
            if name not in grouped and _constraint(template, name) == _UNCONSTRAINED:
                self.free_mask |= self.service_bit[name]
            else:
                components.setdefault(find(name), []).append(name)
        self.cant_masks = [self.bits(group) for group in self.cant_groups]
        self.units: list[_Unit] = []
        for members in sorted(sorted(names) for names in components.values()):
            constraints = {name: _constraint(template, name) for name in members}
            mask = self.bits(members)
            low = max(max(c.min, 1) for c in constraints.values())
            highs = [c.max for c in constraints.values() if c.max is not None]
            hardware_legal, image_legal = self.legal_hardware, self.legal_image
            for c in constraints.values():
                hardware_legal = self._allowed(self.hardware_bit, hardware_legal, c.hardware_types)
                image_legal = self._allowed(self.image_bit, image_legal, c.image_types)
            unit = _Unit(
                index=len(self.units),
                services=tuple(members),
                mask=mask,
                low=low,
                high=min(highs) if highs else None,
                hardware_legal=hardware_legal,
                image_legal=image_legal,
                hardware_candidate=hardware_legal & self.candidate_hardware,
                image_candidate=image_legal & self.candidate_image,
                cant_edges=tuple(edge for edge in self.cant_masks if edge & mask),
            )
            self.units.append(unit)

    # --- helpers used everywhere ---

    def bits(self, names: Iterable[str]) -> int:
        mask = 0
        for name in names:
            mask |= self.service_bit.get(name, 0)
        return mask

    def service_names(self, mask: int) -> frozenset[str]:
        return frozenset(name for name, bit in self.service_bit.items() if bit & mask)

    def units_in(self, mask: int) -> list[_Unit]:
        return [unit for unit in self.units if unit.mask & mask]

    def describe(self, unit: _Unit) -> str:
        if len(unit.services) == 1:
            return unit.services[0]
        groups = ", ".join(f"[{_names(group)}]" for group, part in self.must_groups if part & set(unit.services))
        return f"[{', '.join(unit.services)}] (must-coexist {groups})"

    def compatible(self, draft: _Draft, unit: _Unit, legal: bool) -> bool:
        if not draft.hardware & unit.hardware(legal) or not draft.image & unit.image(legal):
            return False
        union = draft.content | unit.mask
        return all(edge & ~union for edge in unit.cant_edges)

    def conflict_causes(self, first: _Unit, second: _Unit, legal: bool) -> list[str]:
        causes = []
        union = first.mask | second.mask
        for group, edge in zip(self.cant_groups, self.cant_masks, strict=True):
            if edge & first.mask and edge & second.mask and not edge & ~union:
                causes.append(f"can't-coexist [{_names(group)}]")
        if not first.hardware(legal) & second.hardware(legal):
            causes.append(f"no hardware type allowed for both {self.describe(first)} and {self.describe(second)}")
        if not first.image(legal) & second.image(legal):
            causes.append(f"no image type allowed for both {self.describe(first)} and {self.describe(second)}")
        return causes

    def hardware_name(self, mask: int) -> str:
        return self.hardware_names[_lowest(mask)]

    def image_name(self, mask: int) -> str:
        return self.image_names[_lowest(mask)]

    # --- unit-level reasons ---

    def check_units(self, node_count: int, *, legal: bool, demand: Mapping[int, int] | None = None) -> None:
        """Reasons why some unit can't be placed at all, whatever the other units do."""
        template = self.template
        for unit in self.units:
            what = self.describe(unit)
            constraints = {name: _constraint(template, name) for name in unit.services}
            for group, edge in zip(self.cant_groups, self.cant_masks, strict=True):
                if not edge & ~unit.mask:
                    self.unit_reasons.append(
                        f"can't-coexist [{_names(group)}] can never hold: must-coexist groups put all of "
                        f"{what} on the same nodes"
                    )
            if unit.high is not None and unit.low > unit.high:
                low_name = max(unit.services, key=lambda n: (max(constraints[n].min, 1), n))
                high_name = min(
                    (n for n in unit.services if constraints[n].max is not None),
                    key=lambda n: (constraints[n].max, n),
                )
                if unit.high == 0:
                    self.unit_reasons.append(
                        f"{high_name} has quantities.max 0 but every requested service must run on at least "
                        f"one node" + (f"; it must coexist with {what}" if len(unit.services) > 1 else "")
                    )
                elif len(unit.services) == 1:
                    self.unit_reasons.append(f"{what} needs at least {unit.low} nodes but allows at most {unit.high}")
                else:
                    self.unit_reasons.append(
                        f"{what} must share nodes, but {low_name} needs at least {unit.low} nodes "
                        f"(quantities.min) and {high_name} allows at most {unit.high} (quantities.max)"
                    )
            needed = unit.low if demand is None else demand.get(unit.index, 0)
            if needed > node_count and node_count == self.size:
                self.unit_reasons.append(
                    f"{what} needs at least {needed} nodes (quantities.min), but the cluster has {node_count}"
                )
            elif needed > node_count:
                self.unit_reasons.append(
                    f"{what} needs {needed} more nodes to reach its minimum, but only {node_count} are added"
                )
            if not needed:
                continue
            for kind, names_of, candidate, source in (
                ("hardware", _hardware_types, unit.hardware(legal), self.hardware_source),
                ("image", _image_types, unit.image(legal), self.image_source),
            ):
                if candidate:
                    continue
                restricted = {name: names_of(c) for name, c in constraints.items() if names_of(c)}
                common = frozenset.intersection(*restricted.values()) if restricted else None
                allowed = "; ".join(f"{name} allows {_names(types)}" for name, types in sorted(restricted.items()))
                if common is not None and not common and len(restricted) > 1:
                    self.unit_reasons.append(f"{what} must share nodes, but no {kind} type suits all: {allowed}")
                elif restricted:
                    usable = source if not legal else f"the {kind} types template {template.name} allows here"
                    self.unit_reasons.append(f"{allowed}, but the cluster can use only {usable}")
                # With no per-service restriction the candidate reasons already explain an empty set.

    def raise_if_invalid(self, *, new_nodes: bool) -> None:
        reasons = self.request_reasons + (self.candidate_reasons if new_nodes else []) + self.unit_reasons
        if reasons:
            raise LayoutError(dict.fromkeys(reasons))


# --- packing: place ``demand`` copies of units onto node classes -----------------------------------------


def _conflict_degree(context: _Context, legal: bool) -> dict[int, int]:
    degree = dict.fromkeys((unit.index for unit in context.units), 0)
    for first in context.units:
        for second in context.units:
            if first.index < second.index and _conflicts(context, first, second, legal):
                degree[first.index] += 1
                degree[second.index] += 1
    return degree


def _conflicts(context: _Context, first: _Unit, second: _Unit, legal: bool) -> bool:
    if not first.hardware(legal) & second.hardware(legal) or not first.image(legal) & second.image(legal):
        return True
    union = first.mask | second.mask
    return any(not edge & ~union for edge in first.cant_edges if edge & second.mask)


def _orders(context: _Context, units: Sequence[_Unit], demand: Mapping[int, int], legal: bool) -> list[list[_Unit]]:
    """A few deterministic unit orders for the greedy packer; the best resulting layout wins."""
    degree = _conflict_degree(context, legal)

    def tight(unit: _Unit) -> int:
        return _popcount(unit.hardware(legal)) * _popcount(unit.image(legal))

    keys = (
        lambda u: (-demand[u.index], tight(u), -degree[u.index], u.index),
        lambda u: (-degree[u.index], -demand[u.index], u.index),
        lambda u: (tight(u), -demand[u.index], u.index),
        lambda u: (u.index,),
    )
    orders: list[list[_Unit]] = []
    for key in keys:
        order = sorted(units, key=key)
        if order not in orders:
            orders.append(order)
    return orders


def _add_unit(draft: _Draft, unit: _Unit, legal: bool) -> None:
    draft.content |= unit.mask
    draft.units |= unit.bit
    draft.hardware &= unit.hardware(legal)
    draft.image &= unit.image(legal)


def _new_draft(unit: _Unit, count: int, legal: bool) -> _Draft:
    return _Draft(unit.mask, unit.bit, unit.hardware(legal), unit.image(legal), count)


def _slack(
    context: _Context, drafts: Sequence[_Draft], unit: _Unit, need: int, free_nodes: int, legal: bool
) -> tuple[int, int, int]:
    room = sum(d.count for d in drafts if d.count and context.compatible(d, unit, legal))
    return (free_nodes + room - need, -need, unit.index)


def _pack_greedy(
    context: _Context,
    order: Sequence[_Unit] | None,
    demand: Mapping[int, int],
    drafts: Sequence[_Draft],
    free_nodes: int,
    legal: bool,
) -> list[_Draft] | None:
    """First fit: whole roles (largest first) while they fit, then split one role, then new nodes.

    ``order`` None means fail-first: next comes the unit with the least room to spare, as in DSATUR
    colouring, which rescues conflict-heavy templates that every fixed order gets wrong.
    """
    drafts = [draft.copy() for draft in drafts]
    pending = [unit for unit in (order or context.units) if demand.get(unit.index, 0)]
    while pending:
        if order is None:
            unit = min(pending, key=lambda u: _slack(context, drafts, u, demand[u.index], free_nodes, legal))
            pending.remove(unit)
        else:
            unit = pending.pop(0)
        need = demand[unit.index]
        compatible = sorted(
            (d for d in drafts if d.count and context.compatible(d, unit, legal)), key=lambda d: -d.count
        )
        taken: list[_Draft] = []
        for draft in compatible:
            if draft.count <= need:
                taken.append(draft)
                need -= draft.count
                if not need:
                    break
        for draft in taken:
            _add_unit(draft, unit, legal)
        if not need:
            continue
        splittable = [d for d in compatible if d not in taken and d.count > need]
        if splittable:
            source = min(splittable, key=lambda d: d.count)
            part = source.copy(count=need)
            source.count -= need
            _add_unit(part, unit, legal)
            drafts.insert(next(i for i, d in enumerate(drafts) if d is source) + 1, part)
        elif need <= free_nodes:
            free_nodes -= need
            drafts.append(_new_draft(unit, need, legal))
        else:
            return None
    return drafts


_Shape = tuple[int, int, int, int, bool]  # content, units, hardware, image, is_fixed: a node class


def _pack_exact(
    context: _Context,
    order: Sequence[_Unit],
    demand: Mapping[int, int],
    drafts: Sequence[_Draft],
    free_nodes: int,
    legal: bool,
) -> list[_Draft] | None:
    """Every way to spread each unit's copies over the current node classes and new nodes, depth first.

    Nodes with the same contents so far are interchangeable, so the state is the multiset of classes; failed
    states are memoised, and each class remembers which of the remaining units it can still take (a class
    only ever loses compatibility as it grows). Raises ``_SearchExhaustedError`` after ``SEARCH_BUDGET``
    steps.
    """
    units = [unit for unit in order if demand.get(unit.index, 0)]
    needs = [demand[unit.index] for unit in units]
    failed: set[tuple[int, int, tuple[tuple[_Shape, int], ...]]] = set()  # (pending units, free, classes)
    fits_cache: dict[_Shape, int] = {}
    steps = 0

    def fits(shape: _Shape) -> int:
        """Bit ``p`` set when ``units[p]`` can join this class."""
        mask = fits_cache.get(shape)
        if mask is None:
            content, _, hardware, image, _ = shape
            mask = 0
            for position, unit in enumerate(units):
                if not hardware & unit.hardware(legal) or not image & unit.image(legal):
                    continue
                union = content | unit.mask
                if all(edge & ~union for edge in unit.cant_edges):
                    mask |= 1 << position
            fits_cache[shape] = mask
        return mask

    def grow(shape: _Shape, unit: _Unit) -> _Shape:
        content, members, hardware, image, is_fixed = shape
        return (
            content | unit.mask,
            members | unit.bit,
            hardware & unit.hardware(legal),
            image & unit.image(legal),
            is_fixed,
        )

    def distributions(
        classes: tuple[tuple[_Shape, int], ...], indexes: list[int], need: int, free: int
    ) -> Iterator[list[int]]:
        if not indexes:
            if need <= free:
                yield []
            return
        head, rest = indexes[0], indexes[1:]
        rest_capacity = sum(classes[i][1] for i in rest)
        for take in range(min(classes[head][1], need), -1, -1):
            if need - take - rest_capacity > free:
                break
            for tail in distributions(classes, rest, need - take, free):
                yield [take, *tail]

    def search(pending: int, classes: tuple[tuple[_Shape, int], ...], free: int) -> dict[_Shape, int] | None:
        nonlocal steps
        if not pending:
            return dict(classes)
        state = (pending, free, classes)
        if state in failed:
            return None
        steps += 1
        if steps > SEARCH_BUDGET:
            raise _SearchExhaustedError
        masks = [fits(shape) for shape, _ in classes]
        # Fail first: branch on the pending unit with the least room to spare; prune if any has too little.
        best: tuple[int, int] | None = None
        for later in range(len(units)):
            bit = 1 << later
            if not pending & bit:
                continue
            room = free + sum(count for (_, count), mask in zip(classes, masks, strict=True) if mask & bit)
            if room < needs[later]:
                failed.add(state)
                return None
            if best is None or (room - needs[later], later) < best:
                best = (room - needs[later], later)
        assert best is not None
        position = best[1]
        unit, bit, need = units[position], 1 << position, needs[position]
        indexes = [i for i, mask in enumerate(masks) if mask & bit]
        for takes in distributions(classes, indexes, need, free):
            counts = dict(classes)
            for i, take in zip(indexes, takes, strict=True):
                if take:
                    shape = classes[i][0]
                    counts[shape] -= take
                    grown = grow(shape, unit)
                    counts[grown] = counts.get(grown, 0) + take
            fresh = need - sum(takes)
            if fresh:
                shape = (unit.mask, unit.bit, unit.hardware(legal), unit.image(legal), False)
                counts[shape] = counts.get(shape, 0) + fresh
            found = search(pending & ~bit, tuple(sorted((s, c) for s, c in counts.items() if c)), free - fresh)
            if found is not None:
                return found
        failed.add(state)
        return None

    start: dict[_Shape, int] = {}
    for draft in drafts:
        if draft.count:
            shape = (draft.content, draft.units, draft.hardware, draft.image, draft.is_fixed)
            start[shape] = start.get(shape, 0) + draft.count
    result = search((1 << len(units)) - 1, tuple(sorted(start.items())), free_nodes)
    if result is None:
        return None
    return [_Draft(content, members, hardware, image, count, is_fixed)
            for (content, members, hardware, image, is_fixed), count in result.items()]  # fmt: skip


# --- filling new nodes -----------------------------------------------------------------------------------


def _recompute_masks(context: _Context, draft: _Draft) -> None:
    draft.content, draft.hardware, draft.image = 0, context.candidate_hardware, context.candidate_image
    for unit in context.units:
        if draft.units & unit.bit:
            draft.content |= unit.mask
            draft.hardware &= unit.hardware_candidate
            draft.image &= unit.image_candidate


def _fill(
    context: _Context,
    drafts: list[_Draft],
    remaining: int,
    spare: dict[int, int],
    order: Sequence[_Unit],
    growable: Sequence[bool],
) -> list[_Draft] | None:
    """Give ``remaining`` empty new nodes a role, within every unit's ``spare`` count.

    In order of preference, as the original's "most services first": grow a role whose units all have room
    for every remaining node (no new role); else grow the densest roles as far as their units allow and add
    one role made of the free services and every compatible unit with room for the rest (one new role). If
    there is no such role (no free service, every unit capped), peel units off packed nodes and use
    single-unit roles, which is complete whenever the units' maxima add up to the size.
    """
    usable = [unit for unit in order if unit.hardware_candidate and unit.image_candidate]
    if not context.free_mask and not any(spare[unit.index] >= remaining for unit in usable):
        return _fill_tight(context, drafts, remaining, spare, usable)

    def room(position: int) -> int:
        draft = drafts[position]
        if not draft.count or not growable[position]:
            return 0
        return min((spare[u.index] for u in context.units if u.bit & draft.units), default=remaining)

    while remaining > 0:
        candidates = [(-_popcount(d.content), _lowest(d.hardware), i) for i, d in enumerate(drafts) if room(i) > 0]
        absorbing = [key for key in candidates if room(key[2]) >= remaining]
        chosen = min(absorbing or candidates, default=None)
        if chosen is None:
            break
        draft = drafts[chosen[2]]
        grow = min(room(chosen[2]), remaining)
        draft.count += grow
        remaining -= grow
        for unit in context.units:
            if unit.bit & draft.units:
                spare[unit.index] -= grow
    if remaining <= 0:
        return drafts
    # Growing a role takes the same amount from its units' spare and from ``remaining``, so the units that
    # had room for every remaining node before still have it: the new role below always exists.
    roomy = [unit for unit in usable if spare[unit.index] >= remaining]
    role = _Draft(0, 0, context.candidate_hardware, context.candidate_image, remaining)
    for unit in roomy:
        if context.compatible(role, unit, False):
            _add_unit(role, unit, False)
    for unit in roomy:
        if unit.bit & role.units:
            spare[unit.index] -= remaining
    return [*drafts, role]


def _fill_tight(
    context: _Context, drafts: list[_Draft], remaining: int, spare: dict[int, int], order: Sequence[_Unit]
) -> list[_Draft] | None:
    """No free service and no unit with room for every remaining node: peel units off multi-unit new nodes
    until the units' spare counts can fill what is left, then fill with single-unit roles."""
    capacity = sum(min(spare[unit.index], remaining) for unit in order)
    missing = remaining - capacity
    position = 0
    drafts = list(drafts)
    while missing > 0 and position < len(drafts):
        draft = drafts[position]
        if draft.is_fixed or draft.count == 0 or _popcount(draft.units) < 2:
            position += 1
            continue
        unit = next(u for u in reversed(order) if u.bit & draft.units)
        take = min(draft.count, missing)
        draft.count -= take
        rest = draft.copy(units=draft.units & ~unit.bit, count=take)
        _recompute_masks(context, rest)
        drafts += [rest, _new_draft(unit, take, False)]
        missing -= take
        remaining -= take
    if missing > 0:
        return None
    while remaining > 0:
        roomy = [u for u in order if spare[u.index] > 0]
        if not roomy:
            return None
        unit = max(roomy, key=lambda u: (spare[u.index], -order.index(u)))
        take = min(remaining, spare[unit.index])
        single = next((d for d in drafts if not d.is_fixed and d.units == unit.bit), None)
        if single is not None:
            single.count += take
        else:
            drafts.append(_new_draft(unit, take, False))
        spare[unit.index] -= take
        remaining -= take
    return drafts


def _extend(context: _Context, drafts: list[_Draft], spare: dict[int, int], order: Sequence[_Unit]) -> None:
    """Put units with room on whole new roles too: more services per node, as the original preferred, and
    never a new role. This ranks above cost, so it may move a role to pricier hardware."""
    for unit in order:
        for draft in sorted((d for d in drafts if not d.is_fixed and d.count), key=lambda d: -d.count):
            if draft.units & unit.bit or draft.count > spare[unit.index]:
                continue
            if not context.compatible(draft, unit, False):
                continue
            _add_unit(draft, unit, False)
            spare[unit.index] -= draft.count


def _extend_fixed(context: _Context, drafts: list[_Draft], units: Sequence[_Unit], total: int) -> None:
    """Added services go on as many existing nodes as their maximum allows, whole roles only."""
    for unit in units:
        placed = sum(d.count for d in drafts if d.units & unit.bit)
        room = (total if unit.high is None else min(unit.high, total)) - placed
        for draft in sorted((d for d in drafts if d.count), key=lambda d: -d.count):
            if draft.units & unit.bit or draft.count > room or not context.compatible(draft, unit, True):
                continue
            _add_unit(draft, unit, True)
            room -= draft.count


# --- turning drafts into roles ---------------------------------------------------------------------------


def _materialize(context: _Context, drafts: Sequence[_Draft]) -> list[NodeRole]:
    roles: dict[tuple[str, str, frozenset[str]], int] = {}
    for draft in drafts:
        if draft.count <= 0:
            continue
        content = draft.content if draft.is_fixed else draft.content | context.free_mask
        key = (context.hardware_name(draft.hardware), context.image_name(draft.image), context.service_names(content))
        roles[key] = roles.get(key, 0) + draft.count
    return [NodeRole(hardware, image, services, count) for (hardware, image, services), count in roles.items()]


def _role_sort_key(role: NodeRole) -> tuple[int, tuple[str, ...], str, str]:
    return (-len(role.services), tuple(sorted(role.services)), role.hardware, role.image)


def _score(
    context: _Context, roles: Sequence[NodeRole]
) -> tuple[int, int, int, float, list[tuple[int, tuple[str, ...], str, str]]]:
    """Smaller is better: fewest roles, most service placements, fewest nodes of unknown price, lowest known
    hourly cost, then names."""
    placements = sum(role.count * len(role.services) for role in roles)
    prices = [(role.count, context.hardware_cost.get(role.hardware)) for role in roles]
    unknown = sum(count for count, price in prices if price is None)
    cost = sum(count * price for count, price in prices if price is not None)
    return (len(roles), -placements, unknown, round(cost, 9), sorted(_role_sort_key(role) for role in roles))


def _fixed_drafts(context: _Context, roles: Iterable[NodeRole]) -> list[_Draft]:
    drafts = []
    for role in roles:
        content = context.bits(role.services)
        units = 0
        for unit in context.units_in(content):
            units |= unit.bit
        drafts.append(
            _Draft(content, units, context.hardware_bit[role.hardware], context.image_bit[role.image], role.count, True)
        )
    return drafts


# --- reasons for the whole cluster -----------------------------------------------------------------------


def _global_reasons(
    context: _Context, demand: Mapping[int, int], spare: Mapping[int, int], node_count: int
) -> list[str]:
    """Necessary conditions that involve several units: capacity and mutually exclusive units."""
    reasons = []
    if not context.free_mask:
        capacity = sum(min(demand.get(u.index, 0) + spare[u.index], node_count) for u in context.units)
        if capacity < node_count:
            limits = ", ".join(f"{context.describe(u)} at most {u.high}" for u in context.units if u.high is not None)
            reasons.append(
                f"every node needs at least one service, but every service has a maximum ({limits}), so they "
                f"fill at most {capacity} of the {node_count} new nodes; add a service without a maximum "
                "or choose a smaller size"
            )
    needy = sorted((u for u in context.units if demand.get(u.index, 0)), key=lambda u: (-demand[u.index], u.index))
    best: list[_Unit] = []
    for start in needy:
        clique = [start]
        for other in needy:
            if other is not start and all(_conflicts(context, other, member, False) for member in clique):
                clique.append(other)
        if sum(demand[u.index] for u in clique) > sum(demand[u.index] for u in best):
            best = clique
    total = sum(demand[u.index] for u in best)
    if len(best) > 1 and total > node_count:
        causes: list[str] = []
        for position, first in enumerate(best):
            for second in best[position + 1 :]:
                causes += [c for c in context.conflict_causes(first, second, False) if c not in causes]
        members = ", ".join(f"{context.describe(u)} (at least {demand[u.index]})" for u in best)
        reasons.append(
            f"{members} can never share a node ({'; '.join(causes)}), so together they need at least {total} "
            f"nodes, but the cluster has {node_count}"
        )
    return reasons


def _generic_reason(context: _Context, node_count: int, exhausted: bool) -> str:
    parts = [f"can't-coexist [{_names(group)}]" for group in context.cant_groups]
    parts += [f"must-coexist [{_names(part)}]" for _, part in context.must_groups]
    for unit in context.units:
        upper = "" if unit.high is None else f"..{unit.high}"
        parts.append(f"{context.describe(unit)} on {unit.low}{upper or '+'} nodes")
        for name in unit.services:
            constraint = _constraint(context.template, name)
            if constraint.hardware_types:
                parts.append(f"{name} only on hardware {_names(constraint.hardware_types)}")
            if constraint.image_types:
                parts.append(f"{name} only on images {_names(constraint.image_types)}")
    if exhausted:
        return (
            f"the layout search gave up after {SEARCH_BUDGET} steps without finding {node_count} nodes that "
            f"satisfy: {'; '.join(parts)}"
        )
    return f"no layout of {node_count} nodes satisfies these constraints together: {'; '.join(parts)}"


# --- the public entry points -----------------------------------------------------------------------------


def _place_new_nodes(context: _Context, fixed: list[_Draft], node_count: int) -> list[NodeRole]:
    """Roles for ``node_count`` new nodes next to the ``fixed`` (existing) ones, best of the greedy orders,
    with the exact search as the fallback that makes the answer complete."""
    counts: dict[str, int] = {}
    for draft in fixed:
        for name in context.service_names(draft.content):
            counts[name] = counts.get(name, 0) + draft.count
    demand, spare = {}, {}
    for unit in context.units:
        current = min(counts.get(name, 0) for name in unit.services)
        demand[unit.index] = max(0, unit.low - current)
        limit = context.size if unit.high is None else min(unit.high, context.size)
        spare[unit.index] = max(0, min(limit - current, node_count) - demand[unit.index])
    context.check_units(node_count, legal=False, demand=demand)
    context.raise_if_invalid(new_nodes=True)
    reasons = _global_reasons(context, demand, spare, node_count)
    if reasons:
        raise LayoutError(reasons)
    growable = [_draft_is_valid(context, draft) for draft in fixed]

    def finish(core: list[_Draft], order: Sequence[_Unit]) -> list[NodeRole] | None:
        new = [d for d in core if not d.is_fixed]
        used = sum(d.count for d in new)
        room = dict(spare)
        drafts = _fill(
            context, [*[d.copy() for d in fixed], *new], node_count - used, room, order,
            [*growable, *([True] * len(new))],
        )  # fmt: skip
        if drafts is None:
            return None
        _extend(context, drafts, room, order)
        return sorted(_materialize(context, drafts), key=_role_sort_key)

    best: list[NodeRole] | None = None
    orders = _orders(context, context.units, demand, False)
    # The fail-first pass (None) costs more and only runs when every fixed order failed.
    for order in [*orders, None]:
        if order is None and best is not None:
            break
        core = _pack_greedy(context, order, demand, [], node_count, False)
        roles = finish(core, order or orders[0]) if core is not None else None
        if roles is None or _layout_problems(context, roles):
            continue
        if best is None or _score(context, roles) < _score(context, best):
            best = roles
    if best is not None:
        return best
    try:
        core = _pack_exact(context, orders[0], demand, [], node_count, False)
    except _SearchExhaustedError:
        raise LayoutError([_generic_reason(context, node_count, True)]) from None
    if core is None:
        raise LayoutError([_generic_reason(context, node_count, False)])
    roles = finish(core, orders[0])
    if roles is None:
        raise LayoutError([_generic_reason(context, node_count, False)])
    problems = _layout_problems(context, roles)
    if problems:
        raise LayoutError(problems)
    return roles


def solve(request: LayoutRequest) -> ClusterLayout:
    """The preferred layout for a new cluster, or ``LayoutError`` naming every clash that was found.

    Every requested service is placed on at least one node (the original could silently drop a service
    without ``quantities.min``). The answer is deterministic; see the module docstring for the method.
    """
    context = _Context(request, _resolve_services(request), request.size)
    context.raise_if_invalid(new_nodes=True)
    return ClusterLayout(tuple(_place_new_nodes(context, [], request.size)))


def _role_label(role: NodeRole) -> str:
    return f"role {role.count} × {role.hardware}/{role.image} [{_names(role.services)}]"


def _draft_is_valid(context: _Context, draft: _Draft) -> bool:
    role = NodeRole(
        context.hardware_name(draft.hardware),
        context.image_name(draft.image),
        context.service_names(draft.content),
        max(draft.count, 1),
    )
    return not _role_problems(context, role)


def _role_problems(context: _Context, role: NodeRole) -> list[str]:
    """Violations that concern one role by itself (not the cluster-wide counts)."""
    template, label = context.template, _role_label(role)
    problems = []
    if role.count < 1:
        problems.append(f"{label} has {role.count} nodes; a role needs at least one")
    if not role.services:
        problems.append(f"{label} has no services")
    extra = role.services - set(context.services)
    if extra:
        problems.append(f"{label} runs {_names(extra)}, which is not among the cluster's services")
    if role.hardware not in context.offered_hardware:
        problems.append(f"{label} uses hardware type {role.hardware}, which {context.provider_label} does not offer")
    elif template.compatible_hardware and role.hardware not in template.compatible_hardware:
        problems.append(f"{label} uses hardware type {role.hardware}, which template {template.name} does not allow")
    if role.image not in context.offered_images:
        problems.append(f"{label} uses image type {role.image}, which {context.provider_label} does not offer")
    elif template.compatible_images and role.image not in template.compatible_images:
        problems.append(f"{label} uses image type {role.image}, which template {template.name} does not allow")
    for _group, part in context.must_groups:
        present = role.services & part
        if present and present != part:
            problems.append(
                f"must-coexist [{_names(part)}]: {label} runs {_names(present)} without {_names(part - present)}"
            )
    for group in template.cant_coexist:
        if group and group <= role.services:
            problems.append(f"can't-coexist [{_names(group)}]: {label} runs all of them")
    for name in sorted(role.services):
        constraint = _constraint(template, name)
        if constraint.hardware_types and role.hardware not in constraint.hardware_types:
            problems.append(
                f"{name} allows hardware types {_names(constraint.hardware_types)}, but {label} uses {role.hardware}"
            )
        if constraint.image_types and role.image not in constraint.image_types:
            problems.append(
                f"{name} allows image types {_names(constraint.image_types)}, but {label} uses {role.image}"
            )
    return problems


def _layout_problems(context: _Context, roles: Sequence[NodeRole]) -> list[str]:
    problems = []
    counts: dict[str, int] = {}
    for role in roles:
        problems += _role_problems(context, role)
        for name in role.services:
            counts[name] = counts.get(name, 0) + role.count
    for name in context.services:
        constraint, placed = _constraint(context.template, name), counts.get(name, 0)
        if placed == 0:
            problems.append(f"{name} is not placed on any node")
        elif placed < constraint.min:
            problems.append(f"{name} is on {placed} nodes, but its quantities.min is {constraint.min}")
        if constraint.max is not None and placed > constraint.max:
            problems.append(f"{name} is on {placed} nodes, but its quantities.max is {constraint.max}")
    return problems


def check_layout(request: LayoutRequest, layout: ClusterLayout) -> list[str]:
    """Every constraint ``layout`` violates for ``request``'s template, services and provider, as sentences.

    Checks the size limits (of ``layout.size``; ``request.size`` is not compared), the service set (known,
    compatible, requires, conflicts, every service placed), and per role the hardware and image (offered by
    the provider, allowed by the template and by each service's constraint), must-coexist, can't-coexist and
    the per-service quantities. Overrides and template defaults are creation-time choices, not constraints,
    so they are not checked. Empty means the layout is valid.
    """
    services = _resolve_services(request)
    context = _Context(
        request,
        services,
        layout.size,
        extra_hardware=(role.hardware for role in layout.roles),
        extra_images=(role.image for role in layout.roles),
    )
    return list(dict.fromkeys(context.request_reasons + _layout_problems(context, layout.roles)))


# --- incremental changes ---------------------------------------------------------------------------------


def _merge_roles(roles: Iterable[NodeRole]) -> list[NodeRole]:
    merged: dict[tuple[str, str, frozenset[str]], int] = {}
    for role in roles:
        key = (role.hardware, role.image, role.services)
        merged[key] = merged.get(key, 0) + role.count
    return [NodeRole(hardware, image, services, count) for (hardware, image, services), count in merged.items()]


def _remove_nodes(context: _Context, roles: list[NodeRole], remove: int) -> list[NodeRole]:
    """Take ``remove`` nodes away, keeping every service at or above its minimum.

    Choice rule: roles that are invalid on their own (for example left without services) go first, then the
    largest roles (big worker pools shrink, singleton masters stay), each by as many nodes as the minimum of
    every service on it allows. If that greedy pass falls short, a bounded exhaustive search over per-role
    removal counts decides. The engine removes, from each role, the difference in count (newest nodes first).
    """
    counts: dict[str, int] = {}
    for role in roles:
        for name in role.services:
            counts[name] = counts.get(name, 0) + role.count
    slack = {
        name: counts.get(name, 0) - max(_constraint(context.template, name).min, 1) for name in context.services
    }  # fmt: skip

    def room(role: NodeRole, slack_now: Mapping[str, int]) -> int:
        limits = [slack_now[name] for name in role.services if name in slack_now]
        return max(0, min([role.count, *limits]))

    ranked = sorted(
        range(len(roles)),
        key=lambda i: (0 if _role_problems(context, roles[i]) else 1, -roles[i].count, i),
    )
    taken = [0] * len(roles)
    left, slack_now = remove, dict(slack)
    for i in ranked:
        take = min(left, room(roles[i], slack_now))
        taken[i], left = take, left - take
        for name in roles[i].services:
            if name in slack_now:
                slack_now[name] -= take
    if left:
        steps = 0

        def search(position: int, left: int, slack_now: dict[str, int]) -> list[int] | None:
            nonlocal steps
            steps += 1
            if steps > SEARCH_BUDGET:
                raise _SearchExhaustedError
            if not left:
                return [0] * (len(ranked) - position)
            if position == len(ranked):
                return None
            role = roles[ranked[position]]
            for take in range(min(left, room(role, slack_now)), -1, -1):
                after = {n: v - take if n in role.services else v for n, v in slack_now.items()}
                found = search(position + 1, left - take, after)
                if found is not None:
                    return [take, *found]
            return None

        try:
            found = search(0, remove, dict(slack))
        except _SearchExhaustedError:
            found = None
        if found is None:
            binding = ", ".join(
                f"{name} is on {counts.get(name, 0)} nodes and needs {counts.get(name, 0) - value}"
                for name, value in sorted(slack.items())
                if value < remove
            )
            total = sum(role.count for role in roles)
            raise LayoutError(
                [f"cannot remove {remove} of {total} nodes without dropping a service below its minimum: {binding}"]
            )
        taken = [0] * len(roles)
        for i, take in zip(ranked, found, strict=True):
            taken[i] = take
    return [dataclasses.replace(role, count=role.count - take) for role, take in zip(roles, taken, strict=True)]


def _add_services(context: _Context, roles: list[NodeRole], added: frozenset[str]) -> list[NodeRole]:
    """Put ``added`` services on existing nodes only (new nodes are never created for them).

    Free services go on every node. A service that must coexist with services already on the cluster goes
    exactly where they are. Any other added unit gets at least its minimum (and at least one) of the nodes
    whose hardware, image and services allow it, whole roles first, then up to its maximum on further whole
    roles, as the original did; the exact search runs if the greedy pass fails.
    """
    added_mask = context.bits(added)
    drafts = _fixed_drafts(context, roles)
    total = sum(role.count for role in roles)
    new_units = []
    for unit in context.units:
        if not unit.mask & added_mask:
            continue
        existing = unit.mask & ~added_mask
        if existing:
            for draft in drafts:
                if draft.content & existing:
                    draft.content |= unit.mask
                    draft.units |= unit.bit
        else:
            new_units.append(unit)
    for draft in drafts:
        draft.content |= added_mask & context.free_mask
    if not new_units:
        return _materialize(context, drafts)
    demand = {unit.index: unit.low for unit in new_units}
    reasons = []
    for unit in new_units:
        fits = [d for d in drafts if context.compatible(d, unit, True)]
        room = sum(d.count for d in fits)
        if room < unit.low:
            why = []
            for draft in drafts:
                if draft in fits:
                    continue
                role = _materialize(context, [draft])[0]
                causes = []
                if not draft.hardware & unit.hardware_legal:
                    causes.append(f"hardware {role.hardware} is not allowed for it")
                if not draft.image & unit.image_legal:
                    causes.append(f"image {role.image} is not allowed for it")
                union = draft.content | unit.mask
                for group, edge in zip(context.cant_groups, context.cant_masks, strict=True):
                    if edge & unit.mask and not edge & ~union:
                        causes.append(f"can't-coexist [{_names(group)}]")
                why.append(f"{_role_label(role)}: {', '.join(causes)}")
            reasons.append(
                f"{context.describe(unit)} cannot be added: it needs at least {unit.low} nodes, but only {room} of "
                f"the cluster's {total} nodes can take it" + (f" ({'; '.join(why)})" if why else "")
            )
    if reasons:
        raise LayoutError(reasons)
    best: list[NodeRole] | None = None
    orders = _orders(context, new_units, demand, True)
    for order in [*orders, None]:
        if order is None and best is not None:
            break
        packed = _pack_greedy(context, order, demand, drafts, 0, True)
        if packed is None:
            continue
        _extend_fixed(context, packed, order or orders[0], total)
        candidate = _merge_roles(_materialize(context, packed))
        if _layout_problems(context, candidate):
            continue
        if best is None or _score(context, candidate) < _score(context, best):
            best = candidate
    if best is not None:
        return best
    try:
        packed = _pack_exact(context, orders[0], demand, drafts, 0, True)
    except _SearchExhaustedError:
        raise LayoutError([_generic_reason(context, total, True)]) from None
    if packed is None:
        raise LayoutError(
            [f"the added services cannot all be placed on the existing nodes: {_generic_reason(context, total, False)}"]
        )
    _extend_fixed(context, packed, orders[0], total)
    return _materialize(context, packed)


def solve_change(
    *,
    request: LayoutRequest,
    existing: ClusterLayout,
    add_nodes: int = 0,
    remove_nodes: int = 0,
    add_services: tuple[str, ...] = (),
    remove_services: tuple[str, ...] = (),
) -> ClusterLayout:
    """The layout after a day-2 change of ``existing``; existing nodes keep hardware, image and services.

    ``request`` supplies the template, catalog, provider options and overrides (used for added nodes); its
    ``size`` and ``requested_services`` are ignored: the cluster's services are ``existing.services`` minus
    ``remove_services`` plus ``add_services`` and its size is ``existing.size + add_nodes - remove_nodes``.
    Steps, in this order: removed services disappear from every role (roles that become identical merge);
    ``remove_nodes`` nodes are taken away (see ``_remove_nodes`` for the choice rule); added services go on
    existing nodes only (``LayoutError`` if they do not fit there; add nodes in an earlier change); added nodes
    grow an existing role when all its services have room, else get new roles like ``solve``.
    The result must satisfy every constraint of the template, else ``LayoutError`` lists what it breaks.
    Deterministic: existing roles keep their order, new roles follow.
    """
    reasons = []
    if min(add_nodes, remove_nodes) < 0:
        reasons.append("node counts to add or remove cannot be negative")
    if add_nodes and remove_nodes:
        reasons.append("add nodes and remove nodes in separate changes")
    current = existing.services
    unknown_removals = sorted(set(remove_services) - current)
    if unknown_removals:
        reasons.append(f"{', '.join(unknown_removals)} cannot be removed: not on the cluster")
    already = sorted(set(add_services) & current)
    if already:
        reasons.append(f"{', '.join(already)} cannot be added: already on the cluster")
    services = tuple(sorted((current - set(remove_services)) | set(add_services)))
    if not services:
        reasons.append("the change would leave the cluster without services")
    if reasons:
        raise LayoutError(reasons)
    size = existing.size + add_nodes - remove_nodes
    changed = dataclasses.replace(request, size=size, requested_services=services)
    context = _Context(
        changed,
        services,
        size,
        extra_hardware=(role.hardware for role in existing.roles),
        extra_images=(role.image for role in existing.roles),
    )
    context.check_units(size, legal=True)
    context.raise_if_invalid(new_nodes=add_nodes > 0)
    removed = frozenset(remove_services)
    roles = _merge_roles(dataclasses.replace(role, services=role.services - removed) for role in existing.roles)
    if remove_nodes:
        roles = [role for role in _remove_nodes(context, roles, remove_nodes) if role.count]
    if add_services:
        roles = _merge_roles(_add_services(context, roles, frozenset(add_services)))
    if add_nodes:
        roles = _place_new_nodes(context, _fixed_drafts(context, roles), add_nodes)
    problems = _layout_problems(context, roles)
    if problems:
        raise LayoutError(problems)
    originals = [
        dataclasses.replace(role, services=role.services - removed) for role in existing.roles
    ]  # fmt: skip
    return ClusterLayout(tuple(_order_like(roles, originals)))


def _order_like(roles: Sequence[NodeRole], originals: Sequence[NodeRole]) -> list[NodeRole]:
    """Roles of existing nodes first, in their old order (matched by hardware, image and kept services),
    then new roles, most services first."""

    def rank(role: NodeRole) -> tuple[int, int, tuple[int, tuple[str, ...], str, str]]:
        for position, original in enumerate(originals):
            same_shape = (original.hardware, original.image) == (role.hardware, role.image)
            if same_shape and original.services <= role.services:
                return (0, position, _role_sort_key(role))
        return (1, 0, _role_sort_key(role))

    return sorted((role for role in roles if role.count), key=rank)
