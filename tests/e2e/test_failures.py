"""How shell actions fail on real lab hosts, through the engine and a real worker: a script exiting 75 is
retried (transient), any other non-zero exit fails its task at once (terminal) with the script's whole output
in the attempt's log, and after the node's host key changed the next action is refused, not re-pinned."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from clusters.engine.core import job_retry
from clusters.engine.dispatch import enqueue
from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from clusters.services.lifecycle import cluster_create, cluster_delete
from clusters.services.preview import PreviewRequest
from providers.credentials import generate_ed25519
from providers.resources import resources_import_dir
from providers.ssh import ConnectFailed, fingerprint, open_session, parse_host_key
from templates_app.services import catalog_import
from tests.clusters.workers import run_to_completion, wait_for_job
from tests.lab.fixtures import wait_until

from .helpers import lab_driver, namespaces

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = 300  # lines broken.sh prints before failing: more than an attempt's 2 KiB log tail holds

FLAKY = """#!/bin/sh
# Not ready the first time it runs on a node (EX_TEMPFAIL), fine the next.
if [ ! -e "$HOME/.loom/flaky-tried" ]; then
    touch "$HOME/.loom/flaky-tried"
    echo "flaky: not ready yet, try again later"
    exit 75
fi
echo "flaky: ready now"
"""

BROKEN = f"""#!/bin/sh
for step in $(seq 1 {STEPS}); do echo "broken: step $step"; done
echo "broken: the disk is on fire" >&2
exit 3
"""


def probe_catalog() -> dict[str, list[dict]]:
    """Two shell services on the starter's lab provider: ``broken`` installs after ``flaky``."""

    def service(name: str, script: str, requires: list[str]) -> dict:
        return {
            "name": name,
            "dependencies": {"install": {"requires": requires}},
            "provisioner": {"actions": {"install": {"type": "shell", "fields": {"script": script}}}},
        }

    return {
        "services": [service("flaky", "flaky.sh", []), service("broken", "broken.sh", ["flaky"])],
        "clustertemplates": [
            {
                "name": "probe",
                "description": "one lab host with a flaky and a broken service",
                "defaults": {"services": ["flaky", "broken"], "provider": "lab", "hardwaretype": "lab-host",
                             "imagetype": "lab-debian", "config": {}},
                "compatibility": {"hardwaretypes": ["lab-host"], "imagetypes": ["lab-debian"],
                                  "services": ["flaky", "broken"]},
                "administration": {"maxattempts": 3},
            }
        ],
    }  # fmt: skip


@pytest.fixture
def probe(starter, tmp_path: Path):
    catalog_import(tenant=starter, user=None, data=probe_catalog())
    scripts = tmp_path / "resources" / "automatortypes" / "shell" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "flaky.sh").write_text(FLAKY)
    (scripts / "broken.sh").write_text(BROKEN)
    resources_import_dir(tenant=starter, user=None, directory=tmp_path / "resources")
    return starter


def attempts(job: Job, service: str) -> list[TaskAttempt]:
    task = Task.objects.get(job=job, service=service, action="install")
    return list(TaskAttempt.objects.filter(task=task).order_by("number"))


def presented_host_key(node: Node) -> str | None:
    """The host key the node's sshd presents now (None while it does not answer)."""
    session = open_session(node.ip_addresses["access_v4"], user=node.ssh_user, credentials_ref=node.credentials_ref)
    try:
        with session:
            return session.host_key
    except ConnectFailed:
        return None


def change_host_key(tenant, node: Node) -> str:
    """Give the node's lab host a new host key, as a reinstalled machine (or an impostor) would have: the
    key file is replaced and sshd re-executes itself on SIGHUP, reading it. Returns the new public key."""
    lab = lab_driver(tenant).lab
    host = lab.get(node.machine_id)
    folder = lab.host_dir(host.name)
    private, public = generate_ed25519(comment="rebuilt")
    descriptor = os.open(folder / "ssh_host_ed25519_key", os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(private)
    (folder / "ssh_host_ed25519_key.pub").write_text(public + "\n")
    os.kill(lab.sshd_pid(host), signal.SIGHUP)
    new_key = " ".join(public.split()[:2])
    wait_until("sshd to present its new host key", lambda: presented_host_key(node) == new_key)
    return new_key


def test_a_transient_exit_is_retried_and_a_failing_script_fails_its_task_with_its_output(
    probe, admin_a, workers, lab_machines
):
    workers.start(env={"LOOM_RETRY_BACKOFF_SECONDS": "0.1"})
    cluster, job = cluster_create(user=admin_a, tenant=probe, request=PreviewRequest("probe", "probe", 1))
    job = wait_for_job(job)
    assert job.status == Job.Status.FAILED, f"{job.message}\n{workers.tail()}"
    assert job.message.endswith("failed after 1 attempt(s): ScriptFailed")

    # Exit 75: a retryable failure, and the next attempt ran the script again and succeeded.
    first, second = attempts(job, "flaky")
    assert (first.outcome, first.retryable, first.error_class) == ("failed", True, "ScriptFailedTransient")
    assert "flaky: not ready yet, try again later" in first.log and "exited with status 75" in first.log
    assert second.outcome == "succeeded" and "flaky: ready now" in second.log

    # Any other status: terminal at once (3 attempts were allowed), the whole output in the log.
    (failed,) = attempts(job, "broken")
    assert (failed.outcome, failed.retryable, failed.error_class) == ("failed", False, "ScriptFailed")
    assert "broken: step 1\n" in failed.log and f"broken: step {STEPS}\n" in failed.log
    assert failed.log.rstrip().endswith("broken: the disk is on fire")
    assert "broken.sh exited with status 3" in failed.log
    assert "broken: step 1\n" not in failed.log_tail and "the disk is on fire" in failed.log_tail
    assert Task.objects.get(job=job, service="broken").status == Task.Status.FAILED

    # The host key changes: the retried task is refused before anything runs, and the pin stays.
    (node,) = Node.objects.filter(cluster=cluster)
    pinned = node.host_key
    new_key = change_host_key(probe, node)
    job_retry(job=job, on_ready=enqueue)
    job = wait_for_job(job)
    assert job.status == Job.Status.FAILED
    refused = attempts(job, "broken")[-1]
    assert (refused.outcome, refused.retryable, refused.error_class) == ("failed", False, "HostKeyMismatch")
    assert fingerprint(parse_host_key(pinned)[1]) in refused.log
    assert fingerprint(parse_host_key(new_key)[1]) in refused.log
    assert "broken: step" not in refused.log
    node.refresh_from_db()
    assert node.host_key == pinned

    # Deleting needs no SSH: the machine goes whatever its key.
    run_to_completion(cluster_delete(user=admin_a, cluster=cluster), workers.log)
    assert Cluster.objects.get(pk=cluster.pk).status == Cluster.Status.TERMINATED
    assert node.machine_id not in namespaces()
