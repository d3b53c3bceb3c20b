"""CatalogViewSet: CRUD by name, versions, filters, pagination, delete protection, audit and query counts,
run alike for every catalog kind under /api/v2/<kind>/."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from templates_app.services import catalog_entity_save
from tests.api.helpers import (
    EXACT_KEY,
    KINDS,
    assert_invalid,
    body,
    error_of,
    names,
    results,
    url,
    valid_doc,
)

pytestmark = pytest.mark.django_db

SINGULAR = {kind: kind[:-1] for kind in KINDS}


@pytest.fixture
def admin(client_for, admin_a, catalog_a):
    """A tenant admin's client in tenant A, which holds the sample catalog."""
    return client_for(admin_a)


# --- create and retrieve ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_create_returns_201_and_the_document_is_retrievable_by_name(admin, kind):
    doc = valid_doc(kind)

    created = admin.post(url(kind), doc, format="json")

    assert created.status_code == 201, created.content
    assert body(created)["name"] == doc["name"]
    assert body(created)["version"] == 1
    fetched = admin.get(url(kind, doc["name"]))
    assert fetched.status_code == 200
    assert body(fetched) == body(created)
    assert body(fetched)["description"] == doc["description"]
    assert body(fetched)[EXACT_KEY[kind]] == doc[EXACT_KEY[kind]]


@pytest.mark.parametrize("kind", KINDS)
def test_create_of_an_existing_name_is_409(admin, kind):
    doc = valid_doc(kind)
    assert admin.post(url(kind), doc, format="json").status_code == 201

    again = admin.post(url(kind), valid_doc(kind, description="other"), format="json")

    error = error_of(again, 409)
    assert error["code"] == "conflict"
    assert doc["name"] in error["message"] and "already exists" in error["message"]
    assert body(admin.get(url(kind, doc["name"])))["description"] == doc["description"]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_name_is_404_in_the_error_shape(admin, kind):
    for method, suffix in (("get", ""), ("patch", ""), ("delete", ""), ("get", "/versions/"), ("get", "/versions/1")):
        response = getattr(admin, method)(url(kind, "no-such-entity", suffix), {"label": "x"}, format="json")

        assert response.status_code == 404, (method, suffix, response.content)
        error = error_of(response, 404)
        assert error["code"] == "not_found"
        assert "no-such-entity" in error["message"]


# --- PUT: create or update ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_put_creates_then_updates_as_a_new_version(admin, kind):
    doc = valid_doc(kind)

    created = admin.put(url(kind, doc["name"]), doc, format="json")
    updated = admin.put(url(kind, doc["name"]), {**doc, "description": "second"}, format="json")

    assert created.status_code == 201, created.content
    assert body(created)["version"] == 1
    assert updated.status_code == 200, updated.content
    assert body(updated)["version"] == 2
    assert body(admin.get(url(kind, doc["name"])))["description"] == "second"


@pytest.mark.parametrize("kind", KINDS)
def test_identical_put_makes_no_new_version(admin, kind):
    doc = valid_doc(kind)
    admin.put(url(kind, doc["name"]), doc, format="json")

    again = admin.put(url(kind, doc["name"]), doc, format="json")

    assert again.status_code == 200, again.content
    assert body(again)["version"] == 1
    assert [v["version"] for v in results(admin.get(url(kind, doc["name"], "/versions/")))] == [1]


