"""The restricted queryset, guardian grants, and the tenant/membership API."""

from __future__ import annotations

from guardian.shortcuts import assign_perm

from templates_app.models import ClusterTemplate, Service
from tenants.models import AuditEvent, Membership, Role
from tests.factories import UserFactory


def names(queryset) -> list[str]:
    return sorted(queryset.values_list("name", flat=True))


def test_restrict_by_membership_and_role(catalog_a, tenant_a, admin_a, user_a, admin_b, superuser):
    everything = names(Service.objects.all())
    assert names(Service.objects.restrict(user_a, "view")) == everything
    assert names(Service.objects.restrict(user_a, "change")) == []
    assert names(Service.objects.restrict(admin_a, "change")) == everything
    assert names(Service.objects.restrict(admin_b, "view")) == []
    assert names(Service.objects.restrict(superuser, "delete")) == everything
    anonymous = UserFactory.build()
    anonymous.is_active = False
    assert names(Service.objects.restrict(anonymous, "view")) == []


def test_guardian_grant_applies_only_while_a_member(catalog_a, tenant_a, user_a):
    lamp = ClusterTemplate.objects.get(name="lamp")
    assign_perm("templates_app.change_clustertemplate", user_a, lamp)
    assert names(ClusterTemplate.objects.restrict(user_a, "change")) == ["lamp"]
    Membership.objects.filter(user=user_a).delete()
    assert names(ClusterTemplate.objects.restrict(user_a, "change")) == []
    assert names(ClusterTemplate.objects.restrict(user_a, "view")) == []


def test_grant_api_lets_a_user_edit_one_template(catalog_a, admin_a, user_a, client_for):
    admin, user = client_for(admin_a), client_for(user_a)
    grants, arthur_change = "/api/v2/clustertemplates/lamp/grants", {"user": "arthur", "action": "change"}
    lamp = user.get("/api/v2/clustertemplates/lamp").json()

    def edit(name: str, document: dict, description: str) -> int:
        body = {**document, "description": description}
        return user.put(f"/api/v2/clustertemplates/{name}", body, format="json").status_code

    assert edit("lamp", lamp, "x") == 403
    assert user.post(grants, arthur_change, format="json").status_code == 403
    assert admin.post(grants, arthur_change, format="json").status_code == 204
    assert admin.get(grants).json() == [{"user": "arthur", "permissions": ["change"]}]
    assert edit("lamp", lamp, "x") == 200
    assert edit("base", user.get("/api/v2/clustertemplates/base").json(), "x") == 403
    assert admin.delete(grants, arthur_change, format="json").status_code == 204
    assert edit("lamp", lamp, "y") == 403


def test_grant_to_a_non_member_is_refused(catalog_a, admin_a, admin_b, client_for):
    response = client_for(admin_a).post(
        "/api/v2/clustertemplates/lamp/grants", {"user": "bob", "action": "view"}, format="json"
    )
    assert response.status_code == 400
    assert "bob is not a member of tenant acme" in response.json()["error"]["message"]


def test_superusers_manage_tenants(superuser, admin_a, client_for):
    root, admin = client_for(superuser), client_for(admin_a)
    body = {"name": "initech", "max_clusters": 5, "max_nodes": 50, "workers": 4}
    assert admin.post("/api/v2/tenants/", body, format="json").status_code == 403
    created = root.post("/api/v2/tenants/", body, format="json")
    assert created.status_code == 201 and created.json()["max_nodes"] == 50
    assert root.post("/api/v2/tenants/", body, format="json").status_code == 409
    assert root.patch("/api/v2/tenants/initech", {"workers": 8}, format="json").json()["workers"] == 8
    bad = root.post("/api/v2/tenants/", {"name": "bad name!"}, format="json")
    assert bad.status_code == 400 and "name" in bad.json()["error"]["fields"]
    assert admin.get("/api/v2/tenants/initech").status_code == 404
    assert root.delete("/api/v2/tenants/initech").status_code == 204
    assert list(AuditEvent.objects.filter(entity_kind="tenant").values_list("action", flat=True)) == [
        "delete", "update", "create",
    ]  # fmt: skip


def test_memberships_are_managed_by_tenant_admins(tenant_a, admin_a, user_a, client_for):
    UserFactory(username="carol").save()
    admin, user = client_for(admin_a), client_for(user_a)
    assert user.post("/api/v2/memberships/", {"user": "carol", "role": "user"}, format="json").status_code == 403
    created = admin.post("/api/v2/memberships/", {"user": "carol", "role": "user"}, format="json")
    assert created.status_code == 201 and created.json()["tenant"] == "acme"
    assert admin.post("/api/v2/memberships/", {"user": "nobody", "role": "user"}, format="json").status_code == 400
    assert [m["user"] for m in user.get("/api/v2/memberships/").json()["results"]] == ["arthur"]
    assert len(admin.get("/api/v2/memberships/").json()["results"]) == 3
    own = Membership.objects.get(user=admin_a)
    demoted = admin.patch(f"/api/v2/memberships/{own.pk}", {"role": "user"}, format="json")
    assert demoted.status_code == 409 and "last admin" in demoted.json()["error"]["message"]
    carol = Membership.objects.get(user__username="carol")
    assert admin.patch(f"/api/v2/memberships/{carol.pk}", {"role": "admin"}, format="json").json()["role"] == Role.ADMIN
    assert admin.delete(f"/api/v2/memberships/{carol.pk}").status_code == 204


def test_users_in_several_tenants_must_choose(tenant_a, tenant_b, user_a, client_for, catalog_a):
    Membership.objects.create(user=user_a, tenant=tenant_b, role=Role.USER)
    response = client_for(user_a).get("/api/v2/services/")
    assert response.status_code == 400
    assert "acme, globex" in response.json()["error"]["message"]
    assert client_for(user_a, tenant="acme").get("/api/v2/services/").json()["count"] == 7
    assert client_for(user_a, tenant="globex").get("/api/v2/services/").json()["count"] == 0
