"""The pool host admin: a tenant admin registers and edits hosts of their static providers and changes their
state with list actions, all through ``providers.pool``; bad input lands on the field; a host a node holds is
refused with a message, not a 500; other tenants' admins and plain members see nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from providers.models import PoolHost, Provider
from providers.pool import pool_host_allocate, pool_host_register
from templates_app.services import catalog_entity_save
from tenants.models import AuditEvent, Tenant
from tests.admin.conftest import field_errors, form_fields, url
from tests.providers.test_static_pool_api import node_spec, static_provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool_a(tenant_a: Tenant) -> Provider:
    return static_provider(tenant_a)


def signed_in(user: Any) -> Client:
    """An admin site client for ``user``, made staff (the shared fixtures make plain members)."""
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(user)
    return client


def add(client: Any, provider: Provider, **fields: Any) -> Any:
    data = {"provider": provider.pk, "address": "", "ssh_port": 22, "ssh_user": "", "host_key": "", **fields}
    return client.post(url(PoolHost, "add"), data)


def act(client: Any, action: str, *hosts: PoolHost) -> Any:
    return client.post(url(PoolHost), {"action": action, "_selected_action": [h.pk for h in hosts]}, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_an_admin_registers_and_edits_a_host(admin_a: Any, pool_a: Provider) -> None:
    client = signed_in(admin_a)
    response = add(client, pool_a, address="10.0.0.7", ssh_port=2222)
    assert response.status_code == 302, response.content[:3000]
    host = PoolHost.objects.get()
    assert (host.provider, host.tenant_id, host.endpoint, host.state) == (
        pool_a,
        pool_a.tenant_id,
        "10.0.0.7:2222",
        "free",
    )
    page = client.get(url(PoolHost, "change", host.pk))
    assert page.status_code == 200
    data = form_fields(page)
    assert "provider" not in data  # a host stays in its pool
    data["ssh_user"] = "ops"
    assert client.post(url(PoolHost, "change", host.pk), data).status_code == 302
    host.refresh_from_db()
    assert host.ssh_user == "ops"
    assert list(AuditEvent.objects.filter(entity_kind="pool host").values_list("action", flat=True)) == [
        "update",
        "create",
    ]


def test_bad_input_is_an_error_on_its_field(admin_a: Any, pool_a: Provider) -> None:
    client = signed_in(admin_a)
    response = add(client, pool_a, address="no such host!", ssh_port=99999)
    assert response.status_code == 200
    assert any("IP address or a DNS name" in error for error in field_errors(response, "address"))
    assert any("between 1 and 65535" in error for error in field_errors(response, "ssh_port"))
    pool_host_register(actor=admin_a, provider=pool_a, address="10.0.0.1")
    duplicate = add(client, pool_a, address="10.0.0.1")
    assert any("is already host" in error for error in field_errors(duplicate, "address"))
    assert PoolHost.objects.count() == 1


def test_only_static_providers_of_administered_tenants_are_offered(
    admin_a: Any, pool_a: Provider, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    data = {"name": "sim", "providertype": "fake", "provisioner": {}}
    catalog_entity_save(tenant=tenant_a, user=None, kind_key="providers", data=data, create=True)
    foreign = static_provider(tenant_b, name="their-pool")
    page = signed_in(admin_a).get(url(PoolHost, "add"))
    choices = [value for value, _ in page.context["adminform"].form.fields["provider"].choices if value]
    assert [str(value) for value in choices] == [str(pool_a.pk)]
    response = add(signed_in(admin_a), foreign, address="10.0.0.1")
    assert field_errors(response, "provider") and not PoolHost.objects.exists()


def test_state_actions_and_a_held_host_is_refused_with_a_message(admin_a: Any, pool_a: Provider) -> None:
    client = signed_in(admin_a)
    held, spare = (pool_host_register(actor=admin_a, provider=pool_a, address=f"10.0.0.{n}") for n in (1, 2))
    pool_host_allocate(provider_pk=pool_a.pk, spec=node_spec(1))  # the host free the longest: the first one
    assert PoolHost.objects.get(pk=held.pk).state == "allocated"
    act(client, "take_out_of_service", spare)
    assert PoolHost.objects.get(pk=spare.pk).state == "broken"
    act(client, "return_to_pool", spare)
    assert PoolHost.objects.get(pk=spare.pk).state == "free"
    refused = act(client, "retire", spare, held)  # all or nothing: the held host stops the whole action
    assert refused.status_code == 200
    assert any("by node c1-node-1" in message for message in messages_of(refused))
    assert [h.state for h in PoolHost.objects.order_by("pk")] == ["allocated", "free"]
    act(client, "retire", spare)
    assert PoolHost.objects.get(pk=spare.pk).state == "retired"
    edit = form_fields(client.get(url(PoolHost, "change", held.pk)))
    edit["address"] = "10.0.0.9"
    response = client.post(url(PoolHost, "change", held.pk), edit)
    assert response.status_code == 200 and "by node c1-node-1" in response.content.decode()
    assert PoolHost.objects.get(pk=held.pk).address == "10.0.0.1"


def test_other_tenants_admins_and_members_see_nothing(
    admin_a: Any, admin_b: Any, user_a: Any, pool_a: Provider
) -> None:
    host = pool_host_register(actor=admin_a, provider=pool_a, address="10.0.0.1")
    bob = signed_in(admin_b)
    assert bob.get(url(PoolHost, "change", host.pk)).status_code == 404
    assert b"10.0.0.1" not in bob.get(url(PoolHost)).content
    act(bob, "retire", host)
    assert PoolHost.objects.get(pk=host.pk).state == "free"
    arthur = signed_in(user_a)
    assert arthur.get(url(PoolHost)).status_code == 403
    assert arthur.get(url(PoolHost, "change", host.pk)).status_code == 404
