"""The planner: action order per operation, each service dependency rule, cycles, join points, and
properties checked against a slow, obviously correct reference on random catalogs and layouts."""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusters.planning.planner import Action, Operation, Plan, PlanError, dependency_graph, plan
from clusters.planning.specs import SERVICE_ACTIONS, NodeSpec, ServiceSpec

ALL = frozenset(SERVICE_ACTIONS)
Triple = tuple[str | None, Action, str]

# --- helpers -----------------------------------------------------------------------------------------------


def svc(
    name: str,
    *,
    actions: Iterable[str] = ALL,
    install_requires: Iterable[str] = (),
    install_uses: Iterable[str] = (),
    runtime_requires: Iterable[str] = (),
    runtime_uses: Iterable[str] = (),
    provides: Iterable[str] = (),
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        provides=frozenset(provides),
        install_requires=frozenset(install_requires),
        install_uses=frozenset(install_uses),
        runtime_requires=frozenset(runtime_requires),
        runtime_uses=frozenset(runtime_uses),
        actions=frozenset(actions),
    )


def catalog(*specs: ServiceSpec) -> dict[str, ServiceSpec]:
    return {spec.name: spec for spec in specs}


def node(number: int, *services: str) -> NodeSpec:
    return NodeSpec(node_id=f"n{number}", number=number, hardware="small", image="linux", services=frozenset(services))


def create(nodes: Sequence[NodeSpec], services: Mapping[str, ServiceSpec]) -> Plan:
    return plan(before=(), after=nodes, operation=Operation.CREATE, services=services)


def in_place(
    operation: Operation,
    nodes: Sequence[NodeSpec],
    services: Mapping[str, ServiceSpec],
    scope: Iterable[str] | None = None,
) -> Plan:
    return plan(
        before=nodes,
        after=nodes,
        operation=operation,
        services=services,
        scope=None if scope is None else frozenset(scope),
    )


def triple(p: Plan, key: int) -> Triple:
    task = p.tasks[key]
    return (task.node_id, task.action, task.service)


def real_triples(p: Plan) -> list[Triple]:
    return [triple(p, t.key) for t in p.tasks if not t.is_join]


def key_of(p: Plan, node_id: str, action: Action, service: str = "") -> int:
    matches = [t.key for t in p.tasks if (t.node_id, t.action, t.service) == (node_id, action, service)]
    assert len(matches) == 1, (node_id, action, service, matches)
    return matches[0]


def reachability(p: Plan) -> list[set[int]]:
    """For every key, the keys reachable from it (JOINs are transparent: they are walked through)."""
    successors = p.successors()
    reach: list[set[int]] = [set() for _ in p.tasks]
    for key in reversed(range(len(p.tasks))):  # keys are topological, checked separately
        for successor in successors[key]:
            reach[key].add(successor)
            reach[key] |= reach[successor]
    return reach


def before(p: Plan, first: tuple[str, Action, str], second: tuple[str, Action, str]) -> bool:
    """Whether ``first`` must finish before ``second`` starts."""
    return key_of(p, *second) in reachability(p)[key_of(p, *first)]


def expanded_pairs(p: Plan) -> set[tuple[Triple, Triple]]:
    return {(triple(p, u), triple(p, v)) for u, v in p.expand_edges()}


def check_sound(p: Plan) -> None:
    """Structural invariants every plan has; the property test checks them on random plans too."""
    n = len(p.tasks)
    assert [t.key for t in p.tasks] == list(range(n))
    assert len(set(p.edges)) == len(p.edges), "duplicate edges"
    assert all(u < v for u, v in p.edges), "keys are not a topological order"
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter({k: () for k in range(n)})
    for u, v in p.edges:
        sorter.add(v, u)
    order = list(sorter.static_order())  # raises CycleError on a cycle
    counts = p.pending_counts()
    assert counts == [sum(1 for _, v in p.edges if v == k) for k in range(n)]
    successors = p.successors()
    for t in p.tasks:
        if t.is_join:
            fan_in, fan_out = counts[t.key], len(successors[t.key])
            assert fan_in * fan_out > fan_in + fan_out, f"a join that saves nothing: {fan_in} in, {fan_out} out"
            assert t.node_id is None
    for u, v in p.edges:
        assert not (p.tasks[u].is_join and p.tasks[v].is_join), "a join feeding a join"
        if p.tasks[v].is_join:
            assert p.tasks[v].stage >= p.tasks[u].stage
        else:
            assert p.tasks[v].stage > p.tasks[u].stage
    for u, v in p.expand_edges():
        assert p.tasks[v].stage > p.tasks[u].stage
    assert p.expanded_edge_count == len(p.expand_edges())
    assert p.real_task_count == sum(1 for t in p.tasks if not t.is_join)
    # critical path: longest chain of real tasks, computed independently over the topological order
    longest = dict.fromkeys(range(n), 0)
    predecessors = p.predecessors()
    for k in order:
        weight = 0 if p.tasks[k].is_join else 1
        longest[k] = weight + max((longest[q] for q in predecessors[k]), default=0)
    assert p.critical_path == max(longest.values(), default=0)
    assert p.stages == p.critical_path
    chain = p.critical_chain()
    assert len(chain) == p.critical_path
    reach = reachability(p)
    assert all(b in reach[a] for a, b in pairwise(chain))


# --- action order per operation (loom-reference.md §3.2 and the new operations) ---------------------------

ONE = catalog(svc("app"))


def chain_of(p: Plan, node_id: str = "n1") -> list[tuple[Action, str]]:
    """The node's tasks in key order (a topological order)."""
    return [(t.action, t.service) for t in p.tasks if t.node_id == node_id]


def test_create_runs_the_full_chain_in_order() -> None:
    p = create([node(1, "app")], ONE)
    check_sound(p)
    expected = [
        (Action.CREATE, ""),
        (Action.CONFIRM, ""),
        (Action.BOOTSTRAP, ""),
        (Action.INSTALL, "app"),
        (Action.CONFIGURE, "app"),
        (Action.INITIALIZE, "app"),
        (Action.START, "app"),
    ]
    assert chain_of(p) == expected
    for (a, s), (b, t) in pairwise(expected):
        assert before(p, ("n1", a, s), ("n1", b, t))
    assert p.stages == p.critical_path == 7


