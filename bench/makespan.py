"""Makespan of a 100-node create against its critical-path lower bound, DAG scheduling next to staged.

    python bench/makespan.py            # 100 nodes, twice (dag, staged): about half a minute
    python bench/makespan.py --quick    # 20 nodes, to check that it works
    python bench/makespan.py --help     # database and Redis options (the database is dropped and re-made)

What runs. A cluster of 3 coordinator, 1 master and N-4 worker nodes (one service per node; the worker
needs the master and the master the coordinators at runtime) is created on the fake provider, by
``cluster_create`` in this process and real ``celery worker --pool threads`` processes over Redis, twice in
one run: once with ``LOOM_SCHEDULING=dag`` (what Loom does) and once ``staged`` (the original's barrier
after every stage). Every node's machine boots for a random time (gamma distribution, seeded per node)
and every noop action takes a random time around its service's mean (normal, seeded per node and action),
scaled to tens and hundreds of milliseconds. Each mode gets a fresh worker.

Capacity is taken out of the picture: the worker has at least as many threads as the plan's DAG is wide
(no set of tasks that may run at once is larger; the output shows how that was established) and the tenant's
worker budget is unlimited (``Tenant.workers = 0``). What is measured is therefore scheduling: how long
the engine takes from "a task's predecessors are done" to "the task runs", and what stage barriers cost.
Each worker thread holds a PostgreSQL connection, so the server must accept as many more connections as
the DAG is wide, plus a few: the full run needs about 105, more than PostgreSQL's default
``max_connections`` of 100 (the benchmark checks and says so before it starts; raise it to 200, or point
``--database-url`` at a server that allows more).

The ratio. makespan = job ``finished_at`` − ``started_at``. The lower bound is the longest path through
the plan's DAG (``cluster_preview``'s plan: join points included, the staged mode's barriers excluded),
each task weighted by its measured duration in that very run (its successful TaskAttempt's
``finished_at`` − ``started_at``); a join point weighs nothing. Polls are not work: a confirm that finds its
machine booting gives its claim back and its attempt row is deleted, so the boot is counted as a wait
instead. A confirm cannot end before its machine is ready, so its earliest end in the ideal schedule is
``max(earliest start + its duration, its create's earliest start + (ready_at − that create's first attempt
start))``. In the run every task starts after its predecessors ended and the create's first attempt
starts after the create's earliest start, so no schedule of these durations, not even one with infinite
workers and zero overhead, finishes before the bound: makespan / bound ≥ 1, and what is above 1 is
scheduling overhead (dispatch through the database and Redis, claims, and for ``staged`` the barriers).
Goal for ``dag``: ≤ 1.10.

Also printed per mode: the most tasks that ran at once, and the "hop" latency, from the moment a task's
last predecessor finished to the start of its attempt (confirms excluded: they wait for their boot). For
the dag run, per action: when its tasks started and how long they took, which shows where a makespan above
the bound comes from (a wide start spread and durations far above the actions' latencies: short of CPU).
The noop automator seeds each node's draws by the node's random key, so the two modes draw different
durations (from the same distributions); each ratio uses its own run's durations. Wall-clock numbers
depend on the machine and its load (printed), ratios much less so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workers import (
    Bench,
    HarnessError,
    bench_environment,
    bench_tenant,
    connections_free,
    parse_arguments,
    print_table,
    wait_for_job,
)

GOAL = 1.10
NODES, QUICK_NODES = 100, 20
SEED = "makespan"
BOOT_MS, BOOT_JITTER_MS = 600, 250
CALL_LATENCY = "create=40,confirm=15"
# service → action → (mean ms, standard deviation ms) of the noop automator
SERVICES: dict[str, dict[str, tuple[int, int]]] = {
    "coordinator": {"install": (200, 60), "configure": (80, 25), "initialize": (150, 50), "start": (100, 30)},
    "master": {"install": (250, 80), "configure": (80, 25), "initialize": (200, 60), "start": (120, 40)},
    "worker": {"install": (300, 100), "configure": (60, 20), "start": (100, 30)},
}
RUNTIME_REQUIRES = {"master": ["coordinator"], "worker": ["master"]}
JOB_TIMEOUT_S = 300.0
CONNECTION_MARGIN = 5  # this process, the worker's heartbeat thread, and a little for everyone else


def catalog() -> dict[str, list[Any]]:
    """The fake provider with seeded boot times, three noop services, and a template with one service per
    node (coordinators ×3, master ×1, workers the rest), so that every node's tasks form one chain."""

    def service(name: str) -> dict[str, Any]:
        actions = {
            action: {"type": "noop", "fields": {"latency_ms": str(mean), "jitter_ms": str(deviation)}}
            for action, (mean, deviation) in SERVICES[name].items()
        }
        requires = RUNTIME_REQUIRES.get(name, [])
        return {"name": name, "dependencies": {"runtime": {"requires": requires}} if requires else {},
                "provisioner": {"actions": actions}}  # fmt: skip

    names = list(SERVICES)
    provider = {"latency_ms": str(BOOT_MS), "latency_jitter_ms": str(BOOT_JITTER_MS),
                "call_latency_ms": CALL_LATENCY, "seed": SEED}  # fmt: skip
    return {
        "providers": [{"name": "fakecloud", "providertype": "fake", "provisioner": provider}],
        "hardwaretypes": [{"name": "small", "providermap": {"fakecloud": {"flavor": "f1"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"fakecloud": {"image": "deb12", "sshuser": "loom"}}}],
        "services": [service(name) for name in names],
        "clustertemplates": [
            {"name": "grid", "description": "one service per node: coordinators, a master, workers",
             "defaults": {"services": names, "provider": "fakecloud", "hardwaretype": "small",
                          "imagetype": "debian", "config": {}},
             "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"], "services": names},
             "constraints": {
                 "layout": {"cantcoexist": [["coordinator", "master"], ["coordinator", "worker"],
                                            ["master", "worker"]]},
                 "services": {"coordinator": {"quantities": {"min": 3, "max": 3}},
                              "master": {"quantities": {"min": 1, "max": 1}}}}},
        ],
    }  # fmt: skip


