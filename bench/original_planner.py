"""A port of the original's task planner, used only as a baseline by ``bench/baselines.py``.

Continuuity Loom / Cask Coopr (Apache-2.0) planned a cluster operation as docs/loom-reference.md §5.2,
§5.3 and §5.5 describe (``JobPlanner.createTaskDag``, ``ServiceDependencyResolver``, ``TaskDag.linearize``,
``JobPlanner.deDupNodePerStage``). This module ports that algorithm from the reference notes, with the
details cross-checked against the original's published source. It is for comparison only: Loom does not
use it (``clusters.planning.planner`` is Loom's planner). It is a straightforward port with plain sets and dicts,
not optimised, so that the benchmark compares algorithms:

* A DAG node is ``(node id, action, service)``, service "" for the hardware actions. Per node and service
  the cluster action's provisioner actions form a chain (hardware tasks are shared by all of a node's
  chains, by equality); a service task exists only when the service defines the action.
* Every cross-service dependency is written out as explicit edges: X's task on node n waits for the
  dependency's task on *every* node hosting the dependency (N×M edges). Dependencies (§5.3): aliases
  (``provides``) replaced by their providers, ``requires`` ∪ ``uses`` per kind, reduced to direct ones; for
  each action dependency (START←START, INITIALIZE←START, STOP←STOP reversed, INSTALL←INSTALL) a
  breadth-first walk finds the closest services defining the awaited action, dropping any that another
  found service depends on.
* Stages (§5.5 step 1): the original's layering loop: each round, the sources (tasks no remaining edge
  points to) form a stage together with the previous round's sinks, and their edges are removed. Like
  the original (``removeAll`` against the edge multimap's ``values()``, twice a round), it goes over the
  remaining edges' targets twice a round; here with hash sets, which is no slower than the original's
  library calls. Step 2 then splits each stage so that a node appears once per sub-stage (the first
  sub-stage without the node).

Where the original would dereference a service that is not on the cluster (a ``uses`` of an absent
service), this port skips it, which is the behaviour the reference describes (the name never matches).
Iteration orders are Python's rather than Java's HashMap orders; sets of tasks and edges do not depend on
them, only which same-node task comes first in a deduplicated stage does (unspecified in the original too).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from clusters.planning.specs import NodeSpec, ServiceSpec

HARDWARE_ACTIONS = frozenset({"CREATE", "CONFIRM", "BOOTSTRAP", "DELETE"})
INSTALL_TIME_ACTIONS = frozenset({"INSTALL", "REMOVE"})
RUNTIME_ACTIONS = frozenset({"INITIALIZE", "START", "STOP"})

ACTION_ORDER: Mapping[str, tuple[str, ...]] = {
    "CLUSTER_CREATE": ("CREATE", "CONFIRM", "BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START"),
    "CLUSTER_DELETE": ("DELETE",),
    "ADD_SERVICES": ("BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START"),
    "CLUSTER_CONFIGURE": ("BOOTSTRAP", "CONFIGURE"),
    "CLUSTER_CONFIGURE_WITH_RESTART": ("BOOTSTRAP", "STOP", "CONFIGURE", "START"),
    "STOP_SERVICES": ("STOP",),
    "START_SERVICES": ("START",),
    "RESTART_SERVICES": ("STOP", "START"),
}

# (from, to, reversed): "to" of a service waits for "from" of its dependencies (of its dependents if reversed).
ACTION_DEPENDENCIES: tuple[tuple[str, str, bool], ...] = (
    ("START", "START", False),
    ("START", "INITIALIZE", False),
    ("STOP", "STOP", True),
    ("INSTALL", "INSTALL", False),
)


class TaskNode(NamedTuple):
    host_id: str
    task_name: str
    service: str


class ActionOnService(NamedTuple):
    action: str
    service: str


def _defines(service: ServiceSpec, action: str) -> bool:
    return action.lower() in service.actions


Multimap = dict[str, set[str]]


# --- ServiceDependencyResolver ------------------------------------------------------------------------------


class ServiceDependencyResolver:
    def __init__(self, cluster_services: Mapping[str, ServiceSpec]) -> None:
        self.cluster_services = dict(cluster_services)
        self.provides_index = self._provides_index()
        self.install_dependencies = self._minimize(
            lambda s: self._replace_provided(s.install_requires | s.install_uses)
        )
        self.runtime_dependencies = self._minimize(
            lambda s: self._replace_provided(s.runtime_requires | s.runtime_uses)
        )
        self.reversed_install_dependencies = self._reverse(self.install_dependencies)
        self.reversed_runtime_dependencies = self._reverse(self.runtime_dependencies)
        self.cluster_dependencies: dict[ActionOnService, set[ActionOnService]] = {}
        for service in self.cluster_services.values():
            for dependency in ACTION_DEPENDENCIES:
                key = ActionOnService(dependency[1], service.name)
                self.cluster_dependencies.setdefault(key, set()).update(
                    self._direct_action_dependencies(service, dependency)
                )

    def direct_dependent_actions(self, service: str, action: str) -> set[ActionOnService]:
        return self.cluster_dependencies.get(ActionOnService(action, service), set())

    def runtime_depends_on(self, service1: str, service2: str) -> bool:
        return does_depend_on(service1, service2, self.runtime_dependencies)

    def _provides_index(self) -> Multimap:
        index: Multimap = {}
        for service in self.cluster_services.values():
            for provided in service.provides:
                if provided != service.name:
                    index.setdefault(provided, set()).add(service.name)
        return index

    def _replace_provided(self, names: Iterable[str]) -> set[str]:
        provided: set[str] = set()
        for name in names:
            if name in self.provides_index:
                provided.update(self.provides_index[name])
            else:
                provided.add(name)
        return provided

    def _minimize(self, dependencies_of: Callable[[ServiceSpec], set[str]]) -> Multimap:
        """Each service's dependencies minus those reachable through another dependency."""
        minimized: Multimap = {}
        for service in self.cluster_services.values():
            given = dependencies_of(service)
            indirect: set[str] = set()
            new_dependencies = set(given)
            while new_dependencies:
                new_indirect: set[str] = set()
                for name in new_dependencies:
                    dependency = self.cluster_services.get(name)
                    if dependency is None:  # not on the cluster: never matches (the original would fail)
                        continue
                    new_indirect.update(dependencies_of(dependency) - indirect)
                indirect.update(new_indirect)
                new_dependencies = new_indirect
            minimized[service.name] = given - indirect
        return minimized

    @staticmethod
    def _reverse(dependencies: Multimap) -> Multimap:
        reversed_dependencies: Multimap = {}
        for service, targets in dependencies.items():
            for target in targets:
                reversed_dependencies.setdefault(target, set()).add(service)
        return reversed_dependencies

    def _direct_action_dependencies(
        self, service: ServiceSpec, dependency: tuple[str, str, bool]
    ) -> set[ActionOnService]:
        from_action, to_action, is_reversed = dependency
        if not _defines(service, to_action):
            return set()
        if is_reversed and from_action in INSTALL_TIME_ACTIONS:
            graph = self.reversed_install_dependencies
        elif is_reversed and from_action in RUNTIME_ACTIONS:
            graph = self.reversed_runtime_dependencies
        elif from_action in INSTALL_TIME_ACTIONS:
            graph = self.install_dependencies
        elif from_action in RUNTIME_ACTIONS:
            graph = self.runtime_dependencies
        else:
            return set()
        next_level = deque(graph.get(service.name, ()))
        direct: set[ActionOnService] = set()
        while next_level:
            parent_name = next_level.popleft()
            parent = self.cluster_services.get(parent_name)
            if parent is None:
                continue
            if _defines(parent, from_action):
                direct.add(ActionOnService(from_action, parent_name))
            else:
                next_level.extend(graph.get(parent_name, ()))
        to_remove = set()
        for first in direct:
            for second in direct:
                if does_depend_on(first.service, second.service, graph):
                    to_remove.add(second)
        return direct - to_remove