def test_create_shares_hardware_tasks_between_services() -> None:
    services = catalog(svc("a"), svc("b"))
    p = create([node(1, "a", "b")], services)
    check_sound(p)
    assert sum(1 for t in p.tasks if t.action is Action.CREATE) == 1
    assert before(p, ("n1", Action.BOOTSTRAP, ""), ("n1", Action.INSTALL, "a"))
    assert before(p, ("n1", Action.BOOTSTRAP, ""), ("n1", Action.INSTALL, "b"))


def test_create_schedules_only_actions_a_service_defines() -> None:
    services = catalog(svc("app", actions={"install", "start"}), svc("inert", actions=()))
    p = create([node(1, "app", "inert"), node(2, "inert")], services)
    check_sound(p)
    assert chain_of(p, "n1") == [
        (Action.CREATE, ""),
        (Action.CONFIRM, ""),
        (Action.BOOTSTRAP, ""),
        (Action.INSTALL, "app"),
        (Action.START, "app"),
    ]
    assert chain_of(p, "n2") == [(Action.CREATE, ""), (Action.CONFIRM, ""), (Action.BOOTSTRAP, "")]


def test_create_configures_only_once_every_node_has_addresses() -> None:
    # No stage barrier in our engine: a node's CONFIGURE (macros naming its peers) must still wait for
    # every CONFIRM, while INSTALL may start as soon as the node's own BOOTSTRAP is done.
    services = catalog(svc("app"))
    p = create([node(1, "app"), node(2, "app"), node(3, "app")], services)
    check_sound(p)
    for a in ("n1", "n2", "n3"):
        for b in ("n1", "n2", "n3"):
            assert before(p, (a, Action.CONFIRM, ""), (b, Action.CONFIGURE, "app"))
            if a != b:
                assert not before(p, (a, Action.CONFIRM, ""), (b, Action.INSTALL, "app"))


def test_delete_is_one_delete_per_node_and_nothing_else() -> None:
    nodes = [node(1, "app"), node(2)]
    p = plan(before=nodes, after=(), operation=Operation.DELETE, services={})
    check_sound(p)
    assert sorted(real_triples(p)) == [("n1", Action.DELETE, ""), ("n2", Action.DELETE, "")]
    assert p.edges == ()
    assert p.stages == 1


def test_configure_is_bootstrap_then_configure() -> None:
    p = in_place(Operation.CONFIGURE, [node(1, "app")], ONE)
    check_sound(p)
    assert chain_of(p) == [(Action.BOOTSTRAP, ""), (Action.CONFIGURE, "app")]


def test_configure_with_restart_is_bootstrap_stop_configure_start() -> None:
    p = in_place(Operation.CONFIGURE_WITH_RESTART, [node(1, "app")], ONE)
    check_sound(p)
    assert chain_of(p) == [
        (Action.BOOTSTRAP, ""),
        (Action.STOP, "app"),
        (Action.CONFIGURE, "app"),
        (Action.START, "app"),
    ]
    assert p.critical_path == 4


@pytest.mark.parametrize(
    ("operation", "chain"),
    [
        (Operation.START_SERVICES, [(Action.START, "app")]),
        (Operation.STOP_SERVICES, [(Action.STOP, "app")]),
        (Operation.RESTART_SERVICES, [(Action.STOP, "app"), (Action.START, "app")]),
    ],
)
def test_runtime_operations_touch_no_hardware(operation: Operation, chain: list[tuple[Action, str]]) -> None:
    p = in_place(operation, [node(1, "app")], ONE)
    check_sound(p)
    assert chain_of(p) == chain


def test_add_services_plans_only_the_added_services_on_changed_nodes() -> None:
    services = catalog(svc("old"), svc("new"))
    old = [node(1, "old"), node(2, "old")]
    new = [node(1, "old", "new"), node(2, "old")]
    p = plan(before=old, after=new, operation=Operation.ADD_SERVICES, services=services, scope=frozenset({"new"}))
    check_sound(p)
    assert chain_of(p, "n1") == [
        (Action.BOOTSTRAP, ""),
        (Action.INSTALL, "new"),
        (Action.CONFIGURE, "new"),
        (Action.INITIALIZE, "new"),
        (Action.START, "new"),
    ]
    assert chain_of(p, "n2") == []


def test_remove_services_is_stop_then_remove() -> None:
    services = catalog(svc("old"), svc("gone"))
    p = plan(
        before=[node(1, "old", "gone")], after=[node(1, "old")], operation=Operation.REMOVE_SERVICES, services=services
    )
    check_sound(p)
    assert chain_of(p) == [(Action.STOP, "gone"), (Action.REMOVE, "gone")]


def test_scale_out_creates_new_nodes_and_reconfigures_the_existing_ones() -> None:
    services = catalog(svc("app"))
    old = [node(1, "app")]
    new = [node(1, "app"), node(2, "app"), node(3, "app")]
    p = plan(before=old, after=new, operation=Operation.SCALE_OUT, services=services)
    check_sound(p)
    assert chain_of(p, "n1") == [(Action.CONFIGURE, "app")]
    assert [a for a, _ in chain_of(p, "n2")] == [
        Action.CREATE,
        Action.CONFIRM,
        Action.BOOTSTRAP,
        Action.INSTALL,
        Action.CONFIGURE,
        Action.INITIALIZE,
        Action.START,
    ]
    # the existing node learns the new peers once they have addresses, and before they start
    for new_node in ("n2", "n3"):
        assert before(p, (new_node, Action.CONFIRM, ""), ("n1", Action.CONFIGURE, "app"))
        assert before(p, ("n1", Action.CONFIGURE, "app"), (new_node, Action.INITIALIZE, "app"))
        assert not before(p, ("n1", Action.CONFIGURE, "app"), (new_node, Action.INSTALL, "app"))


