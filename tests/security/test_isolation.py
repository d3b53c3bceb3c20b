"""Tenant isolation: for every detail endpoint, another tenant's object answers 404, and lists show
none of it, whether the caller is a plain user, a tenant admin, or names the other tenant in the header."""

from __future__ import annotations

from typing import Any

import pytest

from clusters.engine.core import task_claim
from clusters.features.webhooks import webhook_create, webhook_ping
from clusters.models import Task
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from templates_app.kinds import all_kinds
from templates_app.services import catalog_entity_save
from tenants.models import ApiToken, AuditEvent, Membership
from tenants.services import api_token_create

CATALOG_KINDS = [kind.key for kind in all_kinds()]


@pytest.fixture
def world(catalog_a: Any, tenant_a: Any, admin_a: Any, user_a: Any, admin_b: Any, user_b: Any) -> dict[str, Any]:
    """Tenant A with a catalog (two versions of lamp), a token and audit events; tenant B with its people."""
    template = next(t for t in catalog_a["clustertemplates"] if t["name"] == "lamp")
    catalog_entity_save(
        tenant=tenant_a, user=admin_a, kind_key="clustertemplates", name="lamp",
        data={**template, "description": "edited"},
    )  # fmt: skip
    token = api_token_create(user=user_a, name="ci").token
    webhook = webhook_create(actor=admin_a, tenant=tenant_a, name="ops", url="https://hooks.example.com/acme",
                             secret="acme-webhook-secret-1234")  # fmt: skip
    names = {kind: catalog_a[kind][0]["name"] for kind in CATALOG_KINDS if catalog_a.get(kind)}
    names["partialtemplates"] = None
    cluster, job = cluster_create(user=user_a, tenant=tenant_a, request=PreviewRequest("iso", "lamp", 1))
    task = Task.objects.filter(job=job, status="queued").first()
    task_claim(task_pk=task.pk, worker="test/1")  # gives the task an attempt to look at
    return {
        "cluster": cluster,
        "job": job,
        "task": task,
        "names": names,
        "membership": Membership.objects.get(user=user_a),
        "token": token,
        "audit": AuditEvent.objects.filter(tenant=tenant_a).first(),
        "delivery": webhook_ping(actor=admin_a, webhook=webhook),
    }


READ, WRITE = {"get"}, {"get", "patch", "put", "delete"}


def detail_urls(world: dict[str, Any], method: str = "get") -> list[str]:
    """Every detail endpoint that accepts ``method`` (others answer 405, which reveals nothing)."""
    urls: list[tuple[str, set[str]]] = []
    for kind, name in world["names"].items():
        if name is None:
            continue
        base = f"/api/v2/{kind}/{name}"
        urls += [(base, WRITE), (f"{base}/versions", READ), (f"{base}/versions/1", READ)]
        urls += [(f"{base}/grants", {"get", "post", "delete"})]
    urls += [
        (f"/api/v2/memberships/{world['membership'].pk}", WRITE),
        (f"/api/v2/audit-events/{world['audit'].pk}", READ),
        ("/api/v2/tenants/acme", WRITE),
        ("/api/v2/webhooks/ops", WRITE),
        ("/api/v2/webhooks/ops/deliveries", READ),
        (f"/api/v2/webhooks/ops/deliveries/{world['delivery'].pk}", READ),
        (f"/api/v2/webhooks/ops/deliveries/{world['delivery'].pk}/redeliver", {"post"}),
        ("/api/v2/webhooks/ops/ping", {"post"}),
    ]
    cluster = f"/api/v2/clusters/{world['cluster'].pk}"
    urls += [(cluster, {"get", "delete"}), (f"{cluster}/jobs", READ), (f"{cluster}/nodes", READ)]
    urls += [(f"{cluster}/{operation}", {"post"}) for operation in ("abort", "pause", "resume", "retry", "lease")]
    job, task = f"/api/v2/jobs/{world['job'].pk}", f"/api/v2/tasks/{world['task'].pk}"
    urls += [(job, READ), (f"{job}/tasks", READ), (task, READ), (f"{task}/attempts/1", READ)]
    return [url for url, methods in urls if method in methods]


@pytest.mark.parametrize("who", ["user_b", "admin_b"])
@pytest.mark.parametrize("method", ["get", "patch", "delete", "post"])
def test_other_tenants_objects_answer_404(world, client_for, request, who, method):
    client = client_for(request.getfixturevalue(who))
    for url in detail_urls(world, method):
        response = getattr(client, method)(url, {"user": "bella", "action": "view"}, format="json")
        assert response.status_code == 404, (method, url, response.status_code, response.content)
        assert response.json()["error"]["code"] == "not_found"


def test_naming_the_other_tenant_in_the_header_is_404(world, client_for, user_b):
    client = client_for(user_b, tenant="acme")
    for url in ["/api/v2/services/", "/api/v2/export", "/api/v2/memberships/", *detail_urls(world)]:
        response = client.get(url)
        assert response.status_code == 404, (url, response.content)
        if "/tenants/" not in url:
            assert "tenant acme not found" in response.json()["error"]["message"]


def test_tokens_of_other_users_are_404(world, client_for, user_b, admin_a):
    for user in (user_b, admin_a):  # not even an admin of the same tenant sees someone's token
        response = client_for(user).delete(f"/api/v2/tokens/{world['token'].pk}")
        assert response.status_code == 404
    assert ApiToken.objects.get(pk=world["token"].pk).revoked_at is None


@pytest.mark.parametrize("who", ["user_b", "admin_b"])
def test_lists_show_nothing_of_the_other_tenant(world, client_for, request, who):
    client = client_for(request.getfixturevalue(who))
    for kind in CATALOG_KINDS:
        response = client.get(f"/api/v2/{kind}/")
        assert response.status_code == 200
        assert response.json()["results"] == [], kind
    assert client.get("/api/v2/export").json() == {kind: [] for kind in sorted(CATALOG_KINDS)}
    assert client.get("/api/v2/clusters/").json()["results"] == []
    assert [t["name"] for t in client.get("/api/v2/tenants/").json()["results"]] == ["globex"]
    members = [m["user"] for m in client.get("/api/v2/memberships/").json()["results"]]
    assert "arthur" not in members and "alice" not in members
    assert all(e["entity_name"] != "lamp" for e in client.get("/api/v2/audit-events/").json()["results"])
    assert client.get("/api/v2/webhooks/").json()["results"] == []


def test_writing_a_same_named_entity_in_another_tenant_leaves_the_original_alone(world, client_for, admin_b, catalog_a):
    hardware = next(h for h in catalog_a["hardwaretypes"] if h["name"] == "standard-small")
    response = client_for(admin_b).put(
        "/api/v2/hardwaretypes/standard-small", {**hardware, "description": "B's"}, format="json"
    )
    assert response.status_code == 201  # B's own namespace
    from templates_app.models import HardwareType

    originals = HardwareType.objects.filter(name="standard-small").order_by("tenant__name")
    assert [(h.tenant.name, h.description) for h in originals] == [("acme", hardware["description"]), ("globex", "B's")]


def test_anonymous_requests_are_refused(world, client):
    for url in ["/api/v2/services/", "/api/v2/export", "/api/v2/tenants/", *detail_urls(world)]:
        response = client.get(url)
        assert response.status_code in (401, 403), url
        assert "error" in response.json()
