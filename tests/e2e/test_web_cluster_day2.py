"""Day-2 operations on the starter ``web-cluster`` (shell) on lab hosts, end to end through the day-2 services
and a real worker (issue 6's lab "Done when"): scaled out by 2 and in by 1, the balancer serves exactly the
current web nodes and the removed node's lab host is gone; stopping the web service is visible from outside
and starting it again brings the balancer back; a reconfigure reaches every web node; a delete leaves nothing.

One cluster goes through every step, so the test pays for one create. What the balancer serves is polled
with a deadline (haproxy's health checks take a second or two to notice a backend come or go), never slept on.
"""

from __future__ import annotations

import time

import pytest

from clusters.models import Cluster, Job, Node, Task
from clusters.services.day2 import (
    cluster_reconfigure,
    cluster_scale_in,
    cluster_scale_out,
    cluster_services_start,
    cluster_services_stop,
)
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from tests.clusters.workers import run_to_completion

from .helpers import (
    answers,
    delete_leaving_nothing,
    namespaces,
    nodes_with,
    service_pids,
    until,
    wait_for_worker,
)

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 4


def web_refuses(node: Node, port: int) -> bool:
    """Whether the web node's own address refuses HTTP (its nginx is stopped), seen from this machine."""
    return answers(node.ip_addresses["access_v4"], port, 1) is None


def test_web_cluster_scales_stops_starts_and_reconfigures_on_lab_hosts(starter, admin_a, workers, lab_machines):
    timings: dict[str, float] = {}
    workers.start()
    wait_for_worker()

    def step(name: str, job: Job | None) -> None:
        """Wait for the job (completed, the cluster active again); record how long the job took."""
        assert job is not None
        run_to_completion(job, workers.log)
        cluster.refresh_from_db()
        assert cluster.status == Cluster.Status.ACTIVE, cluster.status_message
        timings[name] = time.monotonic() - started

    def seen(name: str) -> None:
        """Record how long the step took until its effect was seen from outside (job plus the wait for it)."""
        timings[f"{name} (seen)"] = time.monotonic() - started

    # 1. Create: balancer, 2 web nodes, cache.
    started = time.monotonic()
    cluster, job = cluster_create(
        user=admin_a, tenant=starter, request=PreviewRequest(name="day2", template="web-cluster", size=SIZE)
    )
    step("create", job)
    (balancer,) = nodes_with(cluster, "haproxy")
    address, port, web_port = (
        balancer.ip_addresses["access_v4"],
        cluster.config["lb"]["port"],
        cluster.config["web"]["port"],
    )

    def web() -> list[Node]:
        return [n for n in nodes_with(cluster, "nginx") if n.status == Node.Status.ACTIVE]

    def serves(message: str, nodes: list[Node]) -> None:
        """The balancer answers from exactly ``nodes``, each with ``message`` (enough requests to reach all)."""
        expected = {f"{message} from {node.hostname}" for node in nodes}
        until(f"the balancer serving {sorted(expected)}", lambda: answers(address, port, 4 * len(expected)),
              lambda result: result == expected)  # fmt: skip

    message = cluster.config["web"]["message"]
    assert len(web()) == SIZE - 2
    serves(message, web())
    seen("create")

    # 2. Scale out by 2: two more web nodes, and the balancer is reconfigured over all four.
    started = time.monotonic()
    outcome = cluster_scale_out(user=admin_a, cluster=cluster, count=2)
    assert {frozenset(n.services) for n in outcome.change.new_nodes} == {frozenset({"base", "nginx"})}
    step("scale out by 2", outcome.job)
    grown = web()
    assert len(grown) == SIZE
    configured = Task.objects.get(job=outcome.job, service="haproxy", action="configure").task_attempts.get()
    assert f"over {len(grown)} backend(s): {' '.join(n.ip_addresses['bind_v4'] for n in grown)}" in configured.log
    serves(message, grown)
    seen("scale out by 2")

    # 3. Scale in by 1: a web node leaves (the only role that may shrink), its lab host with it.
    started = time.monotonic()
    outcome = cluster_scale_in(user=admin_a, cluster=cluster, count=1)
    (leaving,) = outcome.change.leaving
    assert leaving.services == frozenset({"base", "nginx"})
    step("scale in by 1", outcome.job)
    removed = Node.objects.get(cluster=cluster, node_key=leaving.node_id)
    assert removed.status == Node.Status.DELETED
    assert removed.machine_id not in namespaces(), f"lab host {removed.machine_id} of the removed node is left"
    remaining = web()
    assert len(remaining) == SIZE - 1 and removed.pk not in {n.pk for n in remaining}
    serves(message, remaining)
    seen("scale in by 1")

    # 4. Stop the web service: the planner stops its runtime dependent (haproxy uses nginx) first, and the
    # balancer fails from outside, as does every web node's own address. Starting haproxy starts nginx first
    # (its runtime dependency). Starting nginx alone would leave the balancer stopped: a start pulls in
    # dependencies, never dependents, so what a stop pulled in must be named to come back.
    started = time.monotonic()
    outcome = cluster_services_stop(user=admin_a, cluster=cluster, services=["nginx"])
    assert set(outcome.change.scope or ()) == {"nginx"}
    stopped = {(t.service, str(t.action)) for t in outcome.change.plan.tasks if t.service}
    assert stopped == {("nginx", "stop"), ("haproxy", "stop")}
    step("stop nginx", outcome.job)
    until("the balancer failing", lambda: answers(address, port, 1), lambda result: result is None)
    for node in remaining:
        assert service_pids(node) == {}, f"nginx still running on {node.hostname}"
        assert web_refuses(node, web_port), f"{node.hostname} still answers"
    seen("stop nginx")
    started = time.monotonic()
    outcome = cluster_services_start(user=admin_a, cluster=cluster, services=["haproxy"])
    assert {(t.service, str(t.action)) for t in outcome.change.plan.tasks if t.service} == {("nginx", "start"),
                                                                                       ("haproxy", "start")}  # fmt: skip
    step("start nginx and haproxy", outcome.job)
    serves(message, remaining)
    seen("start nginx and haproxy")

    # 5. Reconfigure: a new message reaches every web node (nginx reloads; no restart asked for).
    changed = 'Day two: "$5" \\ {ok};'  # characters nginx's config syntax would otherwise trip on
    started = time.monotonic()
    outcome = cluster_reconfigure(
        user=admin_a, cluster=cluster, config={**cluster.config, "web": {**cluster.config["web"], "message": changed}},
        restart=False,
    )  # fmt: skip
    step("reconfigure", outcome.job)
    assert cluster.config["web"]["message"] == changed
    serves(changed, remaining)
    seen("reconfigure")

    # 6. Delete: nothing of any node the cluster ever had is left on this machine.
    assert Node.objects.filter(cluster=cluster).exclude(machine_id="").count() == SIZE + 2
    timings["delete"] = delete_leaving_nothing(
        cluster=cluster,
        user=admin_a,
        running=["haproxy", "redis"] + ["nginx"] * len(remaining),
        wait=lambda job: run_to_completion(job, workers.log),
    )
    print("web-cluster day 2: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
