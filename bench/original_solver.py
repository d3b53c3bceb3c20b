"""A port of the original's create-time layout solver, used only as a baseline by ``bench/baselines.py``.

Continuuity Loom / Cask Coopr (Apache-2.0) solved a new cluster's layout as docs/loom-reference.md §4.1
steps 5-9 describe (``Solver.solveConstraints``, ``NodeLayoutGenerator``, ``NodeLayoutComparator``,
``ClusterLayoutFinder``, ``SlottedCombinationIterator``). This module ports that algorithm from the
reference notes, step for step, with the details cross-checked against the original's published source.
It is for comparison only: Loom does not use it (``clusters.planning.solver`` is Loom's solver), and nothing here
is a recommendation. It is deliberately not optimised, so that the benchmark compares algorithms:

5. Services with no service constraint and in no must/can't-coexist group are "unconstrained" and go on
   every node.
6. Every non-empty subset of the other (constrained) services is enumerated, size by size, with the
   original's ``SlottedCombinationIterator`` (one item per slot): 2^N subsets. A subset is kept unless it
   contains a whole can't-coexist group, or part but not all of a must-coexist group (restricted to the
   cluster's services). The unconstrained services are added to every kept set, and kept alone as well.
7. Node layouts = hardware × image × kept set, minus those breaking a service's hardware/image types.
8. One layout per service set (the comparator's first), all sorted with the ``NodeLayoutComparator`` (more
   services first, then hardware name, image name, service names; no preferences are ever passed).
9. ``ClusterLayoutFinder``: a greedy initial count vector (as many of each layout, in order, as the
   services' maxima allow), then the ``SlottedCombinationIterator`` search over count vectors from there,
   bounded per layout by the smallest maximum of its services, until every constrained service's count is
   within ``quantities``; exhausted means no layout.

Quirks kept on purpose, because they are the original's behaviour: a service with no ``quantities.min`` may
end up on no node at all (§0.1: {A, B} with cantcoexist [[A, B]] on 3 nodes gives 3 × {A}); hardware and
image preference is alphabetical, not by cost; an empty can't-coexist group forbids every set; "no maximum"
is Java's ``Integer.MAX_VALUE``. Recursion in the iterator is written as loops (the Java calls are all
tail calls), which changes nothing but Python's stack depth.

Input: the same ``TemplateSpec``/``HardwareOption``/``ImageOption`` values ``clusters.planning.solver`` takes, the
cluster's service names and the size. Output: ``[(hardware, image, frozenset(services), count), ...]`` in
the original's layout order, or None when the original finds no layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cmp_to_key
from typing import NamedTuple

from clusters.planning.specs import HardwareOption, ImageOption, ServiceConstraint, TemplateSpec

INT_MAX = 2**31 - 1  # Java's Integer.MAX_VALUE: the original's "no maximum" and its "no preference" rank

Role = tuple[str, str, frozenset[str], int]


# --- SlottedCombinationIterator ---------------------------------------------------------------------------


class SlottedCombinationIterator:
    """Every way to put the items into the slots, within per-slot maxima, keeping items as far left as
    possible: with 3 items in 4 slots, [3,0,0,0] [2,1,0,0] [2,0,1,0] [2,0,0,1] [1,2,0,0] [1,1,1,0] ...

    Built from an initial state (``max_counts`` required, as in the original's finder) or, with
    ``from_items``, from a number of slots and items (all items in slot 0). A first state that breaks a
    maximum is advanced before it is returned.
    """

    def __init__(self, initial_state: Sequence[int], max_counts: Sequence[int]) -> None:
        if len(max_counts) != len(initial_state):
            raise ValueError("length of max counts does not match the number of slots")
        self.counts = list(initial_state)
        self.max_counts = list(max_counts)
        self.last_slot = len(initial_state) - 1
        self.still_searching = True
        self.can_advance = any(count > limit for count, limit in zip(initial_state, max_counts, strict=True))

    @classmethod
    def from_items(
        cls, num_slots: int, num_items: int, max_counts: Sequence[int] | None = None
    ) -> SlottedCombinationIterator:
        if num_slots <= 0 or num_items <= 0:
            raise ValueError("must have more than 0 slots and more than 0 items")
        counts = [0] * num_slots
        counts[0] = num_items
        return cls(counts, [INT_MAX] * num_slots if max_counts is None else max_counts)

    def has_next(self) -> bool:
        if self.can_advance:
            self._advance_state()
            self.can_advance = False
        return self.still_searching

    def next(self) -> list[int]:
        if self.has_next():
            self.can_advance = True
            return list(self.counts)
        raise StopIteration

    def __iter__(self) -> SlottedCombinationIterator:
        return self

    def __next__(self) -> list[int]:
        return self.next()

    def _advance_state(self) -> None:
        index = self._right_most_movable_slot()
        if index == -1:
            self.still_searching = False
            return
        self._move_items_right(index, max(self.counts[index] - self.max_counts[index], 1))

    def _move_items_right(self, slot: int, count: int) -> None:
        """Take ``count`` items out of ``slot`` and every item right of it, put them all into the next slot,
        overflowing further right; from the last slot, wrap by moving one item out of the left-most
        occupied slot. (The original's mutually tail-recursive moveItemsRight/addItemsToSlot, as a loop.)"""
        counts, max_counts = self.counts, self.max_counts
        while True:
            front_slot = self._left_most_occupied_slot()
            if slot == self.last_slot:
                if self._at_end(front_slot):
                    self.still_searching = False
                    return
                slot, count = front_slot, 1
                continue
            counts[slot] -= count
            items_to_add = count
            for i in range(slot + 1, len(counts)):
                items_to_add += counts[i]
                counts[i] = 0
            # addItemsToSlot(slot + 1, items_to_add)
            slot += 1
            counts[slot] += items_to_add
            over_max = counts[slot] - max_counts[slot]
            if over_max <= 0:
                return
            count = over_max

    def _at_end(self, front_slot: int) -> bool:
        if front_slot == self.last_slot:
            return True
        return all(self.counts[i] >= self.max_counts[i] for i in range(front_slot, self.last_slot + 1))

    def _left_most_occupied_slot(self) -> int:
        for i in range(self.last_slot + 1):
            if self.counts[i] > 0:
                return i
        raise RuntimeError("invalid number of items")

    def _right_most_movable_slot(self) -> int:
        for i in range(self.last_slot - 1, -1, -1):
            if self._slot_is_movable(i):
                return i
        return -1

    def _slot_is_movable(self, slot: int) -> bool:
        if self.counts[slot] < 1:
            return False
        return any(self.counts[i] < self.max_counts[i] for i in range(slot + 1, self.last_slot + 1))


# --- NodeLayout, NodeLayoutComparator ---------------------------------------------------------------------


class NodeLayout(NamedTuple):
    hardware: str
    image: str
    services: tuple[str, ...]  # sorted, as the original's ImmutableSortedSet

    def satisfies_service_constraints(self, constraints: dict[str, ServiceConstraint]) -> bool:
        for service in self.services:
            constraint = constraints.get(service)
            if constraint is not None:
                if constraint.hardware_types and self.hardware not in constraint.hardware_types:
                    return False
                if constraint.image_types and self.image not in constraint.image_types:
                    return False
        return True


def _preference(value: str, preferences: list[str] | None) -> int:
    if preferences is not None and value in preferences:
        return preferences.index(value)
    return INT_MAX


def _java_compare(first: str, second: str) -> int:
    return (first > second) - (first < second)


def compare_node_layouts(
    n1: NodeLayout,
    n2: NodeLayout,
    hardware_preferences: list[str] | None = None,
    image_preferences: list[str] | None = None,
) -> int:
    """The original's comparator: more services first; hardware then image preference rank (the solver
    passes none, so they tie); hardware name, image name; then service names element-wise."""
    if len(n1.services) != len(n2.services):
        return -1 if len(n1.services) > len(n2.services) else 1
    rank1, rank2 = _preference(n1.hardware, hardware_preferences), _preference(n2.hardware, hardware_preferences)
    if rank1 != rank2:
        return -1 if rank1 < rank2 else 1
    rank1, rank2 = _preference(n1.image, image_preferences), _preference(n2.image, image_preferences)
    if rank1 != rank2:
        return -1 if rank1 < rank2 else 1
    compare = _java_compare(n1.hardware, n2.hardware) or _java_compare(n1.image, n2.image)
    if compare:
        return compare
    for service1, service2 in zip(n1.services, n2.services, strict=True):
        compare = _java_compare(service1, service2)
        if compare:
            return compare
    return 0


_LAYOUT_ORDER = cmp_to_key(compare_node_layouts)


# --- NodeLayoutGenerator -----------------------------------------------------------------------------------


def _in_set_of_sets(element: str, sets: Iterable[frozenset[str]]) -> bool:
    return any(element in group for group in sets)


def _contains_one(service_set: set[str], constraint: Iterable[str]) -> bool:
    return any(service in service_set for service in constraint)


def is_valid_service_set(service_set: set[str], template: TemplateSpec, cluster_services: frozenset[str]) -> bool:
    for cant_coexist in template.cant_coexist:
        if service_set.issuperset(cant_coexist):
            return False
    for must_coexist in template.must_coexist:
        true_must_coexist = must_coexist & cluster_services
        if _contains_one(service_set, true_must_coexist) and not service_set.issuperset(true_must_coexist):
            return False
    return True


class NodeLayoutGenerator:
    def __init__(
        self,
        template: TemplateSpec,
        cluster_services: frozenset[str],
        hardware_types: Iterable[str],
        image_types: Iterable[str],
    ) -> None:
        self.template = template
        self.cluster_services = cluster_services
        self.hardware_types = list(hardware_types)
        self.image_types = list(image_types)

    def generate_node_layout_preferences(self) -> list[NodeLayout]:
        unconstrained = self.find_unconstrained_services()
        constrained = self.cluster_services - unconstrained
        valid_service_sets = self.find_valid_service_sets(constrained)
        if unconstrained:
            valid_service_sets = {service_set | unconstrained for service_set in valid_service_sets}
            valid_service_sets.add(frozenset(unconstrained))
        return narrow_node_layouts(self.find_valid_node_layouts(valid_service_sets))

    def find_unconstrained_services(self) -> frozenset[str]:
        template = self.template
        return frozenset(
            service
            for service in self.cluster_services
            if service not in template.service_constraints
            and not _in_set_of_sets(service, template.must_coexist)
            and not _in_set_of_sets(service, template.cant_coexist)
        )

    def find_valid_service_sets(self, services: frozenset[str]) -> set[frozenset[str]]:
        """Every subset of ``services`` (size 1 to N, each size through the iterator) that is valid."""
        valid: set[frozenset[str]] = set()
        if not services:
            return valid
        service_list = sorted(services)  # the original used a HashSet's order; any order gives the same sets
        max_counts = [1] * len(service_list)
        for size in range(1, len(service_list) + 1):
            for service_counts in SlottedCombinationIterator.from_items(len(service_list), size, max_counts):
                candidate = set()
                for j, count in enumerate(service_counts):
                    if count == 1:
                        candidate.add(service_list[j])
                if is_valid_service_set(candidate, self.template, self.cluster_services):
                    valid.add(frozenset(candidate))
        return valid

    def find_valid_node_layouts(self, valid_service_sets: set[frozenset[str]]) -> set[NodeLayout]:
        constraints = dict(self.template.service_constraints)
        layouts: set[NodeLayout] = set()
        for hardware in self.hardware_types:
            for image in self.image_types:
                for service_set in valid_service_sets:
                    layout = NodeLayout(hardware, image, tuple(sorted(service_set)))
                    if layout.satisfies_service_constraints(constraints):
                        layouts.add(layout)
        return layouts


def narrow_node_layouts(layouts: Iterable[NodeLayout]) -> list[NodeLayout]:
    """The comparator's first layout per service set, then all of those sorted by the comparator."""
    by_service_set: dict[tuple[str, ...], list[NodeLayout]] = {}
    for layout in layouts:
        by_service_set.setdefault(layout.services, []).append(layout)
    output = [min(group, key=_LAYOUT_ORDER) for group in by_service_set.values()]
    output.sort(key=_LAYOUT_ORDER)
    return output


# --- ClusterLayoutFinder -----------------------------------------------------------------------------------


def _max_count(constraint: ServiceConstraint) -> int:
    return INT_MAX if constraint.max is None else constraint.max


class ClusterLayoutFinder:
    def __init__(
        self, preferences: list[NodeLayout], template: TemplateSpec, services: Iterable[str], num_machines: int
    ) -> None:
        self.preferences = preferences
        self.num_machines = num_machines
        services = list(services)
        all_constraints = template.service_constraints
        self.constraints = {name: all_constraints[name] for name in services if name in all_constraints}
        self.service_counts = dict.fromkeys(services, 0)

    def find_valid_node_counts(self) -> list[int] | None:
        initial = self._initial_node_counts()
        if initial is None:
            return None
        iterator = SlottedCombinationIterator(initial, self._global_node_layout_maxes())
        previous = initial
        while iterator.has_next():
            candidate = iterator.next()
            for i in range(len(candidate)):
                self._update_service_counts(i, candidate[i] - previous[i])
            if self._is_valid_cluster():
                return candidate
            previous = candidate
        return None

    def _global_node_layout_maxes(self) -> list[int]:
        maxes = []
        for layout in self.preferences:
            layout_max = INT_MAX
            for service in layout.services:
                constraint = self.constraints.get(service)
                if constraint is not None:
                    layout_max = min(layout_max, _max_count(constraint))
            maxes.append(layout_max)
        return maxes

    def _initial_node_counts(self) -> list[int] | None:
        counts = [0] * len(self.preferences)
        for i in range(len(counts)):
            count = self._max_for_node_layout(i, counts)
            counts[i] = count
            if count > 0:
                self._update_service_counts(i, count)
        if sum(counts) < self.num_machines:
            return None
        return counts

    def _max_for_node_layout(self, i: int, counts: list[int]) -> int:
        max_so_far = self.num_machines - sum(counts)
        if max_so_far == 0:
            return 0
        for service in self.preferences[i].services:
            constraint = self.constraints.get(service)
            if constraint is not None:
                max_so_far = min(max_so_far, _max_count(constraint) - self.service_counts[service])
        return max_so_far

    def _update_service_counts(self, layout: int, nodes_changed: int) -> None:
        for service in self.preferences[layout].services:
            self.service_counts[service] += nodes_changed

    def _is_valid_cluster(self) -> bool:
        for service, constraint in self.constraints.items():
            count = self.service_counts[service]
            if count < constraint.min or count > _max_count(constraint) or count > self.num_machines:
                return False
        return True


# --- Solver ------------------------------------------------------------------------------------------------


def _candidates(offered: Iterable[str], compatible: frozenset[str], required: str | None) -> list[str]:
    """Steps 1-2: the required type if offered and compatible, else every offered compatible type."""
    offered = list(offered)
    if required:
        return [required] if required in offered and (not compatible or required in compatible) else []
    return [name for name in offered if not compatible or name in compatible]


def solve(
    template: TemplateSpec,
    services: Iterable[str],
    size: int,
    hardware_options: Sequence[HardwareOption],
    image_options: Sequence[ImageOption],
    *,
    hardware: str | None = None,
    image: str | None = None,
) -> list[Role] | None:
    """The original's layout for ``size`` nodes running ``services``, or None where it found none.

    Raises ValueError, as the original did, when no hardware or image type is available.
    """
    hardware_types = _candidates(
        (option.name for option in hardware_options),
        template.compatible_hardware,
        hardware or template.default_hardware,
    )
    if not hardware_types:
        raise ValueError(f"no hardware types are available to use with template {template.name}")
    image_types = _candidates(
        (option.name for option in image_options), template.compatible_images, image or template.default_image
    )
    if not image_types:
        raise ValueError(f"no image types are available to use with template {template.name}")
    cluster_services = frozenset(services)
    preferences = NodeLayoutGenerator(
        template, cluster_services, hardware_types, image_types
    ).generate_node_layout_preferences()
    counts = ClusterLayoutFinder(preferences, template, cluster_services, size).find_valid_node_counts()
    if counts is None:
        return None
    return [
        (layout.hardware, layout.image, frozenset(layout.services), count)
        for layout, count in zip(preferences, counts, strict=True)
        if count > 0
    ]
