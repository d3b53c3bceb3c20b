"""Real Celery workers for engine tests: processes on the test database, talking through Redis.

``WorkerPool`` starts ``celery worker --pool threads`` subprocesses (optionally with an embedded beat, for
the janitor), can ``kill -9`` one and start another, and points this process's Celery app at the same
broker so what the test starts is published there. Nothing is eager.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.db import connection

from bench import workers as bench_workers
from clusters.engine.core import job_retry
from clusters.engine.dispatch import enqueue
from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from clusters.services.lifecycle import cluster_delete
from loom_site.celery import app
from providers.models import FakeMachine, Provider
from providers.services import provider_key

ROOT = Path(__file__).resolve().parents[2]
REDIS = bench_workers.REDIS
CLAIM_KEY = bench_workers.CLAIM_KEY
TIMEOUT_S = 120


def database_url() -> str:
    settings = connection.settings_dict
    password = f":{quote(settings['PASSWORD'])}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    return f"postgres://{quote(settings['USER'])}{password}@{host}:{port}/{settings['NAME']}"


def claim_redis_db() -> int:
    """A Redis database no one else is using (the claim protocol is shared with the benchmarks, so a test run
    and a benchmark never share a broker)."""
    try:
        return bench_workers.claim_redis_db(REDIS)
    except bench_workers.HarnessError as error:
        pytest.fail(str(error))


def forget_connections() -> None:
    """Drop what this process's Celery app cached for the broker and result backend it was configured with
    (connection and producer pools, the thread's backend), so a changed ``broker_url`` takes effect here and
    later tests in this process start from the configuration they set themselves."""
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    vars(app._local).pop("backend", None)


class WorkerPool:
    """Worker processes on one broker; ``log`` collects every worker's output."""

    def __init__(self, tmp_path: Path, broker: str | None = None) -> None:
        """On a Redis database of the shared server claimed for this pool, or on ``broker`` (a private one a
        fault test owns, see ``bench/private_services.py``)."""
        self.claimed = broker is None
        self.broker = broker or f"{REDIS}/{claim_redis_db()}"
        self.log = tmp_path / "worker.log"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._saved = {key: app.conf[key] for key in ("broker_url", "task_always_eager")}
        app.conf.update(broker_url=self.broker, task_always_eager=False)
        forget_connections()

    def start(
        self, *, concurrency: int = 8, beat: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings_worker",
            "LOOM_WORKER_DATABASE_URL": database_url(),
            "LOOM_BROKER_URL": self.broker,
            "LOOM_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        application = _application(len(self.processes))
        name = f"{application}@%h"
        # Its database sessions carry its name, so ``kill`` can tell when the last of them has ended.
        environment["LOOM_WORKER_DATABASE_URL"] += f"?application_name={application}"
        schedule = self.log.parent / f"beat-{len(self.processes)}" if beat else None
        command = bench_workers.worker_command(name=name, concurrency=concurrency, beat_schedule=schedule)
        with self.log.open("a") as output:
            # A session of its own, so the worker and what it forks (the embedded beat is a child process)
            # can be signalled as one group: a kill -9 of the worker alone left its beat running after the
            # test, publishing janitor tasks into a broker database another test would claim next.
            process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """``kill -9`` of the worker and its children: no shutdown, no acknowledgements, no last heartbeat.

        Returns once the dead worker's database sessions have ended too. A statement it sent just before it
        died still runs to its end on the server, and in autocommit it commits: a successful finish completes
        its task and claims the next one for the dead worker. Reading the tasks before that commit would see
        the old task still running and miss the claimed one."""
        _signal_group(process, signal.SIGKILL)
        process.wait()
        application = _application(self.processes.index(process))
        deadline = time.monotonic() + 30
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application])
                if not cursor.fetchone()[0]:
                    return
                assert time.monotonic() < deadline, f"the killed worker's database sessions never ended ({application})"
                time.sleep(0.02)

    def close(self) -> None:
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)  # also a killed worker's group: children may outlive it
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        app.conf.update(self._saved)
        forget_connections()
        if self.claimed:
            redis.Redis.from_url(self.broker).flushdb()

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text()[-size:] if self.log.exists() else ""