def does_depend_on(service1: str, service2: str, dependencies: Multimap) -> bool:
    """Whether service1 reaches service2 in ``dependencies`` (breadth-first, no visited set, as the original)."""
    if service1 == service2:
        return False
    to_search = deque(dependencies.get(service1, ()))
    while to_search:
        dependency = to_search.popleft()
        if dependency == service2:
            return True
        to_search.extend(dependencies.get(dependency, ()))
    return False


# --- TaskDag ------------------------------------------------------------------------------------------------


class TaskDag:
    def __init__(self) -> None:
        self.nodes: set[TaskNode] = set()
        self.edges: dict[TaskNode, set[TaskNode]] = {}  # a SetMultimap: from -> {to}

    def add_dependency(self, from_node: TaskNode, to_node: TaskNode) -> None:
        self.nodes.add(from_node)
        self.nodes.add(to_node)
        self.edges.setdefault(from_node, set()).add(to_node)

    def add_task_node(self, node: TaskNode) -> None:
        self.nodes.add(node)

    @property
    def edge_count(self) -> int:
        return sum(len(targets) for targets in self.edges.values())

    def linearize(self) -> list[set[TaskNode]]:
        """Stages: each round's sources (with the previous round's sinks), then their edges removed."""
        linearized: list[set[TaskNode]] = []
        copy_edges = {source: list(targets) for source, targets in self.edges.items()}  # an ArrayListMultimap
        sources = set(self.nodes)
        sink_nodes: set[TaskNode] = set()
        while True:
            sources.update(copy_edges.keys())
            sources.difference_update(_values(copy_edges))
            if not sources:
                raise ValueError("No source nodes found, DAG not serializable")
            linearized.append(sink_nodes | sources)
            sink_nodes = set()
            to_nodes: set[TaskNode] = set()
            for from_node in sources:
                to_nodes.update(copy_edges.pop(from_node, ()))
            # a reached task that is neither a source nor a target of a remaining edge is a sink
            to_nodes.difference_update(copy_edges.keys())
            to_nodes.difference_update(_values(copy_edges))
            sink_nodes.update(to_nodes)
            sources = set()
            if not copy_edges:
                break
        if sink_nodes:
            linearized.append(sink_nodes)
        return linearized


