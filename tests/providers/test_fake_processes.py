"""The fake provider's machines are shared by every worker process and survive a killed one.

Real separate Python processes run a small Django script against the test database (committed data, so
``transactional_db``), as Celery workers on other machines would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection, connections

from providers.drivers.fake import FakeDriver
from providers.models import FakeMachine
from tests.providers.conftest import spec

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, os, sys, time
import django
django.setup()
from providers.drivers import MachineSpec, TransientError
from providers.drivers.fake import FakeDriver

command, provider_key, fields = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
driver = FakeDriver(fields, provider_key=provider_key)

def retry(call):
    while True:
        try:
            return call()
        except TransientError:
            pass

def node_spec(node):
    return MachineSpec.for_node(cluster_key="c1", node_key=f"c1-node-{node}", node_number=node,
                                flavor="small", image="debian-12", ssh_user="loom")

if command == "list":
    print(json.dumps(sorted(m.machine_id for m in retry(driver.list_tagged))))
elif command == "create":
    time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # start together, to race for real
    made = {}
    for node in range(1, int(sys.argv[4]) + 1):
        made[node] = retry(lambda: driver.create(node_spec(node))).machine_id
    print(json.dumps(made))
elif command == "create-then-die":
    for node in range(1, int(sys.argv[4]) + 1):
        retry(lambda: driver.create(node_spec(node)))
    sys.stdout.flush()
    os.kill(os.getpid(), 9)
"""


def _database_url() -> str:
    settings = connection.settings_dict
    password = f":{quote(settings['PASSWORD'])}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    return f"postgres://{quote(settings['USER'])}{password}@{host}:{port}/{settings['NAME']}"


def _start(command: str, provider_key: str, fields: dict[str, Any], *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "LOOM_TEST_DATABASE_URL": _database_url()}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, command, provider_key, json.dumps(fields), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen[str]) -> Any:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return json.loads(stdout)


@pytest.mark.django_db(transaction=True)
def test_another_process_sees_my_machines() -> None:
    driver = FakeDriver({"latency_ms": "0"}, provider_key="shared-1")
    made = sorted(driver.create(spec(node)).machine_id for node in (1, 2, 3))
    assert _result(_start("list", "shared-1", {"latency_ms": "0"})) == made
    assert _result(_start("list", "someone-else", {"latency_ms": "0"})) == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_processes_creating_the_same_nodes_make_one_machine_each() -> None:
    """Four workers, as with duplicate deliveries, race on the same 25 nodes with 30 % transient failures."""
    fields = {"latency_ms": "0", "failure_rate": "0.3", "seed": "processes"}
    start_at = str(time.time() + 4)  # after every interpreter has set Django up
    processes = [_start("create", "shared-2", fields, "25", start_at) for _ in range(4)]
    results = [_result(process) for process in processes]
    assert all(result == results[0] for result in results)  # everyone got the same machine per node
    made = FakeMachine.objects.filter(provider_key="shared-2")
    assert Counter(made.values_list("node_key", flat=True)) == Counter(f"c1-node-{n}" for n in range(1, 26))
    assert set(made.values_list("machine_id", flat=True)) == set(results[0].values())


@pytest.mark.django_db(transaction=True)
def test_machines_survive_a_killed_worker() -> None:
    process = _start("create-then-die", "shared-3", {"latency_ms": "0"}, "5")
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    survivor = FakeDriver({"latency_ms": "0"}, provider_key="shared-3")
    assert {m.node_key for m in survivor.list_tagged()} == {f"c1-node-{n}" for n in range(1, 6)}
    # The next worker's retried create finds them instead of making more.
    assert survivor.create(spec(3)).node_key == "c1-node-3"
    assert FakeMachine.objects.filter(provider_key="shared-3").count() == 5


@pytest.mark.django_db(transaction=True)
def test_simultaneous_creates_of_one_node_race_to_one_machine() -> None:
    """Threads (each with its own database connection) released together on the same node, many times."""
    driver = FakeDriver({"latency_ms": "0"}, provider_key="shared-4")
    threads = 8
    for node in range(1, 11):
        barrier = threading.Barrier(threads)

        def create(node: int = node, barrier: threading.Barrier = barrier) -> str:
            try:
                barrier.wait()
                return driver.create(spec(node)).machine_id
            finally:
                connections.close_all()

        with ThreadPoolExecutor(threads) as pool:
            ids = set(pool.map(lambda _: create(), range(threads)))
        assert len(ids) == 1
    assert FakeMachine.objects.filter(provider_key="shared-4").count() == 10
