"""The import rules of the house, read from the source: no circles, and every import points down.

Imports are read with ``ast`` from every module of the project's packages, those inside functions too: a
function-level import is how a circle usually hides, and it still breaks the layering it crosses.

Apps, bottom to top: ``tenants`` < ``templates_app`` < ``providers`` < ``clusters`` < ``frontend`` and
``loom_site``; ``loom_cli`` is an HTTP client and imports none of them. Management commands are faces of
their app and may reach any app below the site. Inside ``clusters`` (see its ``__init__``): ``planning`` <
``models`` < ``engine`` < ``features`` < ``services`` and ``selectors`` < the faces; ``planning`` imports no
Django at all.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tenants", "templates_app", "providers", "clusters", "frontend", "loom_site", "loom_cli")
APP_RANK = {"tenants": 0, "templates_app": 1, "providers": 2, "clusters": 3, "frontend": 4, "loom_site": 4}
SITE_UTILITIES = {"loom_site.input_guards", "loom_site.abuse"}  # small helpers every app may use
CLUSTERS_RANK = {"planning": 0, "models": 1, "engine": 2, "features": 3, "services": 4, "selectors": 4}
FACE_RANK = 5
PURE_ALLOWED = {"templates_app.macro_syntax"}
FRAMEWORKS = ("django", "rest_framework", "celery", "guardian", "drf_spectacular")

Graph = Mapping[str, set[str]]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> Iterable[str]:
    """Every dotted name ``module`` imports (absolute, relative ones resolved), at any depth of the file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[: len(package) - node.level + 1], node.module or ""]).strip(".")
            target = base if node.level else (node.module or "")
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def build_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project module -> project modules it imports, project module -> outside top-level packages it imports)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module], outside[module] = set(), set()
        for name in imported_names(module, path):
            target = name
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules:
                if target != module and not module.startswith(target + "."):  # a package's own __init__
                    graph[module].add(target)
            else:
                outside[module].add(name.split(".")[0])
    return graph, outside


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph.get(node, ()):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def _is_face(module: str) -> bool:
    return ".management" in module or module.endswith((".admin", ".api", "_api", ".apps", ".tasks", ".urls"))


def clusters_rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return FACE_RANK
    return CLUSTERS_RANK.get(parts[1], FACE_RANK)


def direction_problems(graph: Graph) -> list[str]:
    """Every import that points up: between apps, inside ``clusters``, and ``loom_cli`` reaching any app."""
    problems = []
    for module, targets in sorted(graph.items()):
        app = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if app == "loom_cli" and other != "loom_cli":
                problems.append(f"{module} -> {target}: the CLI talks HTTP and imports no app")
            elif other != app and target not in SITE_UTILITIES and app in APP_RANK and other in APP_RANK:
                face_reach = _is_face(module) and APP_RANK[other] < APP_RANK["frontend"]
                if APP_RANK[other] >= APP_RANK[app] and not face_reach:
                    problems.append(f"{module} -> {target}: {app} may not import {other}")
            elif app == other == "clusters" and clusters_rank(target) > clusters_rank(module):
                problems.append(f"{module} -> {target}: imports up (clusters layers: {CLUSTERS_RANK}, faces last)")
    return problems


def purity_problems(graph: Graph, outside: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for module in sorted(graph):
        if not module.startswith("clusters.planning"):
            continue
        problems += [f"{module} imports {name}" for name in sorted(outside[module]) if name in FRAMEWORKS]
        problems += [
            f"{module} imports {target}"
            for target in sorted(graph[module])
            if not target.startswith("clusters.planning") and target not in PURE_ALLOWED
        ]
    return problems


GRAPH, OUTSIDE = build_graph()


def test_the_walk_sees_the_project() -> None:
    """Guards the walk itself: it must find the modules and the imports it is meant to police."""
    assert {"clusters.engine.core", "clusters.planning.solver", "providers.ssh", "tenants.models"} <= set(GRAPH)
    assert "clusters.planning.specs" in GRAPH["clusters.planning.solver"]
    assert "clusters.engine.dispatch" in GRAPH["clusters.services.lifecycle"]
    assert "django" in OUTSIDE["clusters.engine.core"]


def test_there_is_no_import_circle() -> None:
    assert cycles(GRAPH) == []


def test_every_import_points_down() -> None:
    assert direction_problems(GRAPH) == []


def test_planning_is_pure_python() -> None:
    assert purity_problems(GRAPH, OUTSIDE) == []


@pytest.mark.parametrize(
    ("graph", "problem"),
    [
        ({"clusters.engine.core": {"clusters.services.lifecycle"}, "clusters.services.lifecycle": set()},
         "clusters.engine.core -> clusters.services.lifecycle: imports up"),
        ({"providers.ssh": {"clusters.models"}, "clusters.models": set()}, "providers may not import clusters"),
        ({"tenants.models": {"templates_app.models"}, "templates_app.models": set()}, "tenants may not import"),
        ({"loom_cli.main": {"tenants.models"}, "tenants.models": set()}, "the CLI talks HTTP"),
        ({"clusters.features.leases": {"clusters.services.lifecycle"}}, "imports up"),
    ],
    ids=["engine-to-services", "providers-to-clusters", "tenants-to-templates", "cli-to-app", "feature-to-service"],
)  # fmt: skip
def test_the_rules_catch_an_upward_import(graph: dict[str, set[str]], problem: str) -> None:
    assert any(problem in found for found in direction_problems(graph))


def test_the_rules_allow_what_the_layers_allow() -> None:
    graph = {
        "clusters.api": {"clusters.services.day2", "tenants.api", "loom_site.input_guards"},
        "clusters.services.day2": {"clusters.engine.core", "clusters.features.hooks", "clusters.planning.solver"},
        "clusters.engine.core": {"clusters.models", "providers.secrets"},
        "tenants.management.commands.loom_demo": {"templates_app.services", "providers.resources"},
    }
    assert direction_problems(graph) == []


def test_a_circle_is_found_even_through_a_function_level_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = "def f():\n    from clusters.engine import core\n"
    tree_imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert tree_imports, "ast.walk reaches imports inside functions"


def test_planning_purity_catches_django() -> None:
    graph = {"clusters.planning.solver": {"clusters.models"}}
    outside = {"clusters.planning.solver": {"django"}}
    assert purity_problems(graph, outside) == [
        "clusters.planning.solver imports django",
        "clusters.planning.solver imports clusters.models",
    ]
