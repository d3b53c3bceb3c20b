"""The day-2 endpoints of the cluster API: ``/clusters/{id}/config``, ``/services/start|stop|restart``,
``/services`` (add), ``/services/remove``, ``/scale-out``, ``/scale-in``, ``/sync``; ``?preview=true`` on each.

Jobs are played by hand (``run_by_hand``); the services themselves are tested in tests/clusters/test_day2.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from clusters.models import Cluster, Job, Node
from templates_app.services import catalog_import
from tenants.models import AuditEvent, Tenant
from tests.api.helpers import API, body, error_of
from tests.clusters.day2_helpers import active_cluster, stack_catalog
from tests.clusters.engine_helpers import run_by_hand

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("config", {"config": {"tier": "blue"}, "restart": False}),
    ("services/start", {}),
    ("services/stop", {"services": ["web"]}),
    ("services/restart", {"services": ["lb"]}),
    ("services", {"services": ["cache"]}),
    ("services/remove", {"services": ["lb"]}),
    ("scale-out", {"count": 1}),
    ("scale-in", {"count": 1}),
]


@pytest.fixture
def shop(tenant_a: Tenant, user_a: Any) -> Cluster:
    catalog_import(tenant=tenant_a, user=None, data=stack_catalog())
    return active_cluster(user_a, tenant_a, size=4)


def url(cluster: Cluster, path: str) -> str:
    return f"{API}/clusters/{cluster.pk}/{path}"


@pytest.mark.parametrize(("path", "data"), ENDPOINTS)
def test_each_operation_previews_then_starts_a_job(client_for, user_a, tenant_a, shop, path, data):
    client = client_for(user_a)
    preview = client.post(url(shop, path) + "?preview=true", data, format="json")
    assert preview.status_code == 200, preview.content[:2000]
    shown = body(preview)
    assert (
        shown["cluster"] == shop.pk
        and shown["plan"]["tasks"] == len(shown["plan"]["task_list"]) - shown["plan"]["join_points"]
    )
    assert Job.objects.filter(cluster=shop).count() == 1  # a preview starts nothing

    response = client.post(url(shop, path), data, format="json")
    assert response.status_code == 202, response.content[:2000]
    answer = body(response)
    assert answer["job"]["operation"] == shown["operation"] and response["Location"] == answer["job"]["url"]
    assert answer["cluster"]["status"] == "pending"
    job = Job.objects.get(pk=answer["job"]["id"])
    assert run_by_hand(job).status == Job.Status.COMPLETED
    assert AuditEvent.objects.filter(tenant=tenant_a, entity_kind="cluster").exclude(action="create").count() == 1


def test_a_busy_cluster_answers_409_naming_the_job(client_for, user_a, shop):
    client = client_for(user_a)
    job = body(client.post(url(shop, "services/restart"), {}, format="json"))["job"]
    error = error_of(client.post(url(shop, "scale-out"), {"count": 1}, format="json"), 409)
    assert f"restart_services job {job['id']} is running" in error["message"]
    error = error_of(client.post(url(shop, "config") + "?preview=true", {"config": {}}, format="json"), 409)
    assert error["code"] == "conflict"


def test_other_tenants_and_other_members_get_404_admins_may_act(client_for, shop, admin_a, admin_b, superuser):
    from tests.factories import member

    other = member(shop.tenant, username="otto")
    for user in (admin_b, other):
        error = error_of(client_for(user).post(url(shop, "scale-out"), {"count": 1}, format="json"), 404)
        assert error["code"] == "not_found"
    assert client_for(admin_a).post(url(shop, "services/stop"), {}, format="json").status_code == 202
    assert Node.objects.filter(cluster=shop).count() == 4


def test_bad_input_is_a_400_naming_the_field(client_for, user_a, shop):
    client = client_for(user_a)
    cases = [
        ("config", {"restart": True}, "config"),
        ("config", {"config": {"x": "%host.service.nope%"}}, "config/x"),
        ("services", {"services": []}, "services"),
        ("services", {"services": ["Bad Name"]}, "services.0"),
        ("services/remove", {"services": ["web"]}, "services"),
        ("services/stop", {"services": ["cache"]}, "services"),
        ("scale-out", {"count": 0}, "count"),
        ("scale-in", {"count": 1, "nodes": ["1003"]}, "count"),
        ("scale-in", {"nodes": ["1000"]}, "nodes"),
        ("scale-in", {"nodes": ["9999"]}, "nodes"),
    ]
    for path, data, field_name in cases:
        error = error_of(client.post(url(shop, path), data, format="json"), 400)
        assert field_name in error["fields"], (path, data, error)
    assert Job.objects.filter(cluster=shop).count() == 1


def test_scale_out_past_the_node_quota_is_a_409_quota_exceeded(client_for, user_a, tenant_a, shop):
    Tenant.objects.filter(pk=tenant_a.pk).update(max_nodes=5)
    error = error_of(client_for(user_a).post(url(shop, "scale-out"), {"count": 2}, format="json"), 409)
    assert error["code"] == "quota_exceeded" and "4 node(s) in use, 2 more requested, limit 5" in error["message"]


def test_sync_with_nothing_to_run_moves_the_pin_and_answers_200(client_for, user_a, tenant_a, shop):
    template = stack_catalog()["clustertemplates"][0]
    catalog_import(tenant=tenant_a, user=None, data={"clustertemplates": [{**template, "description": "v2"}]})
    response = client_for(user_a).post(url(shop, "sync"), {}, format="json")
    assert response.status_code == 200, response.content[:2000]
    assert body(response)["job"] is None and body(response)["cluster"]["template"]["version"] == 2
    assert AuditEvent.objects.filter(tenant=tenant_a, action="sync").exists()


# --- the admin action ----------------------------------------------------------------------------------------


def test_admin_action_previews_then_confirms_a_scale_out(shop, admin_a, admin_b, client):
    admin_a.is_staff = True
    admin_a.save(update_fields=["is_staff"])
    client.force_login(admin_a)
    changelist = "/admin/clusters/cluster/"
    form = {"action": "day2_operation", "_selected_action": [shop.pk], "operation": "scale_out", "count": "2"}
    page = client.post(changelist, {"action": "day2_operation", "_selected_action": [shop.pk]})
    assert page.status_code == 200 and b"Day-2 operation on shop" in page.content
    preview = client.post(changelist, {**form, "preview": "Preview"})
    assert preview.status_code == 200 and b"Confirm and start the job" in preview.content
    assert b"4 \xe2\x86\x92 6 nodes" in preview.content and b"shop-1005" in preview.content
    assert Job.objects.filter(cluster=shop).count() == 1  # the preview started nothing
    done = client.post(changelist, {**form, "apply": "Confirm"})
    assert done.status_code == 302
    job = Job.objects.filter(cluster=shop).order_by("-pk").first()
    assert job.operation == "scale_out" and Node.objects.filter(cluster=shop).count() == 6
    refused = client.post(changelist, {**form, "apply": "Confirm"})
    assert refused.status_code == 200 and f"scale_out job {job.pk} is running".encode() in refused.content

    admin_b.is_staff = True
    admin_b.save(update_fields=["is_staff"])
    client.force_login(admin_b)  # another tenant's cluster is not in admin_b's changelist: nothing happens
    client.post(changelist, {**form, "apply": "Confirm"})
    assert Job.objects.filter(cluster=shop).count() == 2


# --- health and repair ---------------------------------------------------------------------------------------


def mark_missing(cluster: Cluster, number: int) -> Node:
    """What a sweep records for a node whose machine is gone (the sweep itself: tests/clusters/test_health.py)."""
    from clusters.models import Health

    Node.objects.filter(cluster=cluster, number=number).update(
        health=Health.MISSING, health_message="machine m-1 of node 1003 no longer exists", health_failures=2
    )
    Cluster.objects.filter(pk=cluster.pk).update(health=Health.MISSING, health_message="1 node missing: machine m-1")
    return Node.objects.get(cluster=cluster, number=number)


def test_health_shows_the_cluster_its_unhealthy_nodes_and_history(client_for, user_a, admin_b, shop):
    from django.utils import timezone

    from clusters.models import Health, HealthEvent

    node = mark_missing(shop, 1003)
    HealthEvent.objects.create(cluster=shop, node=node, previous="healthy", state="missing", message="gone",
                               created_at=timezone.now())  # fmt: skip
    answer = body(client_for(user_a).get(url(shop, "health")))
    assert answer["health"] == {"state": "missing", "message": "1 node missing: machine m-1", "checked_at": None}
    assert [(n["number"], n["health"]["state"], n["health"]["failures"]) for n in answer["nodes"]] == [
        (1003, Health.MISSING, 2)]  # fmt: skip
    assert answer["history"][0] | {"created_at": None} == {"node": 1003, "previous": "healthy", "state": "missing",
                                                           "message": "gone", "created_at": None}  # fmt: skip
    listed = body(client_for(user_a).get(f"{API}/clusters"))["results"][0]
    assert listed["health"]["state"] == "missing"
    nodes = body(client_for(user_a).get(url(shop, "nodes")))["results"]
    assert {n["number"]: n["health"]["state"] for n in nodes}[1003] == "missing"
    assert error_of(client_for(admin_b).get(url(shop, "health")), 404)["code"] == "not_found"


def test_repair_previews_then_replaces_and_refuses_bad_input(client_for, user_a, admin_b, shop):
    client = client_for(user_a)
    error = error_of(client.post(url(shop, "repair"), {}, format="json"), 400)
    assert "nothing to repair" in error["fields"]["nodes"][0]
    assert "nodes" in error_of(client.post(url(shop, "repair"), {"nodes": ["77"]}, format="json"), 400)["fields"]
    assert "nodes" in error_of(client.post(url(shop, "repair"), {"nodes": []}, format="json"), 400)["fields"]
    mark_missing(shop, 1003)
    assert error_of(client_for(admin_b).post(url(shop, "repair"), {}, format="json"), 404)["code"] == "not_found"
    shown = body(client.post(url(shop, "repair") + "?preview=true", {}, format="json"))
    assert shown["operation"] == "repair" and [r["number"] for r in shown["repair"]["replace"]] == [1003]
    response = client.post(url(shop, "repair"), {}, format="json")
    assert response.status_code == 202, response.content[:2000]
    job = Job.objects.get(pk=body(response)["job"]["id"])
    assert set(job.tasks.filter(action__in=["delete", "create"]).values_list("action", "node__number")) == {
        ("delete", 1003), ("create", 1004)}  # fmt: skip
    assert run_by_hand(job).status == Job.Status.COMPLETED


def test_inventory_groups_nodes_by_service_and_role_for_ansible(client_for, user_a, admin_b, shop):
    inventory = body(client_for(user_a).get(url(shop, "inventory")))
    nodes = {n.hostname: n for n in Node.objects.filter(cluster=shop)}
    assert sorted(inventory["loom_shop"]["hosts"]) == sorted(nodes)
    assert set(inventory["all"]["children"]) >= {"ungrouped", "loom_shop", "base", "db", "web", "lb", "role_base_web"}
    assert inventory["all"]["vars"] == {"loom_cluster": "shop", "loom_cluster_id": shop.pk}
    (db,) = [n for n in nodes.values() if "db" in n.services]
    assert inventory["db"]["hosts"] == [db.hostname]
    assert inventory["_meta"]["hostvars"][db.hostname]["ansible_host"] == db.ip_addresses.get("access_v4", "")
    assert inventory["_meta"]["hostvars"][db.hostname]["loom_services"] == sorted(db.services)
    assert error_of(client_for(admin_b).get(url(shop, "inventory")), 404)["code"] == "not_found"
