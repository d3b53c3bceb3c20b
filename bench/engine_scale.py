"""A 1,000-node create through the engine: that it completes, how long it takes, how much memory it needs.

    python bench/engine_scale.py            # 1,000 nodes, 11,000 tasks: a few minutes on a busy 2-CPU machine
    python bench/engine_scale.py --quick    # 100 nodes

What runs. ``cluster_create`` (in this process: solve, plan, store the tasks and edges, start the job) of
``throughput.py``'s cluster: three services on every node, every action instant (fake provider with 0 ms
boot and calls, noop automator with 0 ms), so the run is pure engine work at scale: 11 tasks a node,
dispatched through Redis to one ``celery worker --pool threads -c 8`` process (the default, docs/configuration.md). The
tenant keeps its default worker budget of 10 tasks in flight, as a tenant that never changed it would (8
threads never need more, so the budget does not limit capacity, but its path, the tenant row lock and the
in-flight count, runs on every dispatch).

Printed: the time of the ``cluster_create`` call (solve + plan + persist + start), the job's run time (job
``started_at`` → ``finished_at``), their sum, tasks/s over the run, the worker process's peak resident
memory (``VmHWM`` from /proc, next to its resident memory once started and warm) and this process's
peak (``ru_maxrss``, where the plan is built). Absolute times depend on the machine and its load (printed).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import catalog
from bench.workers import (
    Bench,
    HarnessError,
    bench_environment,
    bench_tenant,
    parse_arguments,
    peak_rss_kib_self,
    print_table,
    wait_for_job,
)

NODES, QUICK_NODES = 1000, 100
THREADS = 8
BUDGET = 10  # Tenant.workers' default
JOB_TIMEOUT_S = 1800.0


def run(bench: Bench, *, size: int) -> int:
    from clusters.models import Task
    from clusters.planning.planner import Action
    from clusters.services.lifecycle import cluster_create
    from clusters.services.preview import PreviewRequest

    user, tenant = bench_tenant(name="scale", workers=BUDGET, catalog=catalog())
    worker = bench.start_worker(threads=THREADS)
    rss_warm = worker.status_kib("VmRSS")
    started = time.perf_counter()
    _, job = cluster_create(user=user, tenant=tenant, request=PreviewRequest(name="scale", template="flat", size=size))
    created = time.perf_counter() - started
    job = wait_for_job(job, timeout=JOB_TIMEOUT_S, bench=bench)
    wall = time.perf_counter() - started
    peak = worker.status_kib("VmHWM")
    bench.stop_worker(worker)
    tasks = Task.objects.filter(job=job).exclude(action=Action.JOIN).count()
    joins = Task.objects.filter(job=job, action=Action.JOIN).count()
    running = (job.finished_at - job.started_at).total_seconds()

    print(f"engine scale: a {size}-node create of zero-latency tasks: {tasks} tasks and {joins} join points; "
          f"1 worker process, {THREADS} threads; tenant worker budget {BUDGET} (the default)")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs, shared and busy; load average {os.getloadavg()[0]:.2f} after the run")
    print()
    print_table(
        [
            ("what", "value"),
            ("cluster_create call (solve, plan, persist, start)", f"{created:.2f} s"),
            ("job run (started → finished)", f"{running:.2f} s"),
            ("wall time (create call → job done seen)", f"{wall:.2f} s"),
            ("tasks/s over the run", f"{tasks / running:.0f}"),
            ("worker peak memory (VmHWM)", f"{peak / 1024:.0f} MiB"),
            ("worker memory once warm (VmRSS)", f"{rss_warm / 1024:.0f} MiB"),
            ("this process's peak memory (ru_maxrss)", f"{peak_rss_kib_self() / 1024:.0f} MiB"),
        ]
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments("engine_scale", __doc__ or "", argv)
    try:
        with bench_environment(arguments) as bench:
            return run(bench, size=QUICK_NODES if arguments.quick else NODES)
    except HarnessError as error:
        print(f"engine_scale: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
