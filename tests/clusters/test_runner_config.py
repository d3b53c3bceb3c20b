"""The runner expands the cluster config and the action's fields per node, with the nodes' real addresses;
a macro that only lacks a peer's address waits, any other macro error fails the task naming the macro."""

from __future__ import annotations

import pytest

from clusters.engine.runner import Waiting, expanded_inputs
from clusters.models import Cluster, Node, Task
from clusters.planning.planner import Action
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from providers.drivers import TerminalError
from templates_app.services import catalog_import

from .engine_helpers import drive
from .workers import catalog

pytestmark = pytest.mark.django_db

CONFIG = {"app_hosts": "%host.service.app%", "me": "%ip.self%", "first": "%ip.bind_v4.service.base[0]%", "n": 1}


@pytest.fixture
def cluster_and_job(tenant_a, admin_a) -> tuple[Cluster, object]:
    data = catalog(boot_ms="0")
    data["clustertemplates"][0]["defaults"]["config"] = CONFIG
    catalog_import(tenant=tenant_a, user=None, data=data)
    return cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("macros", "fleet", 3))


def test_config_macros_expand_to_each_nodes_real_addresses(cluster_and_job):
    cluster, job = cluster_and_job
    drive(job)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    nodes = list(Node.objects.filter(cluster=cluster).order_by("number"))
    hosts = ",".join(n.hostname for n in nodes if "app" in n.services)
    for node in nodes:
        config, _ = expanded_inputs(cluster, node, cluster.config, {})
        assert config == {"app_hosts": hosts, "me": node.ip_addresses["bind_v4"],
                          "first": nodes[0].ip_addresses["bind_v4"], "n": 1}  # fmt: skip
    configured = Task.objects.get(job=job, action=Action.CONFIGURE, service="app", node=nodes[0])
    assert "config keys: app_hosts, first, me, n" in configured.task_attempts.get().log


def test_a_macro_waiting_for_a_peers_address_waits_and_a_bad_macro_fails(cluster_and_job):
    cluster, _ = cluster_and_job
    node = Node.objects.filter(cluster=cluster).first()
    with pytest.raises(Waiting, match="waits for node addresses"):
        expanded_inputs(cluster, node, cluster.config, {})
    Node.objects.filter(cluster=cluster).update(status=Node.Status.ACTIVE)  # all confirmed, still no address
    with pytest.raises(TerminalError, match=r"%ip.self% at /config/me: node \d+ has no bind_v4 address yet"):
        expanded_inputs(cluster, node, cluster.config, {})
    with pytest.raises(TerminalError, match="no node of this cluster hosts service db"):
        expanded_inputs(cluster, node, {}, {"args": "%host.service.db%"})
    assert expanded_inputs(cluster, node, {"plain": "no macros"}, {}) == ({"plain": "no macros"}, {})
