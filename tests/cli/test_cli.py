"""The ``loom`` command (loom_cli/) run as a subprocess against a running server (pytest-django's
``live_server``) with a real Celery worker on the fake provider: log in, create with ``--wait``, scale out,
show, list, delete; a failed job's exit code; catalog export and import; usage errors; and, after the run,
``/metrics`` and the usage API over the same server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from clusters.features.health import health_sweep
from clusters.models import Cluster, Node
from providers.models import FakeMachine, Provider
from templates_app.services import catalog_import
from tenants.services import api_token_create
from tests.clusters.workers import catalog, machines

ROOT = Path(__file__).resolve().parents[2]


def broken_catalog() -> dict[str, list[Any]]:
    """The fast fake catalog plus ``brokencloud``, whose every create is refused (a terminal error)."""
    data = catalog()
    data["providers"].append({"name": "brokencloud", "providertype": "fake",
                              "provisioner": {"latency_ms": "50", "terminal_failure_rate": "1"}})  # fmt: skip
    data["hardwaretypes"][0]["providermap"]["brokencloud"] = {"flavor": "f1"}
    data["imagetypes"][0]["providermap"]["brokencloud"] = {"image": "deb12", "sshuser": "loom"}
    return data


class Loom:
    """Runs ``python -m loom_cli`` with its own HOME (so its own config file) and nothing from the caller."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("LOOM_", "XDG_")) and key != "DJANGO_SETTINGS_MODULE"}  # fmt: skip
        self.env.update(HOME=str(home), PYTHONPATH=str(ROOT))

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "loom_cli", *args], cwd=self.home, env=self.env,
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == code, f"loom {' '.join(args)} → {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture
def loom(tmp_path: Path) -> Loom:
    home = tmp_path / "home"
    home.mkdir()
    return Loom(home)


@pytest.fixture
def server(live_server: Any, tenant_a: Any, admin_a: Any) -> dict[str, Any]:
    catalog_import(tenant=tenant_a, user=None, data=broken_catalog())
    return {"url": live_server.url, "token": api_token_create(user=admin_a, name="cli").key}


