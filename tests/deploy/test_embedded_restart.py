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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .embedded import MACHINES, TAKEN_BACK, Embedded

TIMEOUT_S = 150.0  # below LOOM_REDISPATCH_SECONDS (300 s): only the restarted worker can recover in time


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
    nodes, single = (int(value) for value in embedded.shell(MACHINES.format(cluster=cluster)).split()[-2:])
    assert nodes == single == 4, "a machine was duplicated or never made"
    # What was running at the kill came back through the restarted worker, not the janitor's heartbeat timeout.
    assert int(embedded.shell(TAKEN_BACK.format(job=job)).split()[-1]) >= 1

    # The broker's folders: whatever the kill left there is a message the worker can read, or nothing.
    queue = embedded.data / "broker" / "queue"
    for message in queue.iterdir():
        json.loads(message.read_bytes())
    print(f"\nembedded restart: job done {time.monotonic() - restarted:.1f} s after scripts/run was ready again")