def test_scale_in_stops_deletes_then_reconfigures_the_rest() -> None:
    services = catalog(svc("app"), svc("web", runtime_requires={"app"}))
    old = [node(1, "app", "web"), node(2, "app", "web"), node(3, "app")]
    new = [node(1, "app", "web")]
    p = plan(before=old, after=new, operation=Operation.SCALE_IN, services=services)
    check_sound(p)
    assert sorted(real_triples(p)) == sorted(
        [
            ("n1", Action.CONFIGURE, "app"),
            ("n1", Action.CONFIGURE, "web"),
            ("n2", Action.STOP, "app"),
            ("n2", Action.STOP, "web"),
            ("n2", Action.DELETE, ""),
            ("n3", Action.STOP, "app"),
            ("n3", Action.DELETE, ""),
        ]
    )
    assert before(p, ("n2", Action.STOP, "web"), ("n2", Action.STOP, "app"))
    assert before(p, ("n2", Action.STOP, "web"), ("n3", Action.STOP, "app"))
    assert before(p, ("n2", Action.STOP, "app"), ("n2", Action.DELETE, ""))
    for leaving in ("n2", "n3"):
        for service in ("app", "web"):
            assert before(p, (leaving, Action.DELETE, ""), ("n1", Action.CONFIGURE, service))


def test_scaling_without_a_node_change_plans_nothing() -> None:
    nodes = [node(1, "app")]
    for operation in (Operation.SCALE_OUT, Operation.SCALE_IN):
        p = plan(before=nodes, after=nodes, operation=operation, services=ONE)
        assert p.tasks == () and p.stages == 0 and p.critical_path == 0


# --- service dependency rules (loom-reference.md §5.3, §5.4) ----------------------------------------------


def test_install_requires_orders_installs_on_the_same_node() -> None:
    services = catalog(svc("base"), svc("app", install_requires={"base"}))
    p = create([node(1, "base", "app"), node(2, "base", "app")], services)
    check_sound(p)
    assert before(p, ("n1", Action.INSTALL, "base"), ("n1", Action.INSTALL, "app"))
    # node-local: a slow VM's base install does not hold up another node's installs
    assert not before(p, ("n2", Action.INSTALL, "base"), ("n1", Action.INSTALL, "app"))


def test_install_dependency_on_another_node_waits_for_every_node_hosting_it() -> None:
    services = catalog(svc("repo"), svc("app", install_requires={"repo"}))
    p = create([node(1, "repo"), node(2, "repo"), node(3, "app")], services)
    check_sound(p)
    assert before(p, ("n1", Action.INSTALL, "repo"), ("n3", Action.INSTALL, "app"))
    assert before(p, ("n2", Action.INSTALL, "repo"), ("n3", Action.INSTALL, "app"))


def test_install_waits_for_what_a_dependency_elsewhere_needs_on_this_node() -> None:
    # app → lib → base; n1 hosts app and base but not lib. lib's installs (on n2) only wait for base on
    # n2, so app on n1 must wait for base on n1 itself, not just for lib everywhere.
    services = catalog(svc("base"), svc("lib", install_requires={"base"}), svc("app", install_requires={"lib"}))
    p = create([node(1, "app", "base"), node(2, "lib", "base")], services)
    check_sound(p)
    assert before(p, ("n2", Action.INSTALL, "lib"), ("n1", Action.INSTALL, "app"))
    assert before(p, ("n1", Action.INSTALL, "base"), ("n1", Action.INSTALL, "app"))


def test_install_waits_for_every_node_of_a_dependency_a_closer_one_does_not_cover() -> None:
    # app → lib → base; lib's node also hosts base, but base has a node (n3) lib does not cover
    services = catalog(svc("base"), svc("lib", install_requires={"base"}), svc("app", install_requires={"lib"}))
    p = create([node(1, "app"), node(2, "lib", "base"), node(3, "base")], services)
    check_sound(p)
    assert before(p, ("n3", Action.INSTALL, "base"), ("n1", Action.INSTALL, "app"))


def test_install_uses_orders_like_requires_when_present() -> None:
    services = catalog(svc("krb"), svc("app", install_uses={"krb"}))
    p = create([node(1, "krb", "app")], services)
    assert before(p, ("n1", Action.INSTALL, "krb"), ("n1", Action.INSTALL, "app"))


def test_install_dependency_already_installed_is_walked_through() -> None:
    # add services: "lib" is already on n1 (no task); "app" still waits for what "lib" depends on that is new
    services = catalog(svc("base"), svc("lib", install_requires={"base"}), svc("app", install_requires={"lib"}))
    p = plan(
        before=[node(1, "lib")],
        after=[node(1, "lib", "base", "app")],
        operation=Operation.ADD_SERVICES,
        services=services,
    )
    check_sound(p)
    assert before(p, ("n1", Action.INSTALL, "base"), ("n1", Action.INSTALL, "app"))


def test_runtime_requires_start_waits_for_every_node_hosting_the_dependency() -> None:
    services = catalog(svc("db"), svc("web", runtime_requires={"db"}))
    p = create([node(1, "db"), node(2, "db"), node(3, "web"), node(4, "web")], services)
    check_sound(p)
    for db in ("n1", "n2"):
        for web in ("n3", "n4"):
            assert before(p, (db, Action.START, "db"), (web, Action.START, "web"))
            assert before(p, (db, Action.START, "db"), (web, Action.INITIALIZE, "web"))
            # initialize waits for the dependency's START, not just its INITIALIZE
            assert not before(p, (web, Action.INITIALIZE, "web"), (db, Action.START, "db"))


def test_runtime_uses_orders_when_present() -> None:
    services = catalog(svc("cache"), svc("web", runtime_uses={"cache"}))
    p = create([node(1, "cache"), node(2, "web")], services)
    assert before(p, ("n1", Action.START, "cache"), ("n2", Action.START, "web"))


def test_uses_of_an_absent_service_is_ignored() -> None:
    services = catalog(
        svc("cache"), svc("web", runtime_uses={"cache", "ghost"}, install_uses={"cache", "nowhere"}, provides={"www"})
    )
    p = create([node(1, "web")], services)
    check_sound(p)
    assert [s for _, s in chain_of(p) if s] == ["web"] * 4


def test_requires_of_an_absent_service_is_an_error_naming_it() -> None:
    services = catalog(svc("db"), svc("web", runtime_requires={"db"}))
    with pytest.raises(PlanError, match=r"'web' requires 'db' \(runtime\)"):
        create([node(1, "web")], services)


