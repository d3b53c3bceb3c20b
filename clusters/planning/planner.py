"""The planner: which tasks a cluster operation runs, and which must wait for which. No Django here.

Input: the node list before and after the operation, the operation, the cluster's services and, for the
operations that name services, a scope. Output: a ``Plan``, a DAG of ``TaskSpec`` (node, action, service)
with edges (predecessor, successor). The engine stores each task with a pending-dependency counter
(``Plan.pending_counts``) and dispatches it the moment the counter reaches 0; stage numbers are only for
display and for the ``staged`` mode that reproduces the original's barrier.

Why join points. A runtime dependency of B on A makes every B task wait for the A task on *every* node
hosting A. Written out, that is N×M edges: the original's plan for a 1,000-node Hadoop cluster had about
two million. Here such an all-to-all dependency goes through one ``Action.JOIN`` task per (A, action):
N edges in, M edges out. A JOIN has no node and no work; the engine completes it itself as soon as its
counter reaches 0 and decrements its successors in the same step. JOINs only ever sit between real tasks
(real → JOIN → real, never JOIN → JOIN), so that cascade is one level deep. A JOIN is only emitted where
it saves edges (preds × succs > preds + succs); otherwise the pairs are written directly.

Why the rules are what they are (loom-reference.md §3.2, §5.2–§5.4, plus the operations the original
never had):

* Per node and service, the operation's actions form a chain (CREATE → CONFIRM → BOOTSTRAP → INSTALL →
  CONFIGURE → INITIALIZE → START for a create). Hardware actions are one per node and shared by all of the
  node's service chains. A service task exists only when the service defines that action.
* Cross-service rules, over the cluster's dependency graphs after aliases (``provides``) are resolved and
  absent ``uses`` dropped: INITIALIZE and START wait for the START of runtime dependencies on every node
  hosting them; STOP waits for the STOP of runtime *dependents* (reverse order); INSTALL waits for the
  INSTALL of install-time dependencies; REMOVE waits for the REMOVE of install-time dependents (new: the
  original never removed). "Dependencies" are transitive; only the closest ones that have tasks in this
  plan get edges, the rest follow by transitivity (the transitive reduction of §5.3). CONFIGURE is never
  ordered across services.
* Install-time ordering is node-local, unlike the original: X's INSTALL on node n waits for its
  dependency's INSTALL on n when n hosts the dependency (packages on the same machine), and on every node
  only when n does not host it. The original made every install wait for the dependency's install on
  every node, which is both N×M edges and a barrier on the slowest VM at the first install. REMOVE
  mirrors it.
* The original ran stage by stage, so every CONFIRM (which learns the node's addresses) finished before
  any CONFIGURE. Our engine has no barrier, so a node could configure itself before its peers have
  addresses. Hence, for new nodes, the first task of each service chain from CONFIGURE on waits for one
  JOIN over every new node's CONFIRM. INSTALL does not wait: installing while slower VMs boot is the
  point of dropping the barrier.
* Scale out: existing nodes are reconfigured (CONFIGURE) once the new nodes have addresses, and the new
  nodes' services initialize/start only after that, so a new member never announces itself to peers that
  do not list it yet. Scale in: services on leaving nodes stop (reverse dependency order), the nodes are
  deleted, then the rest is reconfigured, so no configuration names a node that is still half there.
* A partial start pulls in what the named services depend on (started first); a partial stop pulls in
  their dependents (stopped first); a restart stops the named services and their dependents, then starts
  those plus everything they depend on (§5.4, which also starts a restarted service's dependencies).
  Add/remove services plan exactly the (node, service) pairs the layout change adds/removes.

Stages are the longest-path layering over real tasks: a task with no predecessor is stage 0, a real task
is one more than its latest predecessor, a JOIN takes the stage of its latest predecessor (it is not a
step). ``critical_path`` is the number of real tasks on the longest chain, which is also ``stages``.
Task keys are dense and in a topological order (every edge goes from a lower key to a higher one).

Everything is O(tasks + edges), plus one sort of the edges so that equal inputs give equal plans.
Service-level work (graphs, walks) is on the dozens of services, not the nodes: nodes with the same
services share one walk.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from clusters.planning.specs import NodeSpec, ServiceSpec


class Operation(enum.StrEnum):
    CREATE = "create"
    DELETE = "delete"
    CONFIGURE = "configure"
    CONFIGURE_WITH_RESTART = "configure_with_restart"
    START_SERVICES = "start_services"
    STOP_SERVICES = "stop_services"
    RESTART_SERVICES = "restart_services"
    ADD_SERVICES = "add_services"
    REMOVE_SERVICES = "remove_services"
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    REPAIR = "repair"


class Action(enum.StrEnum):
    """Task types. Service actions carry the lower-case names used in ``ServiceSpec.actions``."""

    CREATE = "create"
    CONFIRM = "confirm"
    BOOTSTRAP = "bootstrap"
    INSTALL = "install"
    CONFIGURE = "configure"
    INITIALIZE = "initialize"
    START = "start"
    STOP = "stop"
    REMOVE = "remove"
    DELETE = "delete"
    JOIN = "join"

    @property
    def is_hardware(self) -> bool:
        return self in HARDWARE_ACTIONS


HARDWARE_ACTIONS = frozenset({Action.CREATE, Action.CONFIRM, Action.BOOTSTRAP, Action.DELETE})
RUNTIME_ACTIONS = frozenset({Action.INITIALIZE, Action.START})
POST_INSTALL_ACTIONS = frozenset({Action.CONFIGURE, Action.INITIALIZE, Action.START})

DependencyKind = Literal["install", "runtime"]
INSTALL: DependencyKind = "install"
RUNTIME: DependencyKind = "runtime"

# (waiting action, awaited action, dependency kind, reversed, node-local). Reversed: X waits for its
# dependents. Node-local: X on node n waits for the dependency's task on n when n hosts the dependency,
# and for its tasks on every node only when n does not host it.
DEPENDENCY_RULES: tuple[tuple[Action, Action, DependencyKind, bool, bool], ...] = (
    (Action.INSTALL, Action.INSTALL, INSTALL, False, True),
    (Action.REMOVE, Action.REMOVE, INSTALL, True, True),
    (Action.INITIALIZE, Action.START, RUNTIME, False, False),
    (Action.START, Action.START, RUNTIME, False, False),
    (Action.STOP, Action.STOP, RUNTIME, True, False),
)
_NODE_LOCAL_ACTIONS = frozenset(a for rule in DEPENDENCY_RULES if rule[4] for a in rule[:2])

_CREATE_HARDWARE = (Action.CREATE, Action.CONFIRM, Action.BOOTSTRAP)
_CREATE_SERVICE = (Action.INSTALL, Action.CONFIGURE, Action.INITIALIZE, Action.START)


class PlanError(ValueError):
    """The operation cannot be planned; the message names the problem (a cycle, a node, a service)."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task. ``node_id`` is None and ``action`` JOIN for a synchronisation point.

    ``service`` is "" for hardware actions; for a JOIN it is the service whose tasks it joins, or "" when
    it joins hardware tasks. ``label`` is set for JOINs only (real tasks describe themselves).
    """

    key: int
    node_id: str | None
    action: Action
    service: str
    stage: int
    label: str = ""

    @property
    def is_join(self) -> bool:
        return self.action is Action.JOIN

    @property
    def description(self) -> str:
        if self.action is Action.JOIN:
            return f"join: {self.label}"
        what = f"{self.action} {self.service}" if self.service else str(self.action)
        return f"{what} on {self.node_id}"


@dataclass(frozen=True)
class Plan:
    """A DAG of tasks. Keys are dense (``tasks[k].key == k``) and topologically ordered.

    ``edges`` are (predecessor, successor) pairs, sorted, without duplicates. ``stages`` is the number of
    longest-path layers over real tasks (a JOIN shares its latest predecessor's stage) and
    ``critical_path`` the number of real tasks on the longest chain, JOINs not counted; with this
    layering the two are equal, and both are 0 for an empty plan.
    """

    operation: Operation
    tasks: tuple[TaskSpec, ...]
    edges: tuple[tuple[int, int], ...]
    stages: int
    critical_path: int

    @cached_property
    def real_task_count(self) -> int:
        return sum(1 for task in self.tasks if task.action is not Action.JOIN)

    @cached_property
    def join_count(self) -> int:
        return len(self.tasks) - self.real_task_count

    def pending_counts(self) -> list[int]:
        """In-degree per task key: what the engine stores as the task's pending-dependency counter."""
        counts = [0] * len(self.tasks)
        for _, successor in self.edges:
            counts[successor] += 1
        return counts

    def successors(self) -> list[list[int]]:
        result: list[list[int]] = [[] for _ in self.tasks]
        for predecessor, successor in self.edges:
            result[predecessor].append(successor)
        return result

    def predecessors(self) -> list[list[int]]:
        result: list[list[int]] = [[] for _ in self.tasks]
        for predecessor, successor in self.edges:
            result[successor].append(predecessor)
        return result

    @cached_property
    def expanded_edge_count(self) -> int:
        """How many task-to-task edges the plan would need with every JOIN written out pair by pair."""
        counts_in = self.pending_counts()
        counts_out = [0] * len(self.tasks)
        direct = 0
        for predecessor, successor in self.edges:
            counts_out[predecessor] += 1
            if self.tasks[predecessor].action is not Action.JOIN and self.tasks[successor].action is not Action.JOIN:
                direct += 1
        joined = sum(counts_in[t.key] * counts_out[t.key] for t in self.tasks if t.action is Action.JOIN)
        return direct + joined

    def expand_edges(self) -> tuple[tuple[int, int], ...]:
        """Real-task dependency pairs with every JOIN expanded (for tests; N×M again, so keep it small)."""
        successors = self.successors()
        pairs: set[tuple[int, int]] = set()
        for predecessor, successor in self.edges:
            if self.tasks[predecessor].action is Action.JOIN:
                continue
            if self.tasks[successor].action is Action.JOIN:
                pairs.update((predecessor, after) for after in successors[successor])
            else:
                pairs.add((predecessor, successor))
        return tuple(sorted(pairs))

    def critical_chain(self) -> list[int]:
        """Keys of one longest chain of real tasks, first to last (what bounds the job's duration)."""
        real = [t for t in self.tasks if t.action is not Action.JOIN]
        if not real:
            return []
        predecessors = self.predecessors()
        current = max(real, key=lambda t: (t.stage, -t.key)).key
        chain = [current]
        while predecessors[current]:
            wanted = self.tasks[current].stage - (0 if self.tasks[current].action is Action.JOIN else 1)
            current = next(p for p in predecessors[current] if self.tasks[p].stage == wanted)
            if self.tasks[current].action is not Action.JOIN:
                chain.append(current)
        chain.reverse()
        return chain


def staged(plan: Plan) -> Plan:
    """The same plan with a barrier after every stage: no task of stage s+1 starts before all of stage s
    ended. This is how the original ran a job (loom-reference §5.4); Loom runs the DAG as is, and keeps
    this only to compare the two (``LOOM_SCHEDULING=staged``, ``bench/makespan.py``).

    One JOIN per stage boundary keeps the extra edges linear in the task count.
    """
    if plan.stages < 2:
        return plan
    by_stage: list[list[int]] = [[] for _ in range(plan.stages)]
    for task in plan.tasks:
        by_stage[task.stage].append(task.key)
    new_key: dict[int, int] = {}
    tasks: list[TaskSpec] = []
    barriers: list[int] = []
    for stage, keys in enumerate(by_stage):
        for key in keys:
            new_key[key] = len(tasks)
            spec = plan.tasks[key]
            tasks.append(TaskSpec(len(tasks), spec.node_id, spec.action, spec.service, spec.stage, spec.label))
        if stage < plan.stages - 1:
            barriers.append(len(tasks))
            tasks.append(TaskSpec(len(tasks), None, Action.JOIN, "", stage, f"end of stage {stage + 1}"))
    edges = {(new_key[a], new_key[b]) for a, b in plan.edges}
    for stage, barrier in enumerate(barriers):
        edges.update((new_key[key], barrier) for key in by_stage[stage])
        edges.update((barrier, new_key[key]) for key in by_stage[stage + 1])
    return Plan(
        operation=plan.operation,
        tasks=tuple(tasks),
        edges=tuple(sorted(edges)),
        stages=plan.stages,
        critical_path=plan.critical_path,
    )


# --- service dependency graphs (loom-reference.md §5.3) --------------------------------------------------


@dataclass(frozen=True)
class DependencyGraph:
    """One kind (install or runtime) of dependencies among the services present on a cluster.

    ``direct`` is the transitive reduction (s3 → {base, s1, s2} with s2 → s1 → base becomes s3 → {s2});
    ``closure`` is every service reachable. ``direct_dependents``/``dependents_closure`` are the reverse.
    """

    kind: DependencyKind
    direct: Mapping[str, frozenset[str]]
    closure: Mapping[str, frozenset[str]]
    direct_dependents: Mapping[str, frozenset[str]]
    dependents_closure: Mapping[str, frozenset[str]]

    def closest_with_tasks(self, service: str, *, reverse: bool, has_tasks: Callable[[str], bool]) -> list[str]:
        """The nearest services (dependencies, or dependents when ``reverse``) that have tasks of interest.

        Walks breadth-first through services without such tasks (they do not define the action, or are not
        part of this operation), stops at those with tasks, then drops any that another found one already
        reaches: its wait follows by transitivity.
        """
        step = self.direct_dependents if reverse else self.direct
        reach = self.dependents_closure if reverse else self.closure
        seen = {service}
        queue = deque(sorted(step[service]))
        found: list[str] = []
        while queue:
            other = queue.popleft()
            if other in seen:
                continue
            seen.add(other)
            if has_tasks(other):
                found.append(other)
            else:
                queue.extend(sorted(step[other]))
        return sorted(p for p in found if not any(p in reach[q] for q in found if q != p))

    def closest_on_node(
        self,
        service: str,
        *,
        reverse: bool,
        hosted: frozenset[str],
        here: frozenset[str],
        anywhere: Callable[[str], bool],
    ) -> tuple[list[str], list[str]]:
        """For a node-local rule on one node: (local, everywhere) services to wait for.

        ``hosted`` are the node's services, ``here`` those with a task of interest on this node,
        ``anywhere(s)`` whether s has such tasks on any node. A hosted service with a task here is waited
        for here, and the walk stops (what lies beyond follows through it). A hosted service without one
        (already installed, or no such action) is walked through. A service the node does not host is
        waited for on all its nodes if it has tasks, and walked through as well: its tasks elsewhere only
        wait for what *their* nodes host, so they do not stand in for anything on this node.
        Only local finds make other finds redundant.
        """
        step = self.direct_dependents if reverse else self.direct
        reach = self.dependents_closure if reverse else self.closure
        seen = {service}
        queue = deque(sorted(step[service]))
        local: list[str] = []
        everywhere: list[str] = []
        while queue:
            other = queue.popleft()
            if other in seen:
                continue
            seen.add(other)
            if other in hosted:
                if other in here:
                    local.append(other)
                    continue
            elif anywhere(other):
                everywhere.append(other)
            queue.extend(sorted(step[other]))
        return (
            sorted(p for p in local if not any(p in reach[q] for q in local if q != p)),
            sorted(p for p in everywhere if not any(p in reach[q] for q in local)),
        )


def _providers(services: Mapping[str, ServiceSpec], present: frozenset[str]) -> dict[str, set[str]]:
    """alias → present services providing it. A service listing its own name in ``provides`` is ignored."""
    providers: dict[str, set[str]] = {}
    for name in present:
        for alias in services[name].provides:
            if alias != name:
                providers.setdefault(alias, set()).add(name)
    return providers


def _resolve(name: str, present: frozenset[str], providers: Mapping[str, set[str]]) -> set[str]:
    """The present services a dependency name stands for: itself if present, plus every provider."""
    resolved = set(providers.get(name, ()))
    if name in present:
        resolved.add(name)
    return resolved


def dependency_graph(
    services: Mapping[str, ServiceSpec], present: frozenset[str], kind: DependencyKind
) -> DependencyGraph:
    """The ``kind`` ("install" or "runtime") dependency graph over ``present``; PlanError on a cycle.

    requires and uses are treated alike here: a name that no present service matches (itself or through
    ``provides``) simply drops out, which is how ``uses`` of an absent service is ignored; a missing
    *required* service is caught separately (``_check_requires``). A service depending on itself, directly
    or through an alias it provides, is ignored: it is trivially there.
    """
    providers = _providers(services, present)
    deps: dict[str, frozenset[str]] = {}
    for name in sorted(present):
        spec = services[name]
        names = (
            spec.install_requires | spec.install_uses if kind == INSTALL else spec.runtime_requires | spec.runtime_uses
        )
        resolved: set[str] = set()
        for dep in names:
            resolved |= _resolve(dep, present, providers)
        resolved.discard(name)
        deps[name] = frozenset(resolved)
    _check_acyclic(deps, kind)
    closure: dict[str, frozenset[str]] = {}
    for name in deps:
        reached: set[str] = set()
        stack = list(deps[name])
        while stack:
            other = stack.pop()
            if other not in reached:
                reached.add(other)
                stack.extend(deps[other])
        closure[name] = frozenset(reached)
    direct = {
        name: frozenset(d for d in ds if not any(d in closure[o] for o in ds if o != d)) for name, ds in deps.items()
    }
    direct_dependents: dict[str, set[str]] = {name: set() for name in deps}
    dependents_closure: dict[str, set[str]] = {name: set() for name in deps}
    for name in deps:
        for d in direct[name]:
            direct_dependents[d].add(name)
        for d in closure[name]:
            dependents_closure[d].add(name)
    return DependencyGraph(
        kind=kind,
        direct=direct,
        closure=closure,
        direct_dependents={k: frozenset(v) for k, v in direct_dependents.items()},
        dependents_closure={k: frozenset(v) for k, v in dependents_closure.items()},
    )


def _check_acyclic(deps: Mapping[str, frozenset[str]], kind: DependencyKind) -> None:
    """Raise PlanError naming one cycle, e.g. ``a → b → a``, if the graph has any."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in sorted(deps):
        if color[root] != white:
            continue
        path = [root]
        iterators = [iter(sorted(deps[root]))]
        color[root] = grey
        while iterators:
            nxt = next(iterators[-1], None)
            if nxt is None:
                color[path.pop()] = black
                iterators.pop()
            elif color[nxt] == grey:
                cycle = [*path[path.index(nxt) :], nxt]
                raise PlanError(
                    f"dependency cycle in the {kind} dependencies (dependencies.{kind}.requires/uses): "
                    + " → ".join(cycle)
                )
            elif color[nxt] == white:
                color[nxt] = grey
                path.append(nxt)
                iterators.append(iter(sorted(deps[nxt])))


def _check_requires(services: Mapping[str, ServiceSpec], present_after: frozenset[str]) -> None:
    """Every required service (or a provider of it) must be on the cluster after the operation."""
    providers = _providers(services, present_after)
    for name in sorted(present_after):
        spec = services[name]
        for kind, required in ((INSTALL, spec.install_requires), (RUNTIME, spec.runtime_requires)):
            for dep in sorted(required):
                if dep != name and not (_resolve(dep, present_after, providers) - {name}):
                    raise PlanError(
                        f"service {name!r} requires {dep!r} ({kind}), but after the operation no node hosts it "
                        "or a service that provides it"
                    )


# --- building ---------------------------------------------------------------------------------------------


@dataclass
class _Join:
    label: str
    service: str
    predecessors: list[int]
    successors: list[int] = field(default_factory=list)


class _Builder:
    """Accumulates tasks in parallel lists (cheap at 200,000 tasks) and edges as two int lists."""

    def __init__(self, services: Mapping[str, ServiceSpec], hosted: Mapping[str, frozenset[str]]) -> None:
        self.services = services
        self.hosted = hosted  # node id → services on it before or after the operation
        self.node_tasks: dict[str, dict[tuple[str, Action], int]] = {}  # node-local rule actions only
        self.node: list[str | None] = []
        self.action: list[Action] = []
        self.service: list[str] = []
        self.label: list[str] = []
        self.sources: list[int] = []
        self.targets: list[int] = []
        self.groups: dict[tuple[str, Action], list[int]] = {}
        self.joins: list[_Join] = []
        self.group_joins: dict[tuple[str, Action], _Join] = {}

    def task(self, node_id: str | None, action: Action, service: str = "", label: str = "") -> int:
        key = len(self.action)
        self.node.append(node_id)
        self.action.append(action)
        self.service.append(service)
        self.label.append(label)
        return key

    def edge(self, predecessor: int, successor: int) -> None:
        self.sources.append(predecessor)
        self.targets.append(successor)

    def node_chain(
        self,
        node_id: str,
        head: Sequence[Action],
        service_actions: Iterable[tuple[str, Sequence[Action]]],
        tail: Sequence[Action] = (),
    ) -> tuple[dict[Action, int], list[list[tuple[Action, int]]]]:
        """Hardware ``head`` tasks in a row, each service's chain hanging off the last, then ``tail`` tasks
        waiting for every chain's end. Service tasks exist only for actions the service defines."""
        hardware: dict[Action, int] = {}
        previous: int | None = None
        for action in head:
            key = self.task(node_id, action)
            if previous is not None:
                self.edge(previous, key)
            hardware[action] = previous = key
        anchor = previous
        chains: list[list[tuple[Action, int]]] = []
        ends: list[int] = []
        for service, actions in service_actions:
            defined = self.services[service].actions
            previous = anchor
            chain: list[tuple[Action, int]] = []
            for action in actions:
                if action not in defined:  # a StrEnum hashes and compares as its value
                    continue
                key = self.task(node_id, action, service)
                if previous is not None:
                    self.edge(previous, key)
                previous = key
                chain.append((action, key))
                if action in _NODE_LOCAL_ACTIONS:
                    self.node_tasks.setdefault(node_id, {})[(service, action)] = key
                group = self.groups.get((service, action))
                if group is None:
                    self.groups[(service, action)] = [key]
                else:
                    group.append(key)
            if chain:
                chains.append(chain)
                ends.append(chain[-1][1])
        if not ends and anchor is not None:
            ends.append(anchor)
        for action in tail:
            key = self.task(node_id, action)
            for end in ends:
                self.edge(end, key)
            hardware[action] = key
            ends = [key]
        return hardware, chains

    def join(self, label: str, predecessors: list[int], successors: list[int], service: str = "") -> None:
        """All ``successors`` wait for all ``predecessors``; emitted as a JOIN only if that saves edges."""
        self.joins.append(_Join(label, service, predecessors, successors))

    def group_join(self, service: str, action: Action) -> _Join:
        """The one JOIN after ``action`` of ``service`` on all its nodes in this plan."""
        join = self.group_joins.get((service, action))
        if join is None:
            join = _Join(f"{action} {service} on all its nodes", service, self.groups[(service, action)])
            self.group_joins[(service, action)] = join
            self.joins.append(join)
        return join

    def apply_dependency_rules(self, graph: Callable[[DependencyKind], DependencyGraph]) -> None:
        """Edges for the cross-service rules of DEPENDENCY_RULES, one JOIN per awaited (service, action)."""
        for waiting, awaited, kind, reverse, node_local in DEPENDENCY_RULES:
            waiting_services = sorted(s for (s, a) in self.groups if a is waiting)
            if not waiting_services:
                continue
            dependency = graph(kind)

            def has_tasks(service: str, awaited: Action = awaited) -> bool:
                return (service, awaited) in self.groups

            if node_local:
                self._apply_node_local(waiting, awaited, dependency, reverse, has_tasks)
                continue
            for service in waiting_services:
                if waiting is Action.START and self._initialize_precedes_start(service):
                    continue  # its INITIALIZE waits for the same STARTs, and its START follows its INITIALIZE
                for other in dependency.closest_with_tasks(service, reverse=reverse, has_tasks=has_tasks):
                    self.group_join(other, awaited).successors.extend(self.groups[(service, waiting)])

    def _initialize_precedes_start(self, service: str) -> bool:
        """Whether every START task of ``service`` has the service's INITIALIZE before it on its node.

        INITIALIZE and START only ever come from the same create-style chain, so equal counts mean each
        START follows an INITIALIZE of the same service on the same node."""
        initialize = self.groups.get((service, Action.INITIALIZE))
        return initialize is not None and len(initialize) == len(self.groups[(service, Action.START)])

    def _apply_node_local(
        self,
        waiting: Action,
        awaited: Action,
        dependency: DependencyGraph,
        reverse: bool,
        anywhere: Callable[[str], bool],
    ) -> None:
        """Per node; nodes alike (same services, same tasks) share one walk, so this stays O(tasks)."""
        cache: dict[tuple[frozenset[str], frozenset[str], str], tuple[list[str], list[str]]] = {}
        for node_id, tasks in self.node_tasks.items():
            waiting_here = sorted(s for (s, a) in tasks if a is waiting)
            if not waiting_here:
                continue
            here = frozenset(s for (s, a) in tasks if a is awaited)
            hosted = self.hosted[node_id]
            for service in waiting_here:
                cache_key = (hosted, here, service)
                found = cache.get(cache_key)
                if found is None:
                    found = dependency.closest_on_node(
                        service, reverse=reverse, hosted=hosted, here=here, anywhere=anywhere
                    )
                    cache[cache_key] = found
                key = tasks[(service, waiting)]
                local, everywhere = found
                for other in local:
                    self.edge(tasks[(other, awaited)], key)
                for other in everywhere:
                    self.group_join(other, awaited).successors.append(key)

    def finish(self, operation: Operation) -> Plan:
        for join in self.joins:
            predecessors, successors = join.predecessors, join.successors
            p, s = len(predecessors), len(successors)
            if p == 0 or s == 0:
                continue
            if p * s <= p + s:
                for u in predecessors:
                    for v in successors:
                        self.edge(u, v)
            else:
                key = self.task(None, Action.JOIN, join.service, join.label)
                for u in predecessors:
                    self.edge(u, key)
                for v in successors:
                    self.edge(key, v)
        return self._layer(operation)

    def _layer(self, operation: Operation) -> Plan:
        """Longest-path stages (Kahn), then keys renumbered stage by stage so they are topological."""
        n = len(self.action)
        successors: list[list[int]] = [[] for _ in range(n)]
        remaining = [0] * n
        for u, v in zip(self.sources, self.targets, strict=True):
            successors[u].append(v)
            remaining[v] += 1
        is_join = [a is Action.JOIN for a in self.action]
        stage = [0] * n
        order = [k for k in range(n) if remaining[k] == 0]
        index = 0
        while index < len(order):
            u = order[index]
            index += 1
            su = stage[u]
            for v in successors[u]:
                candidate = su if is_join[v] else su + 1
                if candidate > stage[v]:
                    stage[v] = candidate
                remaining[v] -= 1
                if remaining[v] == 0:
                    order.append(v)
        if len(order) < n:
            raise PlanError("the task graph has a cycle: " + self._describe_cycle(successors, remaining))
        stages = max((stage[k] for k in range(n) if not is_join[k]), default=-1) + 1
        buckets: list[list[int]] = [[] for _ in range(stages)]
        for k in range(n):
            buckets[stage[k]].append(k)
        new_key = [0] * n
        ordered: list[int] = []
        for bucket in buckets:
            for k in bucket:
                new_key[k] = len(ordered)
                ordered.append(k)
        tasks = tuple(
            TaskSpec(i, self.node[k], self.action[k], self.service[k], stage[k], self.label[k])
            for i, k in enumerate(ordered)
        )
        edges = tuple(sorted((new_key[u], new_key[v]) for u, v in zip(self.sources, self.targets, strict=True)))
        return Plan(operation=operation, tasks=tasks, edges=edges, stages=stages, critical_path=stages)

    def _describe_cycle(self, successors: list[list[int]], remaining: list[int]) -> str:
        """One cycle among the tasks Kahn could not order (defensive: the rules should never make one)."""
        stuck = {k for k, count in enumerate(remaining) if count > 0}
        start = min(stuck)
        path: list[int] = []
        position: dict[int, int] = {}
        current = start
        while current not in position:
            position[current] = len(path)
            path.append(current)
            current = next(v for v in successors[current] if v in stuck)
        cycle = [*path[position[current] :], current]
        return " → ".join(self._describe(k) for k in cycle)

    def _describe(self, key: int) -> str:
        if self.action[key] is Action.JOIN:
            return f"join ({self.label[key]})"
        service = f" {self.service[key]}" if self.service[key] else ""
        return f"{self.action[key]}{service} on {self.node[key]}"


# --- operations ---------------------------------------------------------------------------------------------


def _index(nodes: Sequence[NodeSpec], which: str) -> dict[str, NodeSpec]:
    indexed: dict[str, NodeSpec] = {}
    for node in nodes:
        if node.node_id in indexed:
            raise PlanError(f"node {node.node_id!r} appears twice in the {which} layout")
        indexed[node.node_id] = node
    return indexed


def _ordered(nodes: Iterable[NodeSpec]) -> list[NodeSpec]:
    return sorted(nodes, key=lambda node: (node.number, node.node_id))


_IN_PLACE = frozenset(
    {
        Operation.CONFIGURE,
        Operation.CONFIGURE_WITH_RESTART,
        Operation.START_SERVICES,
        Operation.STOP_SERVICES,
        Operation.RESTART_SERVICES,
    }
)
_SCOPED_RUNTIME = frozenset({Operation.START_SERVICES, Operation.STOP_SERVICES, Operation.RESTART_SERVICES})
_SCOPED_CHANGE = frozenset({Operation.ADD_SERVICES, Operation.REMOVE_SERVICES})


def _check_shape(operation: Operation, before: Mapping[str, NodeSpec], after: Mapping[str, NodeSpec]) -> None:
    """The before/after pair must be one this operation can produce; anything else is a caller bug."""
    if operation is Operation.CREATE and before:
        raise PlanError("create starts from no nodes, but the before layout has some")
    if operation is Operation.DELETE and after:
        raise PlanError("delete ends with no nodes, but the after layout has some")
    if (operation in _IN_PLACE or operation in _SCOPED_CHANGE) and before.keys() != after.keys():
        changed = sorted(before.keys() ^ after.keys())
        raise PlanError(f"{operation} keeps the nodes, but these differ between before and after: {changed}")
    if operation is Operation.SCALE_OUT and not before.keys() <= after.keys():
        raise PlanError(f"scale out keeps every node, but these are gone after: {sorted(before.keys() - after.keys())}")
    if operation is Operation.SCALE_IN and not after.keys() <= before.keys():
        raise PlanError(f"scale in adds no node, but these are new after: {sorted(after.keys() - before.keys())}")
    for node_id in sorted(before.keys() & after.keys()):
        old, new = before[node_id].services, after[node_id].services
        if operation is Operation.ADD_SERVICES:
            if not old <= new:
                raise PlanError(f"add services removes {sorted(old - new)} from node {node_id!r}")
        elif operation is Operation.REMOVE_SERVICES:
            if not new <= old:
                raise PlanError(f"remove services adds {sorted(new - old)} to node {node_id!r}")
        elif old != new:
            raise PlanError(
                f"{operation} does not change services, but node {node_id!r} goes {sorted(old)} → {sorted(new)}"
            )


def plan(
    *,
    before: Sequence[NodeSpec],
    after: Sequence[NodeSpec],
    operation: Operation,
    services: Mapping[str, ServiceSpec],
    scope: frozenset[str] | None = None,
    restarts: Mapping[str, frozenset[str]] | None = None,
) -> Plan:
    """Plan ``operation`` taking the cluster from ``before`` to ``after`` (nodes matched by ``node_id``).

    ``scope`` names the services a start/stop/restart is about (None = all; their runtime dependencies or
    dependents are pulled in, §5.4), or the services an add/remove was asked for (they must be among those
    the layout change adds/removes; the plan covers the whole change, including services the solver added
    to satisfy dependencies). Other operations take no scope.

    Raises PlanError for: a layout pair the operation cannot produce, duplicate node ids, a service on a
    node that ``services`` does not describe, a required service missing after the operation, a
    dependency cycle (named), or a scope naming services the operation does not touch.
    """
    operation = Operation(operation)
    before_nodes = _index(before, "before")
    after_nodes = _index(after, "after")
    _check_shape(operation, before_nodes, after_nodes)
    if scope is not None and operation not in _SCOPED_RUNTIME | _SCOPED_CHANGE:
        raise PlanError(f"{operation} takes no service scope")
    if restarts and operation is not Operation.REPAIR:
        raise PlanError(f"{operation} takes no per-node restarts")
    hosted = {node_id: node.services for node_id, node in before_nodes.items()}
    for node_id, node in after_nodes.items():
        hosted[node_id] = hosted[node_id] | node.services if node_id in hosted else node.services
    builder = _Builder(services, hosted)
    if operation is Operation.DELETE:
        for node in _ordered(before_nodes.values()):
            builder.task(node.node_id, Action.DELETE)
        return builder.finish(operation)

    present = frozenset().union(*hosted.values())
    unknown = sorted(present - services.keys())
    if unknown:
        raise PlanError(f"services on the cluster with no definition: {unknown}")
    _check_requires(services, frozenset().union(*(n.services for n in after_nodes.values())))
    # Both graphs are built (and checked for cycles) for every operation, even one that orders nothing by
    # them: a cyclic catalog is reported the same way whatever the user asked for.
    graphs = {kind: dependency_graph(services, present, kind) for kind in (INSTALL, RUNTIME)}
    context = _Context(before_nodes, after_nodes, scope, present, graphs.__getitem__, dict(restarts or {}))
    _OPERATIONS[operation](builder, context)
    builder.apply_dependency_rules(graphs.__getitem__)
    return builder.finish(operation)


@dataclass
class _Context:
    """What every operation's planner reads: the two layouts, the scope, the services present."""

    before: Mapping[str, NodeSpec]
    after: Mapping[str, NodeSpec]
    scope: frozenset[str] | None
    present: frozenset[str]
    graph: Callable[[DependencyKind], DependencyGraph]
    restarts: Mapping[str, frozenset[str]] = field(default_factory=dict)


_Planner = Callable[[_Builder, _Context], None]


def _plan_new_nodes(
    builder: _Builder,
    nodes: list[NodeSpec],
    existing_configures: list[int] | None,
    existing_runtime: Sequence[int] = (),
) -> None:
    """Create chains on new nodes; service work from CONFIGURE on waits until every new node has addresses.

    With ``existing_configures`` (scale out, repair), those existing-node CONFIGURE tasks also wait for the new
    addresses, and the new nodes' first runtime task of each service waits for all of them; ``existing_runtime``
    (a repair's services restarted in place) wait for the new addresses too."""
    confirms: list[int] = []
    post_install: list[int] = []
    first_runtime: list[int] = []
    for node in nodes:
        hardware, chains = builder.node_chain(
            node.node_id, _CREATE_HARDWARE, [(s, _CREATE_SERVICE) for s in sorted(node.services)]
        )
        confirms.append(hardware[Action.CONFIRM])
        for chain in chains:
            post = next((key for action, key in chain if action in POST_INSTALL_ACTIONS), None)
            if post is not None:
                post_install.append(post)
            runtime = next((key for action, key in chain if action in RUNTIME_ACTIONS), None)
            if runtime is not None:
                first_runtime.append(runtime)
    if existing_configures is None:
        builder.join("confirm of every node", confirms, post_install)
    else:
        builder.join("confirm of every new node", confirms, post_install + existing_configures + list(existing_runtime))
        builder.join("configure of the existing nodes", existing_configures, first_runtime)


def _plan_create(builder: _Builder, ctx: _Context) -> None:
    _plan_new_nodes(builder, _ordered(ctx.after.values()), None)


def _service_chains(
    builder: _Builder,
    nodes: Iterable[NodeSpec],
    actions_for: Callable[[str], Sequence[Action]],
    head: Sequence[Action] = (),
    tail: Sequence[Action] = (),
    services_of: Callable[[NodeSpec], Iterable[str]] = lambda node: node.services,
) -> list[int]:
    """Per node: ``head`` hardware, then each service's actions, then ``tail``. Returns CONFIGURE keys."""
    configures: list[int] = []
    for node in _ordered(nodes):
        planned = [(s, actions_for(s)) for s in sorted(services_of(node))]
        planned = [(s, a) for s, a in planned if a]
        if not planned and not head and not tail:
            continue
        _, chains = builder.node_chain(node.node_id, head, planned, tail)
        configures.extend(key for chain in chains for action, key in chain if action is Action.CONFIGURE)
    return configures


def _plan_configure(builder: _Builder, ctx: _Context) -> None:
    _service_chains(builder, ctx.after.values(), lambda s: (Action.CONFIGURE,), head=(Action.BOOTSTRAP,))


def _plan_configure_with_restart(builder: _Builder, ctx: _Context) -> None:
    actions = (Action.STOP, Action.CONFIGURE, Action.START)
    _service_chains(builder, ctx.after.values(), lambda s: actions, head=(Action.BOOTSTRAP,))


def _runtime_scope(scope: frozenset[str] | None, present: frozenset[str]) -> frozenset[str]:
    if scope is None:
        return present
    missing = sorted(scope - present)
    if missing:
        raise PlanError(f"services not on the cluster: {missing}")
    return scope


def _dependencies_of(graph: DependencyGraph, services: frozenset[str]) -> frozenset[str]:
    return services.union(*(graph.closure[s] for s in services))


def _dependents_of(graph: DependencyGraph, services: frozenset[str]) -> frozenset[str]:
    return services.union(*(graph.dependents_closure[s] for s in services))


def _plan_start(builder: _Builder, ctx: _Context) -> None:
    started = _dependencies_of(ctx.graph(RUNTIME), _runtime_scope(ctx.scope, ctx.present))
    _service_chains(builder, ctx.after.values(), lambda s: (Action.START,) if s in started else ())


def _plan_stop(builder: _Builder, ctx: _Context) -> None:
    stopped = _dependents_of(ctx.graph(RUNTIME), _runtime_scope(ctx.scope, ctx.present))
    _service_chains(builder, ctx.after.values(), lambda s: (Action.STOP,) if s in stopped else ())


def _plan_restart(builder: _Builder, ctx: _Context) -> None:
    """Restart = stop the scope and its dependents, then start those plus everything they depend on."""
    runtime = ctx.graph(RUNTIME)
    stopped = _dependents_of(runtime, _runtime_scope(ctx.scope, ctx.present))
    started = _dependencies_of(runtime, stopped)

    def actions(service: str) -> tuple[Action, ...]:
        if service in stopped:
            return (Action.STOP, Action.START)
        return (Action.START,) if service in started else ()

    _service_chains(builder, ctx.after.values(), actions)


def _check_change_scope(scope: frozenset[str] | None, changed: set[str], verb: str) -> None:
    if scope is not None and not scope <= changed:
        raise PlanError(f"the layout change {verb} no node for: {sorted(scope - changed)}")


def _plan_add_services(builder: _Builder, ctx: _Context) -> None:
    added = {node_id: node.services - ctx.before[node_id].services for node_id, node in ctx.after.items()}
    _check_change_scope(ctx.scope, set().union(*added.values()), "adds them to")
    _service_chains(
        builder,
        (node for node in ctx.after.values() if added[node.node_id]),
        lambda s: _CREATE_SERVICE,
        head=(Action.BOOTSTRAP,),
        services_of=lambda node: added[node.node_id],
    )


def _plan_remove_services(builder: _Builder, ctx: _Context) -> None:
    removed = {node_id: node.services - ctx.after[node_id].services for node_id, node in ctx.before.items()}
    _check_change_scope(ctx.scope, set().union(*removed.values()), "removes them from")
    _service_chains(
        builder,
        ctx.before.values(),
        lambda s: (Action.STOP, Action.REMOVE),
        services_of=lambda node: removed[node.node_id],
    )


def _plan_scale_out(builder: _Builder, ctx: _Context) -> None:
    new = _ordered(node for node_id, node in ctx.after.items() if node_id not in ctx.before)
    if not new:
        return
    configures = _service_chains(builder, ctx.before.values(), lambda s: (Action.CONFIGURE,))
    _plan_new_nodes(builder, new, configures)


def _plan_scale_in(builder: _Builder, ctx: _Context) -> None:
    leaving = [node for node_id, node in ctx.before.items() if node_id not in ctx.after]
    if not leaving:
        return
    deletes: list[int] = []
    for node in _ordered(leaving):
        planned = [(s, (Action.STOP,)) for s in sorted(node.services)]
        hardware, _ = builder.node_chain(node.node_id, (), planned, (Action.DELETE,))
        deletes.append(hardware[Action.DELETE])
    configures = _service_chains(builder, ctx.after.values(), lambda s: (Action.CONFIGURE,))
    builder.join("delete of every leaving node", deletes, configures)


def _plan_repair(builder: _Builder, ctx: _Context) -> None:
    """Replace the nodes that leave by the new ones and restart failed services in place.

    A replaced node's machine is gone or does not answer, so nothing is stopped on it: its DELETE only makes
    sure the machine is gone. The new nodes are made as a scale-out makes them, and every node that stays is
    configured again once they have addresses and the old ones are deleted, so a config that lists the
    cluster's nodes (a balancer's backends, through macros) takes the new node in and the old one out. A
    service restarted in place on a staying node is stopped, configured (when nodes are replaced) and started.
    """
    leaving = _ordered(node for node_id, node in ctx.before.items() if node_id not in ctx.after)
    new = _ordered(node for node_id, node in ctx.after.items() if node_id not in ctx.before)
    staying = _ordered(node for node_id, node in ctx.after.items() if node_id in ctx.before)
    for node_id, restarted in ctx.restarts.items():
        if node_id not in ctx.before or node_id not in ctx.after:
            raise PlanError(f"restarts name node {node_id!r}, which does not stay in the cluster")
        if not restarted <= ctx.before[node_id].services:
            raise PlanError(
                f"restarts name services not on node {node_id!r}: {sorted(restarted - ctx.before[node_id].services)}"
            )
    if not leaving and not ctx.restarts:
        raise PlanError("repair replaces or restarts something, but nothing was named")
    deletes = [builder.node_chain(node.node_id, (), (), (Action.DELETE,))[0][Action.DELETE] for node in leaving]
    configures: list[int] = []
    runtime: list[int] = []  # a service restarted in place starts once the new nodes have addresses
    for node in staying:
        restarted = ctx.restarts.get(node.node_id, frozenset())

        def actions(service: str, restarted: frozenset[str] = restarted) -> tuple[Action, ...]:
            if service in restarted:
                return (Action.STOP, Action.CONFIGURE, Action.START) if new else (Action.STOP, Action.START)
            return (Action.CONFIGURE,) if new else ()

        planned = [(service, actions(service)) for service in sorted(node.services)]
        _, chains = builder.node_chain(node.node_id, (), [(s, a) for s, a in planned if a])
        for action, key in (pair for chain in chains for pair in chain):
            configures += [key] if action is Action.CONFIGURE else []
            runtime += [key] if action is Action.START else []
    if new:
        _plan_new_nodes(builder, new, configures, runtime)
    if deletes:
        builder.join("delete of every replaced node", deletes, configures)


_OPERATIONS: dict[Operation, _Planner] = {
    Operation.CREATE: _plan_create,
    Operation.CONFIGURE: _plan_configure,
    Operation.CONFIGURE_WITH_RESTART: _plan_configure_with_restart,
    Operation.START_SERVICES: _plan_start,
    Operation.STOP_SERVICES: _plan_stop,
    Operation.RESTART_SERVICES: _plan_restart,
    Operation.ADD_SERVICES: _plan_add_services,
    Operation.REMOVE_SERVICES: _plan_remove_services,
    Operation.SCALE_OUT: _plan_scale_out,
    Operation.SCALE_IN: _plan_scale_in,
    Operation.REPAIR: _plan_repair,
}
