"""Tenant restriction in the admin: own-tenant rows only, 404 for other tenants, view-only members."""

from __future__ import annotations

from typing import Any

import pytest

from providers.models import Provider
from templates_app.models import CatalogVersion, ClusterTemplate, HardwareType, ImageType, PartialTemplate, Service
from templates_app.services import catalog_entity_save
from tenants.models import Role
from tests.admin.conftest import form_fields, make_member, url

CATALOG_MODELS = [HardwareType, ImageType, Service, ClusterTemplate, PartialTemplate, Provider]
MINIMAL = {"hardwaretypes": {"providermap": {"p": {"flavor": "f"}}}, "providers": {"providertype": "fake"}}
PARTIAL = {"name": "monitoring", "compatibility": {"services": ["base"]}, "defaults": {"services": ["base"]}}


@pytest.fixture
def two_catalogs(catalog_a: Any, catalog_b: Any, tenant_a: Any, tenant_b: Any) -> None:
    for tenant in (tenant_a, tenant_b):
        catalog_entity_save(tenant=tenant, user=None, kind_key="partialtemplates", data=PARTIAL, create=True)


def other_tenant_object(model: type, tenant: Any) -> Any:
    return model.objects.filter(tenant=tenant).order_by("pk").first()


@pytest.mark.parametrize("model", [*CATALOG_MODELS, CatalogVersion], ids=lambda m: m.__name__)
def test_changelist_shows_only_own_tenant_rows(model: type, two_catalogs: None, staff_admin_a: Any, login) -> None:
    response = login(staff_admin_a).get(url(model), {"all": ""})
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert rows, "tenant A has rows of every kind"
    assert {row.tenant.name for row in rows} == {"acme"}
    assert len(rows) == model.objects.filter(tenant__name="acme").count()


@pytest.mark.parametrize("model", [*CATALOG_MODELS, CatalogVersion], ids=lambda m: m.__name__)
@pytest.mark.parametrize("action", ["change", "delete", "history"])
def test_other_tenants_object_answers_404(
    model: type, action: str, two_catalogs: None, staff_admin_a: Any, tenant_b: Any, login
) -> None:
    obj = other_tenant_object(model, tenant_b)
    client = login(staff_admin_a)
    assert client.get(url(model, action, obj.pk)).status_code == 404
    if action != "history":
        assert client.post(url(model, action, obj.pk), {"post": "yes"}).status_code == 404
    assert model.objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("model", CATALOG_MODELS, ids=lambda m: m.__name__)
def test_other_tenants_object_is_404_even_for_a_view_only_member(
    model: type, two_catalogs: None, staff_user_a: Any, tenant_b: Any, login
) -> None:
    # Without a restricted get_object, Django checks delete permission first and would answer 403.
    obj = other_tenant_object(model, tenant_b)
    client = login(staff_user_a)
    for action in ("change", "delete", "history"):
        assert client.get(url(model, action, obj.pk)).status_code == 404


def test_unknown_or_malformed_ids_answer_404(staff_admin_a: Any, catalog_a: Any, login) -> None:
    client = login(staff_admin_a)
    assert client.get(url(Service, "change", 999999)).status_code == 404
    assert client.get(url(Service, "change", "not-a-number")).status_code == 404


def test_superuser_sees_every_tenant(two_catalogs: None, superuser: Any, login) -> None:
    response = login(superuser).get(url(Service), {"all": ""})
    assert {row.tenant.name for row in response.context["cl"].result_list} == {"acme", "globex"}


def test_tenant_filter_lists_only_own_tenants(two_catalogs: None, staff_admin_a: Any, tenant_c: Any, login) -> None:
    make_member(tenant_c, Role.USER, username="carol")
    response = login(staff_admin_a).get(url(Service))
    assert b"globex" not in response.content
    assert b"initech" not in response.content


def test_users_who_are_not_staff_cannot_enter_the_admin(user_a: Any, catalog_a: Any, login) -> None:
    response = login(user_a).get(url(Service))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_index_offers_tenant_admins_their_models(staff_admin_a: Any, login) -> None:
    response = login(staff_admin_a).get("/admin/")
    assert response.status_code == 200
    models = {model["object_name"] for app in response.context["app_list"] for model in app["models"]}
    assert {"HardwareType", "ImageType", "Service", "ClusterTemplate", "PartialTemplate", "Provider"} <= models
    assert {"Tenant", "Membership", "ApiToken", "AuditEvent", "CatalogVersion"} <= models
    assert "User" not in models


class TestPlainMember:
    """A member with role user (made staff here) may look at the catalog but never change it."""

    @pytest.mark.parametrize("model", CATALOG_MODELS, ids=lambda m: m.__name__)
    def test_views_but_cannot_change(self, model: type, catalog_a: Any, staff_user_a: Any, tenant_a: Any, login):
        if model is PartialTemplate:
            catalog_entity_save(tenant=tenant_a, user=None, kind_key="partialtemplates", data=PARTIAL, create=True)
        obj = model.objects.filter(tenant=tenant_a).first()
        client = login(staff_user_a)
        assert client.get(url(model)).status_code == 200
        page = client.get(url(model, "change", obj.pk))
        assert page.status_code == 200
        assert page.context["title"].startswith("View")
        assert b"Loom JSON" in page.content
        assert b'name="_save"' not in page.content
        assert client.post(url(model, "change", obj.pk), {"label": "changed"}).status_code == 403
        assert client.get(url(model, "add")).status_code == 403
        assert client.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
        obj.refresh_from_db()
        assert obj.version == 1
        assert obj.label != "changed"

    def test_cannot_use_the_bulk_delete_action(self, catalog_a: Any, staff_user_a: Any, tenant_a: Any, login):
        obj = HardwareType.objects.filter(tenant=tenant_a).first()
        response = login(staff_user_a).post(
            url(HardwareType), {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"}
        )
        assert response.status_code in (200, 302)
        assert HardwareType.objects.filter(pk=obj.pk).exists()


def test_admin_of_one_tenant_cannot_write_in_a_tenant_where_they_are_only_a_member(
    catalog_a: Any, catalog_b: Any, staff_admin_a: Any, tenant_b: Any, login
) -> None:
    from tenants.models import Membership

    Membership.objects.create(user=staff_admin_a, tenant=tenant_b, role=Role.USER)
    obj = HardwareType.objects.filter(tenant=tenant_b).first()
    client = login(staff_admin_a)
    page = client.get(url(HardwareType, "change", obj.pk))
    assert page.status_code == 200
    assert page.context["title"].startswith("View")
    assert client.post(url(HardwareType, "change", obj.pk), form_fields(page)).status_code == 403
    # Visible to them, so Django's own per-object delete check answers 403 (not 404).
    response = client.post(
        url(HardwareType), {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"}
    )
    assert response.status_code == 403
    assert HardwareType.objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("model", [*CATALOG_MODELS, CatalogVersion], ids=lambda m: m.__name__)
def test_changelist_query_count_does_not_grow_with_rows(
    model: type, catalog_a: Any, tenant_a: Any, staff_admin_a: Any, login, django_assert_max_num_queries
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = login(staff_admin_a)
    with CaptureQueriesContext(connection) as few:
        client.get(url(model))
    kind_key = "hardwaretypes" if model is CatalogVersion else model.kind_key
    for index in range(15):
        data = {"name": f"extra-{index}", **MINIMAL.get(kind_key, {})}
        catalog_entity_save(tenant=tenant_a, user=None, kind_key=kind_key, data=data, create=True)
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(url(model))
