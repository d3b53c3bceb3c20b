"""Who may read and change the catalog: tenant admins change it, plain members read it, object grants
(POST /<kind>/{name}/grants) let one member change one entity, other tenants see nothing."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from templates_app.services import catalog_entity_save
from tests.api.helpers import API, KINDS, body, catalog_state, error_of, names, url, valid_doc

pytestmark = pytest.mark.django_db

# kind → (entity a grant is given on, another entity of the same kind), all in tenant A after ``setup``
GRANT_TARGETS = {
    "providers": ("rackspace", "openstack"),
    "hardwaretypes": ("standard-small", "standard-large"),
    "imagetypes": ("ubuntu12", "centos6"),
    "services": ("php", "base"),
    "clustertemplates": ("lamp", "base"),
    "partialtemplates": ("monitoring", "monitoring-2"),
}


@pytest.fixture
def setup(tenant_a, catalog_a):
    """The sample catalog plus two partial templates (the samples have none)."""
    for name in ("monitoring", "monitoring-2"):
        catalog_entity_save(
            tenant=tenant_a, user=None, kind_key="partialtemplates", data=valid_doc("partialtemplates", name)
        )


@pytest.fixture
def admin(client_for, admin_a, setup):
    return client_for(admin_a)


@pytest.fixture
def user(client_for, user_a, setup):
    return client_for(user_a)


def edited(client, kind: str, name: str, description: str) -> dict[str, Any]:
    """The entity as GET shows it (secrets masked, which PUT accepts back) with a new description."""
    doc = body(client.get(url(kind, name)))
    doc["description"] = description
    return doc


def grant(admin, kind: str, name: str, user: Any, action: str, method: str = "post"):
    return getattr(admin, method)(url(kind, name, "/grants"), {"user": user.username, "action": action}, format="json")


@pytest.mark.parametrize("kind", KINDS)
def test_plain_member_reads_the_catalog(user, kind):
    name, _ = GRANT_TARGETS[kind]

    assert name in names(user.get(url(kind)))
    assert body(user.get(url(kind, name)))["name"] == name
    assert user.get(url(kind, name, "/versions/1")).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_plain_member_gets_403_on_every_write(user, tenant_a, kind):
    name, _ = GRANT_TARGETS[kind]
    before = catalog_state(tenant_a)

    attempts = {
        "create": user.post(url(kind), valid_doc(kind, "new-one"), format="json"),
        "put-new": user.put(url(kind, "new-one"), valid_doc(kind, "new-one"), format="json"),
        "put-existing": user.put(url(kind, name), edited(user, kind, name, "changed"), format="json"),
        "patch": user.patch(url(kind, name), {"description": "changed"}, format="json"),
        "delete": user.delete(url(kind, name)),
    }

    for attempt, response in attempts.items():
        assert response.status_code == 403, (attempt, response.content)
        error = error_of(response, 403)
        assert error["code"] == "permission_denied"
        assert "only tenant admins" in error["message"]
    assert catalog_state(tenant_a) == before


def test_plain_member_cannot_grant(user, user_a, tenant_a):
    response = grant(user, "clustertemplates", "lamp", user_a, "change")

    assert error_of(response, 403)["code"] == "permission_denied"


@pytest.mark.parametrize("kind", KINDS)
def test_member_granted_change_on_one_entity_may_update_it_but_no_other(admin, user, user_a, kind):
    granted, other = GRANT_TARGETS[kind]
    assert grant(admin, kind, granted, user_a, "change").status_code == 204

    put = user.put(url(kind, granted), edited(user, kind, granted, "edited by a grantee"), format="json")
    patch = user.patch(url(kind, granted), {"label": "patched by a grantee"}, format="json")
    put_other = user.put(url(kind, other), edited(user, kind, other, "not allowed"), format="json")
    create = user.put(url(kind, "new-one"), valid_doc(kind, "new-one"), format="json")
    delete = user.delete(url(kind, granted))

    assert put.status_code == 200, put.content
    assert body(put)["description"] == "edited by a grantee"
    assert body(put)["version"] == 2
    assert patch.status_code == 200, patch.content
    assert error_of(put_other, 403)["code"] == "permission_denied"
    assert error_of(create, 403)["code"] == "permission_denied"
    assert error_of(delete, 403)["code"] == "permission_denied"
    assert body(admin.get(url(kind, other)))["version"] == 1


def test_grants_are_listed_and_withdrawing_one_ends_the_access(admin, user, user_a):
    grant(admin, "clustertemplates", "lamp", user_a, "change")

    listed = body(admin.get(url("clustertemplates", "lamp", "/grants")))
    withdrawn = grant(admin, "clustertemplates", "lamp", user_a, "change", method="delete")
    after = user.put(url("clustertemplates", "lamp"), edited(user, "clustertemplates", "lamp", "x"), format="json")

    assert listed == [{"user": user_a.username, "permissions": ["change"]}]
    assert withdrawn.status_code == 204
    assert body(admin.get(url("clustertemplates", "lamp", "/grants"))) == []
    assert error_of(after, 403)["code"] == "permission_denied"


def test_grant_writes_an_audit_event(admin, user_a):
    grant(admin, "clustertemplates", "lamp", user_a, "change")

    events = body(admin.get(f"{API}/audit-events/", {"action": "grant"}))["results"]

    assert [(e["entity_kind"], e["entity_name"], e["summary"]) for e in events] == [
        ("clustertemplate", "lamp", {"user": user_a.username, "permission": "change"})
    ]


def test_member_granted_delete_on_one_template_may_delete_it_but_no_other(admin, user, user_a):
    """The grants endpoint offers view, change and delete; a delete grant must allow a delete."""
    admin.post(url("clustertemplates"), valid_doc("clustertemplates"), format="json")
    admin.post(url("clustertemplates"), valid_doc("clustertemplates", "single-2"), format="json")
    assert grant(admin, "clustertemplates", "single", user_a, "delete").status_code == 204

    deleted = user.delete(url("clustertemplates", "single"))
    other = user.delete(url("clustertemplates", "single-2"))

    assert deleted.status_code == 204, deleted.content
    assert error_of(other, 403)["code"] == "permission_denied"


def test_grant_to_someone_outside_the_tenant_is_rejected(admin, user_b):
    response = grant(admin, "clustertemplates", "lamp", user_b, "change")

    error = error_of(response, 400)
    assert "not a member" in error["message"]
    assert body(admin.get(url("clustertemplates", "lamp", "/grants"))) == []


def test_grant_with_an_unknown_action_is_rejected(admin, user_a):
    response = grant(admin, "clustertemplates", "lamp", user_a, "own")

    assert "action" in error_of(response, 400)["fields"]


@pytest.mark.parametrize("kind", KINDS)
def test_other_tenants_cannot_read_or_write_the_catalog(client_for, admin_b, tenant_a, setup, kind):
    name, _ = GRANT_TARGETS[kind]
    outsider = client_for(admin_b, tenant=tenant_a.name)
    before = catalog_state(tenant_a)

    responses = [
        outsider.get(url(kind)),
        outsider.get(url(kind, name)),
        outsider.put(url(kind, "new-one"), valid_doc(kind, "new-one"), format="json"),
        outsider.delete(url(kind, name)),
    ]

    for response in responses:
        error = error_of(response, 404)
        assert f"tenant {tenant_a.name} not found" in error["message"]
    assert catalog_state(tenant_a) == before
    assert names(client_for(admin_b).get(url(kind))) == []


def test_superuser_changes_a_tenant_catalog_chosen_by_header(client_for, superuser, tenant_a, setup):
    client = client_for(superuser, tenant=tenant_a.name)

    response = client.put(
        url("clustertemplates", "lamp"), edited(client, "clustertemplates", "lamp", "by root"), format="json"
    )

    assert response.status_code == 200, response.content
    assert body(response)["version"] == 2


def test_anonymous_requests_are_401(setup):
    response = APIClient().get(url("services"))

    assert error_of(response, 401)["code"] == "not_authenticated"
