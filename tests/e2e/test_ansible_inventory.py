"""``ansible all -m ping`` reaches a live Loom cluster through its inventory (issue 18): the real
``ansible-inventory`` and ``ansible`` read ``deploy/loom-inventory``, which runs the ``loom`` CLI against a live
server, for a starter ``web-cluster`` on lab hosts. SSH checks the host keys Loom pinned (``--known-hosts``),
strictly; the private key is the lab provider's, handed to ``ansible`` as an operator would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from providers.credentials import ssh_credentials
from tenants.services import api_token_create
from tests.cli.test_cli import Loom
from tests.clusters.workers import run_to_completion

from .helpers import nodes_with, wait_for_worker

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def test_ansible_pings_every_node_of_a_live_cluster_through_loom_s_inventory(
    starter, admin_a, workers, lab_machines, live_server, tmp_path, request
):
    workers.start()
    wait_for_worker()
    cluster, job = cluster_create(user=admin_a, tenant=starter,
                                  request=PreviewRequest(name="inv", template="web-cluster", size=3))  # fmt: skip
    run_to_completion(job, workers.log)
    home = tmp_path / "home"
    home.mkdir()
    loom = Loom(home)
    loom("login", "--url", live_server.url, "--token", api_token_create(user=admin_a, name="ansible").key)

    inventory = loom.json("inventory", str(cluster.pk))
    nodes = nodes_with(cluster, "base")
    assert sorted(inventory["loom_inv"]["hosts"]) == sorted(n.hostname for n in nodes)
    assert inventory["nginx"]["hosts"] == [n.hostname for n in nodes_with(cluster, "nginx")]
    (balancer,) = nodes_with(cluster, "haproxy")
    assert inventory["_meta"]["hostvars"][balancer.hostname] | {"loom_host_key": "", "loom_health": ""} == {
        "ansible_host": balancer.ip_addresses["access_v4"], "ansible_port": balancer.ssh_port,
        "ansible_user": balancer.ssh_user, "loom_node": balancer.number, "loom_services": ["base", "haproxy"],
        "loom_bind_v4": balancer.ip_addresses["bind_v4"], "loom_host_key": "", "loom_health": ""}  # fmt: skip
    assert "PRIVATE KEY" not in json.dumps(inventory)  # no credential leaves Loom this way

    key = tmp_path / "id_lab"
    key.write_text(ssh_credentials(balancer.credentials_ref, user=balancer.ssh_user).private_key)
    key.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    control_dir = tempfile.mkdtemp(prefix="loom-cp-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(control_dir, ignore_errors=True))
    env = {**loom.env, "LOOM_CLUSTER": str(cluster.pk), "LOOM_KNOWN_HOSTS": str(known_hosts),
           "LOOM": f"{sys.executable} -m loom_cli", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"), "ANSIBLE_HOME": str(tmp_path / "ansible"),
           # SSH's control sockets must fit a Unix socket path (108 bytes); pytest's folders are deeper.
           "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir}  # fmt: skip
    script = str(ROOT / "deploy" / "loom-inventory")

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{' '.join(command)} → {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    graph = run(_tool("ansible-inventory"), "-i", script, "--graph").stdout
    assert "@loom_inv:" in graph and "@haproxy:" in graph and f"--{balancer.hostname}" in graph
    listed: Any = json.loads(run(_tool("ansible-inventory"), "-i", script, "--list").stdout)
    assert listed["_meta"]["hostvars"][balancer.hostname]["loom_services"] == ["base", "haproxy"]
    assert len(known_hosts.read_text().splitlines()) == len(nodes)  # the keys Loom pinned, one per node

    pinged = run(_tool("ansible"), "all", "-i", script, "-m", "ping", "--private-key", str(key), "-f", "5").stdout
    for node in nodes:
        assert f"{node.hostname} | SUCCESS" in pinged, pinged
    # A host key Ansible was not given by Loom is refused: the strict check is real.
    known_hosts.write_text("")
    env.pop("LOOM_KNOWN_HOSTS")
    env["ANSIBLE_SSH_ARGS"] = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    refused = subprocess.run([_tool("ansible"), balancer.hostname, "-i", script, "-m", "ping", "--private-key",
                              str(key)], cwd=home, env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert refused.returncode != 0 and "UNREACHABLE" in refused.stdout + refused.stderr


def _tool(name: str) -> str:
    """The ansible tool of the project's virtualenv (requirements-dev pins ansible-core), else the system's."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name
