"""The ports of the original's solver and planner that ``bench/baselines.py`` compares against.

They are baselines, not Loom code; these tests pin them to the behaviour loom-reference.md documents so
that the comparison cannot drift silently. No database.
"""

from __future__ import annotations

from types import MappingProxyType

from bench import original_planner, original_solver, planner_cases
from bench.original_planner import ActionOnService, TaskNode
from clusters.planning.planner import Operation, plan
from clusters.planning.solver import LayoutRequest, check_layout
from clusters.planning.specs import (
    ClusterLayout,
    HardwareOption,
    ImageOption,
    NodeRole,
    NodeSpec,
    ServiceConstraint,
    ServiceSpec,
    TemplateSpec,
)

IMAGES = (ImageOption("centos6", "img-c6"),)


def test_solver_drops_a_service_without_minimum_as_the_original_did() -> None:
    """loom-reference.md §0.1: {A, B}, cantcoexist [[A, B]], no quantities, 3 nodes → 3 × {A}."""
    template = TemplateSpec(name="quirk", cant_coexist=(frozenset({"A", "B"}),))
    hardware = (HardwareOption("small", "s"),)
    roles = original_solver.solve(template, ["A", "B"], 3, hardware, IMAGES)
    assert roles == [("small", "centos6", frozenset({"A"}), 3)]
    request = LayoutRequest(
        template=template,
        services={"A": ServiceSpec("A"), "B": ServiceSpec("B")},
        size=3,
        requested_services=("A", "B"),
        hardware_options=hardware,
        image_options=IMAGES,
    )
    layout = ClusterLayout(tuple(NodeRole(*role) for role in roles))
    assert check_layout(request, layout) == ["B is not placed on any node"]


def test_solver_enumerates_and_prefers_as_the_original() -> None:
    """The iterator's order (items kept left; one item per slot enumerates subsets); unconstrained services
    go everywhere; the densest layout is filled first, up to its maxima; among hardware types the first
    name wins ("large" < "medium" < "small"), whatever it costs."""
    states = [tuple(state) for state in original_solver.SlottedCombinationIterator.from_items(4, 3)]
    assert states[:14] == [
        (3, 0, 0, 0), (2, 1, 0, 0), (2, 0, 1, 0), (2, 0, 0, 1), (1, 2, 0, 0), (1, 1, 1, 0), (1, 1, 0, 1),
        (1, 0, 2, 0), (1, 0, 1, 1), (1, 0, 0, 2), (0, 3, 0, 0), (0, 2, 1, 0), (0, 2, 0, 1), (0, 1, 2, 0),
    ]  # fmt: skip
    assert len(states) == 20  # C(3 + 4 - 1, 3): every placement, once
    # one item per slot: the size-2 subsets of 4 services, as the original enumerated them
    assert len(list(original_solver.SlottedCombinationIterator.from_items(4, 2, [1, 1, 1, 1]))) == 6
    template = TemplateSpec(name="pref", service_constraints=MappingProxyType({"master": ServiceConstraint(1, 1)}))
    hardware = (HardwareOption("small", "s", 0.01), HardwareOption("medium", "m", 0.1), HardwareOption("large", "l", 1))
    roles = original_solver.solve(template, ["master", "base"], 3, hardware, IMAGES)
    assert roles == [
        ("large", "centos6", frozenset({"master", "base"}), 1),
        ("large", "centos6", frozenset({"base"}), 2),
    ]


def _service(
    name: str, *, requires: tuple[str, ...] = (), uses: tuple[str, ...] = (), provides: tuple[str, ...] = ()
) -> ServiceSpec:
    return ServiceSpec(
        name,
        provides=frozenset(provides),
        runtime_requires=frozenset(requires),
        runtime_uses=frozenset(uses),
        install_requires=frozenset({"base"} - {name}),
        actions=frozenset({"install", "start"}),
    )


def test_planner_writes_every_cross_node_dependency_and_reduces_transitively() -> None:
    services = {
        "base": _service("base"),
        "s1": _service("s1", requires=("base",), uses=("absent",), provides=("alias",)),
        "s2": _service("s2", requires=("alias",)),
        "s3": _service("s3", requires=("base", "s1", "s2")),
    }
    nodes = [
        NodeSpec("n1", 1000, "large", "centos6", frozenset({"base", "s1"})),
        NodeSpec("n2", 1001, "large", "centos6", frozenset({"base", "s1"})),
        NodeSpec("n3", 1002, "large", "centos6", frozenset({"base", "s2", "s3"})),
    ]
    planner = original_planner.JobPlanner(nodes, services)
    # §5.3: aliases resolved, absent `uses` ignored, s3 → {base, s1, s2} reduced to s3 → {s2}
    assert planner.resolver.direct_dependent_actions("s3", "START") == {ActionOnService("START", "s2")}
    dag = planner.create_task_dag()
    # START s2 on n3 waits for START s1 on both nodes hosting s1; INSTALL s2 for INSTALL base on all three
    assert {TaskNode("n1", "START", "s1"), TaskNode("n2", "START", "s1")} <= {
        source for source, targets in dag.edges.items() if TaskNode("n3", "START", "s2") in targets
    }
    install_s2 = TaskNode("n3", "INSTALL", "s2")
    assert {source for source, targets in dag.edges.items() if install_s2 in targets} == {
        TaskNode("n3", "BOOTSTRAP", ""),
        *(TaskNode(node, "INSTALL", "base") for node in ("n1", "n2", "n3")),
    }
    assert original_planner.count_create_edges(nodes, services) == dag.edge_count
    # §5.5: every edge goes to a later stage, every task is in one stage, one task per node per sub-stage
    result = original_planner.plan_create(nodes, services)
    stage_of = {task: index for index, stage in enumerate(result.stages) for task in stage}
    assert len(stage_of) == sum(len(stage) for stage in result.stages) == len(dag.nodes) == result.tasks
    assert all(stage_of[source] < stage_of[target] for source, targets in dag.edges.items() for target in targets)
    for stage in result.deduped_stages:
        assert len({task.host_id for task in stage}) == len(stage)
    assert sum(len(stage) for stage in result.deduped_stages) == result.tasks


def test_planner_plans_the_same_tasks_as_ours_on_the_benchmark_model() -> None:
    """Same work, same stage count; only the edges differ (N×M against join points)."""
    services, nodes = planner_cases.hadoop_services(), planner_cases.hadoop_nodes(12)
    ours = plan(before=(), after=nodes, operation=Operation.CREATE, services=services)
    original = original_planner.plan_create(nodes, services)
    ours_tasks = {(t.node_id, str(t.action), t.service) for t in ours.tasks if not t.is_join}
    original_tasks = {(t.host_id, t.task_name.lower(), t.service) for stage in original.stages for t in stage}
    assert original_tasks == ours_tasks
    assert len(original.stages) == ours.stages
    assert original.edges == original_planner.count_create_edges(nodes, services) > len(ours.edges)
