"""Day-2 operations as services (clusters.services.day2): reconfigure, start/stop/restart, add/remove services,
scale out/in and sync, on the fake provider's noop catalog.

Most jobs are played by ``run_by_hand`` (claims and finishes queued tasks as workers would: fast, and failures
are chosen per task); the end-to-end tests run the real runner in-process (``drive``: machines are created,
confirmed and deleted on the fake provider).
"""

from __future__ import annotations

from typing import Any

import pytest
from guardian.shortcuts import assign_perm

from clusters.engine import runner
from clusters.features.hooks import JobRequest, JobVetoed, _hooks
from clusters.models import Cluster, Job, Node, Task
from clusters.planning.planner import Action
from clusters.services.day2 import (
    cluster_reconfigure,
    cluster_scale_in,
    cluster_scale_out,
    cluster_services_add,
    cluster_services_remove,
    cluster_services_restart,
    cluster_services_start,
    cluster_services_stop,
    cluster_sync,
)
from clusters.services.lifecycle import QuotaExceeded, cluster_create
from clusters.services.operations import cluster_retry
from clusters.services.preview import PreviewRequest
from templates_app.services import catalog_import
from tenants.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from tenants.models import AuditEvent, Tenant
from tests.factories import member

from .day2_helpers import active_cluster, stack_catalog
from .engine_helpers import drive, run_by_hand

pytestmark = pytest.mark.django_db


@pytest.fixture
def stack(tenant_a: Tenant) -> dict[str, list[Any]]:
    data = stack_catalog()
    catalog_import(tenant=tenant_a, user=None, data=data)
    return data


def tasks_of(job: Job) -> set[tuple[str, str, int]]:
    rows = Task.objects.filter(job=job).exclude(action=Action.JOIN).values_list("action", "service", "node__number")
    return set(rows)


def services_by_node(cluster: Cluster) -> dict[int, list[str]]:
    nodes = Node.objects.filter(cluster=cluster).exclude(status=Node.Status.DELETED).order_by("number")
    return {node.number: node.services for node in nodes}


# --- reconfigure ---------------------------------------------------------------------------------------------


