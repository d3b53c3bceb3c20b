"""Tenants, memberships, API tokens and the audit trail in the admin."""

from __future__ import annotations

from typing import Any

import pytest

from tenants.models import ApiToken, AuditEvent, Membership, Role, Tenant
from tenants.services import api_token_create, audit
from tests.admin.conftest import form_fields, url
from tests.factories import UserFactory


def submit(client: Any, page_url: str, changes: dict[str, Any] | None = None) -> Any:
    page = client.get(page_url)
    assert page.status_code == 200
    return client.post(page_url, {**form_fields(page), **(changes or {})})


def errors(response: Any) -> dict[str, list[str]]:
    return dict(response.context["adminform"].form.errors)


class TestTenants:
    def test_superuser_creates_changes_and_deletes(self, superuser: Any, login: Any) -> None:
        client = login(superuser)
        response = submit(client, url(Tenant, "add"), {"name": "umbrella", "workers": "5", "max_nodes": "40"})
        assert response.status_code == 302, errors(response)
        tenant = Tenant.objects.get(name="umbrella")
        assert (tenant.workers, tenant.max_nodes, tenant.max_clusters) == (5, 40, None)
        assert AuditEvent.objects.filter(entity_kind="tenant", action="create", actor=superuser).exists()

        response = submit(client, url(Tenant, "change", tenant.pk), {"workers": "7", "description": "labs"})
        assert response.status_code == 302, errors(response)
        tenant.refresh_from_db()
        assert (tenant.workers, tenant.description, tenant.max_nodes) == (7, "labs", 40)
        assert AuditEvent.objects.filter(entity_kind="tenant", action="update").exists()

        assert client.post(url(Tenant, "delete", tenant.pk), {"post": "yes"}).status_code == 302
        assert not Tenant.objects.filter(name="umbrella").exists()
        assert AuditEvent.objects.filter(entity_kind="tenant", action="delete", entity_name="umbrella").exists()

    @pytest.mark.parametrize(
        ("changes", "field", "message"),
        [
            ({"name": "acme"}, "name", "already exists"),
            ({"name": "no spaces"}, "name", "must be 1-255 characters"),
            ({"name": "ok", "workers": "-1"}, "workers", "greater than or equal to 0"),
            ({"name": "ok", "workers": "99999999999"}, "workers", "less than or equal to 2147483647"),
        ],
    )
    def test_add_errors_are_shown_on_the_field(
        self, changes: dict[str, str], field: str, message: str, tenant_a: Any, superuser: Any, login: Any
    ) -> None:
        response = submit(login(superuser), url(Tenant, "add"), changes)
        assert response.status_code == 200
        assert list(errors(response)) == [field]
        assert any(message in error for error in errors(response)[field]), errors(response)
        assert form_fields(response)["name"] == changes["name"]

    def test_tenant_admin_sees_only_own_tenant_read_only(
        self, staff_admin_a: Any, tenant_a: Any, tenant_b: Any, login: Any
    ) -> None:
        client = login(staff_admin_a)
        response = client.get(url(Tenant))
        assert [tenant.name for tenant in response.context["cl"].result_list] == ["acme"]
        page = client.get(url(Tenant, "change", tenant_a.pk))
        assert page.status_code == 200
        assert page.context["title"].startswith("View")
        assert client.post(url(Tenant, "change", tenant_a.pk), {"workers": "99"}).status_code == 403
        assert client.get(url(Tenant, "add")).status_code == 403
        assert client.get(url(Tenant, "change", tenant_b.pk)).status_code == 404
        assert client.get(url(Tenant, "delete", tenant_b.pk)).status_code == 404
        tenant_a.refresh_from_db()
        assert tenant_a.workers == 10