def test_create_scale_out_and_delete_a_cluster_from_the_command_line(workers, server, loom, settings, tmp_path):
    workers.start(concurrency=8)
    logged_in = loom("login", "--url", server["url"], "--token", server["token"])
    assert "tenants: acme" in logged_in.stdout
    config = loom.home / ".config" / "loom" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": server["url"], "token": server["token"], "tenant": ""}

    assert "fleet" in [template["name"] for template in loom.json("templates")]

    created = loom("create", "web", "--template", "fleet", "--size", "3", "--wait", "--interval", "0.2", "--json")
    answer = json.loads(created.stdout)
    cluster_id = answer["cluster"]["id"]
    assert answer["job"]["status"] == "completed" and answer["cluster"]["status"] == "active"
    assert len(answer["cluster"]["nodes"]) == 3
    progress = created.stderr.splitlines()  # not a terminal: one line per change, ending at 100 %
    assert progress and "create [" in progress[0] and progress[-1].endswith("completed") and "100.0%" in progress[-1]

    scaled = loom("scale-out", str(cluster_id), "2", "--wait", "--interval", "0.2")
    assert "cluster " + str(cluster_id) + " web: active" in scaled.stdout and "scale_out" in scaled.stderr
    assert Node.objects.filter(cluster_id=cluster_id, status="active").count() == 5
    shown = loom.json("show", str(cluster_id))
    assert shown["size"] == 5 and shown["latest_job"]["operation"] == "scale_out"
    assert "web" in loom("clusters").stdout and "web-" in loom("show", str(cluster_id)).stdout

    # Health: exit 5 until it is healthy; a machine deleted out of band is missing, and a repair replaces it.
    assert "not checked yet" in loom("health", str(cluster_id), code=5).stdout
    health_sweep()
    assert "health: healthy" in loom("health", str(cluster_id)).stdout
    gone = Node.objects.filter(cluster_id=cluster_id).order_by("number").last()
    FakeMachine.objects.filter(machine_id=gone.machine_id).update(deleted_at=timezone.now())
    Cluster.objects.filter(pk=cluster_id).update(health_due_at=None)
    health_sweep()
    unhealthy = loom("health", str(cluster_id), code=5).stdout
    assert (
        f"node {gone.number} {gone.hostname}: missing (1 sweeps in a row)" in unhealthy
        and "no longer exists" in unhealthy
    )
    assert "HEALTH" in loom("clusters").stdout and "missing" in loom("clusters").stdout
    assert loom.json("repair", str(cluster_id), "--preview")["repair"]["replace"][0]["number"] == gone.number
    started = loom.json("repair", str(cluster_id))
    assert started["job"]["operation"] == "repair"
    watched = loom("watch", str(cluster_id), "--interval", "0.2")  # a job started elsewhere, followed to its end
    assert f"job {started['job']['id']} repair [" in watched.stderr and watched.stderr.rstrip().endswith("completed")
    assert f"cluster {cluster_id} web: active" in watched.stdout

    deleted = loom.json("delete", str(cluster_id), "--wait", "--interval", "0.2")
    assert deleted["job"]["status"] == "completed" and deleted["cluster"]["status"] == "terminated"
    assert Cluster.objects.get(pk=cluster_id).status == "terminated"
    made = machines(Provider.objects.get(name="fakecloud"))
    assert made.count() == 6 and not made.filter(deleted_at__isnull=True).exists()  # one per node, all deleted

    # A job that fails: exit 3, with the job's message; the cluster is shown as it ended.
    failed = loom("create", "bad", "--template", "fleet", "--size", "1", "--provider", "brokencloud",
                  "--wait", "--interval", "0.2", code=3)  # fmt: skip
    assert "failed" in failed.stderr and "cluster" in failed.stdout

    # API errors: exit 1 with the API's message.
    missing = loom("show", "999999", code=1)
    assert "cluster 999999 not found" in missing.stderr
    unknown = loom("create", "web2", "--template", "nope", "--size", "1", code=1)
    assert "nope" in unknown.stderr

    # Catalog round trip.
    exported = tmp_path / "catalog.json"
    assert "exported" in loom("catalog", "export", str(exported)).stdout
    assert "fleet" in [item["name"] for item in json.loads(exported.read_text())["clustertemplates"]]
    imported = loom.json("catalog", "import", str(exported))
    assert not any(imported["created"].values()) and not any(imported["deleted"].values())
    assert "fleet" in imported["unchanged"]["clustertemplates"]

    # After the run: /metrics shows the series, the usage API counts the machines' time.
    settings.LOOM_METRICS_TOKEN = "metrics-token-for-tests"
    request = urllib.request.Request(server["url"] + "/metrics",
                                     headers={"Authorization": "Bearer metrics-token-for-tests"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    for series in ('loom_jobs{operation="scale_out",status="completed"} 1', 'loom_task_attempts_total{outcome="succeeded"}',
                   'loom_task_duration_seconds_bucket{action="create",provider="fakecloud",le="+Inf"}',
                   'loom_jobs{operation="create",status="failed"} 1', "loom_queue_depth", "loom_tasks{"):  # fmt: skip
        assert series in text, series
    usage = urllib.request.Request(server["url"] + "/api/v2/usage/nodes?groupby=hour&start=" + str(int(time.time()) - 3600),
                                   headers={"Authorization": f"Bearer {server['token']}"})  # fmt: skip
    with urllib.request.urlopen(usage, timeout=30) as response:
        body = json.loads(response.read())
    assert body["total"] > 0 and body["clusters"][0]["name"] == "web"


def test_usage_errors_exit_2_and_nothing_is_sent(loom, tmp_path):
    assert "required" in loom("create", "x", "--template", "t", code=2).stderr
    assert "not logged in" in loom("clusters", code=2).stderr
    loom.env.update(LOOM_URL="http://127.0.0.1:9", LOOM_TOKEN="loom_x_y")
    assert "is not valid JSON" in loom("reconfigure", "1", "--config", str(Path(__file__)), code=2).stderr
    assert "give a COUNT or --nodes" in loom("scale-in", "1", code=2).stderr
    unreachable = loom("clusters", code=1)
    assert "cannot reach http://127.0.0.1:9" in unreachable.stderr


def test_catalog_status_says_what_cannot_launch_and_why(server, loom, tenant_a):
    fleet = next(t for t in broken_catalog()["clustertemplates"] if t["name"] == "fleet")
    wants_solr = {**fleet, "name": "fleet-solr", "defaults": {**fleet["defaults"],
                  "services": [*fleet["defaults"]["services"], "solr"]}}  # fmt: skip
    catalog_import(tenant=tenant_a, user=None, data={"clustertemplates": [wants_solr]})
    loom("login", "--url", server["url"], "--token", server["token"])

    shown = loom("catalog", "status", code=4).stdout
    [line] = [row for row in shown.splitlines() if "fleet-solr" in row]
    assert "no: defaults.services: default service 'solr' is not in the catalog" in line
    assert any(row.split()[:3] == ["template", "fleet", "yes"] for row in shown.splitlines()), shown
    listed = {item["name"]: item for item in loom.json("catalog", "status", code=4)["clustertemplates"]}
    assert listed["fleet"]["launchable"] is True and listed["fleet-solr"]["launchable"] is False
    assert "no: defaults.services" in loom("templates").stdout


def test_tables_never_print_control_characters_from_the_catalog():
    """A tenant-supplied description with a terminal escape (here: set the window title) prints inert."""
    from loom_cli.main import table

    shown = table([("lamp", "\x1b]0;owned\x07 a web stack\r\n")], ["NAME", "DESCRIPTION"])
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "?]0;owned? a web stack" in shown


def test_the_progress_line_shows_the_stage_and_an_eta_from_the_stages_done():
    from datetime import UTC, datetime

    from loom_cli.main import progress_text

    job = {"id": 7, "operation": "create", "status": "running", "started_at": "2026-01-01T00:00:00Z",
           "progress": {"percent": 40.0, "completed": 44, "total": 110, "stage": 3, "stages": 8}}  # fmt: skip
    line = progress_text(job, now=datetime(2026, 1, 1, 0, 0, 39, tzinfo=UTC))
    # 3 stages took 39 s: 13 s a stage, 5 stages left.
    assert line.endswith("44/110 tasks  stage 4/8  ETA 1m05s  running"), line
    assert "ETA" not in progress_text({**job, "progress": {**job["progress"], "stage": 0}})  # no pace yet
    assert progress_text({**job, "status": "completed"}).endswith("tasks  completed")


def test_watch_is_wait_and_bash_completion_knows_the_commands_and_their_options(loom, tmp_path):
    assert "--watch" in loom("create", "--help").stdout and "--watch" in loom("repair", "--help").stdout
    script = tmp_path / "loom.bash"
    script.write_text(loom("completion", "bash").stdout)
    probe = (f"source {script}; COMP_WORDS=(loom inv); COMP_CWORD=1; _loom; echo \"${{COMPREPLY[*]}}\"; "
             "COMP_WORDS=(loom repair --no); COMP_CWORD=2; _loom; echo \"${COMPREPLY[*]}\"")  # fmt: skip
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.splitlines() == ["inventory", "--nodes"]