def test_reconfigure_previews_then_replaces_the_config_with_restarts(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    new = {"db": "%host.service.db%", "tier": "platinum"}

    quiet = cluster_reconfigure(user=admin_a, cluster=cluster, config=new, restart=False, preview=True)
    assert quiet.job is None
    preview = quiet.change.to_json()
    assert preview["operation"] == "configure" and preview["config_changed"] and preview["restarts"] == {}
    assert preview["plan"]["by_action"] == {"bootstrap": 3, "configure": 8}
    cluster.refresh_from_db()
    assert cluster.config["tier"] == "gold" and not Job.objects.filter(cluster=cluster, operation="configure")

    outcome = cluster_reconfigure(user=admin_a, cluster=cluster, config=new, restart=True)
    cluster.refresh_from_db()
    job = outcome.job
    assert (job.operation, job.status, cluster.status) == ("configure_with_restart", "running", "pending")
    assert cluster.config == new  # the configure tasks read the new config
    assert outcome.change.restarts() == {"db": [1000], "lb": [1001], "web": [1000, 1001, 1002]}
    assert run_by_hand(job).status == Job.Status.COMPLETED
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    event = AuditEvent.objects.get(tenant=tenant_a, action="reconfigure")
    assert event.summary["job"] == job.pk and event.summary["config_changed"] is True


def test_reconfigure_refuses_a_macro_that_cannot_expand_naming_it(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    with pytest.raises(ApplicationError) as caught:
        cluster_reconfigure(user=admin_a, cluster=cluster, config={"x": {"y": "%host.service.cache%"}})
    assert "%host.service.cache%" in caught.value.message and "config/x/y" in caught.value.fields
    with pytest.raises(ApplicationError, match="config: must be a JSON object"):
        cluster_reconfigure(user=admin_a, cluster=cluster, config=["no"])
    assert not Job.objects.filter(cluster=cluster).exclude(operation="create").exists()


# --- start / stop / restart ----------------------------------------------------------------------------------


def test_stop_pulls_in_dependents_and_start_pulls_in_dependencies(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    stop = cluster_services_stop(user=admin_a, cluster=cluster, services=["db"], preview=True).change
    assert {t.service for t in stop.plan.tasks if not t.is_join} == {"db", "web", "lb"}
    start = cluster_services_start(user=admin_a, cluster=cluster, services=["lb"], preview=True).change
    assert {t.service for t in start.plan.tasks if not t.is_join} == {"db", "web", "lb"}
    restart = cluster_services_restart(user=admin_a, cluster=cluster, services=["lb"], preview=True).change
    assert restart.restarts() == {"lb": [1001]}  # web and db only start (already running: a no-op start)
    with pytest.raises(ApplicationError) as caught:
        cluster_services_stop(user=admin_a, cluster=cluster, services=["cache"])
    assert caught.value.fields == {"services": ["not on cluster shop: cache"]}

    job = cluster_services_stop(user=admin_a, cluster=cluster, services=["web"]).job
    assert tasks_of(job) == {("stop", "web", n) for n in (1000, 1001, 1002)} | {("stop", "lb", 1001)}
    assert run_by_hand(job).status == Job.Status.COMPLETED
    job = cluster_services_start(user=admin_a, cluster=cluster).job
    assert {service for _, service, _ in tasks_of(job)} == {"db", "web", "lb"}
    assert run_by_hand(job).status == Job.Status.COMPLETED
    actions = AuditEvent.objects.filter(tenant=tenant_a, entity_kind="cluster").order_by("pk")
    assert list(actions.values_list("action", flat=True)) == ["create", "stop-services", "start-services"]


def test_a_busy_cluster_refuses_every_operation_naming_the_job(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    job = cluster_services_restart(user=admin_a, cluster=cluster).job
    for call in (
        lambda: cluster_scale_out(user=admin_a, cluster=cluster, count=1),
        lambda: cluster_reconfigure(user=admin_a, cluster=cluster, config={}, preview=True),
        lambda: cluster_services_add(user=admin_a, cluster=cluster, services=["cache"]),
    ):
        with pytest.raises(Conflict, match=rf"busy: restart_services job {job.pk} is running") as caught:
            call()
        assert caught.value.extra["job"]["id"] == job.pk


def test_only_those_who_may_change_the_cluster_operate_it(stack, tenant_a, admin_a, user_a, admin_b):
    cluster = active_cluster(user_a, tenant_a)
    viewer = member(tenant_a, username="vera")
    assign_perm("view_cluster", viewer, cluster)
    with pytest.raises(PermissionDenied, match="may view cluster shop but not change it"):
        cluster_services_stop(user=viewer, cluster=cluster, preview=True)
    with pytest.raises(NotFound):
        cluster_scale_out(user=admin_b, cluster=cluster, count=1)
    assert cluster_services_stop(user=user_a, cluster=cluster, preview=True).change.plan.tasks  # the owner
    assert cluster_services_stop(user=admin_a, cluster=cluster).job.requested_by == admin_a  # a tenant admin


def test_a_policy_hook_vetoes_a_day2_job(stack, tenant_a, admin_a, settings):
    cluster = active_cluster(admin_a, tenant_a)
    settings.LOOM_JOB_HOOKS = ["tests.clusters.test_day2.no_scaling"]
    _hooks.cache_clear()
    try:
        with pytest.raises(Conflict, match="scale_out of cluster shop was refused: change freeze"):
            cluster_scale_out(user=admin_a, cluster=cluster, count=1)
        assert cluster_services_stop(user=admin_a, cluster=cluster).job is not None
    finally:
        _hooks.cache_clear()
    assert Node.objects.filter(cluster=cluster).count() == 3


def no_scaling(request: JobRequest) -> None:
    if request.operation.startswith("scale"):
        raise JobVetoed("change freeze")


# --- add / remove services -----------------------------------------------------------------------------------


def test_add_services_solves_incrementally_pins_and_installs_on_one_node(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    before = services_by_node(cluster)
    change = cluster_services_add(user=admin_a, cluster=cluster, services=["cache"], preview=True).change
    assert change.to_json()["services"]["added"] == ["cache"]
    job = cluster_services_add(user=admin_a, cluster=cluster, services=["cache"]).job
    cluster.refresh_from_db()
    after = services_by_node(cluster)
    changed = [number for number in after if after[number] != before[number]]
    assert len(changed) == 1 and after[changed[0]] == sorted([*before[changed[0]], "cache"])
    assert "cache" in cluster.services and cluster.service_versions["cache"] == 1
    assert {(a, s) for a, s, _ in tasks_of(job)} == {
        ("bootstrap", ""),
        ("install", "cache"),
        ("configure", "cache"),
        ("initialize", "cache"),
        ("start", "cache"),
    }
    assert run_by_hand(job).status == Job.Status.COMPLETED
    with pytest.raises(ApplicationError, match="cache cannot be added: already on the cluster"):
        cluster_services_add(user=admin_a, cluster=cluster, services=["cache"])
    with pytest.raises(ApplicationError, match="service nope does not exist"):
        cluster_services_add(user=admin_a, cluster=cluster, services=["nope"])


def test_remove_services_stops_then_removes_and_refuses_a_required_one(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    with pytest.raises(ApplicationError) as caught:
        cluster_services_remove(user=admin_a, cluster=cluster, services=["web"])
    assert "lb requires web" in caught.value.message and caught.value.fields["services"]
    job = cluster_services_remove(user=admin_a, cluster=cluster, services=["lb"]).job
    assert tasks_of(job) == {("stop", "lb", 1001), ("remove", "lb", 1001)}
    stop, remove = (Task.objects.get(job=job, action=a) for a in ("stop", "remove"))
    assert (stop.status, remove.status) == (Task.Status.QUEUED, Task.Status.WAITING)
    cluster.refresh_from_db()
    assert "lb" not in cluster.services and all("lb" not in s for s in services_by_node(cluster).values())
    assert run_by_hand(job).status == Job.Status.COMPLETED


# --- scale out / in ------------------------------------------------------------------------------------------


def test_scale_out_adds_numbered_nodes_reconfigures_peers_and_checks_the_quota(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    preview = cluster_scale_out(user=admin_a, cluster=cluster, count=2, preview=True).change.to_json()
    assert preview["size"] == {"before": 3, "after": 5} and preview["hourly_cost_added"] == 1.0
    assert [n["number"] for n in preview["nodes"]["added"]] == [1003, 1004]
    assert all(n["services"] == ["base", "web"] for n in preview["nodes"]["added"])
    Tenant.objects.filter(pk=tenant_a.pk).update(max_nodes=4)
    with pytest.raises(QuotaExceeded, match="3 node\\(s\\) in use, 2 more requested, limit 4"):
        cluster_scale_out(user=admin_a, cluster=cluster, count=2)
    Tenant.objects.filter(pk=tenant_a.pk).update(max_nodes=None)

    job = cluster_scale_out(user=admin_a, cluster=cluster, count=2).job
    cluster.refresh_from_db()
    assert cluster.size == 5 and Node.objects.filter(cluster=cluster, status=Node.Status.PLANNED).count() == 2
    configures = {n for a, s, n in tasks_of(job) if a == "configure" and n < 1003}
    assert configures == {1000, 1001, 1002}  # the peers learn about the new nodes
    assert run_by_hand(job).status == Job.Status.COMPLETED


def test_scale_in_picks_nodes_within_the_constraints_or_takes_the_named_ones(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a, size=4)
    change = cluster_scale_in(user=admin_a, cluster=cluster, count=1, preview=True).change
    assert [n.number for n in change.leaving] == [1003]  # the newest plain web node, not db or lb
    with pytest.raises(ApplicationError) as caught:
        cluster_scale_in(user=admin_a, cluster=cluster, nodes=[1000])
    assert caught.value.fields["nodes"] and "db" in caught.value.message
    with pytest.raises(ApplicationError) as caught:
        cluster_scale_in(user=admin_a, cluster=cluster, count=3)
    assert caught.value.fields["count"]
    with pytest.raises(ApplicationError, match="not live nodes of cluster shop: 77"):
        cluster_scale_in(user=admin_a, cluster=cluster, nodes=["77"])

    job = cluster_scale_in(user=admin_a, cluster=cluster, nodes=[1002]).job
    actions = tasks_of(job)
    assert ("delete", "", 1002) in actions and ("stop", "web", 1002) in actions
    assert {n for a, _, n in actions if a == "configure"} == {1000, 1001, 1003}
    cluster.refresh_from_db()
    assert cluster.size == 3


# --- failure, retry, and the real runner ---------------------------------------------------------------------


def test_a_failed_day2_job_leaves_the_cluster_inconsistent_and_a_retry_finishes_it(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    job = cluster_services_add(user=admin_a, cluster=cluster, services=["cache"]).job
    run_by_hand(job, fail=lambda task: task.action == Action.INSTALL)
    cluster.refresh_from_db()
    assert (job.status, cluster.status) == (Job.Status.FAILED, Cluster.Status.INCONSISTENT)
    assert not Task.objects.filter(job=job, status__in=(Task.Status.QUEUED, Task.Status.WAITING)).exists()
    retried = cluster_retry(user=admin_a, cluster=cluster)
    assert retried.pk == job.pk and run_by_hand(job).status == Job.Status.COMPLETED
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE and "cache" in cluster.services


def test_scale_out_then_in_on_the_fake_provider_with_a_failure_and_a_retry(stack, tenant_a, admin_a):
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("real", "stack", 3))
    drive(job)
    job = cluster_scale_out(user=admin_a, cluster=cluster, count=2).job
    # The first configure of web on a new node fails terminally: the job fails, the cluster is inconsistent.
    fail_once = {"left": 1}
    target = Task.objects.get(job=job, action=Action.CONFIGURE, node__number=1004, service="web").pk
    real = runner._service_action

    def flaky(cluster: Cluster, node: Node, **kwargs: Any) -> str:
        if kwargs["task_pk"] == target and fail_once["left"]:
            fail_once["left"] -= 1
            raise runner.TerminalError("simulated configure failure")
        return real(cluster, node, **kwargs)

    runner._service_action = flaky
    try:
        drive(job)
        job.refresh_from_db()
        cluster.refresh_from_db()
        assert (job.status, cluster.status) == (Job.Status.FAILED, Cluster.Status.INCONSISTENT)
        cluster_retry(user=admin_a, cluster=cluster)
        drive(job)
    finally:
        runner._service_action = real
    job.refresh_from_db()
    cluster.refresh_from_db()
    assert (job.status, cluster.status) == (Job.Status.COMPLETED, Cluster.Status.ACTIVE)
    nodes = Node.objects.filter(cluster=cluster)
    assert nodes.filter(status=Node.Status.ACTIVE).count() == 5 and all(n.machine_id for n in nodes)

    job = cluster_scale_in(user=admin_a, cluster=cluster, count=1).job
    drive(job)
    job.refresh_from_db()
    cluster.refresh_from_db()
    assert (job.status, cluster.status, cluster.size) == (Job.Status.COMPLETED, Cluster.Status.ACTIVE, 4)
    assert list(nodes.filter(status=Node.Status.DELETED).values_list("number", flat=True)) == [1004]


# --- sync ----------------------------------------------------------------------------------------------------


def test_sync_updates_default_config_keys_the_user_kept_and_refuses_an_incompatible_version(stack, tenant_a, admin_a):
    cluster = active_cluster(admin_a, tenant_a)
    template = stack["clustertemplates"][0]
    newer = {**template, "defaults": {**template["defaults"], "config": {"db": "%host.service.db%", "tier": "silver"},
                                      "services": [*template["defaults"]["services"], "cache"]}}  # fmt: skip
    catalog_import(tenant=tenant_a, user=None, data={"clustertemplates": [newer]})
    preview = cluster_sync(user=admin_a, cluster=cluster, preview=True).change.to_json()
    assert preview["sync"] == {"config_keys": ["tier"], "default_services_added": ["cache"],
                               "default_services_removed": []}  # fmt: skip
    assert preview["template"]["version"] == {"before": 1, "after": 2} and preview["config"]["tier"] == "silver"
    job = cluster_sync(user=admin_a, cluster=cluster).job
    cluster.refresh_from_db()
    assert job.operation == "configure" and cluster.config["tier"] == "silver"
    assert cluster.template_version.version == 2
    assert run_by_hand(job).status == Job.Status.COMPLETED

    kept = ["base", "db", "web", "cache"]
    incompatible = {
        **newer,
        "compatibility": {**newer["compatibility"], "services": kept},
        "defaults": {**newer["defaults"], "services": kept},
        "constraints": {"services": {"db": {"quantities": {"min": 1, "max": 1}}}},
    }
    catalog_import(tenant=tenant_a, user=None, data={"clustertemplates": [incompatible]})
    with pytest.raises(ApplicationError) as caught:
        cluster_sync(user=admin_a, cluster=cluster)
    assert "not compatible with version 3" in caught.value.message and "lb" in caught.value.message
