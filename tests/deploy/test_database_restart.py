"""The database restarted under a running installation (issue 16): ``pg_ctl restart -m fast`` and
``-m immediate`` of a private PostgreSQL while a create runs and a client polls the API.

Loom runs in its production layout (``bench/deployment.py``: gunicorn web, worker and beat started by
``deploy/loom-serve`` on a private PostgreSQL and Redis), so the restart disturbs nothing else on the machine.
The scenario is ``bench/recovery.py``'s own (``database_restart``); here its facts are asserted: the job
completes with exactly one machine per node, no process needed a restart, and every request that hit the
outage got the 503 in the one error shape (``code: unavailable``), never a 500 or a traceback. The janitor's
intervals are the production ones: the worker gets through on its own (``until_the_database_answers``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.deployment import PrivateDeployment
from bench.recovery import database_restart, machines_of, wait_job


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[PrivateDeployment]:
    with PrivateDeployment(tmp_path / "deployment", env={"LOOM_RETRY_BACKOFF_SECONDS": "0.5"}) as deployed:
        yield deployed


def test_web_worker_and_beat_ride_through_a_database_restart(deployment: PrivateDeployment):
    for mode in ("fast", "immediate"):
        outcome = database_restart(deployment, mode)
        assert outcome.job_status == "completed", f"-m {mode}\n{deployment.logs()}"
        assert outcome.one_machine_per_node, f"-m {mode}: a machine was duplicated or never made"
        assert outcome.processes_alive, f"-m {mode}: a process died\n{deployment.logs()}"
        assert not outcome.other_errors, (
            f"-m {mode}: requests failed otherwise than with the 503: {outcome.other_errors}"
        )
        assert outcome.requests > 0

    # After both restarts the installation works as before: a delete leaves no machine behind.
    status, clusters = deployment.api("GET", "/api/v2/clusters?name=db-fast")
    assert status == 200, clusters
    cluster = next(item for item in clusters["results"] if item["name"] == "db-fast")
    status, answer = deployment.api("DELETE", f"/api/v2/clusters/{cluster['id']}")
    assert status == 202, answer
    ended = wait_job(deployment, answer["job"]["id"], until=lambda body: body["status"] != "running")
    assert ended["status"] == "completed", ended
    assert machines_of(deployment, cluster["id"])[2] == 0, "the delete left machines behind"