class TestMemberships:
    def test_tenant_admin_adds_and_changes_a_member(self, staff_admin_a: Any, tenant_a: Any, login: Any) -> None:
        newcomer = UserFactory(username="nora")
        newcomer.save()
        client = login(staff_admin_a)
        response = submit(client, url(Membership, "add"), {"username": "nora", "role": Role.USER})
        assert response.status_code == 302, errors(response)
        membership = Membership.objects.get(user=newcomer, tenant=tenant_a)
        assert membership.role == Role.USER
        assert AuditEvent.objects.filter(entity_kind="membership", action="create", entity_name="nora").exists()

        response = submit(client, url(Membership, "change", membership.pk), {"role": Role.ADMIN})
        assert response.status_code == 302, errors(response)
        membership.refresh_from_db()
        newcomer.refresh_from_db()
        assert membership.role == Role.ADMIN
        assert newcomer.is_staff  # the service lets new tenant admins into the admin

        assert client.post(url(Membership, "delete", membership.pk), {"post": "yes"}).status_code == 302
        assert not Membership.objects.filter(pk=membership.pk).exists()
        newcomer.refresh_from_db()
        assert not newcomer.is_staff

    def test_unknown_user_and_existing_member_are_field_errors(
        self, staff_admin_a: Any, user_a: Any, login: Any
    ) -> None:
        client = login(staff_admin_a)
        response = submit(client, url(Membership, "add"), {"username": "ghost"})
        assert response.status_code == 200
        assert errors(response)["username"] == ["no user named ghost"]
        assert form_fields(response)["username"] == "ghost"
        response = submit(client, url(Membership, "add"), {"username": user_a.username})
        assert response.status_code == 200
        assert "already a member" in errors(response)["username"][0]

    def test_last_admin_stays(self, staff_admin_a: Any, tenant_a: Any, login: Any) -> None:
        client = login(staff_admin_a)
        own = Membership.objects.get(user=staff_admin_a, tenant=tenant_a)
        response = submit(client, url(Membership, "change", own.pk), {"role": Role.USER})
        assert response.status_code == 200
        assert "last admin" in " ".join(response.context["adminform"].form.non_field_errors())
        response = client.post(url(Membership, "delete", own.pk), {"post": "yes"}, follow=True)
        assert any("last admin" in str(message) for message in response.context["messages"])
        own.refresh_from_db()
        assert own.role == Role.ADMIN

    def test_only_memberships_of_administered_tenants(
        self, staff_admin_a: Any, admin_b: Any, tenant_b: Any, user_a: Any, login: Any
    ) -> None:
        client = login(staff_admin_a)
        listed = client.get(url(Membership)).context["cl"].result_list
        assert {membership.tenant.name for membership in listed} == {"acme"}
        other = Membership.objects.get(user=admin_b, tenant=tenant_b)
        assert client.get(url(Membership, "change", other.pk)).status_code == 404
        assert client.post(url(Membership, "delete", other.pk), {"post": "yes"}).status_code == 404
        page = client.get(url(Membership, "add"))
        assert [label for _, label in page.context["adminform"].form.fields["tenant"].choices] == ["acme"]
        response = client.post(url(Membership, "add"), {"tenant": tenant_b.pk, "username": "arthur", "role": "user"})
        assert response.status_code == 200
        assert not Membership.objects.filter(user=user_a, tenant=tenant_b).exists()

    def test_plain_member_has_no_membership_admin(self, staff_user_a: Any, login: Any) -> None:
        assert login(staff_user_a).get(url(Membership)).status_code == 403


class TestApiTokens:
    def test_users_see_and_revoke_only_their_own(
        self, staff_admin_a: Any, admin_b: Any, superuser: Any, login: Any
    ) -> None:
        mine = api_token_create(user=staff_admin_a, name="laptop")
        theirs = api_token_create(user=admin_b, name="ci")
        client = login(staff_admin_a)
        response = client.get(url(ApiToken))
        assert [token.name for token in response.context["cl"].result_list] == ["laptop"]
        detail = client.get(url(ApiToken, "change", mine.token.pk))
        assert detail.status_code == 200
        for page in (response, detail):
            html = page.content.decode()
            assert mine.token.key_hash not in html and mine.key not in html
        assert client.get(url(ApiToken, "change", theirs.token.pk)).status_code == 404

        response = client.post(
            url(ApiToken), {"action": "revoke", "_selected_action": [mine.token.pk, theirs.token.pk]}
        )
        assert response.status_code == 302
        assert ApiToken.objects.get(pk=mine.token.pk).revoked_at is not None
        assert ApiToken.objects.get(pk=theirs.token.pk).revoked_at is None  # not in their queryset
        assert AuditEvent.objects.filter(action="revoke", entity_kind="api-token", actor=staff_admin_a).count() == 1

        listed = login(superuser).get(url(ApiToken)).context["cl"].result_list
        assert {token.name for token in listed} == {"laptop", "ci"}

    def test_tokens_are_read_only(self, staff_admin_a: Any, login: Any) -> None:
        token = api_token_create(user=staff_admin_a, name="laptop").token
        client = login(staff_admin_a)
        assert client.get(url(ApiToken, "add")).status_code == 403
        assert client.post(url(ApiToken, "change", token.pk), {"name": "x"}).status_code == 403
        assert client.post(url(ApiToken, "delete", token.pk), {"post": "yes"}).status_code == 403


class TestAuditEvents:
    def test_restricted_to_administered_tenants(
        self, staff_admin_a: Any, tenant_a: Any, tenant_b: Any, superuser: Any, login: Any
    ) -> None:
        audit(tenant=tenant_a, actor=None, action="update", kind="service", name="php")
        audit(tenant=tenant_b, actor=None, action="update", kind="service", name="secret-project")
        audit(tenant=None, actor=None, action="create", kind="api-token", name="someone's token")
        client = login(staff_admin_a)
        response = client.get(url(AuditEvent))
        assert {event.tenant_id for event in response.context["cl"].result_list} == {tenant_a.pk}
        assert b"secret-project" not in response.content
        for event in AuditEvent.objects.exclude(tenant=tenant_a):
            assert client.get(url(AuditEvent, "change", event.pk)).status_code == 404
        own = AuditEvent.objects.get(tenant=tenant_a)
        assert client.get(url(AuditEvent, "change", own.pk)).status_code == 200
        assert client.post(url(AuditEvent, "delete", own.pk), {"post": "yes"}).status_code == 403
        assert len(login(superuser).get(url(AuditEvent)).context["cl"].result_list) == 3

    def test_plain_member_has_no_audit_admin(self, staff_user_a: Any, login: Any) -> None:
        assert login(staff_user_a).get(url(AuditEvent)).status_code == 403
