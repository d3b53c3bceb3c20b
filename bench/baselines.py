"""Loom's layout solver and task planner next to ports of the original's algorithms, in one run.

    python bench/baselines.py

The baselines are ``original_solver.py`` and ``original_planner.py``: straightforward Python ports of
Continuuity Loom / Cask Coopr's create-time solver (2^N subsets of the constrained services, then a search
over node counts) and create planner (every cross-node dependency written out as N×M edges). Both sides
are Python, so the ratio compares algorithms, not languages.

Each row: the case, our median seconds, the original's median seconds, and original / ours. Ours runs in
this process; each original runs in a child process (same interpreter, inputs built before the clock
starts) so that it can be stopped: all originals together get ``TOTAL_CAP`` seconds, each case a share
of it. A stopped case shows "> t", a lower bound: the original had run for t seconds without finishing.
Medians are of up to 5 runs, as many as fit in about a second (one run for anything slower).

For each solver case the original solves, both layouts are checked with ``clusters.planning.solver.check_layout``;
the original may leave out a service that has no ``quantities.min`` (loom-reference.md §0.1), which the
check reports. For the planner the edge counts of both plans are printed. Imports no Django.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import original_planner
import original_solver
import planner_cases
import solver_cases

from clusters.planning.planner import Operation, plan
from clusters.planning.solver import LayoutRequest, check_layout, solve
from clusters.planning.specs import ClusterLayout, NodeRole

TOTAL_CAP = 60.0  # seconds for all the original's runs together
RESERVE = 5.0  # seconds kept back for each later case that may need them
MEMORY_CAP = 8 * 2**30  # address space of an original's child process
CAPPED = " [original stopped]"  # label suffix: the original's seconds are a lower bound
CONSTRAINED_SIZE = 10


@dataclasses.dataclass(frozen=True)
class Case:
    key: str  # what the child process is told to run
    label: str
    cap: float  # the most this case's original may take


SOLVER_CASES = [
    *(
        Case(f"hadoop-{size}", f"solver: hadoop-like, 15 services, {size:,} nodes", 10.0)
        for size in (10, 100, 1_000, 10_000)
    ),
    *(
        Case(f"constrained-{n}", f"solver: first {n} of 30 constrained services, {CONSTRAINED_SIZE} nodes", 10.0)
        for n in (8, 12, 16, 20)
    ),
]
PLANNER_CASES = [
    Case(f"planner-{size}", f"planner: hadoop-like create, {size:,} nodes", cap)
    for size, cap in ((100, 10.0), (1_000, 45.0), (10_000, 15.0))
]
# Run the cheap cases first and the ones expected to hit their cap last, so that those get what is left.
RUN_ORDER = ["hadoop-10", "hadoop-100", "hadoop-1000", "hadoop-10000", "constrained-8", "constrained-12"]
RUN_ORDER += ["constrained-16", "planner-100", "planner-1000", "constrained-20", "planner-10000"]


def solver_request(key: str) -> LayoutRequest:
    """``hadoop-N``: the Hadoop-like template at N nodes. ``constrained-N``: the first N services of the
    30-constrained template (its groups shrink to the services present), at ``CONSTRAINED_SIZE`` nodes."""
    kind, number = key.rsplit("-", 1)
    if kind == "hadoop":
        return solver_cases.hadoop_like(int(number))
    request = solver_cases.thirty_constrained(CONSTRAINED_SIZE)
    return dataclasses.replace(request, requested_services=request.template.default_services[: int(number)])


def original_solve(request: LayoutRequest) -> list[original_solver.Role] | None:
    return original_solver.solve(
        request.template,
        request.requested_services or request.template.default_services,
        request.size,
        request.hardware_options,
        request.image_options,
        hardware=request.hardware,
        image=request.image,
    )


def median_seconds(function: Callable[[], object], budget: float = 1.0, most: int = 5) -> float:
    """Median of up to ``most`` runs, stopping once ``budget`` seconds are spent (at least one run)."""
    samples: list[float] = []
    while len(samples) < most and sum(samples) < budget:
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# --- the child: one original, timed ---------------------------------------------------------------------


def child(key: str) -> None:
    """Build the inputs, say "ready", time the original, print one JSON line."""
    result: Any
    if key.startswith("planner-"):
        services, nodes = planner_cases.hadoop_services(), planner_cases.hadoop_nodes(int(key.split("-")[1]))
        print("ready", flush=True)
        outcome: list[original_planner.OriginalPlan] = []
        seconds = median_seconds(lambda: outcome.append(original_planner.plan_create(nodes, services)))
        found = outcome[-1]
        result = {
            "tasks": found.tasks,
            "edges": found.edges,
            "stages": len(found.stages),
            "deduped_stages": len(found.deduped_stages),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        }
    else:
        request = solver_request(key)
        print("ready", flush=True)
        roles: list[list[original_solver.Role] | None] = []
        seconds = median_seconds(lambda: roles.append(original_solve(request)))
        layout = roles[-1]
        result = None if layout is None else [[hw, img, sorted(names), count] for hw, img, names, count in layout]
    print(json.dumps({"seconds": seconds, "result": result}), flush=True)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_original(key: str, cap: float) -> tuple[float, bool, Any]:
    """(seconds, stopped, result). Stopped: the original was killed after ``seconds`` (cap or memory)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--original", key]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory
    ) as process:
        assert process.stdout is not None
        ready = process.stdout.readline()
        start = time.perf_counter()
        if ready.strip() != "ready":
            raise RuntimeError(f"original {key} did not start: {ready}{process.communicate()[1]}")
        try:
            out, err = process.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return time.perf_counter() - start, True, None
        if process.returncode != 0:
            if "MemoryError" in err:
                return time.perf_counter() - start, True, "memory"
            raise RuntimeError(f"original {key} failed:\n{err}")
    data = json.loads(out.strip().splitlines()[-1])
    return data["seconds"], False, data["result"]