# --- the plan: width and the lower bound ----------------------------------------------------------------------


def dag_width(plan: Any) -> tuple[int, int]:
    """(lower, upper) bounds on the width of the plan's DAG over real tasks: the most tasks that can ever
    run at once. Lower: the tasks without predecessors (pairwise independent). Upper: the size of a
    chain cover, built greedily in key (topological) order, trying the task's own node's chains first; any
    set of tasks that run at once holds at most one task per chain. When they meet, the width is exact."""
    from clusters.planning.planner import Action

    successors = plan.successors()
    reach = [0] * len(plan.tasks)  # bit s of reach[k]: s is reachable from k
    for key in reversed(range(len(plan.tasks))):
        bits = 0
        for successor in successors[key]:
            bits |= reach[successor] | (1 << successor)
        reach[key] = bits
    chains: list[tuple[str | None, int]] = []  # (node of the first task, key of the tail)
    pending = plan.pending_counts()
    sources = 0
    for task in plan.tasks:
        if task.action is Action.JOIN:
            continue
        sources += pending[task.key] == 0
        candidates = sorted(range(len(chains)), key=lambda i: chains[i][0] != task.node_id)
        index = next((i for i in candidates if reach[chains[i][1]] >> task.key & 1), None)
        if index is None:
            chains.append((task.node_id, task.key))
        else:
            chains[index] = (chains[index][0], task.key)
    return sources, len(chains)


@dataclass(frozen=True)
class Measured:
    """What one run measured, per task key of the (unstaged) plan."""

    duration: dict[int, float]  # seconds of the successful attempt
    boot_wait: dict[int, float]  # confirm key → ready_at − its create's first attempt start
    create_of: dict[int, int]  # confirm key → create key of the same node