def test_provides_alias_resolves_to_every_provider() -> None:
    services = catalog(
        svc("mysql", provides={"sql"}), svc("pg", provides={"sql"}), svc("app", runtime_requires={"sql"})
    )
    p = create([node(1, "mysql"), node(2, "pg"), node(3, "app")], services)
    check_sound(p)
    assert before(p, ("n1", Action.START, "mysql"), ("n3", Action.START, "app"))
    assert before(p, ("n2", Action.START, "pg"), ("n3", Action.START, "app"))


def test_provides_alias_satisfies_requires() -> None:
    services = catalog(svc("mysql", provides={"sql"}), svc("app", runtime_requires={"sql"}, install_requires={"sql"}))
    p = create([node(1, "mysql", "app")], services)
    assert before(p, ("n1", Action.INSTALL, "mysql"), ("n1", Action.INSTALL, "app"))


def test_transitive_reduction_keeps_only_direct_dependencies() -> None:
    services = catalog(
        svc("base"),
        svc("s1", runtime_requires={"base"}),
        svc("s2", runtime_requires={"s1", "base"}),
        svc("s3", runtime_requires={"base", "s1", "s2"}),
    )
    graph = dependency_graph(services, frozenset(services), "runtime")
    assert graph.direct["s3"] == {"s2"}
    assert graph.closure["s3"] == {"s2", "s1", "base"}
    assert graph.direct_dependents["base"] == {"s1"}
    p = create([node(1, *services)], services)
    check_sound(p)
    pairs = expanded_pairs(p)
    # s3 initializes (then starts) after s2 starts; s1 and base follow by transitivity, without edges
    assert (("n1", Action.START, "s2"), ("n1", Action.INITIALIZE, "s3")) in pairs
    assert (("n1", Action.START, "s1"), ("n1", Action.INITIALIZE, "s3")) not in pairs
    assert (("n1", Action.START, "base"), ("n1", Action.INITIALIZE, "s3")) not in pairs
    assert before(p, ("n1", Action.START, "base"), ("n1", Action.INITIALIZE, "s3"))


def test_dependency_without_the_action_is_walked_through() -> None:
    # "mid" defines no start: "top" initializes (then starts) directly after "bottom" starts
    services = catalog(
        svc("bottom"),
        svc("mid", actions={"install"}, runtime_requires={"bottom"}),
        svc("top", runtime_requires={"mid"}),
    )
    p = create([node(1, "bottom"), node(2, "mid"), node(3, "top")], services)
    check_sound(p)
    assert (("n1", Action.START, "bottom"), ("n3", Action.INITIALIZE, "top")) in expanded_pairs(p)


def test_stop_runs_in_reverse_dependency_order() -> None:
    services = catalog(svc("db"), svc("web", runtime_requires={"db"}))
    nodes = [node(1, "db"), node(2, "web"), node(3, "web")]
    p = in_place(Operation.STOP_SERVICES, nodes, services)
    check_sound(p)
    assert before(p, ("n2", Action.STOP, "web"), ("n1", Action.STOP, "db"))
    assert before(p, ("n3", Action.STOP, "web"), ("n1", Action.STOP, "db"))


def test_remove_runs_in_reverse_install_order_on_the_node() -> None:
    services = catalog(svc("base"), svc("lib", install_requires={"base"}), svc("app", install_requires={"lib"}))
    p = plan(
        before=[node(1, "base", "lib", "app")],
        after=[node(1, "base")],
        operation=Operation.REMOVE_SERVICES,
        services=services,
        scope=frozenset({"lib", "app"}),
    )
    check_sound(p)
    assert before(p, ("n1", Action.REMOVE, "app"), ("n1", Action.REMOVE, "lib"))
    assert not before(p, ("n1", Action.STOP, "app"), ("n1", Action.STOP, "lib"))  # no runtime dependency


def test_restart_with_configuration_orders_stops_down_and_starts_up() -> None:
    services = catalog(svc("db"), svc("web", runtime_requires={"db"}))
    p = in_place(Operation.CONFIGURE_WITH_RESTART, [node(1, "db"), node(2, "web")], services)
    check_sound(p)
    assert before(p, ("n2", Action.STOP, "web"), ("n1", Action.STOP, "db"))
    assert before(p, ("n1", Action.START, "db"), ("n2", Action.START, "web"))
    assert not before(p, ("n1", Action.CONFIGURE, "db"), ("n2", Action.CONFIGURE, "web"))


def test_configure_is_unordered_across_services() -> None:
    services = catalog(
        svc("db"), svc("web", runtime_requires={"db"}, install_requires={"db"}), svc("lb", runtime_uses={"web"})
    )
    nodes = [node(1, "db", "web", "lb"), node(2, "web")]
    p = in_place(Operation.CONFIGURE, nodes, services)
    check_sound(p)
    configures = [t.key for t in p.tasks if t.action is Action.CONFIGURE]
    reach = reachability(p)
    assert len(configures) == 4
    assert all(b not in reach[a] for a in configures for b in configures)
    assert p.critical_path == 2


STACK = catalog(
    svc("zk"),
    svc("db", runtime_requires={"zk"}),
    svc("web", runtime_requires={"db"}),
    svc("lb", runtime_uses={"web"}),
    svc("other"),
)
STACK_NODES = [node(1, "zk", "db"), node(2, "web", "lb", "other"), node(3, "web")]


def planned(p: Plan, action: Action) -> set[str]:
    return {t.service for t in p.tasks if t.action is action}


def test_partial_start_pulls_in_dependencies_not_dependents() -> None:
    p = in_place(Operation.START_SERVICES, STACK_NODES, STACK, scope={"web"})
    check_sound(p)
    assert planned(p, Action.START) == {"web", "db", "zk"}
    assert planned(p, Action.STOP) == set()
    assert before(p, ("n1", Action.START, "zk"), ("n1", Action.START, "db"))
    assert before(p, ("n1", Action.START, "db"), ("n3", Action.START, "web"))


