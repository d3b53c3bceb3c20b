"""The health sweep, drift and repair on the fake provider (clusters/features/health.py, clusters/services/repair.py).

Machines are real ``FakeMachine`` rows made by the real runner (``drive``); what happens to them out of band
(deleted, stopped, given another address at a cloud console) is written on those rows, as the cloud would.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clusters.engine.signals import job_event
from clusters.features import health
from clusters.models import Cluster, Health, HealthEvent, Job, Node, Task
from clusters.planning.planner import Action
from clusters.services.day2 import cluster_repair
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from clusters.services.repair import autorepair_run, health_sweep_task
from providers.drivers.fake import FakeDriver
from providers.models import FakeMachine
from templates_app.services import catalog_import
from tenants.errors import ApplicationError
from tenants.models import AuditEvent, Tenant

from .day2_helpers import stack_catalog
from .engine_helpers import drive

pytestmark = pytest.mark.django_db


def catalog(**administration: Any) -> dict[str, list[Any]]:
    data = stack_catalog(config={"backends": "%join(map(host.service.web,'$:80'),',')%"})
    if administration:
        data["clustertemplates"][0]["administration"] = administration
    return data


@pytest.fixture
def stack(tenant_a: Tenant) -> dict[str, list[Any]]:
    data = catalog()
    catalog_import(tenant=tenant_a, user=None, data=data)
    return data


def live_cluster(user: Any, tenant: Tenant, name: str = "shop", size: int = 3) -> Cluster:
    cluster, job = cluster_create(user=user, tenant=tenant, request=PreviewRequest(name, "stack", size))
    drive(job)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    return cluster


def sweep() -> health.SweepReport:
    """A sweep that finds every live cluster due (as one after the interval would)."""
    Cluster.objects.update(health_due_at=None)
    return health.health_sweep()


def machine_of(node: Node) -> Any:
    return FakeMachine.objects.filter(machine_id=node.machine_id)


def nodes(cluster: Cluster) -> list[Node]:
    return list(Node.objects.filter(cluster=cluster).exclude(status=Node.Status.DELETED).order_by("number"))


def test_a_sweep_finds_every_node_healthy_and_records_the_change_once(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    report = sweep()
    assert (report.clusters, report.nodes, report.providers) == (1, 3, 1)
    cluster.refresh_from_db()
    assert (cluster.health, cluster.health_message) == (Health.HEALTHY, "")
    assert cluster.health_checked_at is not None and cluster.health_due_at > timezone.now()
    assert {n.health for n in nodes(cluster)} == {Health.HEALTHY}
    events = list(HealthEvent.objects.filter(cluster=cluster).values_list("node__number", "previous", "state"))
    assert sorted(events, key=str) == sorted(
        [(None, "unknown", "healthy"), (1000, "unknown", "healthy"), (1001, "unknown", "healthy"),
         (1002, "unknown", "healthy")], key=str)  # fmt: skip
    sweep()  # nothing changed: no new history
    assert HealthEvent.objects.filter(cluster=cluster).count() == 4
    # Not due yet: the next sweep leaves it alone.
    assert health.health_sweep().clusters == 0


def test_one_listing_per_provider_and_queries_that_do_not_grow_with_nodes(stack, tenant_a, admin_a, monkeypatch):
    live_cluster(admin_a, tenant_a, "small", size=2)
    sweep()
    calls = []
    real = FakeDriver.list_tagged
    monkeypatch.setattr(FakeDriver, "list_tagged", lambda self: calls.append(1) or real(self))
    with CaptureQueriesContext(connection) as small:
        sweep()
    live_cluster(admin_a, tenant_a, "big", size=12)
    sweep()
    calls.clear()
    with CaptureQueriesContext(connection) as both:
        report = sweep()
    assert report.clusters == 2 and report.nodes == 14
    assert len(calls) == 1  # one list call for the provider, whatever the clusters and nodes on it
    # A second cluster costs its own few queries; its twelve nodes cost none of their own.
    per_cluster = len(both.captured_queries) - len(small.captured_queries)
    assert per_cluster < len(small.captured_queries), [q["sql"] for q in both.captured_queries]


def test_a_machine_deleted_out_of_band_is_missing_and_the_cluster_inconsistent_saying_why(
    stack, tenant_a, admin_a, django_capture_on_commit_callbacks
):
    cluster = live_cluster(admin_a, tenant_a)
    sweep()
    events = []

    def receive(sender: Any, data: Any, **kwargs: Any) -> None:
        events.append(data)

    job_event.connect(receive)
    try:
        victim = nodes(cluster)[1]
        machine_of(victim).update(deleted_at=timezone.now())
        with django_capture_on_commit_callbacks(execute=True):
            sweep()
    finally:
        job_event.disconnect(receive)
    victim.refresh_from_db()
    cluster.refresh_from_db()
    assert victim.health == Health.MISSING and victim.health_failures == 1
    assert f"machine {victim.machine_id} of node 1001" in victim.health_message
    assert "no longer exists on provider fakecloud" in victim.health_message
    assert cluster.health == Health.MISSING and cluster.health_message.startswith("1 node missing: machine")
    assert cluster.status == Cluster.Status.INCONSISTENT and cluster.status_message.startswith("drift: machine")
    assert [str(e.event) for e in events] == ["cluster.health_changed"]
    assert events[0].message.startswith("healthy -> missing: 1 node missing")
    sweep()
    victim.refresh_from_db()
    assert victim.health_failures == 2  # sweeps in a row, for the repair policy


def test_a_stopped_or_moved_machine_is_unreachable_and_the_cluster_heals_when_it_is_back(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    first, second = nodes(cluster)[:2]
    machine_of(first).update(stopped_at=timezone.now())
    machine_of(second).update(access_v4="100.99.0.7")
    sweep()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.health == Health.UNREACHABLE and "is stopped on provider fakecloud" in first.health_message
    assert second.health == Health.UNREACHABLE
    assert "now has address 100.99.0.7" in second.health_message and "Loom connects to 100." in second.health_message
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.INCONSISTENT and cluster.health_message.startswith("2 nodes unreachable")
    # Someone starts the machine again and moves the address back: the next sweep finds nothing wrong.
    machine_of(first).update(stopped_at=None)
    machine_of(second).update(access_v4="")
    sweep()
    cluster.refresh_from_db()
    assert (cluster.status, cluster.status_message, cluster.health) == (Cluster.Status.ACTIVE, "", Health.HEALTHY)


def test_drift_does_not_take_over_a_cluster_a_failed_job_left_inconsistent(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    Cluster.objects.filter(pk=cluster.pk).update(status=Cluster.Status.INCONSISTENT, status_message="job 9 failed")
    machine_of(nodes(cluster)[0]).update(deleted_at=timezone.now())
    sweep()
    cluster.refresh_from_db()
    assert (cluster.status, cluster.status_message) == (Cluster.Status.INCONSISTENT, "job 9 failed")
    assert cluster.health == Health.MISSING  # the health says what drifted
    machine_of(nodes(cluster)[0]).update(deleted_at=None)
    sweep()
    cluster.refresh_from_db()
    assert cluster.status_message == "job 9 failed"  # only the sweep's own inconsistency is cleared by the sweep


def test_a_cluster_with_a_running_job_is_not_checked(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    Job.objects.filter(cluster=cluster).update(status=Job.Status.RUNNING)
    assert sweep().clusters == 0


def test_an_unlistable_provider_leaves_the_nodes_unknown_without_counting_a_failure(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    sweep()
    from providers.models import Provider

    provider = Provider.objects.get(tenant=tenant_a, name="fakecloud")
    provider.document = {**provider.document, "provisioner": {**provider.document["provisioner"], "failure_rate": "1"}}
    provider.save()
    sweep()
    node = nodes(cluster)[0]
    assert node.health == Health.UNKNOWN and node.health_failures == 0
    assert "could not be listed" in node.health_message


def test_repair_replaces_a_missing_node_in_its_role_and_reconfigures_the_peers(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    victim = next(n for n in nodes(cluster) if n.services == ["base", "web"])
    machine_of(victim).update(deleted_at=timezone.now())
    sweep()
    with pytest.raises(ApplicationError, match="not live nodes of cluster shop: 77"):
        cluster_repair(user=admin_a, cluster=cluster, nodes=["77"])
    preview = cluster_repair(user=admin_a, cluster=cluster, preview=True).change.to_json()
    assert preview["operation"] == "repair" and preview["size"] == {"before": 3, "after": 3}
    assert preview["repair"]["replace"][0] | {"message": ""} == {
        "number": victim.number, "hostname": victim.hostname, "health": "missing", "message": "", "by": 1003,
        "by_hostname": preview["nodes"]["added"][0]["hostname"]}  # fmt: skip
    assert preview["nodes"]["removed"][0]["number"] == victim.number

    job = cluster_repair(user=admin_a, cluster=cluster).job
    actions = set(Task.objects.filter(job=job).exclude(action=Action.JOIN).values_list("action", "node__number"))
    assert ("delete", victim.number) in actions and ("stop", victim.number) not in actions  # nothing to stop
    assert ("create", 1003) in actions and ("start", 1003) in actions
    staying = {n.number for n in nodes(cluster) if n.pk != victim.pk}
    assert {n for a, n in actions if a == "configure"} == staying | {1003}
    drive(job)
    cluster.refresh_from_db()
    assert (Job.objects.get(pk=job.pk).status, cluster.status) == (Job.Status.COMPLETED, Cluster.Status.ACTIVE)
    assert [n.number for n in nodes(cluster)] == sorted(staying | {1003})
    new = Node.objects.get(cluster=cluster, number=1003)
    assert new.services == victim.services and new.machine_id and new.health == Health.UNKNOWN
    assert cluster.health_due_at is None  # checked at the next sweep
    sweep()
    cluster.refresh_from_db()
    assert cluster.health == Health.HEALTHY
    # The config the peers got lists the new node's address and no longer the old one's.
    assert AuditEvent.objects.filter(action="repair", entity_name="shop").exists()


def test_repair_with_nothing_unhealthy_is_a_clear_400(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    sweep()
    with pytest.raises(ApplicationError) as caught:
        cluster_repair(user=admin_a, cluster=cluster, preview=True)
    assert "nothing to repair" in caught.value.fields["nodes"][0]


def test_a_degraded_node_gets_its_failed_services_restarted_in_place(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    node = next(n for n in nodes(cluster) if "db" in n.services)
    Node.objects.filter(pk=node.pk).update(health=Health.DEGRADED, health_failing=["db"])
    job = cluster_repair(user=admin_a, cluster=cluster).job
    actions = set(Task.objects.filter(job=job).exclude(action=Action.JOIN).values_list("action", "service",
                                                                                           "node__number"))  # fmt: skip
    assert actions == {("stop", "db", node.number), ("start", "db", node.number)}


def test_the_auto_repair_policy_waits_for_n_sweeps_and_keeps_to_its_hourly_limit(tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog(autorepair={"after": 2, "maxperhour": 1}))
    cluster = live_cluster(admin_a, tenant_a)
    first = nodes(cluster)[2]
    machine_of(first).update(deleted_at=timezone.now())
    sweep()
    assert autorepair_run().launched == {}  # one sweep is not enough
    sweep()
    report = autorepair_run()
    assert list(report.launched) == [cluster.pk]
    job = Job.objects.get(pk=report.launched[cluster.pk])
    assert (job.operation, job.requested_by) == ("repair", None)
    assert AuditEvent.objects.filter(action="auto-repair", actor=None, entity_name="shop").count() == 1
    assert autorepair_run().held == {}  # the job runs: the cluster is not swept, its counts stay, nothing starts
    drive(job)
    second = nodes(cluster)[0]
    machine_of(second).update(deleted_at=timezone.now())
    sweep()
    sweep()
    held = autorepair_run()
    assert (
        held.launched == {} and "1 automatic repair(s) in the last hour, the template allows 1" in held.held[cluster.pk]
    )
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=1, seconds=1))
    assert list(autorepair_run().launched) == [cluster.pk]


def test_the_beat_task_sweeps_and_repairs(tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog(autorepair={"after": 1, "maxperhour": 2}))
    cluster = live_cluster(admin_a, tenant_a)
    machine_of(nodes(cluster)[0]).update(deleted_at=timezone.now())
    assert health_sweep_task()["clusters"] == 1
    assert health_sweep_task()["repairs"] == 1


def test_checks_over_ssh_wait_while_a_task_of_the_tenant_waits_for_a_slot(stack, tenant_a, admin_a):
    cluster = live_cluster(admin_a, tenant_a)
    from clusters.engine import core

    Tenant.objects.filter(pk=tenant_a.pk).update(workers=0)  # no budget: LOOM_HEALTH_CONCURRENCY per sweep
    core._budgets.clear()
    assert health.spare_slots(tenant_a.pk) == 4
    Tenant.objects.filter(pk=tenant_a.pk).update(workers=2)
    core._budgets.clear()
    assert health.spare_slots(tenant_a.pk) == 2
    task = Task.objects.filter(job__cluster=cluster).first()
    Task.objects.filter(pk=task.pk).update(status=Task.Status.QUEUED, dispatched_at=None,
                                           waiting_reason="tenant budget 2/2 busy")  # fmt: skip
    assert health.spare_slots(tenant_a.pk) == 0


@pytest.mark.parametrize(
    ("section", "field", "problem"),
    [
        ({"healthcheck": {"interval": "5s"}}, "administration.healthcheck.interval", "at least 10 seconds"),
        ({"healthcheck": {"every": "5m"}}, "administration.healthcheck", "every"),
        ({"autorepair": {"after": 0}}, "administration.autorepair.after", "at least 1"),
        ({"autorepair": {"maxperhour": "many"}}, "administration.autorepair.maxperhour", "not a whole number"),
    ],
)
def test_bad_health_settings_are_refused_naming_the_field(tenant_a, section, field, problem):
    with pytest.raises(ApplicationError) as caught:
        catalog_import(tenant=tenant_a, user=None, data=catalog(**section))
    assert any(field in key for key in caught.value.fields) and problem in str(caught.value.fields)


def test_the_template_sets_the_interval(tenant_a, admin_a):
    catalog_import(tenant=tenant_a, user=None, data=catalog(healthcheck={"interval": "2h", "timeout": "10s"}))
    cluster = live_cluster(admin_a, tenant_a)
    sweep()
    cluster.refresh_from_db()
    assert timedelta(hours=1, minutes=59) < cluster.health_due_at - cluster.health_checked_at <= timedelta(hours=2)


def test_a_health_check_never_connects_to_an_address_the_egress_policy_refuses(
    stack, tenant_a, admin_a, settings, monkeypatch
):
    """A hostile provider (or tenant admin) reporting Loom's own database as a node's address: the SSH check
    is refused before any connection, and the node is unreachable saying why."""
    from clusters.engine import automation

    settings.LOOM_EGRESS_ALLOW_NETWORKS = []  # production's policy
    cluster = live_cluster(admin_a, tenant_a)
    node = nodes(cluster)[0]
    Node.objects.filter(pk=node.pk).update(ip_addresses={"access_v4": "127.0.0.1", "bind_v4": "127.0.0.1"},
                                           ssh_port=5432, credentials_ref="resource:key")  # fmt: skip
    node.refresh_from_db()
    monkeypatch.setattr(automation, "open_session", lambda *a, **k: pytest.fail("connected to a refused address"))
    finding = health.node_finding(cluster, node, nodes(cluster), timeout=5)
    assert finding.state == Health.UNREACHABLE and "does not answer over SSH" in finding.message
    assert "127.0.0.1:5432 is refused by the egress policy" in finding.message