def lower_bound(plan: Any, measured: Measured) -> tuple[float, list[int]]:
    """The earliest end of the plan with the measured durations, infinite workers and zero overhead, and
    the critical path (task keys) that sets it. Keys are topological, so one pass in key order does."""
    predecessors = plan.predecessors()
    start = [0.0] * len(plan.tasks)
    end = [0.0] * len(plan.tasks)
    setter: list[int | None] = [None] * len(plan.tasks)
    for key in range(len(plan.tasks)):
        if predecessors[key]:
            latest = max(predecessors[key], key=lambda p: end[p])
            start[key], setter[key] = end[latest], latest
        end[key] = start[key] + measured.duration.get(key, 0.0)
        if key in measured.boot_wait:
            create = measured.create_of[key]
            booted = start[create] + measured.boot_wait[key]
            if booted > end[key]:
                end[key], setter[key] = booted, create
    last = max(range(len(plan.tasks)), key=lambda k: end[k])
    path = [last]
    while setter[path[-1]] is not None:
        path.append(setter[path[-1]])  # type: ignore[arg-type]
    return end[last], path[::-1]


def measure(plan: Any, preview: Any, job: Any) -> tuple[Measured, list[float], int]:
    """Durations of the job's tasks mapped onto ``plan`` (by node number, action and service, so a staged
    job's renumbered keys map too), the hop latencies, and the most attempts that overlapped."""
    from clusters.models import Task, TaskAttempt
    from clusters.planning.planner import Action
    from providers.models import FakeMachine

    number_of = {spec.node_id: spec.number for spec in preview.nodes}
    identity = {(number_of.get(t.node_id), t.action.value, t.service): t.key for t in plan.tasks
                if t.action is not Action.JOIN}  # fmt: skip
    real = Task.objects.filter(job=job).exclude(action=Action.JOIN)
    rows = real.values_list("pk", "node__number", "action", "service", "node__node_key")
    key_of = {pk: identity[(number, action, service)] for pk, number, action, service, _ in rows}
    if len(key_of) != len(identity):
        raise HarnessError(f"job {job.pk} has {len(key_of)} real tasks, the plan {len(identity)}")
    node_key_of = {key_of[pk]: node_key for pk, _, _, _, node_key in rows}
    attempts = list(
        TaskAttempt.objects.filter(task__job=job).order_by("started_at").values_list("task_id", "started_at",
                                                                                      "finished_at", "outcome")
    )  # fmt: skip
    succeeded: dict[int, tuple[datetime, datetime]] = {}
    first_start: dict[int, datetime] = {}
    for task_pk, started, finished, outcome in attempts:
        first_start.setdefault(key_of[task_pk], started)
        if outcome == TaskAttempt.Outcome.SUCCEEDED:
            succeeded[key_of[task_pk]] = (started, finished)
    ready_at = dict(FakeMachine.objects.filter(node_key__in=node_key_of.values()).values_list("node_key", "ready_at"))
    create_by_node = {t.node_id: t.key for t in plan.tasks if t.action is Action.CREATE}
    create_of = {t.key: create_by_node[t.node_id] for t in plan.tasks if t.action is Action.CONFIRM}
    boot_wait = {
        confirm: (ready_at[node_key_of[confirm]] - first_start[create]).total_seconds()
        for confirm, create in create_of.items()
    }
    duration = {key: (finished - started).total_seconds() for key, (started, finished) in succeeded.items()}
    hops = _hops(plan, succeeded, job.started_at, skip=set(create_of))
    return Measured(duration, boot_wait, create_of), hops, _peak_overlap(attempts)


def _hops(
    plan: Any, succeeded: dict[int, tuple[datetime, datetime]], job_start: datetime, skip: set[int]
) -> list[float]:
    """Seconds from the end of each task's last real predecessor (through join points) to its start."""
    from clusters.planning.planner import Action

    predecessors = plan.predecessors()
    finished: dict[int, datetime] = {}
    hops = []
    for task in plan.tasks:
        ends = [finished[p] for p in predecessors[task.key] if p in finished]
        ready = max(ends, default=job_start)
        if task.action is Action.JOIN:
            finished[task.key] = ready
            continue
        started, finished[task.key] = succeeded[task.key]
        if task.key not in skip:
            hops.append((started - ready).total_seconds())
    return hops


def _peak_overlap(attempts: Sequence[tuple[int, datetime, datetime | None, str]]) -> int:
    events = sorted([(s, 1) for _, s, _, _ in attempts] + [(f, -1) for _, _, f, _ in attempts if f is not None])
    peak = running = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