def test_partial_stop_pulls_in_dependents_not_dependencies() -> None:
    p = in_place(Operation.STOP_SERVICES, STACK_NODES, STACK, scope={"db"})
    check_sound(p)
    assert planned(p, Action.STOP) == {"db", "web", "lb"}
    assert before(p, ("n2", Action.STOP, "lb"), ("n2", Action.STOP, "web"))
    assert before(p, ("n3", Action.STOP, "web"), ("n1", Action.STOP, "db"))


def test_partial_restart_stops_dependents_and_starts_them_with_their_dependencies() -> None:
    p = in_place(Operation.RESTART_SERVICES, STACK_NODES, STACK, scope={"db"})
    check_sound(p)
    assert planned(p, Action.STOP) == {"db", "web", "lb"}
    assert planned(p, Action.START) == {"zk", "db", "web", "lb"}
    assert before(p, ("n1", Action.STOP, "db"), ("n1", Action.START, "db"))
    assert before(p, ("n1", Action.START, "db"), ("n2", Action.START, "web"))
    assert before(p, ("n1", Action.START, "zk"), ("n1", Action.START, "db"))
    assert not before(p, ("n1", Action.STOP, "db"), ("n1", Action.START, "zk"))


def test_scope_naming_a_service_not_on_the_cluster_is_an_error() -> None:
    with pytest.raises(PlanError, match="not on the cluster: \\['nope'\\]"):
        in_place(Operation.START_SERVICES, STACK_NODES, STACK, scope={"nope"})


# --- cycles ------------------------------------------------------------------------------------------------


def test_runtime_cycle_is_an_error_naming_the_cycle() -> None:
    services = catalog(svc("a", runtime_requires={"b"}), svc("b", runtime_uses={"a"}))
    with pytest.raises(PlanError, match=r"cycle in the runtime dependencies.*: a → b → a$"):
        create([node(1, "a", "b")], services)


def test_install_cycle_through_three_services_and_an_alias() -> None:
    services = catalog(
        svc("a", install_requires={"b"}),
        svc("b", install_requires={"store"}),
        svc("c", install_uses={"a"}, provides={"store"}),
    )
    with pytest.raises(PlanError, match=r"cycle in the install dependencies.*: a → b → c → a$"):
        create([node(1, "a", "b", "c")], services)


def test_cycle_among_absent_services_does_not_matter() -> None:
    services = catalog(svc("a", runtime_uses={"b"}), svc("b", runtime_uses={"a"}), svc("c"))
    check_sound(create([node(1, "c")], services))


def test_a_service_depending_on_itself_is_not_a_cycle() -> None:
    services = catalog(svc("a", runtime_requires={"a"}, provides={"x"}, install_uses={"x"}))
    check_sound(create([node(1, "a")], services))


# --- join points --------------------------------------------------------------------------------------------


def test_all_to_all_dependency_is_one_join_with_n_plus_m_edges() -> None:
    services = catalog(
        svc("datanode", actions={"start"}), svc("regionserver", actions={"start"}, runtime_requires={"datanode"})
    )
    n, m = 40, 30
    nodes = [node(i, "datanode") for i in range(n)] + [node(n + i, "regionserver") for i in range(m)]
    p = in_place(Operation.START_SERVICES, nodes, services)
    check_sound(p)
    joins = [t for t in p.tasks if t.is_join]
    assert len(joins) == 1
    (join,) = joins
    assert join.service == "datanode" and "start datanode" in join.label
    assert p.pending_counts()[join.key] == n
    assert len(p.successors()[join.key]) == m
    assert len(p.edges) == n + m
    assert p.expanded_edge_count == n * m
    assert p.real_task_count == n + m
    assert p.stages == 2
    assert [p.tasks[k].action for k in p.critical_chain()] == [Action.START, Action.START]


def test_join_is_shared_by_every_task_waiting_for_the_same_service_and_action() -> None:
    services = catalog(
        svc("dn", actions={"start"}),
        svc("nm", actions={"initialize", "start"}, runtime_requires={"dn"}),
        svc("rs", actions={"start"}, runtime_requires={"dn"}),
    )
    nodes = [node(i, "dn", "nm", "rs") for i in range(10)]
    p = in_place(Operation.START_SERVICES, nodes, services)
    check_sound(p)
    joins = [t for t in p.tasks if t.is_join]
    assert len(joins) == 1
    # nm initialize ×10 and rs start ×10; nm start follows nm initialize, so it needs no edge of its own
    assert len(p.successors()[joins[0].key]) == 20
    assert p.pending_counts()[joins[0].key] == 10


def test_join_with_a_single_predecessor_is_written_as_direct_edges() -> None:
    services = catalog(svc("master", actions={"start"}), svc("worker", actions={"start"}, runtime_requires={"master"}))
    nodes = [node(0, "master")] + [node(i, "worker") for i in range(1, 20)]
    p = in_place(Operation.START_SERVICES, nodes, services)
    check_sound(p)
    assert p.join_count == 0
    assert len(p.edges) == 19
    assert all(triple(p, u) == ("n0", Action.START, "master") for u, _ in p.edges)


def test_create_of_a_large_cluster_stays_linear_in_edges() -> None:
    base = svc("base", actions={"install"})
    services = catalog(
        base,
        svc("nn", install_requires={"base"}),
        svc("dn", install_requires={"base"}, runtime_requires={"nn"}),
        svc("rs", install_requires={"base"}, runtime_requires={"dn"}),
    )
    nodes = [node(0, "base", "nn")] + [node(i, "base", "dn", "rs") for i in range(1, 300)]
    p = create(nodes, services)
    assert len(p.edges) < 20 * len(nodes)
    assert p.expanded_edge_count > 300 * 299  # what writing the dependencies out pair by pair would cost
    assert all(u < v for u, v in p.edges)


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"before": [node(1, "app"), node(1)], "after": (), "operation": Operation.DELETE}, "appears twice"),
        (
            {"before": (), "after": [node(1, "mystery")], "operation": Operation.CREATE},
            "no definition: \\['mystery'\\]",
        ),
        ({"before": [node(1)], "after": [node(1)], "operation": Operation.CREATE}, "create starts from no nodes"),
        ({"before": [node(1)], "after": [node(1)], "operation": Operation.DELETE}, "delete ends with no nodes"),
        ({"before": [node(1)], "after": [node(2)], "operation": Operation.CONFIGURE}, "keeps the nodes"),
        ({"before": [node(1)], "after": [node(1, "app")], "operation": Operation.RESTART_SERVICES}, "does not change"),
        ({"before": [node(1, "app")], "after": [node(1)], "operation": Operation.ADD_SERVICES}, "removes"),
        ({"before": [node(1)], "after": [node(1, "app")], "operation": Operation.REMOVE_SERVICES}, "adds"),
        ({"before": [node(1), node(2)], "after": [node(1)], "operation": Operation.SCALE_OUT}, "gone after"),
        ({"before": [node(1)], "after": [node(1), node(2)], "operation": Operation.SCALE_IN}, "new after"),
        (
            {"before": (), "after": [node(1, "app")], "operation": Operation.CREATE, "scope": frozenset({"app"})},
            "takes no service scope",
        ),
        (
            {
                "before": [node(1)],
                "after": [node(1, "app")],
                "operation": Operation.ADD_SERVICES,
                "scope": frozenset({"app", "db"}),
            },
            "adds them to no node for: \\['db'\\]",
        ),
    ],
)
def test_bad_input_is_a_plan_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan(services=ONE, **kwargs)