@pytest.mark.parametrize("kind", KINDS)
def test_put_of_its_own_export_makes_no_new_version(admin, kind):
    """What GET returns (canonical form plus ``version``) can be PUT back as it is."""
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")
    exported = body(admin.get(url(kind, doc["name"])))

    again = admin.put(url(kind, doc["name"]), exported, format="json")

    assert again.status_code == 200, again.content
    assert body(again)["version"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_put_with_a_different_name_in_the_body_is_400(admin, kind):
    doc = valid_doc(kind)

    response = admin.put(url(kind, doc["name"]), {**doc, "name": "something-else"}, format="json")

    assert_invalid(response, field="name", says=("mismatch", "something-else"))
    assert admin.get(url(kind, doc["name"])).status_code == 404
    assert admin.get(url(kind, "something-else")).status_code == 404


# --- PATCH ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_patch_replaces_only_the_given_keys(admin, kind):
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")

    patched = admin.patch(url(kind, doc["name"]), {"label": "Patched"}, format="json")

    assert patched.status_code == 200, patched.content
    assert body(patched)["label"] == "Patched"
    assert body(patched)["version"] == 2
    fetched = body(admin.get(url(kind, doc["name"])))
    assert fetched["label"] == "Patched"
    assert fetched["description"] == doc["description"]
    assert fetched[EXACT_KEY[kind]] == doc[EXACT_KEY[kind]]


def test_patch_that_makes_the_document_invalid_is_400_and_changes_nothing(admin):
    response = admin.patch(
        url("clustertemplates", "lamp"), {"constraints": {"size": {"min": 4, "max": 2}}}, format="json"
    )

    assert_invalid(response, field="constraints.size", says=("min (4)", "max (2)"), entity="lamp")
    assert body(admin.get(url("clustertemplates", "lamp")))["version"] == 1


# --- DELETE -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_delete_returns_204_and_the_entity_is_gone(admin, kind):
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")

    deleted = admin.delete(url(kind, doc["name"]))

    assert deleted.status_code == 204
    assert deleted.content == b""
    error_of(admin.get(url(kind, doc["name"])), 404)
    assert doc["name"] not in names(admin.get(url(kind)))
    error_of(admin.delete(url(kind, doc["name"])), 404)


def _monitored_template() -> dict[str, Any]:
    return valid_doc("clustertemplates", "single-monitored", includes=[{"name": "monitoring"}])


# kind → (entity in use, entities to create first as (kind, document), the dependents the 409 must list)
IN_USE: dict[str, tuple[str, list[tuple[str, dict[str, Any]]], list[str]]] = {
    "providers": ("rackspace", [], ["clustertemplate base", "clustertemplate lamp"]),
    "hardwaretypes": ("standard-small", [], ["clustertemplate base"]),
    "imagetypes": ("ubuntu12", [], ["clustertemplate base", "clustertemplate lamp"]),
    "services": ("apache-httpd", [], ["service php", "clustertemplate lamp"]),
    "partialtemplates": (
        "monitoring",
        [("partialtemplates", valid_doc("partialtemplates")), ("clustertemplates", _monitored_template())],
        ["clustertemplate single-monitored"],
    ),
    "clustertemplates": (
        "single",
        [
            ("clustertemplates", valid_doc("clustertemplates")),
            ("clustertemplates", {"name": "single-child", "extends": {"name": "single"}}),
        ],
        ["clustertemplate single-child"],
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_delete_of_an_entity_in_use_is_409_listing_its_dependents(admin, kind):
    name, setup, expected = IN_USE[kind]
    for setup_kind, doc in setup:
        response = admin.post(url(setup_kind), doc, format="json")
        assert response.status_code == 201, response.content

    response = admin.delete(url(kind, name))

    error = error_of(response, 409)
    assert error["code"] == "conflict"
    assert error["fields"]["dependents"] == expected
    for dependent in expected:
        assert dependent in error["message"]
    assert admin.get(url(kind, name)).status_code == 200


def test_delete_of_a_hardware_type_named_only_in_compatibility_lists_is_allowed(admin):
    """Compatibility lists are soft references (the shipped samples name absent image types too)."""
    assert admin.delete(url("hardwaretypes", "standard-2xlarge")).status_code == 204

    lamp = admin.get(url("clustertemplates", "lamp"))
    assert "standard-2xlarge" in body(lamp)["compatibility"]["hardwaretypes"]


# --- versions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_versions_lists_every_version_newest_first_and_old_ones_stay_readable(admin, admin_a, kind):
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")
    admin.put(url(kind, doc["name"]), {**doc, "description": "second"}, format="json")

    listed = results(admin.get(url(kind, doc["name"], "/versions/")))
    first = admin.get(url(kind, doc["name"], "/versions/1"))
    second = admin.get(url(kind, doc["name"], "/versions/2"))

    assert [(v["version"], v["created_by"]) for v in listed] == [(2, admin_a.username), (1, admin_a.username)]
    assert first.status_code == 200
    assert (body(first)["version"], body(first)["description"]) == (1, doc["description"])
    assert body(first)[EXACT_KEY[kind]] == doc[EXACT_KEY[kind]]
    assert (body(second)["version"], body(second)["description"]) == (2, "second")
    error = error_of(admin.get(url(kind, doc["name"], "/versions/3")), 404)
    assert "version 3" in error["message"]


@pytest.mark.parametrize("kind", KINDS)
def test_old_versions_stay_readable_after_the_entity_is_deleted(admin, kind):
    """A cluster built from version 1 must always be able to show version 1 (models.py docstring)."""
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")
    admin.put(url(kind, doc["name"]), {**doc, "description": "second"}, format="json")
    assert admin.delete(url(kind, doc["name"])).status_code == 204

    first = admin.get(url(kind, doc["name"], "/versions/1"))

    assert first.status_code == 200, first.content
    assert body(first)["description"] == doc["description"]
    assert [v["version"] for v in results(admin.get(url(kind, doc["name"], "/versions/")))] == [2, 1]
    error_of(admin.get(url(kind, "never-existed", "/versions/1")), 404)


@pytest.mark.parametrize("kind", KINDS)
def test_recreating_a_deleted_name_continues_its_version_numbers(admin, kind):
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")
    admin.put(url(kind, doc["name"]), {**doc, "description": "second"}, format="json")
    admin.delete(url(kind, doc["name"]))

    recreated = admin.post(url(kind), {**doc, "description": "third"}, format="json")

    assert recreated.status_code == 201, recreated.content
    assert body(recreated)["version"] == 3
    old = admin.get(url(kind, doc["name"], "/versions/1"))
    assert (old.status_code, body(old)["description"]) == (200, doc["description"])
    listed = results(admin.get(url(kind, doc["name"], "/versions/")))
    assert [v["version"] for v in listed] == [3, 2, 1]


# --- list: pagination and filters --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_list_is_paginated_and_ordered_by_name(admin, kind):
    for suffix in ("c", "a", "b"):
        response = admin.post(url(kind), valid_doc(kind, f"page-{suffix}"), format="json")
        assert response.status_code == 201, response.content
    everything = names(admin.get(url(kind), {"page_size": 200}))

    first = admin.get(url(kind), {"page_size": 2})
    second = admin.get(url(kind), {"page_size": 2, "page": 2})

    assert everything == sorted(everything)
    assert {"page-a", "page-b", "page-c"} <= set(everything)
    assert body(first)["count"] == len(everything)
    assert names(first) == everything[:2]
    assert names(second) == everything[2:4]
    assert body(first)["next"] is not None
    assert body(first)["previous"] is None


@pytest.mark.parametrize("kind", KINDS)
def test_list_filters_by_exact_name(admin, kind):
    admin.post(url(kind), valid_doc(kind, "needle"), format="json")
    admin.post(url(kind), valid_doc(kind, "needle-2"), format="json")

    assert names(admin.get(url(kind), {"name": "needle"})) == ["needle"]


@pytest.mark.parametrize("kind", KINDS)
def test_list_q_searches_name_label_and_description(admin, kind):
    admin.post(url(kind), valid_doc(kind, "by-name-xyzzy"), format="json")
    admin.post(url(kind), valid_doc(kind, "by-label", label="The XYZZY one"), format="json")
    admin.post(url(kind), valid_doc(kind, "by-description", description="has xyZZy inside"), format="json")
    admin.post(url(kind), valid_doc(kind, "unrelated"), format="json")

    assert names(admin.get(url(kind), {"q": "xyzzy"})) == ["by-description", "by-label", "by-name-xyzzy"]


@pytest.mark.parametrize("kind", ["hardwaretypes", "imagetypes"])
def test_list_filters_types_by_provider_in_their_providermap(admin, samples, kind):
    admin.post(url(kind), valid_doc(kind), format="json")
    expected_aws = sorted(item["name"] for item in samples[kind] if "aws-us-east-1" in item["providermap"])

    assert names(admin.get(url(kind), {"provider": "aws-us-east-1"})) == expected_aws
    assert valid_doc(kind)["name"] in names(admin.get(url(kind), {"provider": "rackspace"}))
    assert names(admin.get(url(kind), {"provider": "nowhere"})) == []


def test_list_filters_providers_by_provider_type(admin):
    admin.post(url("providers"), valid_doc("providers"), format="json")

    assert names(admin.get(url("providers"), {"providertype": "openstack"})) == ["openstack"]
    assert names(admin.get(url("providers"), {"providertype": "fake"})) == ["fake-lab"]
    assert names(admin.get(url("providers"), {"providertype": "google"})) == []


@pytest.mark.parametrize("kind", KINDS)
def test_list_shows_only_the_callers_tenant(admin, client_for, admin_b, kind):
    admin.post(url(kind), valid_doc(kind), format="json")
    other = client_for(admin_b)

    assert names(other.get(url(kind))) == []
    error_of(other.get(url(kind, valid_doc(kind)["name"])), 404)


# --- query counts -----------------------------------------------------------------------------------------


def _fill(tenant, kind: str, start: int, stop: int) -> None:
    for index in range(start, stop):
        catalog_entity_save(tenant=tenant, user=None, kind_key=kind, data=valid_doc(kind, f"bulk-{index:03d}"))


def _query_count(client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, {"page_size": 200})
    assert response.status_code == 200
    return len(captured)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", ["admin", "user"])
def test_list_runs_a_constant_number_of_queries(
    client_for, tenant_a, admin_a, user_a, catalog_a, django_assert_max_num_queries, kind, role
):
    client = client_for(admin_a if role == "admin" else user_a)
    _fill(tenant_a, kind, 0, 2)
    baseline = _query_count(client, url(kind))
    _fill(tenant_a, kind, 2, 14)

    with django_assert_max_num_queries(baseline):
        response = client.get(url(kind), {"page_size": 200})

    assert len(results(response)) >= 14


@pytest.mark.parametrize("kind", KINDS)
def test_versions_list_runs_a_constant_number_of_queries(admin, tenant_a, django_assert_max_num_queries, kind):
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")
    baseline = _query_count(admin, url(kind, doc["name"], "/versions/"))
    for index in range(10):
        admin.put(url(kind, doc["name"]), {**doc, "description": f"edit {index}"}, format="json")

    with django_assert_max_num_queries(baseline):
        response = admin.get(url(kind, doc["name"], "/versions/"), {"page_size": 200})

    assert len(results(response)) == 11


# --- audit --------------------------------------------------------------------------------------------------


def _audit(client, kind: str, name: str) -> list[dict[str, Any]]:
    events = results(client.get("/api/v2/audit-events/", {"entity_name": name, "entity_kind": SINGULAR[kind]}))
    return sorted(events, key=lambda event: event["id"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_catalog_change_writes_an_audit_event_with_a_before_after_summary(admin, admin_a, kind):
    doc = valid_doc(kind)
    admin.post(url(kind), doc, format="json")
    admin.put(url(kind, doc["name"]), {**doc, "description": "second"}, format="json")
    admin.put(url(kind, doc["name"]), {**doc, "description": "second"}, format="json")  # no change: no event
    admin.patch(url(kind, doc["name"]), {"label": "L"}, format="json")
    admin.delete(url(kind, doc["name"]))

    events = _audit(admin, kind, doc["name"])

    assert [(e["action"], e["version"], e["actor"]) for e in events] == [
        ("create", 1, admin_a.username),
        ("update", 2, admin_a.username),
        ("update", 3, admin_a.username),
        ("delete", 3, admin_a.username),
    ]
    create, update, patch, delete = (e["summary"] for e in events)
    assert create["before"] is None
    assert create["after"]["name"] == doc["name"]
    assert create["after"][EXACT_KEY[kind]] == doc[EXACT_KEY[kind]]
    assert update["changed"] == ["description"]
    assert update["before"] == {"description": doc["description"]}
    assert update["after"] == {"description": "second"}
    assert patch["changed"] == ["label"]
    assert (patch["before"], patch["after"]) == ({"label": None}, {"label": "L"})
    assert delete["after"] is None
    assert delete["before"]["description"] == "second"


def test_audit_events_are_not_shown_to_plain_users(admin, client_for, user_a):
    admin.post(url("services"), valid_doc("services"), format="json")

    assert results(client_for(user_a).get("/api/v2/audit-events/")) == []