def _values(multimap: dict[TaskNode, list[TaskNode]]) -> set[TaskNode]:
    values: set[TaskNode] = set()
    for targets in multimap.values():
        values.update(targets)
    return values


# --- JobPlanner ---------------------------------------------------------------------------------------------


class JobPlanner:
    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        services: Mapping[str, ServiceSpec],
        cluster_action: str = "CLUSTER_CREATE",
        planned_services: frozenset[str] | None = None,
        planned_nodes: frozenset[str] | None = None,
    ) -> None:
        self.cluster_action = cluster_action
        self.nodes_to_plan = planned_nodes
        self.services_to_plan = planned_services
        self.service_node_map: dict[str, list[NodeSpec]] = {}  # an ArrayListMultimap
        self.service_map: dict[str, ServiceSpec] = {}
        self.node_map: dict[str, NodeSpec] = {}
        for node in nodes:
            for name in node.services:
                self.service_node_map.setdefault(name, []).append(node)
                self.service_map[name] = services[name]
            self.node_map[node.node_id] = node
        self.resolver = ServiceDependencyResolver(self.service_map)

    def create_task_dag(self) -> TaskDag:
        dag = TaskDag()
        action_order = ACTION_ORDER[self.cluster_action]
        for node in self.node_map.values():
            if self.nodes_to_plan is not None and node.node_id not in self.nodes_to_plan:
                continue
            for name in node.services:
                if self.services_to_plan is not None and name not in self.services_to_plan:
                    continue
                self._add_dependencies(dag, action_order, self.service_map[name], node)
        return dag

    def _add_dependencies(
        self, dag: TaskDag, action_order: Sequence[str], service: ServiceSpec, node: NodeSpec
    ) -> None:
        previous: TaskNode | None = None
        for action in action_order:
            hardware = action in HARDWARE_ACTIONS
            effective_service = "" if hardware else service.name
            if hardware or _defines(service, action):
                task = TaskNode(node.node_id, action, effective_service)
                if previous is not None:
                    dag.add_dependency(previous, task)
                else:
                    dag.add_task_node(task)
                previous = task
            for dependent in self.resolver.direct_dependent_actions(service.name, action):
                if (
                    self.services_to_plan is not None
                    and dependent.service not in self.services_to_plan
                    and action in INSTALL_TIME_ACTIONS
                ):
                    continue  # already installed
                # every node hosting the dependency does its action before this node does this one
                for from_node in self.service_node_map.get(dependent.service, ()):
                    dag.add_dependency(
                        TaskNode(from_node.node_id, dependent.action, dependent.service),
                        TaskNode(node.node_id, action, service.name),
                    )

    def is_task(self, task: TaskNode) -> bool:
        """createClusterTasks keeps hardware tasks and service tasks whose service defines the action."""
        return task.task_name in HARDWARE_ACTIONS or _defines(self.service_map[task.service], task.task_name)


