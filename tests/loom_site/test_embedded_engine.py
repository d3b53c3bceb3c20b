"""The embedded mode really provisions: SQLite, the filesystem broker and real worker and beat processes.

What ``scripts/run`` starts, in pieces, on a throwaway data folder: ``manage.py migrate`` and ``loom_demo``,
``celery worker --pool threads`` (8 threads, as scripts/run) and ``celery beat`` (the janitor every second,
so it writes concurrently with everything else), all on ``loom_site.settings`` with its embedded defaults.
A third process plays the web: it creates a ``demo-web`` and a ``demo-hadoop`` cluster at once through the
services layer, waits for both to become active, deletes both at once and waits for them to terminate.

Isolation without a settings module of its own: every process gets the caller's environment minus every
``LOOM_*`` variable, plus ``LOOM_DATA_DIR`` in ``tmp_path`` — so the settings under test are exactly the
defaults a user gets, whatever database or broker the rest of the suite uses. The test process itself
touches neither this SQLite file nor the broker, so it runs in the normal PostgreSQL pytest run (any
``-n``), and needs no database fixture.

The demo catalog is imported as shipped by ``loom_demo``, then once more with every latency divided by 10
(boot 0.4 s instead of 4 s, actions 50-300 ms): the same provider, services and templates, so the run
takes seconds, not half a minute. Machines still boot for longer than a confirm takes, so confirms find
them booting and are put back on the broker with a countdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 240.0  # per phase; a loaded 2-core machine needs ~10 s for both
TIME_FACTOR = 10
CLUSTERS = {"web": ("demo-web", 6), "hadoop": ("demo-hadoop", 5)}


# --- the processes -------------------------------------------------------------------------------------------


def embedded_environment(data_dir: Path) -> dict[str, str]:
    """The caller's environment with the embedded defaults: no ``LOOM_*`` but the data folder (and a fast
    janitor, so beat and worker write while the clusters run)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_") and k != "DJANGO_SETTINGS_MODULE"}
    environment.update(
        DJANGO_SETTINGS_MODULE="loom_site.settings",
        LOOM_DATA_DIR=str(data_dir),
        LOOM_JANITOR_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    return environment


class EmbeddedLoom:
    """The embedded mode's processes on one data folder; every log is kept in ``logs``."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.environment = embedded_environment(self.data_dir)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, name: str, *command: str, timeout: float = DEADLINE_S) -> str:
        """Run a command to its end (in the repository, embedded environment); its stdout, or fail with both."""
        done = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=self.environment, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        (self.logs / f"{name}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def start(self, name: str, *celery_arguments: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "loom_site", *celery_arguments],
                cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, size: int = 3000) -> str:
        return "".join(
            f"\n--- {path.name} ---\n{path.read_text(errors='replace')[-size:]}" for path in self.logs.iterdir()
        )

    def stop(self) -> None:
        """Warm shutdown (SIGTERM, as Ctrl-C in scripts/run), then kill what is still there after 30 s."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedLoom]:
    loom = EmbeddedLoom(tmp_path)
    try:
        yield loom
    finally:
        loom.stop()


# --- what the "web" process does (runs inside the embedded environment, not in pytest) ----------------------


def time_compressed(data: dict[str, list[Any]], factor: int) -> dict[str, list[Any]]:
    """``data`` with the fake provider's boot and call latencies and every noop duration divided by
    ``factor``; nothing else changes."""

    def faster(value: str) -> str:
        if "=" in value:  # per action: create=400,confirm=50,...
            pairs = (item.split("=") for item in value.split(","))
            return ",".join(f"{action}={int(ms) // factor}" for action, ms in pairs)
        return str(int(value) // factor)

    result = json.loads(json.dumps(data))
    for provider in result.get("providers", []):
        fields = provider["provisioner"]
        for name in ("latency_ms", "latency_jitter_ms", "call_latency_ms"):
            if fields.get(name):
                fields[name] = faster(fields[name])
    for service in result.get("services", []):
        for action in service["provisioner"]["actions"].values():
            if action["type"] == "noop":
                action["fields"]["latency_ms"] = faster(action["fields"]["latency_ms"])
    return result


def drive(result_file: str) -> None:
    """Create both clusters at once as the demo user, wait, delete both at once, wait; write what was seen.

    Runs in its own process (``python -c``), like the web server would: it only writes to SQLite and
    publishes to the filesystem broker; the worker does everything else."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from clusters.models import Cluster, Job, Node, Task, TaskAttempt
    from clusters.services.lifecycle import cluster_create, cluster_delete
    from clusters.services.preview import PreviewRequest
    from providers.models import FakeMachine, Provider
    from providers.services import provider_key
    from templates_app.catalog_files import read_catalog_dir
    from templates_app.services import catalog_import
    from tenants.management.commands.loom_demo import DEMO_CATALOG_DIR
    from tenants.models import Tenant

    tenant = Tenant.objects.get(name="demo")
    user = get_user_model().objects.get(username="demo")
    catalog_import(tenant=tenant, user=None, data=time_compressed(read_catalog_dir(DEMO_CATALOG_DIR), TIME_FACTOR))
    key = provider_key(provider=Provider.objects.get(tenant=tenant, name="demo-cloud"))
    live_machines = FakeMachine.objects.filter(provider_key=key, deleted_at__isnull=True)

    def wait(jobs: dict[str, Job]) -> None:
        """Until every job has ended and its cluster settled (a failed job settles once nothing runs)."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            ended = Job.objects.filter(pk__in=[job.pk for job in jobs.values()]).exclude(status=Job.Status.RUNNING)
            settled = ended.exclude(cluster__status=Cluster.Status.PENDING)
            if settled.count() == len(jobs):
                return
            time.sleep(0.2)

    def observe(jobs: dict[str, Job]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for label, job in jobs.items():
            job.refresh_from_db()
            nodes = Node.objects.filter(cluster_id=job.cluster_id)
            tasks = Task.objects.filter(job=job).exclude(action="join")
            seen[label] = {
                "job": job.status,
                "message": job.message,
                "cluster": Cluster.objects.get(pk=job.cluster_id).status,
                "nodes": Counter(nodes.values_list("status", flat=True)),
                "nodes_with_machine_and_address": sum(1 for n in nodes if n.machine_id and n.ip_addresses),
                "tasks": Counter(tasks.values_list("status", flat=True)),
                "attempts_per_task": sorted(set(tasks.values_list("attempts", flat=True))),
                "attempt_rows": TaskAttempt.objects.filter(task__job=job).count(),
                "attempt_outcomes": Counter(
                    TaskAttempt.objects.filter(task__job=job).values_list("outcome", flat=True)
                ),
                "task_count": tasks.count(),
                "machines_of_nodes": sorted(nodes.exclude(machine_id="").values_list("machine_id", flat=True)),
            }
        return seen

    created = {
        label: cluster_create(user=user, tenant=tenant, request=PreviewRequest(name=f"try-{label}", template=name,
                                                                                size=size))[1]
        for label, (name, size) in CLUSTERS.items()
    }  # fmt: skip
    wait(created)
    after_create = observe(created)
    after_create["live_machines"] = sorted(live_machines.values_list("machine_id", flat=True))
    clusters = {label: Cluster.objects.get(pk=job.cluster_id) for label, job in created.items()}
    deleted = {label: cluster_delete(user=user, cluster=cluster) for label, cluster in clusters.items()}
    wait(deleted)
    after_delete = observe(deleted)
    after_delete["live_machines"] = live_machines.count()
    after_delete["machines_ever"] = FakeMachine.objects.filter(provider_key=key).count()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        journal_mode = cursor.fetchone()[0]
    Path(result_file).write_text(
        json.dumps({"create": after_create, "delete": after_delete, "journal_mode": journal_mode})
    )


# --- the test --------------------------------------------------------------------------------------------------


def test_demo_clusters_are_created_and_deleted_by_the_embedded_processes(embedded: EmbeddedLoom, tmp_path: Path):
    embedded.run("migrate", "manage.py", "migrate", "--noinput")
    embedded.start("worker", "worker", "--pool", "threads", "--concurrency", "8", "-l", "INFO")
    embedded.start("beat", "beat", "-l", "INFO")
    demo_output = embedded.run("loom_demo", "manage.py", "loom_demo")
    assert "sample and demo catalogs imported into tenant demo" in demo_output

    result_file = tmp_path / "result.json"
    code = f"import django; django.setup(); from {__name__} import drive; drive({str(result_file)!r})"
    embedded.run("web", "-c", code, timeout=3 * DEADLINE_S)
    result = json.loads(result_file.read_text())
    logs = embedded.tails()

    assert result["journal_mode"] == "wal"
    created, deleted = result["create"], result["delete"]
    for label, (_template, size) in CLUSTERS.items():
        seen = created[label]
        assert (seen["job"], seen["cluster"]) == ("completed", "active"), f"{label}: {seen}{logs}"
        assert seen["nodes"] == {"active": size} and seen["nodes_with_machine_and_address"] == size
        assert seen["tasks"] == {"completed": seen["task_count"]}
        # No failures (failure rate 0): one attempt per task, however often a confirm found its machine
        # booting and went back to the broker with a countdown (a poll is not an attempt).
        assert seen["attempts_per_task"] == [1] and seen["attempt_rows"] == seen["task_count"]
        assert seen["attempt_outcomes"] == {"succeeded": seen["task_count"]}
    # Exactly the nodes' machines exist, one per node, none from elsewhere.
    machines_of_nodes = sorted(m for label in CLUSTERS for m in created[label]["machines_of_nodes"])
    assert created["live_machines"] == machines_of_nodes
    assert len(set(machines_of_nodes)) == sum(size for _template, size in CLUSTERS.values())

    for label, (_template, size) in CLUSTERS.items():
        seen = deleted[label]
        assert (seen["job"], seen["cluster"]) == ("completed", "terminated"), f"{label}: {seen}{logs}"
        assert seen["nodes"] == {"deleted": size}
        assert seen["tasks"] == {"completed": seen["task_count"]}
    assert deleted["live_machines"] == 0
    assert deleted["machines_ever"] == len(machines_of_nodes)

    # Beat sent the janitor and the worker ran it alongside the clusters' tasks, on the same SQLite file.
    assert "Sending due task engine-janitor" in embedded.log("beat")
    assert "clusters.tasks.engine_janitor[" in embedded.log("worker")
    for name in ("worker", "beat", "web"):
        text = embedded.log(name)
        assert "database is locked" not in text and "Traceback" not in text, f"{name}:{logs}"