# --- properties against a slow reference ---------------------------------------------------------------------

HEAD_CREATE = (Action.CREATE, Action.CONFIRM, Action.BOOTSTRAP)
CREATE_SERVICE = (Action.INSTALL, Action.CONFIGURE, Action.INITIALIZE, Action.START)
# (waiting, awaited, kind, reversed, node-local), as the planner documents them
RULES = (
    (Action.INSTALL, Action.INSTALL, "install", False, True),
    (Action.REMOVE, Action.REMOVE, "install", True, True),
    (Action.INITIALIZE, Action.START, "runtime", False, False),
    (Action.START, Action.START, "runtime", False, False),
    (Action.STOP, Action.STOP, "runtime", True, False),
)


def reference_direct(services: Mapping[str, ServiceSpec], present: set[str], kind: str) -> dict[str, set[str]]:
    """Each present service's present dependencies, by name or through an alias they provide."""
    direct: dict[str, set[str]] = {}
    for name in present:
        spec = services[name]
        names = (
            spec.install_requires | spec.install_uses
            if kind == "install"
            else spec.runtime_requires | spec.runtime_uses
        )
        direct[name] = {
            other
            for other in present
            if other != name and (other in names or any(alias in names for alias in services[other].provides))
        }
    return direct


def reference_reach(services: Mapping[str, ServiceSpec], present: set[str], kind: str) -> dict[str, set[str]]:
    """Every present service each present service depends on, directly or not, by a plain fixpoint."""
    reach = {name: set(deps) for name, deps in reference_direct(services, present, kind).items()}
    changed = True
    while changed:
        changed = False
        for name in reach:
            extra = set().union(*(reach[d] for d in reach[name])) - reach[name]
            if extra:
                reach[name] |= extra
                changed = True
    return reach


def reference(
    before_nodes: Sequence[NodeSpec],
    after_nodes: Sequence[NodeSpec],
    operation: Operation,
    services: Mapping[str, ServiceSpec],
    scope: frozenset[str] | None,
    restarts: Mapping[str, frozenset[str]] | None = None,
) -> tuple[set[Triple], set[tuple[Triple, Triple]]]:
    """The tasks an operation must run and every ordered pair the rules demand, written out naively."""
    old = {n.node_id: n.services for n in before_nodes}
    new = {n.node_id: n.services for n in after_nodes}
    hosted = {k: old.get(k, frozenset()) | new.get(k, frozenset()) for k in old.keys() | new.keys()}
    present = set().union(*hosted.values())
    reach = {kind: reference_reach(services, present, kind) for kind in ("install", "runtime")}
    dependencies = reach["runtime"]
    dependents = {s: {d for d in present if s in dependencies[d]} for s in present}
    # (node, hardware before, [(service, actions)], hardware after) per node with work
    work: list[tuple[str, tuple[Action, ...], list[tuple[str, tuple[Action, ...]]], tuple[Action, ...]]] = []

    def each(
        nodes: Mapping[str, frozenset[str]],
        actions: tuple[Action, ...] | Callable[[str], tuple[Action, ...]],
        head: tuple[Action, ...] = (),
    ) -> None:
        for node_id, names in nodes.items():
            chains = [(s, actions(s) if callable(actions) else actions) for s in names]
            chains = [(s, a) for s, a in chains if a]
            if chains or head:
                work.append((node_id, head, chains, ()))

    wanted = scope if scope is not None else present
    if operation is Operation.CREATE:
        each(new, CREATE_SERVICE, HEAD_CREATE)
    elif operation is Operation.DELETE:
        work.extend((node_id, (), [], (Action.DELETE,)) for node_id in old)
    elif operation is Operation.CONFIGURE:
        each(new, (Action.CONFIGURE,), (Action.BOOTSTRAP,))
    elif operation is Operation.CONFIGURE_WITH_RESTART:
        each(new, (Action.STOP, Action.CONFIGURE, Action.START), (Action.BOOTSTRAP,))
    elif operation is Operation.START_SERVICES:
        started = set(wanted).union(*(dependencies[s] for s in wanted))
        each(new, lambda s: (Action.START,) if s in started else ())
    elif operation is Operation.STOP_SERVICES:
        stopped = set(wanted).union(*(dependents[s] for s in wanted))
        each(new, lambda s: (Action.STOP,) if s in stopped else ())
    elif operation is Operation.RESTART_SERVICES:
        stopped = set(wanted).union(*(dependents[s] for s in wanted))
        started = stopped.union(*(dependencies[s] for s in stopped))
        each(new, lambda s: (Action.STOP, Action.START) if s in stopped else (Action.START,) if s in started else ())
    elif operation is Operation.ADD_SERVICES:
        each({k: new[k] - old[k] for k in new if new[k] - old[k]}, CREATE_SERVICE, (Action.BOOTSTRAP,))
    elif operation is Operation.REMOVE_SERVICES:
        each({k: old[k] - new[k] for k in old}, (Action.STOP, Action.REMOVE))
    elif operation is Operation.SCALE_OUT and new.keys() - old.keys():
        each({k: new[k] for k in new if k not in old}, CREATE_SERVICE, HEAD_CREATE)
        each(old, (Action.CONFIGURE,))
    elif operation is Operation.SCALE_IN and old.keys() - new.keys():
        for node_id in old.keys() - new.keys():
            work.append((node_id, (), [(s, (Action.STOP,)) for s in old[node_id]], (Action.DELETE,)))
        each(new, (Action.CONFIGURE,))
    elif operation is Operation.REPAIR:
        restarted = restarts or {}
        fresh_nodes = {k: new[k] for k in new if k not in old}
        work.extend((node_id, (), [], (Action.DELETE,)) for node_id in old.keys() - new.keys())
        each(fresh_nodes, CREATE_SERVICE, HEAD_CREATE)
        for node_id in new.keys() & old.keys():
            each({node_id: new[node_id]}, lambda s, node_id=node_id: (
                ((Action.STOP, Action.CONFIGURE, Action.START) if fresh_nodes else (Action.STOP, Action.START))
                if s in restarted.get(node_id, ()) else (Action.CONFIGURE,) if fresh_nodes else ()))  # fmt: skip

    tasks: set[Triple] = set()
    required: set[tuple[Triple, Triple]] = set()
    for node_id, head, chains, tail in work:
        sequences = [[(node_id, a, s) for a in actions if a in services[s].actions] for s, actions in chains] or [[]]
        for sequence in sequences:
            whole = [(node_id, a, "") for a in head] + sequence + [(node_id, a, "") for a in tail]
            tasks.update(whole)
            required.update((whole[i], whole[j]) for i in range(len(whole)) for j in range(i + 1, len(whole)))
    for waiting, awaited, kind, reverse, local in RULES:
        for v in tasks:
            if v[1] is not waiting:
                continue
            for u in tasks:
                if u[1] is not awaited or u[2] == v[2]:
                    continue
                related = u[2] in reach[kind][v[2]] if not reverse else v[2] in reach[kind][u[2]]
                assert v[0] is not None
                if related and (not local or u[0] == v[0] or u[2] not in hosted[v[0]]):
                    required.add((u, v))
    # Barriers: configure after every new node has addresses; scale out and in reconfigure the rest.
    if operation in (Operation.CREATE, Operation.SCALE_OUT, Operation.REPAIR):
        confirms = [t for t in tasks if t[1] is Action.CONFIRM]
        fresh = {t[0] for t in confirms}
        later = [t for t in tasks if t[1] in (Action.CONFIGURE, Action.INITIALIZE, Action.START)]
        required.update((c, t) for c in confirms for t in later)
        existing = [t for t in later if t[0] not in fresh and t[1] is Action.CONFIGURE]  # the existing nodes'

        runtime = [t for t in later if t[0] in fresh and t[1] in (Action.INITIALIZE, Action.START)]
        required.update((c, t) for c in existing for t in runtime)
    if operation in (Operation.SCALE_IN, Operation.REPAIR):
        deletes = [t for t in tasks if t[1] is Action.DELETE]
        staying = old.keys() & new.keys()
        required.update((d, t) for d in deletes for t in tasks if t[1] is Action.CONFIGURE and t[0] in staying)
    return tasks, required


