"""The starter catalog's ``web-cluster-ansible`` and ``web-cluster-puppet`` pass the check ``web-cluster`` (shell)
passes in ``test_web_cluster.py``: created on lab hosts through the engine by a real worker, with every service
action carried out on the node by ``ansible-playbook`` (connection local) or ``puppet apply``, the balancer answers
from every web node, the cache answers, every node knows every other by name; a changed config reaches the web
nodes through the same automator; and a delete leaves no namespace, veth link, sshd or service process."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis
from django.core.management import call_command

from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest, cluster_preview
from tests.clusters.workers import WorkerPool, run_to_completion
from tests.factories import enable_operator_providers

from .helpers import (
    STARTER,
    delete_leaving_nothing,
    fetch_bodies,
    node_shell,
    nodes_with,
    reconfigure_service,
    wait_for_worker,
)

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 4
JOB_TIMEOUT_S = 600  # Ansible and Puppet start a Python or Ruby process per action: slower than the shell variant


def ran(tool: str, service: str) -> str:
    """How the automator's output of an action of the variant's ``service`` begins: what it ran."""
    if tool == "ansible":
        return f"$ ansible-playbook {service}.yml"
    return "$ puppet apply include loom_base" if service == "base" else f"$ puppet apply {service}.pp"


def completed(job: Job, workers: WorkerPool) -> None:
    """``run_to_completion``, with the failed attempts' logs in the message when the job failed."""
    try:
        run_to_completion(job, workers.log, timeout=JOB_TIMEOUT_S)
    except AssertionError as error:
        failed = TaskAttempt.objects.filter(task__job=job, outcome="failed").select_related("task")
        logs = "\n".join(f"--- {a.task.service}.{a.task.action}:\n{a.log[-3000:]}" for a in failed)
        raise AssertionError(f"{error}\n--- failed attempts ---\n{logs}") from None


@pytest.mark.parametrize("tool", ["ansible", "puppet"])
def test_the_variant_lays_out_like_web_cluster(tool, tenant_a, admin_a) -> None:
    enable_operator_providers(tenant_a)
    call_command("import_catalog", str(STARTER), "--tenant", tenant_a.name, stdout=None)
    for size in (3, 6):
        preview = cluster_preview(
            user=admin_a, tenant=tenant_a, request=PreviewRequest("w", f"web-cluster-{tool}", size)
        )
        roles = Counter(frozenset(node.services) - {f"base-{tool}"} for node in preview.nodes)
        assert roles == {frozenset({f"haproxy-{tool}"}): 1, frozenset({f"redis-{tool}"}): 1,
                         frozenset({f"nginx-{tool}"}): size - 2}  # fmt: skip
        assert all(f"base-{tool}" in node.services for node in preview.nodes)


@pytest.mark.parametrize("tool", ["ansible", "puppet"])
def test_the_variant_serves_through_its_balancer_and_leaves_nothing_behind(
    tool, starter, admin_a, workers, lab_machines
) -> None:
    nginx, haproxy, cache_service = f"nginx-{tool}", f"haproxy-{tool}", f"redis-{tool}"
    workers.start()
    wait_for_worker()
    started = time.monotonic()
    cluster, job = cluster_create(
        user=admin_a, tenant=starter, request=PreviewRequest(name=tool, template=f"web-cluster-{tool}", size=SIZE)
    )
    completed(job, workers)
    created_in = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    nodes = list(Node.objects.filter(cluster=cluster).order_by("number"))
    assert len(nodes) == SIZE
    assert set(TaskAttempt.objects.filter(task__job=job).values_list("outcome", flat=True)) == {"succeeded"}
    (balancer,) = nodes_with(cluster, haproxy)
    (cache,) = nodes_with(cluster, cache_service)
    web = nodes_with(cluster, nginx)
    assert len(web) == SIZE - 2
    # Every service action was carried out by the variant's tool.
    for service in ("base", "nginx", "haproxy", "redis"):
        for task in Task.objects.filter(job=job, service=f"{service}-{tool}"):
            assert task.task_attempts.get().log.startswith(ran(tool, service)), task.action
    port = cluster.config["lb"]["port"]

    # Every web node answers through the balancer.
    bodies = fetch_bodies(balancer.ip_addresses["access_v4"], port)
    assert bodies == {f"{cluster.config['web']['message']} from {node.hostname}" for node in web}

    # The cache answers on its own node's address.
    client = redis.Redis(host=cache.ip_addresses["access_v4"], port=cluster.config["cache"]["port"], socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()

    # Every node's own /etc/hosts lists every node of the cluster, in the cluster's marked block.
    expected = {(node.ip_addresses["bind_v4"], node.hostname) for node in nodes}
    for node in nodes:
        hosts = node_shell(node, "cat /etc/hosts")
        listed = {tuple(line.split()[:2]) for line in hosts.splitlines() if line.strip()}
        assert expected <= listed, f"/etc/hosts of {node.hostname} lacks {expected - listed}"
        assert f"# loom cluster {cluster.name} begin" in hosts and f"# loom cluster {cluster.name} end" in hosts

    # A changed config reaches the web nodes through the automator, and the balancer serves it at once.
    changed = 'Reconfigured: "$5" \\ {ok};'  # characters nginx's config syntax would otherwise trip on
    Cluster.objects.filter(pk=cluster.pk).update(config={**cluster.config, "web": {**cluster.config["web"],
                                                                                   "message": changed}})  # fmt: skip
    cluster.refresh_from_db()
    for node in web:
        assert reconfigure_service(cluster, node, nginx).startswith(ran(tool, "nginx"))
    bodies = fetch_bodies(balancer.ip_addresses["access_v4"], port)
    assert bodies == {f"{changed} from {node.hostname}" for node in web}

    # Delete: the job completes and nothing of the cluster is left on this machine.
    deleted_in = delete_leaving_nothing(cluster=cluster, user=admin_a, running=["haproxy", "redis"] + ["nginx"] * len(web),
                                        wait=lambda job: completed(job, workers))  # fmt: skip
    print(f"{SIZE}-node web-cluster-{tool}: create {created_in:.1f} s, delete {deleted_in:.1f} s")
