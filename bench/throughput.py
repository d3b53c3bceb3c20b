"""Engine throughput against raw Celery on the same broker and worker, in one run.

    python bench/throughput.py              # 100-node creates (1,100 tasks each), 3 rounds: about a minute
    python bench/throughput.py --quick      # 20 nodes, 1 round
    python bench/throughput.py --profile    # also profile the engine in the worker (cProfile + query counts)

What runs. One ``celery worker --pool threads -c 8`` process (the default concurrency, docs/configuration.md) on the
benchmark's own database and Redis database. In each round, alternately:

* **raw Celery**: this process publishes as many ``bench.noop`` tasks as the engine job below has tasks;
  each does nothing but ``INCR`` a Redis counter. Tasks/s from the first publish to the last count: the
  most this broker, worker and machine move, the ceiling the engine is held against;
* **engine**: ``cluster_create`` of a cluster whose every action takes no time (fake provider: 0 ms boot and
  calls; noop automator: 0 ms), so every task is pure engine work: the claim (the task moved to running
  and a TaskAttempt row), the task's own reads (its node; the fake provider's machine row for create and
  confirm), the finish (lock the job, close the attempt, complete the task, release the successors, see
  whether the job is done) and, on commit, publishing the successors. A chain's next task skips the broker:
  the finish claims it for the same worker thread (on PostgreSQL the claim and the finish are one function
  call each, ``clusters/engine/pg_functions.py``); what else became ready goes through Redis.
  Tasks/s = tasks / (job ``finished_at`` − ``started_at``). Twice: with the tenant's worker budget unlimited
  (``workers=0``, the engine alone) and at its default of 10 (the fair-share path: the tenant row locked and
  the tasks in flight counted on every dispatch).

Both sides use the same worker process, settings and broker; the ratio engine / raw is what matters (goal:
≥ 0.5, for the unlimited budget), the medians over the rounds are printed. The machine is shared, so the
absolute numbers move with its load (printed). ``--profile`` runs one more engine job with every worker
thread under cProfile and every SQL statement counted, and prints where the worker's time goes.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workers import (
    Bench,
    HarnessError,
    bench_environment,
    bench_noop,
    bench_tenant,
    parse_arguments,
    print_table,
    profile_report,
    wait_for_job,
)

GOAL = 0.5
THREADS = 8
NODES, QUICK_NODES = 100, 20
ROUNDS, QUICK_ROUNDS = 3, 1
DEFAULT_BUDGET = 10
JOB_TIMEOUT_S = 600.0


def catalog() -> dict[str, list[Any]]:
    """Zero-latency machines and three zero-latency services on every node (11 tasks a node)."""
    instant = {"type": "noop", "fields": {"latency_ms": "0", "jitter_ms": "0"}}
    names = ["base", "app", "agent"]
    return {
        "providers": [{"name": "fakecloud", "providertype": "fake",
                       "provisioner": {"latency_ms": "0", "latency_jitter_ms": "0", "call_latency_ms": "0"}}],
        "hardwaretypes": [{"name": "small", "providermap": {"fakecloud": {"flavor": "f1"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"fakecloud": {"image": "deb12"}}}],
        "services": [
            {"name": "base", "provisioner": {"actions": {"install": instant, "configure": instant}}},
            {"name": "app", "dependencies": {"runtime": {"requires": ["base"]}, "install": {"requires": ["base"]}},
             "provisioner": {"actions": {"install": instant, "configure": instant, "start": instant}}},
            {"name": "agent", "provisioner": {"actions": {"install": instant, "configure": instant, "start": instant}}},
        ],
        "clustertemplates": [
            {"name": "flat", "defaults": {"services": names, "provider": "fakecloud", "hardwaretype": "small",
                                          "imagetype": "debian", "config": {}},
             "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"], "services": names}},
        ],
    }  # fmt: skip


def engine_run(bench: Bench, *, user: Any, tenant: Any, name: str, size: int) -> tuple[int, float]:
    """Create a ``size``-node cluster and wait for it; returns (tasks run, seconds from job start to end)."""
    from clusters.models import Task
    from clusters.planning.planner import Action
    from clusters.services.lifecycle import cluster_create
    from clusters.services.preview import PreviewRequest

    _, job = cluster_create(user=user, tenant=tenant, request=PreviewRequest(name=name, template="flat", size=size))
    job = wait_for_job(job, timeout=JOB_TIMEOUT_S, bench=bench)
    tasks = Task.objects.filter(job=job).exclude(action=Action.JOIN).count()
    return tasks, (job.finished_at - job.started_at).total_seconds()


def run(bench: Bench, *, size: int, rounds: int, profile: bool) -> int:
    user, unlimited = bench_tenant(name="unlimited", workers=0, catalog=catalog())
    _, budgeted = bench_tenant(name="budgeted", workers=DEFAULT_BUDGET, catalog=catalog(), user=user)
    worker = bench.start_worker(threads=THREADS)
    rates: dict[str, list[float]] = {"raw Celery no-op": [], "engine, budget unlimited": [],
                                     f"engine, budget {DEFAULT_BUDGET}": []}  # fmt: skip
    tasks = 0
    for number in range(rounds):
        tasks, seconds = engine_run(bench, user=user, tenant=unlimited, name=f"u{number}", size=size)
        rates["engine, budget unlimited"].append(tasks / seconds)
        seconds = bench.run_counted([bench_noop.s() for _ in range(tasks)], timeout=JOB_TIMEOUT_S, worker=worker)
        rates["raw Celery no-op"].append(tasks / seconds)
        tasks, seconds = engine_run(bench, user=user, tenant=budgeted, name=f"b{number}", size=size)
        rates[f"engine, budget {DEFAULT_BUDGET}"].append(tasks / seconds)
    bench.stop_worker(worker)

    raw = statistics.median(rates["raw Celery no-op"])
    print(f"throughput: {size}-node creates of zero-latency tasks ({tasks} tasks a job), {rounds} round(s); "
          f"1 worker process, {THREADS} threads, Redis broker, PostgreSQL")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs, shared and busy; load average {os.getloadavg()[0]:.2f} after the runs")
    print()
    table = [("what", "tasks/s (median)", "rounds", "/ raw")]
    for label, values in rates.items():
        median = statistics.median(values)
        table.append((label, f"{median:.0f}", " ".join(f"{v:.0f}" for v in values), f"{median / raw:.2f}"))
    print_table(table)
    ratio = statistics.median(rates["engine, budget unlimited"]) / raw
    print()
    print(f"engine / raw Celery: {ratio:.2f}  (goal ≥ {GOAL:.2f}: {'met' if ratio >= GOAL else 'NOT MET'})")
    if profile:
        worker = bench.start_worker(threads=THREADS, env={"LOOM_BENCH_PROFILE": "1"})
        tasks, seconds = engine_run(bench, user=user, tenant=unlimited, name="profiled", size=size)
        print()
        print(f"profile: one more engine job under cProfile ({tasks} tasks, {tasks / seconds:.0f} tasks/s profiled)")
        print(profile_report(bench, worker, tasks=tasks))
        bench.stop_worker(worker)
    return 0 if ratio >= GOAL else 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments("throughput", __doc__ or "", argv, profile=True)
    try:
        with bench_environment(arguments) as bench:
            size, rounds = (QUICK_NODES, QUICK_ROUNDS) if arguments.quick else (NODES, ROUNDS)
            return run(bench, size=size, rounds=rounds, profile=arguments.profile)
    except HarnessError as error:
        print(f"throughput: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
