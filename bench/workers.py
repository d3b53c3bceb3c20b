"""The harness the engine benchmarks share: their own PostgreSQL database and Redis database, real Celery
worker processes, and a tenant with a catalog made through the real services.

The engine benchmarks (``makespan.py``, ``throughput.py``, ``engine_scale.py``) measure what a deployment
would see, so nothing here is eager or in-process: ``Bench.start_worker`` runs
``celery -A loom_site worker --pool threads`` as a child process on the benchmark's database and broker, with
``loom_site.settings`` configured from ``LOOM_*`` variables exactly as in production.

* **Database**: ``--database-url`` (or ``LOOM_BENCH_DATABASE_URL``; default
  ``postgres://postgres@127.0.0.1:5432/loom_bench_<script>``) is dropped, created and migrated on every run.
  Its name must contain ``bench`` so that a mistyped URL can never drop a real database.
* **Broker**: a Redis database number claimed with ``SET NX`` on the same key the test suite's
  ``WorkerPool`` uses (``claim_redis_db``), so a benchmark and a test run never share a broker; it is
  flushed (which drops the claim) when the benchmark ends.
* **Tasks of its own**: this module is loaded into the workers with ``--include bench.workers`` for
  bench-only Celery tasks: ``bench_noop`` (the raw Celery baseline of ``throughput.py``: no database, one
  Redis ``INCR`` so the benchmark can tell when all have run), ``bench_warm`` (holds a thread and its
  database connection for a moment, so a worker's threads exist and are connected before the clock starts)
  and ``bench_profile_dump``.
* **Profiling**: a worker started with ``LOOM_BENCH_PROFILE=1`` runs every engine task under a per-thread
  cProfile and counts its SQL statements; ``profile_report`` collects both (``throughput.py --profile``).
  There is no py-spy here, and cProfile's ``enable`` only covers the calling thread, hence one per thread.

Importing this module has no side effects beyond registering those tasks (the test suite imports
``claim_redis_db`` and ``worker_command`` from here).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import shared_task

ROOT = Path(__file__).resolve().parent.parent
REDIS = "redis://127.0.0.1:6379"
# Shared with tests/clusters/workers.py: whoever holds a database number's claim key owns that database.
CLAIM_KEY = "loom-test-execution-claim"
CLAIM_SECONDS = 900
COUNTER_KEY = "loom-bench-counter"
WARM_KEY = "loom-bench-warm"  # worker name → warm-ups it ran
WARM_HOLD_S = 0.3
POLL_SECONDS = 0.05
READY_TIMEOUT_S = 60.0


class HarnessError(RuntimeError):
    """The benchmark cannot run here (no free Redis database, a database name that is not a bench's, ...)."""


# --- shared with the test suite -------------------------------------------------------------------------------


def claim_redis_db(base: str = REDIS) -> int:
    """A Redis database no one else is using: claimed with SET NX (expiring), emptied before use.

    Databases 14 down to 1 are tried; 15 belongs to tests/loom_site's round-trip test and 0 is the default
    every other client uses. Raises HarnessError when all are claimed (claims expire after 15 minutes).
    """
    for number in range(14, 0, -1):
        client = redis.Redis.from_url(f"{base}/{number}")
        if client.set(CLAIM_KEY, str(os.getpid()), nx=True, ex=CLAIM_SECONDS):
            for key in client.scan_iter():
                if key != CLAIM_KEY.encode():
                    client.delete(key)
            return number
    raise HarnessError("no free Redis database among 1-14: stale claims? they expire after 15 minutes")


def worker_command(
    *, name: str, concurrency: int, include: Sequence[str] = (), beat_schedule: Path | None = None
) -> list[str]:
    """The command line of one thread-pool worker, as tests and benchmarks start it (no gossip, no mingle:
    they only slow start-up down and the workers need nothing from each other)."""
    command = [sys.executable, "-m", "celery", "-A", "loom_site", "worker", "--pool", "threads",
               "-c", str(concurrency), "-n", name, "--without-gossip", "--without-mingle", "-l", "WARNING"]  # fmt: skip
    if include:
        command += ["--include", ",".join(include)]
    if beat_schedule is not None:
        command += ["-B", "--schedule", str(beat_schedule)]
    return command


# --- bench-only Celery tasks ----------------------------------------------------------------------------------

_counter_client: redis.Redis | None = None


def _counter() -> redis.Redis:
    """One Redis client per worker process, on the broker's own database (thread-safe connection pool)."""
    global _counter_client
    if _counter_client is None:
        from celery import current_app

        _counter_client = redis.Redis.from_url(current_app.conf.broker_url)
    return _counter_client


@shared_task(name="bench.noop", ignore_result=True)
def bench_noop() -> None:
    """The raw Celery baseline: a task that does nothing but count itself."""
    _counter().incr(COUNTER_KEY)


@shared_task(name="bench.warm", ignore_result=True, bind=True)
def bench_warm(self: Any, seconds: float) -> None:
    """Open this thread's database connection and hold the thread for ``seconds``: sent once per thread,
    it makes the pool start every thread, each connected, before anything is measured. Counts itself, and
    which worker ran it (``WARM_KEY``)."""
    from django.db import connection

    connection.ensure_connection()
    time.sleep(seconds)
    _counter().hincrby(WARM_KEY, str(self.request.hostname or "").split("@")[0], 1)
    _counter().incr(COUNTER_KEY)


# --- profiling inside a worker (``LOOM_BENCH_PROFILE=1``, see throughput.py --profile) -----------------------

_profiles: dict[int, cProfile.Profile] = {}  # worker thread → its profiler, enabled only inside engine work
_statements: dict[str, list[float]] = {}  # SQL shape → [count, seconds]
_profile_lock = threading.Lock()


def _sql_shape(sql: str) -> str:
    """``UPDATE clusters_task``, ``SELECT clusters_taskattempt``...: the verb and the first table named."""
    verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    match = re.search(r'(?:FROM|UPDATE|INTO)\s+"?(\w+)"?', sql, re.IGNORECASE)
    return f"{verb} {match.group(1) if match else ''}".strip()


def _count_statement(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        elapsed = time.perf_counter() - started
        with _profile_lock:
            entry = _statements.setdefault(_sql_shape(sql), [0, 0.0])
            entry[0] += 1
            entry[1] += elapsed


def _profiled(run_chain: Any) -> Any:
    """``clusters.dispatch.run_chain`` under this thread's profiler and statement counter. The engine's work runs
    there whether its task came as a message, in a batch or spilled to an idle thread (no Celery task
    signal sees the spilled ones)."""

    def profiled_run_chain(task_pk: int, *, worker: str) -> None:
        from django.db import connection

        with _profile_lock:
            profiler = _profiles.setdefault(threading.get_ident(), cProfile.Profile())
        with connection.execute_wrapper(_count_statement):
            profiler.enable()
            try:
                run_chain(task_pk, worker=worker)
            finally:
                profiler.disable()

    return profiled_run_chain


def _install_profiler(**kwargs: Any) -> None:
    from clusters.engine import dispatch

    dispatch.run_chain = _profiled(dispatch.run_chain)


if os.environ.get("LOOM_BENCH_PROFILE"):
    from celery.signals import worker_ready

    worker_ready.connect(_install_profiler, weak=False)


@shared_task(name="bench.profile_dump", ignore_result=True)
def bench_profile_dump(path: str) -> None:
    """Merge every thread's profile into ``path`` (pstats) and the statement counts into ``path``.json. Sent
    once the profiled job has ended, when every engine task's profiler is disabled."""
    with _profile_lock:
        profilers = list(_profiles.values())
        statements = {shape: list(entry) for shape, entry in _statements.items()}
    if profilers:
        stats = pstats.Stats(profilers[0])
        for profiler in profilers[1:]:
            stats.add(profiler)
        stats.dump_stats(path)
    Path(f"{path}.json").write_text(json.dumps(statements))
    _counter().incr(COUNTER_KEY)


# --- the benchmark's environment ------------------------------------------------------------------------------


def parse_arguments(
    script: str,
    description: str,
    argv: Sequence[str] | None = None,
    *,
    profile: bool = False,
    processes: bool = False,
) -> argparse.Namespace:
    """``--quick``, ``--database-url`` and ``--redis-url``, common to the engine benchmarks (``--profile`` too
    where the benchmark offers it)."""
    parser = argparse.ArgumentParser(prog=f"bench/{script}.py", description=description.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, to check that the benchmark works")
    if profile:
        parser.add_argument("--profile", action="store_true", help="also profile the engine in the worker")
    if processes:
        parser.add_argument(
            "--processes", type=int, default=1,
            help="worker processes sharing the threads (default 1; the engine is CPU-bound per process)",
        )  # fmt: skip
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LOOM_BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/loom_bench_{script}"),
        help="PostgreSQL database to DROP, create and migrate; its name must contain 'bench' "
        "(default: $LOOM_BENCH_DATABASE_URL or loom_bench_%(prog)s on 127.0.0.1)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LOOM_BENCH_REDIS_URL", REDIS),
        help="Redis server, without a database number; a free one is claimed (default: %(default)s)",
    )
    return parser.parse_args(argv)


def database_name(url: str) -> str:
    """The database ``url`` names; HarnessError unless it is a PostgreSQL URL whose database name contains
    ``bench`` (the benchmarks drop it)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise HarnessError(f"--database-url must be a PostgreSQL URL, got {parts.scheme or 'no'} scheme")
    if "bench" not in name:
        raise HarnessError(f"refusing to drop database {name!r}: a benchmark database's name contains 'bench'")
    return name


def fresh_database(url: str) -> None:
    """Drop and create the database ``url`` names (connected to the server's ``postgres`` database)."""
    import psycopg2
    from psycopg2 import sql

    name = database_name(url)
    admin = psycopg2.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")))
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()


@dataclass
class Worker:
    """One worker process started by ``Bench.start_worker``."""

    process: subprocess.Popen[bytes]
    threads: int
    name: str
    """``bench-<pid>-<n>``, the part of its Celery hostname before ``@``."""

    def status_kib(self, field_name: str) -> int:
        """A memory figure of the worker process from /proc (``VmHWM``: peak resident set; ``VmRSS``: now)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
        raise HarnessError(f"/proc/{self.process.pid}/status has no {field_name}")


@dataclass
class Bench:
    """The environment of one benchmark run: its database, broker, data folder and worker processes."""

    database_url: str
    broker_url: str
    data_dir: Path
    log: Path
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, *, threads: int, env: dict[str, str] | None = None) -> Worker:
        """Start a worker with ``threads`` threads and wait until it consumes with every thread started and
        holding its database connection, so start-up is not in what is measured."""
        return self.start_workers(count=1, threads=threads, env=env)[0]

    def start_workers(self, *, count: int, threads: int, env: dict[str, str] | None = None) -> list[Worker]:
        """Start ``count`` workers of ``threads`` threads each, then warm them all (``start_worker``).

        Warming is in rounds of one ``bench_warm`` per thread of every worker, each holding its thread for a
        moment (and, acknowledged late, a prefetch slot: no worker can take more than its threads at once); a
        round counts only when every worker ran its share (as many as it has threads). A worker
        still starting up when the round began leaves its share to the others, and the round is repeated:
        warming them one by one let the first worker eat the second's warm-up, and the second was still
        booting when the measured job began."""
        environment = {**os.environ, **self.environment(), **(env or {})}
        started = []
        for _ in range(count):
            name = f"bench-{os.getpid()}-{len(self.workers)}"
            command = worker_command(name=f"{name}@%h", concurrency=threads, include=["bench.workers"])
            with self.log.open("a") as output:
                process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output,
                                           stderr=subprocess.STDOUT)  # fmt: skip
            worker = Worker(process, threads, name)
            self.workers.append(worker)
            started.append(worker)
        client = redis.Redis.from_url(self.broker_url)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            client.delete(WARM_KEY)
            self.run_counted([bench_warm.s(WARM_HOLD_S) for _ in range(threads * count)], timeout=READY_TIMEOUT_S)
            ran = {name.decode(): int(n) for name, n in client.hgetall(WARM_KEY).items()}
            for worker in started:
                if worker.process.poll() is not None:
                    raise HarnessError(f"worker {worker.name} exited with {worker.process.returncode}\n{self.tail()}")
            if all(ran.get(worker.name, 0) >= threads for worker in started):
                return started
            if time.monotonic() > deadline:
                raise HarnessError(f"workers never all warmed up (warm-ups run: {ran})\n{self.tail()}")

    def stop_worker(self, worker: Worker) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL after 15 s."""
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()

    def run_counted(self, signatures: Sequence[Any], *, timeout: float, worker: Worker | None = None) -> float:
        """Publish the counting tasks ``signatures`` and wait until all have run; returns the seconds from the
        first publish to the last count. Raises HarnessError (with the worker log) on a timeout."""
        client = redis.Redis.from_url(self.broker_url)
        client.delete(COUNTER_KEY)
        started = time.perf_counter()
        for signature in signatures:
            signature.apply_async()
        deadline = time.monotonic() + timeout
        while int(client.get(COUNTER_KEY) or 0) < len(signatures):
            if worker is not None and worker.process.poll() is not None:
                raise HarnessError(f"the worker exited with {worker.process.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{len(signatures)} counted tasks not done after {timeout:.0f} s\n{self.tail()}")
            time.sleep(POLL_SECONDS / 10)
        return time.perf_counter() - started

    def environment(self) -> dict[str, str]:
        """The ``LOOM_*`` variables a worker (and this process) runs with."""
        return {
            "DJANGO_SETTINGS_MODULE": "loom_site.settings",
            "LOOM_DATA_DIR": str(self.data_dir),
            "LOOM_DATABASE_URL": self.database_url,
            "LOOM_BROKER_URL": self.broker_url,
            "LOOM_CELERY_EAGER": "false",
            "LOOM_LOG_LEVEL": "WARNING",
        }

    def reset_database(self) -> None:
        """Drop, create and migrate the database again (for a second run that must see the same primary keys,
        hence the same machine names and seeded draws of the fake provider, as the first)."""
        from django.core.management import call_command
        from django.db import connections

        connections.close_all()
        fresh_database(self.database_url)
        call_command("migrate", verbosity=0)

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text()[-size:] if self.log.exists() else ""

    def close(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        redis.Redis.from_url(self.broker_url).flushdb()


@contextmanager
def bench_environment(arguments: argparse.Namespace) -> Iterator[Bench]:
    """Set this process up as the benchmark's client: a fresh migrated database, a claimed Redis database,
    a throwaway data folder (shared with the workers, which need its field encryption key), Django set
    up on ``loom_site.settings``. Everything is released on exit; the database is left for inspection."""
    database_name(arguments.database_url)
    number = claim_redis_db(arguments.redis_url)
    data_dir = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    bench = Bench(arguments.database_url, f"{arguments.redis_url}/{number}", data_dir, data_dir / "worker.log")
    try:
        os.environ.update(bench.environment())
        import django

        django.setup()
        bench.reset_database()
        yield bench
    finally:
        bench.close()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- tenant, catalog, jobs ------------------------------------------------------------------------------------


def bench_tenant(*, name: str, workers: int, catalog: dict[str, list[Any]], user: Any = None) -> tuple[Any, Any]:
    """A tenant with worker budget ``workers`` (0 = unlimited), ``user`` (a new superuser by default) as its
    admin and ``catalog`` imported, all through the real services. Returns (user, tenant)."""
    from django.contrib.auth import get_user_model

    from templates_app.services import catalog_import
    from tenants.models import Role
    from tenants.services import membership_save, tenant_save

    user = user or get_user_model().objects.create_superuser(f"bench-{name}")
    tenant = tenant_save(actor=user, name=name, create=True, workers=workers)
    membership_save(actor=user, tenant=tenant, username=user.username, role=Role.ADMIN)
    catalog_import(tenant=tenant, user=user, data=catalog)
    return user, tenant


def wait_for_job(job: Any, *, timeout: float, bench: Bench) -> Any:
    """Poll until ``job`` has ended; raises HarnessError (with task counts and the worker log) on a timeout,
    a failed job or a dead worker."""
    from collections import Counter

    from clusters.models import Job, Task

    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db()
        if job.status == Job.Status.COMPLETED:
            return job
        dead = [w for w in bench.workers if w.process.poll() is not None]
        if job.status in (Job.Status.FAILED, Job.Status.ABORTED) or dead or time.monotonic() > deadline:
            counts = dict(Counter(Task.objects.filter(job=job).values_list("status", flat=True)))
            state = "a worker died" if dead else f"job {job.pk} is {job.status} {job.message}".strip()
            raise HarnessError(f"{state} after {timeout:.0f} s at most; tasks {counts}\n{bench.tail()}")
        time.sleep(POLL_SECONDS)


def peak_rss_kib_self() -> int:
    """This process's peak resident set (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def connections_free() -> int:
    """How many more connections the PostgreSQL server accepts now (superuser slots included)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int - COUNT(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        )
        return int(cursor.fetchone()[0])


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned first column, the others right-aligned, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def profile_report(bench: Bench, worker: Worker, *, tasks: int, top: int = 25) -> str:
    """Where a profiled worker's engine tasks spent their time: the statements they ran (count per task,
    milliseconds per task) and the functions with the most cumulative time. Call after the profiled job
    ended, on a worker started with ``LOOM_BENCH_PROFILE=1``."""
    path = bench.data_dir / "engine.pstats"
    time.sleep(0.5)  # the last task's postrun runs just after its finish committed the job's end
    bench.run_counted([bench_profile_dump.s(str(path))], timeout=READY_TIMEOUT_S, worker=worker)
    statements = json.loads(Path(f"{path}.json").read_text())
    lines = ["statements per task (Django cursor; COMMITs and BEGINs are not counted):"]
    table = [("statement", "per task", "ms per task", "ms each")]
    for shape, (count, seconds) in sorted(statements.items(), key=lambda item: -item[1][1]):
        table.append((shape, f"{count / tasks:.2f}", f"{seconds * 1000 / tasks:.2f}", f"{seconds * 1000 / count:.2f}"))
    total_count = sum(count for count, _ in statements.values())
    total_seconds = sum(seconds for _, seconds in statements.values())
    table.append(("all", f"{total_count / tasks:.2f}", f"{total_seconds * 1000 / tasks:.2f}", ""))
    buffer = io.StringIO()
    stdout, sys.stdout = sys.stdout, buffer
    try:
        print_table(table)
        if path.exists():
            stats = pstats.Stats(str(path), stream=buffer)
            per_task = stats.total_tt / tasks * 1000  # type: ignore[attr-defined]
            print(f"\ntask bodies (claim → finish, wall time in every thread): {per_task:.2f} ms per task; "
                  f"top {top} by cumulative time over {tasks} tasks:")  # fmt: skip
            project = f"{re.escape(str(ROOT))}/(clusters|providers|templates_app|tenants)/|psycopg2"
            stats.sort_stats("cumulative").print_stats(project, top)
    finally:
        sys.stdout = stdout
    lines.append(buffer.getvalue())
    return "\n".join(lines)