def catalog(
    failure_rate: str = "0", seed: str = "", *, boot_ms: str = "300", action_ms: str = "20"
) -> dict[str, list[Any]]:
    action = {"type": "noop", "fields": {"latency_ms": action_ms}}
    return {
        "providers": [
            {"name": "fakecloud", "providertype": "fake",
             "provisioner": {"latency_ms": boot_ms, "failure_rate": failure_rate, "call_latency_ms": "5", "seed": seed}},
        ],
        "hardwaretypes": [{"name": "small", "providermap": {"fakecloud": {"flavor": "f1", "cost": "0.01"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"fakecloud": {"image": "deb12", "sshuser": "loom"}}}],
        "services": [
            {"name": "base", "dependencies": {},
             "provisioner": {"actions": {"install": action, "configure": action}}},
            {"name": "app", "dependencies": {"install": {"requires": ["base"]}, "runtime": {"requires": ["base"]}},
             "provisioner": {"actions": {"install": action, "configure": action, "start": action}}},
        ],
        "clustertemplates": [
            {"name": "fleet", "description": "noop services on fake machines",
             "defaults": {"services": ["base", "app"], "provider": "fakecloud", "hardwaretype": "small",
                          "imagetype": "debian", "config": {}},
             "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"], "services": ["base", "app"]}},
        ],
    }  # fmt: skip


def wait_for_job(job: Job, timeout: float = TIMEOUT_S) -> Job:
    """Until the job has ended and its cluster settled (a failed job settles once nothing runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in (Job.Status.COMPLETED, Job.Status.FAILED, Job.Status.ABORTED):
            cluster = Cluster.objects.get(pk=job.cluster_id)
            if cluster.status != Cluster.Status.PENDING:
                return job
        time.sleep(0.1)
    counts = Counter(Task.objects.filter(job=job).values_list("status", flat=True))
    raise AssertionError(f"job {job.pk} still {job.status} after {timeout} s; tasks {dict(counts)}")


def _application(index: int) -> str:
    """The name of this test process's ``index``-th worker, also its database sessions' application name."""
    return f"test-{os.getpid()}-{index}"


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the process group the worker leads (see ``WorkerPool.start``); nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def run_to_completion(job: Job, log: Path, retries: int = 0, timeout: float = TIMEOUT_S) -> Job:
    """Wait for the job; a failed one is retried (as a user would) up to ``retries`` times."""
    job = wait_for_job(job, timeout)
    for _ in range(retries):
        if job.status != Job.Status.FAILED:
            break
        job_retry(job=job, on_ready=enqueue)
        job = wait_for_job(job, timeout)
    if job.status != Job.Status.COMPLETED:
        failed = TaskAttempt.objects.filter(task__job=job).exclude(outcome=TaskAttempt.Outcome.SUCCEEDED)
        attempts = "\n".join(f"task {a.task.key} ({a.task.action} {a.task.service}) attempt {a.number}: "
                              f"{a.outcome} {a.error_class}\n{a.log[-1500:]}" for a in failed.select_related("task"))  # fmt: skip
        raise AssertionError(f"{job.message}\n--- attempts that did not succeed ---\n{attempts}\n"
                             f"--- worker log ---\n{log.read_text()[-4000:]}")  # fmt: skip
    return job


def machines(provider: Provider) -> Any:
    return FakeMachine.objects.filter(provider_key=provider_key(provider=provider))


def assert_one_machine_per_node(cluster: Cluster, provider: Provider) -> None:
    """Every node of the cluster is active on exactly one machine the provider made for it."""
    nodes = list(Node.objects.filter(cluster=cluster))
    made = Counter(
        machines(provider).filter(node_key__in=[n.node_key for n in nodes]).values_list("node_key", flat=True)
    )
    assert made == Counter({node.node_key: 1 for node in nodes}), "a machine was duplicated or never made"
    assert all(node.machine_id and node.status == Node.Status.ACTIVE for node in nodes)


def delete_and_check_nothing_left(admin: Any, cluster: Cluster, provider: Provider, log: Any) -> None:
    """Delete the cluster through the workers and check that no machine of its nodes is left."""
    run_to_completion(cluster_delete(user=admin, cluster=cluster), log)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED
    keys = Node.objects.filter(cluster=cluster).values_list("node_key", flat=True)
    live = machines(provider).filter(node_key__in=list(keys), deleted_at__isnull=True)
    assert not live.exists(), f"leaked machines: {list(live.values_list('machine_id', flat=True))}"
