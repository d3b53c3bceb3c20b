"""Loom's own processes killed with ``kill -9`` under load (issue 16), in the production layout on a private
PostgreSQL and Redis (``bench/deployment.py``):

* the web process killed while ``POST /api/v2/clusters`` with an ``Idempotency-Key`` is in flight, then the
  same request sent again to a new web process: exactly one cluster, whichever side of the commit the kill
  fell on (the record of the key is written in the create's own transaction, ``clusters.api.idempotent``);
* a worker killed in the middle of a delete, with beat killed too: nothing moves the orphaned task while beat
  is away (the janitor is what takes a dead worker's tasks back), and once a worker and beat are back the
  delete completes and no machine is left.

The janitor's intervals are shortened through the environment (as ``tests/deploy/test_scale_out.py`` does),
so a dead worker's task comes back in seconds rather than the production minute.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.deployment import FAST_RECOVERY, PrivateDeployment
from bench.recovery import machines_of, wait_job

ENDED = ("completed", "failed", "aborted")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[PrivateDeployment]:
    with PrivateDeployment(tmp_path / "deployment", env=FAST_RECOVERY) as deployed:
        yield deployed


def clusters_named(deployment: PrivateDeployment, name: str) -> list[dict[str, Any]]:
    status, page = deployment.api("GET", f"/api/v2/clusters?name={name}&page_size=100")
    assert status == 200, page
    return [cluster for cluster in page["results"] if cluster["name"] == name]


def test_web_killed_during_a_create_then_the_same_request_again_makes_exactly_one_cluster(deployment):
    outcomes, jobs = [], []
    for number, delay in enumerate((0.0, 0.03, 0.06, 0.1, 0.2, 0.4)):
        name, key = f"once{number}", str(uuid.uuid4())
        body = {"name": name, "clusterTemplate": "demo-web", "numMachines": 3}
        first: list[tuple[int, Any]] = []
        sender = threading.Thread(target=_send, args=(deployment, body, key, first), daemon=True)
        sender.start()
        time.sleep(delay)
        deployment.kill("web")
        sender.join(timeout=35)
        deployment.start("web")
        deployment.wait_healthy()
        status, answer = deployment.api("POST", "/api/v2/clusters", body, **{"Idempotency-Key": key})
        assert status == 202, answer
        made = clusters_named(deployment, name)
        assert [cluster["id"] for cluster in made] == [answer["cluster"]["id"]], f"{name}: {made}"
        outcomes.append("answered before the kill" if first and first[0][0] == 202 else "killed mid-request")
        jobs.append(answer["job"]["id"])
    for job in jobs:
        assert wait_job(deployment, job, until=lambda body: body["status"] in ENDED)["status"] == "completed"
    print(f"\nweb killed mid-create: {outcomes}")  # pytest -s shows which side of the kill each request fell on


def _send(deployment: PrivateDeployment, body: dict[str, Any], key: str, answers: list[tuple[int, Any]]) -> None:
    try:
        answers.append(deployment.api("POST", "/api/v2/clusters", body, **{"Idempotency-Key": key}))
    except OSError as error:  # the connection died with the web process
        answers.append((0, str(error)))


def test_a_worker_and_beat_killed_mid_delete_leave_nothing_stuck_once_beat_is_back(deployment):
    status, answer = deployment.api("POST", "/api/v2/clusters", {"name": "gone", "clusterTemplate": "demo-web",
                                                                   "numMachines": 4})  # fmt: skip
    assert status == 202, answer
    cluster = answer["cluster"]["id"]
    assert wait_job(deployment, answer["job"]["id"], until=lambda job: job["status"] in ENDED)["status"] == "completed"

    status, answer = deployment.api("DELETE", f"/api/v2/clusters/{cluster}")
    assert status == 202, answer
    job = answer["job"]["id"]
    wait_job(deployment, job, until=lambda body: body["progress"]["tasks"].get("running", 0) > 0, timeout=60)
    deployment.kill("beat")
    deployment.kill("worker")
    # A replacement under another name (a worker restarted under its own name takes its tasks back itself,
    # clusters.engine.broker_watch.worker_restarted; tests/deploy/test_embedded_restart.py).
    deployment.start("worker", LOOM_WORKER_NAME="replacement@%h")
    time.sleep(8)  # well past LOOM_HEARTBEAT_TIMEOUT: only the janitor, on beat, could take the task back
    status, stuck = deployment.api("GET", f"/api/v2/jobs/{job}")
    assert status == 200 and stuck["status"] == "running", stuck

    deployment.start("beat")
    ended = wait_job(deployment, job, until=lambda body: body["status"] in ENDED)
    assert ended["status"] == "completed", f"{ended}\n{deployment.logs()}"
    status, gone = deployment.api("GET", f"/api/v2/clusters/{cluster}")
    assert (status, gone["status"]) == (200, "terminated"), gone
    assert machines_of(deployment, cluster)[2] == 0, "the delete left machines behind"
