"""The production layout on one machine: 2 gunicorn web processes and 3 Celery worker processes (thread pool)
plus one beat, all started with ``deploy/loom-serve`` exactly as the systemd units and the compose file start
them, configured only through ``LOOM_*`` variables, on the test's PostgreSQL database and a RabbitMQ virtual
host of the test's own.

Each process gets a data folder of its own (as if on its own machine), so the secret and field encryption keys
come from ``LOOM_SECRET_KEY`` and ``LOOM_FIELD_ENCRYPTION_KEYS`` only, as they must in a real scale-out.
Several clusters are created at once through the HTTP API of both web processes (token auth), one worker that
is running tasks is killed with ``kill -9``, and the test polls the API until every job has ended: every job
completes, every cluster is active, every node has exactly one machine, and after deleting them all (again
through both web processes) no machine is left and no task is unfinished. Heartbeat, janitor and redispatch
intervals are shortened through the environment so that the dead worker's tasks come back in seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from bench.deployment import FAST_RECOVERY
from clusters.models import Cluster, Node, Task, TaskAttempt
from providers.models import Provider
from templates_app.services import catalog_import
from tenants.services import api_token_create
from tests.clusters.workers import catalog, database_url, machines

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
LOOM_SERVE = ROOT / "deploy" / "loom-serve"
AMQP = "amqp://guest:guest@127.0.0.1:5672"
TIMEOUT_S = 120.0
INTERVALS = FAST_RECOVERY
CLUSTERS = 4
NODES = 6
ENDED = ("completed", "failed", "aborted")


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (as root, else through ``sudo -n``); fails the test, never skips, when it cannot."""
    command = ["rabbitmqctl", "-q", *args]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail("rabbitmqctl is not installed: scripts/test installs and starts rabbitmq-server")
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


@pytest.fixture
def broker() -> Iterator[str]:
    """A RabbitMQ virtual host of this test's own (parallel runs never share queues), deleted afterwards."""
    vhost = f"loom_test_{os.getpid()}_{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Deployment:
    """The processes of one installation, each started by ``deploy/loom-serve`` with its own data folder."""

    def __init__(self, tmp_path: Path, broker_url: str) -> None:
        self.tmp_path = tmp_path
        self.broker_url = broker_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def environment(self, name: str, extra: dict[str, str]) -> dict[str, str]:
        """Nothing of the test's own LOOM_*/Django settings leaks in: only what an operator would set."""
        inherited = {key: value for key, value in os.environ.items()
                     if not key.startswith(("LOOM_", "DJANGO_"))}  # fmt: skip
        data_dir = self.tmp_path / name
        data_dir.mkdir()
        return {
            **inherited,
            "LOOM_DATA_DIR": str(data_dir),
            "LOOM_DATABASE_URL": database_url(),
            "LOOM_BROKER_URL": self.broker_url,
            "LOOM_SECRET_KEY": settings.SECRET_KEY,
            "LOOM_FIELD_ENCRYPTION_KEYS": ",".join(settings.FIELD_ENCRYPTION_KEYS),
            "LOOM_LOG_LEVEL": "WARNING",
            **INTERVALS,
            **extra,
        }

    def start(self, role: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(LOOM_SERVE), role], env=self.environment(name, extra), stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """``kill -9``: no warm shutdown, no acknowledgements, no last heartbeat."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def dead(self, *, besides: str = "") -> list[str]:
        return [name for name, process in self.processes.items() if name != besides and process.poll() is not None]

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self, size: int = 3000) -> str:
        parts = []
        for name in self.processes:
            text = (self.tmp_path / f"{name}.log").read_text(errors="replace")
            parts.append(f"--- {name} ---\n{text[-size:]}")
        return "\n".join(parts)


@pytest.fixture
def deployment(tmp_path: Path, broker: str) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, broker)
    try:
        yield deployed
    finally:
        deployed.close()


class Api:
    """A token-authenticated JSON client of one web process."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


def wait_healthy(base: str, deployment: Deployment) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert not deployment.dead(), f"a process exited during start-up\n{deployment.logs()}"
        assert time.monotonic() < deadline, f"{base}/healthz never answered\n{deployment.logs()}"
        time.sleep(0.2)


