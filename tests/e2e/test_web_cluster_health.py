"""Monitor and heal the starter ``web-cluster`` (shell) on lab hosts, through the health sweep and real workers
(issue 17's "Done when"): nginx stopped on a web node is ``degraded`` within one sweep, a repair restarts it in
place and the node is healthy again; a web node's lab host deleted out of band is ``missing`` (the cluster
``inconsistent``, saying why), the template's auto-repair policy replaces it after two sweeps, and the balancer
serves from the new node and no longer from the old one.

The sweep runs here (as beat would send it); the checks over SSH run in the worker processes, as in production.
"""

from __future__ import annotations

import json
import time

import pytest

from clusters.features.health import health_sweep
from clusters.models import Cluster, Health, Job, Node
from clusters.services.day2 import cluster_repair
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from clusters.services.repair import autorepair_run
from templates_app.services import catalog_import
from tenants.models import AuditEvent
from tests.clusters.workers import run_to_completion

from .helpers import (
    STARTER,
    answers,
    delete_leaving_nothing,
    lab_driver,
    namespaces,
    nodes_with,
    service_action,
    until,
    wait_for_worker,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHECK_TIMEOUT_S = 60.0


def swept(cluster: Cluster) -> Cluster:
    """One sweep with the cluster due; waits until the worker has recorded its checks."""
    before = Cluster.objects.get(pk=cluster.pk).health_checked_at
    Cluster.objects.filter(pk=cluster.pk).update(health_due_at=None)
    report = health_sweep()
    assert cluster.pk in report.dispatched or any(o.cluster == cluster.pk for o in report.outcomes), report
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while Cluster.objects.get(pk=cluster.pk).health_checked_at == before:
        assert time.monotonic() < deadline, f"no health recorded within {CHECK_TIMEOUT_S:.0f} s"
        time.sleep(0.2)
    cluster.refresh_from_db()
    return cluster


def test_web_cluster_shows_live_health_and_heals_itself_on_lab_hosts(starter, admin_a, workers, lab_machines):
    template = json.loads((STARTER / "clustertemplates" / "web-cluster.json").read_text())
    template["administration"]["autorepair"] = {"after": 2, "maxperhour": 1}
    catalog_import(tenant=starter, user=None, data={"clustertemplates": [template]})
    workers.start()
    wait_for_worker()
    cluster, job = cluster_create(user=admin_a, tenant=starter,
                                  request=PreviewRequest(name="heal", template="web-cluster", size=4))  # fmt: skip
    run_to_completion(job, workers.log)
    (balancer,) = nodes_with(cluster, "haproxy")
    address, port = balancer.ip_addresses["access_v4"], cluster.config["lb"]["port"]
    message = cluster.config["web"]["message"]

    def serves(web: list[Node]) -> None:
        expected = {f"{message} from {node.hostname}" for node in web}
        until(f"the balancer serving {sorted(expected)}", lambda: answers(address, port, 4 * len(expected)),
              lambda result: result == expected)  # fmt: skip

    assert swept(cluster).health == Health.HEALTHY, cluster.health_message
    first, second = nodes_with(cluster, "nginx")
    serves([first, second])

    # 1. nginx stopped on a web node: degraded within one sweep, with the check's own words.
    service_action(cluster, first, "nginx", "stop")
    swept(cluster)
    first.refresh_from_db()
    assert (first.health, first.health_failing) == (Health.DEGRADED, ["nginx"])
    assert "nginx is not running" in first.health_message
    assert (
        cluster.health == Health.DEGRADED and cluster.status == Cluster.Status.ACTIVE
    )  # no drift: not a provider fault
    balancer.refresh_from_db()
    assert balancer.health == Health.HEALTHY  # it still reaches the other backend
    outcome = cluster_repair(user=admin_a, cluster=cluster)
    assert outcome.change.details["repair"]["restart"] == [{"number": first.number, "services": ["nginx"]}]
    run_to_completion(outcome.job, workers.log)
    assert swept(cluster).health == Health.HEALTHY, cluster.health_message
    serves([first, second])

    # 2. A web node's lab host deleted out of band: missing, and the cluster inconsistent saying why.
    lab_driver(starter).delete(second.machine_id)
    swept(cluster)
    second.refresh_from_db()
    assert second.health == Health.MISSING and f"machine {second.machine_id}" in second.health_message
    assert cluster.status == Cluster.Status.INCONSISTENT and cluster.status_message.startswith("drift: machine")
    assert autorepair_run().launched == {}  # one sweep: the policy waits for two
    swept(cluster)
    report = autorepair_run()
    assert list(report.launched) == [cluster.pk]
    repair = Job.objects.get(pk=report.launched[cluster.pk])
    assert (repair.operation, repair.requested_by) == ("repair", None)
    assert AuditEvent.objects.filter(action="auto-repair", entity_name="heal").exists()
    run_to_completion(repair, workers.log)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE, cluster.status_message
    web = [n for n in nodes_with(cluster, "nginx") if n.status == Node.Status.ACTIVE]
    replacement = next(n for n in web if n.pk != first.pk)
    assert replacement.number > second.number and second.machine_id not in namespaces()
    serves([first, replacement])  # from the new node, no longer from the old one
    assert swept(cluster).health == Health.HEALTHY, cluster.health_message

    delete_leaving_nothing(cluster=cluster, user=admin_a, running=["haproxy", "redis", "nginx", "nginx"],
                           wait=lambda job: run_to_completion(job, workers.log))  # fmt: skip
