"""Loom in its production layout on infrastructure it owns, for fault tests and ``bench/recovery.py``.

``PrivateDeployment`` starts a private PostgreSQL cluster and a private redis-server
(``bench/private_services.py``), runs ``deploy/loom-serve setup`` and ``manage.py loom_demo`` against them,
then ``loom-serve web`` (gunicorn), ``worker`` and ``beat`` exactly as the systemd units do, and talks to the
web process over HTTP with an API token of the demo admin. Nothing of the caller's Django settings leaks into
the processes: only what an operator would set. The database and the broker can then be restarted or killed
under the running installation, and every process can be killed and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.private_services import PrivatePostgres, PrivateRedis, ServiceError, free_port

ROOT = Path(__file__).resolve().parent.parent
LOOM_SERVE = ROOT / "deploy" / "loom-serve"
READY_TIMEOUT_S = 120.0
DATABASE = "loom"
FAST_RECOVERY = {
    "LOOM_RETRY_BACKOFF_SECONDS": "0.2",
    "LOOM_RETRY_BACKOFF_CAP_SECONDS": "2",
    "LOOM_HEARTBEAT_SECONDS": "0.5",
    "LOOM_HEARTBEAT_TIMEOUT": "3",
    "LOOM_REDISPATCH_SECONDS": "4",
    "LOOM_JANITOR_SECONDS": "1",
}
"""Production intervals are minutes; these make a dead worker's tasks come back within a few seconds."""

_TOKEN = """
from django.contrib.auth import get_user_model
from tenants.services import api_token_create
print(api_token_create(user=get_user_model().objects.get(username="admin"), name="bench").key)
"""


class PrivateDeployment:
    """web + worker + beat on a private PostgreSQL and Redis; ``env`` adds ``LOOM_*`` settings to every role."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.postgres = PrivatePostgres(root / "postgres")
        self.redis = PrivateRedis(root / "redis")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra = env or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""

    def __enter__(self) -> Self:
        try:
            self.postgres.start()
            self.postgres.create_database(DATABASE)
            self.redis.start()
            self._run(str(LOOM_SERVE), "setup")
            self._run(sys.executable, "manage.py", "loom_demo")
            self.token = self._run(sys.executable, "manage.py", "shell", "-c", _TOKEN).strip().splitlines()[-1]
            for role in ("web", "worker", "beat"):
                self.start(role)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def environment(self) -> dict[str, str]:
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(("LOOM_", "DJANGO_"))}
        return {
            **inherited,
            "LOOM_DATA_DIR": str(self.root / "data"),
            "LOOM_DATABASE_URL": self.postgres.url(DATABASE),
            "LOOM_BROKER_URL": self.redis.url,
            "LOOM_WEB_BIND": f"127.0.0.1:{self.port}",
            "LOOM_WORKER_CONCURRENCY": "4",
            "LOOM_DEMO_ADMIN_PASSWORD": "bench-admin-password-1",
            "LOOM_DEMO_USER_PASSWORD": "bench-user-password-1",
            "LOOM_LOG_LEVEL": "WARNING",
            # The scenarios poll as fast as a dashboard would; the API's per-user limit is not what they test.
            "LOOM_API_RATE_USER": "100000/min",
            **self.extra,
        }

    def _run(self, *command: str) -> str:
        done = subprocess.run(command, cwd=ROOT, env=self.environment(), capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise ServiceError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def shell(self, code: str) -> str:
        """Run Python in ``manage.py shell`` against the deployment's database; returns what it printed."""
        return self._run(sys.executable, "manage.py", "shell", "-c", code)

    def start(self, role: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``loom-serve <role>`` (again, after a kill), with ``env`` added to its environment."""
        with (self.root / f"{role}.log").open("ab") as log:
            process = subprocess.Popen([str(LOOM_SERVE), role], cwd=ROOT, env={**self.environment(), **env}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.processes[role] = process
        return process

    def kill(self, role: str) -> None:
        """``kill -9`` of the role's process group: no shutdown, no acknowledgements, no last heartbeat."""
        process = self.processes[role]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def dead(self) -> list[str]:
        return [role for role, process in self.processes.items() if process.poll() is not None]

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.dead() or time.monotonic() > deadline:
                raise ServiceError(f"{self.base}/healthz never answered (dead: {self.dead()})\n{self.logs()}")
            time.sleep(0.2)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, **headers: str) -> tuple[int, Any]:
        """One API call as the demo admin; (status, decoded JSON or the raw text when it is not JSON)."""
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "X-Loom-Tenant": "demo",
                **headers,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def logs(self, size: int = 3000) -> str:
        parts = []
        for role in self.processes:
            path = self.root / f"{role}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {role} ---\n{text[-size:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.redis.stop()
        self.postgres.stop()
