"""A cluster on a static pool through the engine: a real worker process allocates two lab hosts from the pool,
confirms them over SSH, runs the starter ``base`` service's shell scripts on them with the ``static:``
credentials resolved in the worker, and the cluster's delete runs the pool's cleanup script on each host and
returns both to the pool."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command

from clusters.models import Cluster, Node
from clusters.services.lifecycle import cluster_create, cluster_delete
from clusters.services.preview import PreviewRequest
from providers.models import PoolHost, Provider
from providers.pool import pool_host_register
from templates_app.catalog_files import read_catalog_dir
from templates_app.services import catalog_import
from tenants.models import Tenant
from tests.clusters.workers import WorkerPool, run_to_completion
from tests.e2e.helpers import STARTER, node_shell, wait_for_worker
from tests.factories import enable_operator_providers
from tests.lab.fixtures import LabHosts
from tests.providers.test_static_pool_api import static_provider

pytestmark = pytest.mark.django_db(transaction=True)

MARKER = "/root/loom-pool-engine-marker"
# A cluster delete destroys machines without running the services' stop or remove actions, so what the
# services left on a borrowed host is the cleanup script's to undo: here base's block in /etc/hosts (a bind
# mount on lab hosts, so rewritten in place) and the automator's ~/.loom.
CLEANUP = f"""#!/bin/sh
set -eu
awk '/^# loom cluster .* begin$/{{skip=1}} !skip{{print}} /^# loom cluster .* end$/{{skip=0}}' /etc/hosts >/tmp/hosts.$$
cat /tmp/hosts.$$ >/etc/hosts && rm -f /tmp/hosts.$$
rm -rf "$HOME/.loom" {MARKER}
echo "returned $LOOM_NODE"
"""
TEMPLATE = {
    "name": "pool-base",
    "description": "Nodes that know each other by name, on hosts borrowed from the pool",
    "defaults": {"services": ["base"], "provider": "pool", "hardwaretype": "lab-host", "imagetype": "lab-debian"},
    "compatibility": {"hardwaretypes": ["lab-host"], "imagetypes": ["lab-debian"], "services": ["base"]},
    "constraints": {"size": {"min": 1, "max": 10}},
}


def pool_catalog(tenant: Tenant, lab: LabHosts) -> Provider:
    """The starter catalog, a ``pool`` provider whose hosts are two lab hosts, the starter's hardware and
    image types mapped for it (the pool ignores flavor and image; the image's SSH user does not apply either),
    and a template of ``base`` nodes on it."""
    enable_operator_providers(tenant)
    call_command("import_catalog", str(STARTER), "--tenant", tenant.name, "--resources", stdout=io.StringIO())
    provider = static_provider(tenant, ssh_private_key=lab.driver.keypair.path.read_text(), cleanup_script=CLEANUP)
    starter = read_catalog_dir(STARTER)
    (hardware,) = [doc for doc in starter["hardwaretypes"] if doc["name"] == "lab-host"]
    (image,) = [doc for doc in starter["imagetypes"] if doc["name"] == "lab-debian"]
    hardware["providermap"]["pool"] = {"flavor": "any"}
    image["providermap"]["pool"] = {"image": "any", "sshuser": "debian"}
    catalog_import(tenant=tenant, user=None,
                   data={"hardwaretypes": [hardware], "imagetypes": [image], "clustertemplates": [TEMPLATE]})  # fmt: skip
    return provider


def markers(lab: LabHosts) -> list[bool]:
    found = []
    for node in lab.nodes[:2]:
        with node.session() as session:
            found.append(session.run(["test", "-e", MARKER], check=False).exit_status == 0)
    return found


def test_a_cluster_borrows_pool_hosts_and_gives_them_back(
    tenant_a: Tenant, admin_a: Any, lab: LabHosts, workers: WorkerPool
) -> None:
    provider = pool_catalog(tenant_a, lab)
    hosts = [pool_host_register(actor=admin_a, provider=provider, address=node.address) for node in lab.nodes[:2]]
    workers.start()
    wait_for_worker()
    cluster, job = cluster_create(
        user=admin_a, tenant=tenant_a, request=PreviewRequest(name="borrowed", template="pool-base", size=2)
    )
    run_to_completion(job, workers.log)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    nodes = list(Node.objects.filter(cluster=cluster).order_by("number"))
    held = {host.node_key: host for host in PoolHost.objects.filter(state="allocated")}
    assert set(held) == {node.node_key for node in nodes}
    by_address = {node.address: node for node in lab.nodes[:2]}
    for node in nodes:
        host = held[node.node_key]
        assert node.machine_id == f"static-{host.pk}-1"
        assert node.ip_addresses["access_v4"] == host.address and node.ssh_user == "root"  # the pool's user
        assert node.credentials_ref == f"static:{host.provider_id}/{host.pk}"
        assert node.host_key == host.host_key == by_address[host.address].host_key
        # base ran on the host over SSH from the worker: every node is in this host's /etc/hosts by name
        listed = node_shell(node, "cat /etc/hosts")
        assert all(f"{other.ip_addresses['bind_v4']} {other.hostname}" in listed for other in nodes), listed

    for node in lab.nodes[:2]:
        with node.session() as session:
            session.run(["touch", MARKER])
    run_to_completion(cluster_delete(user=admin_a, cluster=cluster), workers.log)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED
    assert markers(lab) == [False, False]  # the cleanup script ran on both hosts
    assert sorted(PoolHost.objects.values_list("state", flat=True)) == ["free", "free"]
    assert {host.pk for host in hosts} == set(PoolHost.objects.values_list("pk", flat=True))
    for node in nodes:
        left = node_shell(node, 'cat /etc/hosts; if [ -e "$HOME/.loom" ]; then echo "~/.loom left"; fi')
        assert "loom cluster" not in left and "~/.loom left" not in left