def closure(pairs: Iterable[tuple[Triple, Triple]]) -> dict[Triple, set[Triple]]:
    successors: dict[Triple, set[Triple]] = {}
    for u, v in pairs:
        successors.setdefault(u, set()).add(v)
    result: dict[Triple, set[Triple]] = {}
    for start in successors:
        seen: set[Triple] = set()
        stack = list(successors[start])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(successors.get(current, ()))
        result[start] = seen
    return result


ALIASES = ("db", "fs")


@st.composite
def catalogs(draw: st.DrawFn, dense: bool = False) -> dict[str, ServiceSpec]:
    """Acyclic by construction: s_j only depends on lower-numbered services, or on aliases all of whose
    providers are lower-numbered; "ghost" (never on any node) may only be *used*. ``dense``: every service
    defines every action and has at least one install and one runtime requirement (long chains)."""
    count = draw(st.integers(1, 6))
    names = [f"s{i}" for i in range(count)]
    providers = {alias: draw(st.sets(st.integers(0, count - 1), max_size=2)) for alias in ALIASES}
    specs = []
    for j, name in enumerate(names):
        can_require = names[:j] + [a for a, ps in providers.items() if ps and max(ps) < j]
        can_use = [*can_require, "ghost"]

        def pick(choices: list[str], at_least: int = 0) -> frozenset[str]:
            if not choices:
                return frozenset()
            return frozenset(draw(st.sets(st.sampled_from(choices), min_size=at_least, max_size=3)))

        specs.append(
            ServiceSpec(
                name=name,
                provides=frozenset(a for a, ps in providers.items() if j in ps),
                install_requires=pick(can_require, int(dense)),
                install_uses=pick(can_use),
                runtime_requires=pick(can_require, int(dense)),
                runtime_uses=pick(can_use),
                actions=ALL if dense else frozenset(draw(st.sets(st.sampled_from(SERVICE_ACTIONS)))),
            )
        )
    return catalog(*specs)


def satisfy_requires(services: Mapping[str, ServiceSpec], layout: list[set[str]]) -> None:
    """Put every missing required service (or an alias' first provider) on the first node."""
    changed = True
    while changed:
        changed = False
        present = set().union(*layout)
        for name in sorted(present):
            for dep in sorted(services[name].install_requires | services[name].runtime_requires):
                providers = sorted(s for s in services if dep in services[s].provides and s != name)
                if dep not in present and not any(p in present for p in providers):
                    layout[0].add(dep if dep in services else providers[0])
                    changed = True


def subsets(names: Iterable[str]) -> st.SearchStrategy[set[str]]:
    ordered = sorted(names)
    return st.sets(st.sampled_from(ordered)) if ordered else st.just(set())