# --- side by side -----------------------------------------------------------------------------------------


def _layout_verdict(request: LayoutRequest, layout: ClusterLayout) -> str:
    problems = check_layout(request, layout)
    return "valid" if not problems else "INVALID: " + "; ".join(problems)


def _solver_case(case: Case, cap: float) -> tuple[float, float, bool]:
    request = solver_request(case.key)
    layout = solve(request)
    ours = median_seconds(lambda: solve(request))
    seconds, stopped, result = run_original(case.key, cap)
    print(f"{case.label}")
    print(f"    ours: {len(layout.roles)} roles, {_layout_verdict(request, layout)}")
    if stopped:
        reason = "memory cap" if result == "memory" else "time cap"
        print(f"    original: stopped at the {reason} after {seconds:.1f} s")
    elif result is None:
        print("    original: no layout found")
    else:
        roles = tuple(NodeRole(hw, img, frozenset(names), count) for hw, img, names, count in result)
        print(f"    original: {len(roles)} roles, {_layout_verdict(request, ClusterLayout(roles))}")
    return ours, seconds, stopped


def _planner_case(case: Case, cap: float, finished: list[tuple[float, dict[str, Any]]]) -> tuple[float, float, bool]:
    """``finished``: (seconds, result) of the original's plans that completed, for an estimate where it stops."""
    size = int(case.key.split("-")[1])
    services, nodes = planner_cases.hadoop_services(), planner_cases.hadoop_nodes(size)
    ours_plan = plan(before=(), after=nodes, operation=Operation.CREATE, services=services)
    ours = median_seconds(lambda: plan(before=(), after=nodes, operation=Operation.CREATE, services=services))
    seconds, stopped, result = run_original(case.key, cap)
    print(f"{case.label}")
    print(
        f"    ours: {ours_plan.real_task_count:,} tasks + {ours_plan.join_count} joins, {len(ours_plan.edges):,} "
        f"edges ({ours_plan.expanded_edge_count:,} with the joins written out pair by pair), "
        f"{ours_plan.stages} stages"
    )
    if stopped:
        reason = "memory cap" if result == "memory" else "time cap"
        counted = original_planner.count_create_edges(nodes, services)
        print(
            f"    original: stopped at the {reason} after {seconds:.1f} s; its DAG would have "
            f"{counted:,} edges (counted without building them)"
        )
        if finished:
            done_seconds, done = finished[-1]
            scale = counted / done["edges"]
            print(
                f"    estimate, not measured: at the {done['edges']:,}-edge run's cost per edge, about "
                f"{done_seconds * scale / 60:,.0f} min and {done['peak_mb'] * scale / 1024:,.0f} GB"
            )
    else:
        finished.append((seconds, result))
        print(
            f"    original: {result['tasks']:,} tasks, {result['edges']:,} edges "
            f"({result['edges'] / len(ours_plan.edges):,.0f}× ours), {result['stages']} stages, "
            f"{result['deduped_stages']} after one-task-per-node dedup; peak memory {result['peak_mb']:,.0f} MB"
        )
    return ours, seconds, stopped


def run() -> list[tuple[str, float, float]]:
    """(label, ours seconds, original seconds) per case, measured side by side in this run. The label ends
    with ``CAPPED`` when the original was stopped: its seconds are then a lower bound."""
    cases = {case.key: case for case in SOLVER_CASES + PLANNER_CASES}
    deadline = time.monotonic() + TOTAL_CAP
    measured: dict[str, tuple[str, float, float]] = {}
    finished_plans: list[tuple[float, dict[str, Any]]] = []
    for position, key in enumerate(RUN_ORDER):
        case = cases[key]
        reserve = sum(min(cases[later].cap, RESERVE) for later in RUN_ORDER[position + 1 :])
        cap = max(1.0, min(case.cap, deadline - time.monotonic() - reserve))
        if key.startswith("planner-"):
            ours, original, stopped = _planner_case(case, cap, finished_plans)
        else:
            ours, original, stopped = _solver_case(case, cap)
        measured[key] = (case.label + (CAPPED if stopped else ""), ours, original)
    return [measured[case.key] for case in SOLVER_CASES + PLANNER_CASES]


def print_table(rows: list[tuple[str, float, float]]) -> None:
    width = max(len(label) for label, _, _ in rows)
    print(f"{'case':<{width}}  {'ours':>10}  {'original':>11}  {'original/ours':>13}")
    for label, ours, original in rows:
        bound = ">" if label.endswith(CAPPED) else " "
        print(f"{label:<{width}}  {ours * 1000:>8.2f}ms  {bound}{original:>9.3f}s  {bound}{original / ours:>11,.0f}×")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--original":
        child(sys.argv[2])
        return 0
    print_table(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
