"""``./scripts/run`` driven by a test: the embedded stack on a data folder of the test's own, its API over
HTTP with a token of the demo admin, ``manage.py shell`` on the same folder, ``kill -9`` of the whole stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.private_services import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "embedded-admin-password-1"

_TOKEN = """
from django.contrib.auth import get_user_model
from tenants.services import api_token_create
print(api_token_create(user=get_user_model().objects.get(username="admin"), name="restart").key)
"""
MACHINES = """
from collections import Counter
from clusters.models import Node
from providers.models import FakeMachine
keys = list(Node.objects.filter(cluster_id={cluster}).values_list("node_key", flat=True))
made = Counter(FakeMachine.objects.filter(node_key__in=keys).values_list("node_key", flat=True))
print(len(keys), sum(1 for key in keys if made[key] == 1))
"""
TAKEN_BACK = """
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

    def wait_job(self, job: int, *, until: Any, timeout: float = 150.0) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until ``until(job)``; any answer but 200 fails, with the stack's output."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.api("GET", f"/api/v2/jobs/{job}")
            assert status == 200, f"{status} {body}\n{self.tail()}"
            if until(body):
                return body
            assert time.monotonic() < deadline, f"job {job} after {timeout} s: {body}\n{self.tail()}"
            time.sleep(0.2)

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""
