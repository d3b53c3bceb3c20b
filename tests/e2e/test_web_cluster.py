"""The starter ``web-cluster`` really runs: created by a real worker on lab hosts, it serves HTTP through its
balancer from every web node, its cache answers, every node knows every other by name; a changed config
reaches the web nodes through the automator; and a delete leaves nothing of it on this machine."""

from __future__ import annotations

import time

import pytest
import redis

from clusters.models import Cluster, Node, Task, TaskAttempt
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from tests.clusters.workers import run_to_completion

from .helpers import (
    delete_leaving_nothing,
    fetch_bodies,
    node_shell,
    nodes_with,
    reconfigure_service,
    service_action,
    service_pids,
    wait_for_worker,
)

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 4


def cache_answers(cluster: Cluster, cache: Node) -> bool:
    """Whether redis answers PING on the cache node's address (from this machine, outside the cluster)."""
    client = redis.Redis(host=cache.ip_addresses["access_v4"], port=cluster.config["cache"]["port"], socket_timeout=5)
    try:
        return client.ping() is True
    finally:
        client.close()


def test_a_web_cluster_serves_through_its_balancer_and_leaves_nothing_behind(starter, admin_a, workers, lab_machines):
    workers.start()
    wait_for_worker()
    started = time.monotonic()
    cluster, job = cluster_create(
        user=admin_a, tenant=starter, request=PreviewRequest(name="web", template="web-cluster", size=SIZE)
    )
    run_to_completion(job, workers.log)
    created_in = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    nodes = list(Node.objects.filter(cluster=cluster).order_by("number"))
    assert len(nodes) == SIZE
    assert set(TaskAttempt.objects.filter(task__job=job).values_list("outcome", flat=True)) == {"succeeded"}
    (balancer,) = nodes_with(cluster, "haproxy")
    (cache,) = nodes_with(cluster, "redis")
    web = nodes_with(cluster, "nginx")
    assert len(web) == SIZE - 2
    configured = Task.objects.get(job=job, service="haproxy", action="configure").task_attempts.get()
    assert f"over {len(web)} backend(s): {' '.join(n.ip_addresses['bind_v4'] for n in web)}" in configured.log

    def served() -> set[str]:
        return fetch_bodies(balancer.ip_addresses["access_v4"], cluster.config["lb"]["port"])

    # Every web node answers through the balancer; the cache answers on its own node's address.
    assert served() == {f"{cluster.config['web']['message']} from {node.hostname}" for node in web}
    assert cache_answers(cluster, cache)

    # Every node's own /etc/hosts lists every node of the cluster.
    expected = {(node.ip_addresses["bind_v4"], node.hostname) for node in nodes}
    for node in nodes:
        listed = {tuple(line.split()[:2]) for line in node_shell(node, "cat /etc/hosts").splitlines() if line.strip()}
        assert expected <= listed, f"/etc/hosts of {node.hostname} lacks {expected - listed}"

    # A changed config reaches the web nodes through the automator, and the balancer serves it at once.
    changed = 'Reconfigured: "$5" \\ {ok};'  # characters nginx's config syntax would otherwise trip on
    web_config = {**cluster.config["web"], "message": changed}
    Cluster.objects.filter(pk=cluster.pk).update(config={**cluster.config, "web": web_config})
    cluster.refresh_from_db()
    for node in web:
        assert reconfigure_service(cluster, node, "nginx").startswith("$ nginx.sh configure\n")
    bodies = {f"{changed} from {node.hostname}" for node in web}
    assert served() == bodies

    # The balancer reconfigured while serving hands over to a new process.
    (old_balancer,) = service_pids(balancer)
    reconfigure_service(cluster, balancer, "haproxy")
    assert list(service_pids(balancer)) != [old_balancer]
    assert served() == bodies

    # With a web node stopped the other one answers everything; every service stops and starts again.
    service_action(cluster, web[0], "nginx", "stop")
    assert service_pids(web[0]) == {}
    assert served() == {f"{changed} from {web[1].hostname}"}
    for node, service in [(cache, "redis"), (balancer, "haproxy")]:
        service_action(cluster, node, service, "stop")
        assert service_pids(node) == {}, f"{service} still running after stop"
    for node, service in [(web[0], "nginx"), (cache, "redis"), (balancer, "haproxy")]:
        service_action(cluster, node, service, "start")
        assert list(service_pids(node).values()) == [service]
    assert served() == bodies
    assert cache_answers(cluster, cache)

    # Delete: the job completes and nothing of the cluster is left on this machine.
    deleted_in = delete_leaving_nothing(cluster=cluster, user=admin_a, running=["haproxy", "redis"] + ["nginx"] * len(web),
                                        wait=lambda job: run_to_completion(job, workers.log))  # fmt: skip
    print(f"{SIZE}-node web-cluster: create {created_in:.1f} s, delete {deleted_in:.1f} s")