@st.composite
def scenarios(draw: st.DrawFn, operations: Sequence[Operation] = tuple(Operation), dense: bool = False) -> Scenario:
    services = draw(catalogs(dense))
    names = sorted(services)
    some = st.sets(st.sampled_from(names))
    size = draw(st.integers(1, 5 if dense else 4))
    layout = [set(draw(some)) for _ in range(size)]
    satisfy_requires(services, layout)
    numbers = draw(st.permutations(range(size + 2)))

    def make(i: int, names_on: Iterable[str]) -> NodeSpec:
        return NodeSpec(f"n{i}", numbers[i], "small", "linux", frozenset(names_on))

    full = [make(i, s) for i, s in enumerate(layout)]
    operation = draw(st.sampled_from(operations))
    before_nodes, after_nodes, scope = full, full, None
    if operation is Operation.CREATE:
        before_nodes = []
    elif operation is Operation.DELETE:
        after_nodes = []
    elif operation in (Operation.START_SERVICES, Operation.STOP_SERVICES, Operation.RESTART_SERVICES):
        present = sorted(set().union(*layout))
        narrowed = draw(st.booleans())
        if present and narrowed:
            scope = frozenset(draw(st.sets(st.sampled_from(present), min_size=1)))
    elif operation is Operation.SCALE_OUT:
        kept = draw(st.sets(st.sampled_from(range(size))))
        before_nodes = [n for i, n in enumerate(full) if i in kept]
    elif operation is Operation.SCALE_IN:
        extra = draw(st.lists(some, max_size=2))
        before_nodes = full + [make(size + i, s) for i, s in enumerate(extra)]
    elif operation is Operation.ADD_SERVICES:
        before_nodes = [make(i, draw(subsets(n.services))) for i, n in enumerate(full)]
    elif operation is Operation.REMOVE_SERVICES:
        before_nodes = [make(i, n.services | draw(some)) for i, n in enumerate(full)]
    elif operation is Operation.REPAIR:
        replaced = draw(st.sets(st.sampled_from(range(size)), max_size=2))  # two fresh numbers are left
        after_nodes = [n for i, n in enumerate(full) if i not in replaced]
        after_nodes += [make(size + j, full[i].services) for j, i in enumerate(sorted(replaced))]
        restarts = {n.node_id: frozenset(draw(subsets(n.services))) for n in full if n.node_id not in
                    {f"n{i}" for i in replaced} and draw(st.booleans())}  # fmt: skip
        restarts = {k: v for k, v in restarts.items() if v}
        if not replaced and not restarts:
            after_nodes = [*full[1:], make(size, full[0].services)]
        return before_nodes, after_nodes, operation, services, None, restarts
    if operation in (Operation.ADD_SERVICES, Operation.REMOVE_SERVICES):
        changed = sorted(set().union(*(a.services ^ b.services for a, b in zip(before_nodes, full, strict=True))))
        narrowed = draw(st.booleans())
        if changed and narrowed:
            scope = frozenset(draw(st.sets(st.sampled_from(changed), min_size=1)))
    return before_nodes, after_nodes, operation, services, scope, {}


Scenario = tuple[
    list[NodeSpec], list[NodeSpec], Operation, dict[str, ServiceSpec], frozenset[str] | None,
    dict[str, frozenset[str]],
]  # fmt: skip


@settings(max_examples=250, deadline=None)
@given(scenarios())
def test_every_plan_is_sound_complete_and_no_stricter_than_the_rules(scenario: Scenario) -> None:
    check_against_reference(scenario)


@settings(max_examples=250, deadline=None)
@given(
    scenarios(
        operations=(
            Operation.CREATE,
            Operation.SCALE_OUT,
            Operation.ADD_SERVICES,
            Operation.REMOVE_SERVICES,
            Operation.RESTART_SERVICES,
            Operation.REPAIR,
        ),
        dense=True,
    )
)
def test_long_dependency_chains_across_partly_shared_nodes(scenario: Scenario) -> None:
    """Dense catalogs on up to 5 nodes: where the node-local install/remove rule and the pulled-in
    services of a partial restart have the most room to go wrong."""
    check_against_reference(scenario)


def check_against_reference(scenario: Scenario) -> None:
    before_nodes, after_nodes, operation, services, scope, restarts = scenario
    p = plan(before=before_nodes, after=after_nodes, operation=operation, services=services, scope=scope,
             restarts=restarts)  # fmt: skip
    check_sound(p)
    tasks, required = reference(before_nodes, after_nodes, operation, services, scope, restarts)
    got = real_triples(p)
    assert len(got) == len(set(got)), "a task is duplicated"
    assert set(got) == tasks
    reach = reachability(p)
    keys = {triple(p, t.key): t.key for t in p.tasks if not t.is_join}
    missing = [(u, v) for u, v in required if keys[v] not in reach[keys[u]]]
    assert not missing, f"orderings the rules demand but the plan lacks: {missing[:5]}"
    allowed = closure(required)
    extra = [(u, v) for u, v in expanded_pairs(p) if v not in allowed.get(u, ())]
    assert not extra, f"orderings no rule demands: {extra[:5]}"


@settings(max_examples=80, deadline=None)
@given(catalogs(), st.sampled_from(["install", "runtime"]))
def test_a_dependency_loop_is_reported_with_a_real_cycle(services: dict[str, ServiceSpec], kind: str) -> None:
    """Add "lowest uses highest" to an acyclic catalog: a cycle exists exactly when the highest already
    depends on the lowest, and then the error names a cycle made of real direct dependencies."""
    names = sorted(services, key=lambda s: int(s[1:]))
    low, high = names[0], names[-1]
    field_name = f"{kind}_uses"
    looped = {**services, low: replace(services[low], **{field_name: getattr(services[low], field_name) | {high}})}
    layout = [set(names)]
    satisfy_requires(looped, layout)
    nodes = [node(1, *layout[0])]
    if low not in reference_reach(looped, set(names), kind)[low]:
        check_sound(plan(before=(), after=nodes, operation=Operation.CREATE, services=looped))
        return
    with pytest.raises(PlanError) as info:
        plan(before=(), after=nodes, operation=Operation.CREATE, services=looped)
    message = str(info.value)
    assert f"cycle in the {kind} dependencies" in message
    cycle = message.rsplit(": ", 1)[1].split(" → ")
    direct = reference_direct(looped, set(names), kind)
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    assert all(b in direct[a] for a, b in pairwise(cycle))