def dedup_node_per_stage(stages: Iterable[Iterable[TaskNode]]) -> list[set[TaskNode]]:
    """Split each stage so that every node appears at most once per sub-stage (first one without it)."""
    deduped: list[dict[str, TaskNode]] = []
    for stage in stages:
        new_stages: list[dict[str, TaskNode]] = []
        for task in stage:
            for new_stage in new_stages:
                if task.host_id not in new_stage:
                    new_stage[task.host_id] = task
                    break
            else:
                new_stages.append({task.host_id: task})
        deduped.extend(new_stages)
    return [set(stage.values()) for stage in deduped]


@dataclass(frozen=True)
class OriginalPlan:
    tasks: int
    edges: int
    stages: list[set[TaskNode]]
    deduped_stages: list[set[TaskNode]]


def plan_create(nodes: Sequence[NodeSpec], services: Mapping[str, ServiceSpec]) -> OriginalPlan:
    """The original's CLUSTER_CREATE plan: DAG, stages, then one task per node per sub-stage."""
    planner = JobPlanner(nodes, services, "CLUSTER_CREATE")
    dag = planner.create_task_dag()
    stages = [{task for task in stage if planner.is_task(task)} for stage in dag.linearize()]
    stages = [stage for stage in stages if stage]
    return OriginalPlan(len(dag.nodes), dag.edge_count, stages, dedup_node_per_stage(stages))


def count_create_edges(nodes: Sequence[NodeSpec], services: Mapping[str, ServiceSpec]) -> int:
    """How many edges ``create_task_dag`` would hold for a create, without building them.

    For sizes the port cannot build in reasonable time. Chain edges are deduplicated per node (hardware
    tasks are shared by the node's chains); a cross-service edge joins two different services' tasks, and
    each (task, dependency, host) triple occurs once, so those are simply counted. The tests check that
    this equals ``TaskDag.edge_count``.
    """
    planner = JobPlanner(nodes, services, "CLUSTER_CREATE")
    action_order = ACTION_ORDER["CLUSTER_CREATE"]
    hosts = {name: len(hosting) for name, hosting in planner.service_node_map.items()}
    total = 0
    for node in planner.node_map.values():
        chain: set[tuple[TaskNode, TaskNode]] = set()
        for name in node.services:
            service = planner.service_map[name]
            previous: TaskNode | None = None
            for action in action_order:
                hardware = action in HARDWARE_ACTIONS
                if hardware or _defines(service, action):
                    task = TaskNode(node.node_id, action, "" if hardware else name)
                    if previous is not None:
                        chain.add((previous, task))
                    previous = task
                for dependent in planner.resolver.direct_dependent_actions(name, action):
                    total += hosts.get(dependent.service, 0)
        total += len(chain)
    return total