# --- the run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    mode: str
    tasks: int
    makespan: float
    bound: float
    path: list[int]
    peak: int
    hops: list[float]
    boot_on_path: float
    timeline: list[tuple[str, ...]]


def run_mode(bench: Bench, *, mode: str, size: int, processes: int = 1) -> tuple[Row, Any, tuple[int, int]]:
    """Create the cluster with ``mode`` scheduling in a fresh database, on a fresh worker with as many threads
    as the DAG is wide, and measure it; returns the row, the preview and the DAG's width bounds.

    A fresh database per mode gives both runs the same primary keys, hence the same machine names and the
    same seeded boot times and call latencies from the fake provider."""
    from django.test import override_settings

    from clusters.models import Task
    from clusters.services.lifecycle import cluster_create
    from clusters.services.preview import PreviewRequest, cluster_preview

    bench.reset_database()
    user, tenant = bench_tenant(name="makespan", workers=0, catalog=catalog())
    request = PreviewRequest(name="grid", template="grid", size=size)
    preview = cluster_preview(user=user, tenant=tenant, request=request)
    width = dag_width(preview.plan)
    threads = width[1]
    free = connections_free()
    if free < threads + CONNECTION_MARGIN:
        raise HarnessError(
            f"a {threads}-wide DAG needs {threads} worker threads, each holding a PostgreSQL connection while its "
            f"task runs, plus {CONNECTION_MARGIN}; the server accepts {free} more connections now. Raise "
            "max_connections (e.g. to 200, then restart PostgreSQL), stop other clients, or use --quick"
        )
    workers = bench.start_workers(count=processes, threads=-(-threads // processes))
    try:
        with override_settings(LOOM_SCHEDULING=mode):
            _, job = cluster_create(user=user, tenant=tenant, request=request)
        job = wait_for_job(job, timeout=JOB_TIMEOUT_S, bench=bench)
    finally:
        for worker in workers:
            bench.stop_worker(worker)
    measured, hops, peak = measure(preview.plan, preview, job)
    bound, path = lower_bound(preview.plan, measured)
    boot_on_path = sum(
        measured.boot_wait[key] for key in path if key in measured.boot_wait and measured.create_of[key] in path
    )
    makespan = (job.finished_at - job.started_at).total_seconds()
    row = Row(mode, Task.objects.filter(job=job).count(), makespan, bound, path, peak, hops, boot_on_path,
              timeline(job))  # fmt: skip
    return row, preview, width


def timeline(job: Any) -> list[tuple[str, ...]]:
    """Per action and service, in the order they began: how many succeeded, when they started (first,
    median, last; seconds after the job started) and how long they took (median). Where the start spread
    is wide and the durations far above the actions' own latencies, the worker was short of CPU."""
    from statistics import median

    from clusters.models import TaskAttempt

    succeeded = TaskAttempt.objects.filter(task__job=job, outcome=TaskAttempt.Outcome.SUCCEEDED)
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for action, service, started, finished in succeeded.values_list("task__action", "task__service",
                                                                    "started_at", "finished_at"):  # fmt: skip
        offset = (started - job.started_at).total_seconds()
        groups.setdefault((action, service), []).append((offset, (finished - started).total_seconds()))
    rows = []
    for (action, service), runs in sorted(groups.items(), key=lambda item: min(item[1])[0]):
        starts = sorted(start for start, _ in runs)
        rows.append((f"{action} {service}".strip(), str(len(runs)), f"{starts[0]:.2f}", f"{median(starts):.2f}",
                     f"{starts[-1]:.2f}", f"{median(d for _, d in runs) * 1000:.0f} ms"))  # fmt: skip
    return rows


def describe_path(preview: Any, path: list[int], boot_wait: float) -> str:
    """``create n17 → confirm n17 → ...``: the real tasks of a critical path, with the boot wait on it."""
    number_of = {spec.node_id: spec.number for spec in preview.nodes}
    tasks = [preview.plan.tasks[key] for key in path]
    labels = [f"{t.action.value}{' ' + t.service if t.service else ''} n{number_of[t.node_id]}"
              for t in tasks if t.node_id is not None]  # fmt: skip
    return f"{len(labels)} tasks, {boot_wait:.2f} s of boot wait: " + " → ".join(labels)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run(bench: Bench, *, size: int, processes: int = 1) -> int:
    rows = []
    for mode in ("dag", "staged"):
        row, preview, (lower, threads) = run_mode(bench, mode=mode, size=size, processes=processes)
        rows.append(row)
    plan = preview.plan
    roles = ", ".join(f"{r.count} {'+'.join(sorted(r.services))}" for r in preview.layout.roles)
    actions = "; ".join(
        f"{name} " + ", ".join(f"{action} {mean}±{deviation}" for action, (mean, deviation) in timings.items())
        for name, timings in SERVICES.items()
    )
    exact = "exactly" if lower == threads else f"at least {lower}, at most"
    workers_text = (
        f"1 worker process with {threads} threads" if processes == 1
        else f"{processes} worker processes sharing {threads} threads"
    )  # fmt: skip
    print(
        f"makespan: a {size}-node create ({roles}): {plan.real_task_count} tasks and "
        f"{len(plan.tasks) - plan.real_task_count} join points, {len(plan.edges)} edges, {plan.stages} stages"
    )
    print(f"fake provider: boot {BOOT_MS} ± {BOOT_JITTER_MS} ms (gamma, seeded per node), calls {CALL_LATENCY} ms")
    print(f"noop actions (ms, normal, per node): {actions}")
    print(
        f"capacity: {workers_text}; the DAG is {exact} {threads} wide "
        f"({lower} independent tasks, a cover of {threads} chains); tenant worker budget unlimited (workers=0). "
        "Capacity never holds a ready task back: what is measured is scheduling."
    )
    print(f"machine: {os.cpu_count()} CPUs, shared and busy; load average {os.getloadavg()[0]:.2f} after the runs")
    print()
    table = [("mode", "tasks", "makespan", "bound", "ratio", "tasks/s", "peak running", "hop p50", "hop p95",
              "hop max")]  # fmt: skip
    for row in rows:
        hops = (percentile(row.hops, 0.5), percentile(row.hops, 0.95), max(row.hops))
        table.append((row.mode, str(row.tasks), f"{row.makespan:.3f} s", f"{row.bound:.3f} s",
                      f"{row.makespan / row.bound:.3f}", f"{plan.real_task_count / row.makespan:.0f}", str(row.peak),
                      *(f"{hop * 1000:.1f} ms" for hop in hops)))  # fmt: skip
    print_table(table)
    print()
    for row in rows:
        print(f"critical path ({row.mode}): {describe_path(preview, row.path, row.boot_on_path)}")
    dag, staged = rows
    print()
    print("dag run, per action (seconds after the job started; the duration includes any in-thread boot wait):")
    print_table([("action", "tasks", "first start", "median start", "last start", "median duration"),
                 *dag.timeline])  # fmt: skip
    dag_ratio = dag.makespan / dag.bound
    print()
    print(f"dag makespan / bound:    {dag_ratio:.3f}  (goal ≤ {GOAL:.2f}: {'met' if dag_ratio <= GOAL else 'NOT MET'})")
    print(f"staged makespan / bound: {staged.makespan / staged.bound:.3f}")
    print(f"staged / dag makespan:   {staged.makespan / dag.makespan:.3f}  (what the original's stage barriers cost)")
    print(
        "(tasks: rows of the job, join points and the staged barriers included; tasks/s: real tasks / makespan; "
        "peak running: most attempts at once; hop: from the end of a task's last predecessor in the DAG to the "
        "start of its attempt, confirms left out, barrier waits included for staged. Hops far above a few ms "
        "mean the engine's dispatch, not the workers, sets the pace: see bench/throughput.py.)"
    )
    return 0 if dag_ratio <= GOAL else 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments("makespan", __doc__ or "", argv, processes=True)
    try:
        with bench_environment(arguments) as bench:
            return run(bench, size=QUICK_NODES if arguments.quick else NODES, processes=max(1, arguments.processes))
    except HarnessError as error:
        print(f"makespan: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
