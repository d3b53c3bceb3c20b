"""The embedded stack killed mid-create and started again on the same data folder (issue 16).

``./scripts/run`` (SQLite, the filesystem broker, web + worker + beat) is started on a data folder of the
test's own, a cluster create is sent over the API, and once the create is under way the whole process group
is killed with ``kill -9``: web, worker, beat and the script itself, as a power cut would. Started again on
the same folder, with production intervals (``LOOM_HEARTBEAT_TIMEOUT`` 60 s, ``LOOM_REDISPATCH_SECONDS``
300 s), the job must finish well before either could have brought it back: the restarted worker takes back
what its previous life held (``clusters.engine.broker_watch.worker_restarted``). Every node ends with
exactly one machine, and the broker's folders hold no message that cannot be read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.private_services import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 150.0  # below LOOM_REDISPATCH_SECONDS (300 s): only the restarted worker can recover in time
PASSWORD = "embedded-admin-password-1"

_TOKEN = """
from django.contrib.auth import get_user_model
from tenants.services import api_token_create
print(api_token_create(user=get_user_model().objects.get(username="admin"), name="restart").key)
"""
_MACHINES = """
from collections import Counter
from clusters.models import Node
from providers.models import FakeMachine
keys = list(Node.objects.filter(cluster_id={cluster}).values_list("node_key", flat=True))
made = Counter(FakeMachine.objects.filter(node_key__in=keys).values_list("node_key", flat=True))
print(len(keys), sum(1 for key in keys if made[key] == 1))
"""
_TAKEN_BACK = """
from clusters.models import TaskAttempt
print(TaskAttempt.objects.filter(task__job_id={job}, outcome="lost", log__contains="was restarted").count())
"""


class Embedded:
    """``./scripts/run`` on ``data``, its output in ``log``."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / "run.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""

    def environment(self) -> dict[str, str]:
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(("LOOM_", "DJANGO_"))}
        return {**inherited, "LOOM_DATA_DIR": str(self.data), "LOOM_PORT": str(self.port),
                "LOOM_DEMO_ADMIN_PASSWORD": PASSWORD, "LOOM_DEMO_USER_PASSWORD": PASSWORD + "u"}  # fmt: skip

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0  # this start's output only
        with self.log.open("ab") as output:
            self.process = subprocess.Popen([str(ROOT / "scripts" / "run")], cwd=ROOT, env=self.environment(),
                                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while b"Loom is running at" not in self.log.read_bytes()[offset:]:
            assert self.process.poll() is None, f"scripts/run exited\n{self.tail()}"
            assert time.monotonic() < deadline, f"scripts/run never said it runs\n{self.tail()}"
            time.sleep(0.2)
        if not self.token:
            self.token = self.shell(_TOKEN).split()[-1]

    def kill(self) -> None:
        """``kill -9`` of everything scripts/run started (one process group): no shutdown at all."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def shell(self, code: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.environment(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     "X-Loom-Tenant": "demo"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    stack = Embedded(tmp_path / "data")
    try:
        yield stack
    finally:
        stack.stop()


def test_the_embedded_stack_killed_mid_create_finishes_the_job_once_started_again(embedded: Embedded):
    embedded.start()
    status, answer = embedded.api("POST", "/api/v2/clusters", {"name": "phoenix", "clusterTemplate": "demo-web",
                                                                 "numMachines": 4})  # fmt: skip
    assert status == 202, answer
    job, cluster = answer["job"]["id"], answer["cluster"]["id"]
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status, body = embedded.api("GET", f"/api/v2/jobs/{job}")
        assert status == 200, body
        tasks = body["progress"]["tasks"]
        if tasks.get("completed", 0) >= 2 and tasks.get("running", 0) >= 1:
            break
        assert body["status"] == "running" and time.monotonic() < deadline, f"{body}\n{embedded.tail()}"
        time.sleep(0.1)

    embedded.kill()
    embedded.start()
    restarted = time.monotonic()
    while True:
        status, body = embedded.api("GET", f"/api/v2/jobs/{job}")
        assert status == 200, body
        if body["status"] != "running":
            break
        assert time.monotonic() - restarted < TIMEOUT_S, f"job still running after the restart\n{embedded.tail()}"
        time.sleep(0.2)
    assert body["status"] == "completed", f"{body}\n{embedded.tail()}"
    nodes, single = (int(value) for value in embedded.shell(_MACHINES.format(cluster=cluster)).split()[-2:])
    assert nodes == single == 4, "a machine was duplicated or never made"
    # What was running at the kill came back through the restarted worker, not the janitor's heartbeat timeout.
    assert int(embedded.shell(_TAKEN_BACK.format(job=job)).split()[-1]) >= 1

    # The broker's folders: whatever the kill left there is a message the worker can read, or nothing.
    queue = embedded.data / "broker" / "queue"
    for message in queue.iterdir():
        json.loads(message.read_bytes())
    print(f"\nembedded restart: job done {time.monotonic() - restarted:.1f} s after scripts/run was ready again")