def wait_for_jobs(apis: list[Api], jobs: list[int], deployment: Deployment, killed: str = "") -> dict[int, Any]:
    """Poll ``GET /jobs/{id}`` (alternating web processes) until every job has ended and its cluster settled."""
    deadline = time.monotonic() + TIMEOUT_S
    ended: dict[int, Any] = {}
    polls = 0
    while len(ended) < len(jobs):
        for job_id in jobs:
            if job_id in ended:
                continue
            polls += 1
            status, job = apis[polls % len(apis)]("GET", f"/api/v2/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in ENDED:
                _, cluster = apis[polls % len(apis)]("GET", f"/api/v2/clusters/{job['cluster']}")
                if cluster["status"] != "pending":
                    ended[job_id] = job
        assert not deployment.dead(besides=killed), f"a process died\n{deployment.logs()}"
        if time.monotonic() > deadline:
            counts = Counter(Task.objects.filter(job_id__in=jobs).values_list("status", flat=True))
            raise AssertionError(f"jobs not ended after {TIMEOUT_S} s; tasks {dict(counts)}\n{deployment.logs()}")
        time.sleep(0.2)
    return ended


def test_two_web_and_three_worker_processes_survive_a_killed_worker(deployment: Deployment, tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="8", boot_ms="500", action_ms="150"))
    provider = Provider.objects.get(tenant=tenant_a, name="fakecloud")
    token = api_token_create(user=admin_a, name="scale-out").key

    ports = [free_port(), free_port()]
    for number, port in enumerate(ports):
        deployment.start("web", f"web{number}", LOOM_WEB_BIND=f"127.0.0.1:{port}", LOOM_WEB_PROCESSES="1")
    workers = [f"w{number}-{os.getpid()}@scale-out" for number in range(3)]
    for worker in workers:
        deployment.start("worker", worker, LOOM_WORKER_NAME=worker, LOOM_WORKER_CONCURRENCY="3")
    deployment.start("beat", "beat")
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    for base in bases:
        wait_healthy(base, deployment)
    apis = [Api(base, token) for base in bases]

    started = time.monotonic()
    jobs = []
    for number in range(CLUSTERS):
        body = {"name": f"scale{number}", "clusterTemplate": "fleet", "numMachines": NODES}
        status, answer = apis[number % 2]("POST", "/api/v2/clusters", body)
        assert status == 202, answer
        jobs.append(answer["job"]["id"])

    # kill -9 a worker while it runs tasks, once the clusters are well under way.
    deadline = time.monotonic() + TIMEOUT_S
    tasks = Task.objects.filter(job_id__in=jobs)
    while True:
        busy = Counter(
            worker.split("/")[0] for worker in tasks.filter(status="running").values_list("worker", flat=True)
        )
        if tasks.filter(status="completed").count() >= 20 and busy:
            break
        assert time.monotonic() < deadline, f"the creates never got busy\n{deployment.logs()}"
        time.sleep(0.05)
    victim = busy.most_common(1)[0][0]
    deployment.kill(victim)
    killed_s = time.monotonic() - started
    orphaned = set(tasks.filter(status="running", worker__startswith=f"{victim}/").values_list("pk", flat=True))

    ended = wait_for_jobs(apis, jobs, deployment, killed=victim)
    create_s = time.monotonic() - started
    assert [job["status"] for job in ended.values()] == ["completed"] * CLUSTERS, ended
    lost = set(TaskAttempt.objects.filter(task__job_id__in=jobs, outcome="lost").values_list("task_id", flat=True))
    assert orphaned and orphaned <= lost, "the janitor took back every task the dead worker held"

    clusters = [job["cluster"] for job in ended.values()]
    for number, cluster_id in enumerate(clusters):
        status, cluster = apis[number % 2]("GET", f"/api/v2/clusters/{cluster_id}")
        assert (status, cluster["status"]) == (200, "active"), cluster
        status, nodes = apis[(number + 1) % 2]("GET", f"/api/v2/clusters/{cluster_id}/nodes")
        assert status == 200 and nodes["count"] == NODES, nodes
        assert all(node["status"] == "active" and node["machine_id"] for node in nodes["results"]), nodes
        keys = list(Node.objects.filter(cluster_id=cluster_id).values_list("node_key", flat=True))
        made = Counter(machines(provider).filter(node_key__in=keys).values_list("node_key", flat=True))
        assert made == Counter({key: 1 for key in keys}), "a machine was duplicated or never made"

    deleting = []
    for number, cluster_id in enumerate(clusters):
        status, answer = apis[(number + 1) % 2]("DELETE", f"/api/v2/clusters/{cluster_id}")
        assert status == 202, answer
        deleting.append(answer["job"]["id"])
    deleted = wait_for_jobs(apis, deleting, deployment, killed=victim)
    assert [job["status"] for job in deleted.values()] == ["completed"] * CLUSTERS, deleted
    assert set(Cluster.objects.filter(pk__in=clusters).values_list("status", flat=True)) == {"terminated"}
    live = machines(provider).filter(deleted_at__isnull=True)
    assert not live.exists(), f"leaked machines: {list(live.values_list('machine_id', flat=True))}"
    unfinished = Task.objects.filter(job__cluster_id__in=clusters, status__in=["waiting", "queued", "running"])
    assert not unfinished.exists(), f"unfinished tasks: {list(unfinished.values_list('pk', 'status'))}"

    attempts = TaskAttempt.objects.filter(task__job_id__in=jobs + deleting)
    ran_on = {worker.split("/")[0] for worker in attempts.values_list("worker", flat=True)}
    assert ran_on == set(workers), f"every worker ran tasks: {ran_on}"
    tasks_run = attempts.count()
    print(  # the numbers the report quotes (pytest -s shows them)
        f"\nscale-out: {CLUSTERS}x{NODES} nodes, {tasks_run} attempts, {len(orphaned)} tasks lost with {victim}; "
        f"from the first request: kill at {killed_s:.1f} s, creates ended {create_s:.1f} s, "
        f"deletes ended {time.monotonic() - started:.1f} s"
    )
