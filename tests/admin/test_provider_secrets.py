"""Provider admin: fields from the provider type's schema, and secrets that never come back out."""

from __future__ import annotations

from typing import Any

import pytest

from providers.catalog_kind import stored_secrets
from providers.models import Provider
from templates_app.models import CatalogVersion
from tenants.models import AuditEvent
from tests.admin.conftest import form_fields, url

ACCESS_KEY = "AKIA-Quokka-4242"
SECRET_KEY = "s3cr3t-Zebra-917+xyz"
NEW_SECRET = "n3w-Pangolin-555"


def submit(client: Any, page_url: str, changes: dict[str, Any] | None = None) -> Any:
    page = client.get(page_url)
    assert page.status_code == 200
    return client.post(page_url, {**form_fields(page), **(changes or {})})


@pytest.fixture
def client(staff_admin_a: Any, login: Any) -> Any:
    return login(staff_admin_a)


@pytest.fixture
def provider(catalog_a: Any, client: Any) -> Provider:
    response = submit(
        client,
        url(Provider, "add"),
        {
            "name": "aws-prod",
            "providertype": "aws",
            "aws__api_user": ACCESS_KEY,
            "aws__api_password": SECRET_KEY,
            "aws__ssh_keypair": "prod-key",
            "aws__ssh_key_resource": "prod-ssh",
            "aws__aws_region": "eu-west-1",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    return Provider.objects.get(tenant__name="acme", name="aws-prod")


def test_create_from_the_type_schema(provider: Provider) -> None:
    assert provider.version == 1
    assert provider.provider_type == "aws"
    assert stored_secrets(provider) == {"api_user": ACCESS_KEY, "api_password": SECRET_KEY}
    public = provider.document["provisioner"]
    assert "api_user" not in public and "api_password" not in public
    # Fields left at the schema's defaults are sent as shown; booleans become booleans.
    assert public["aws_region"] == "eu-west-1"
    assert public["security_groups"] == "default"
    assert public["aws_ebs_delete_on_term"] is True
    assert "subnet_id" not in public  # blank and never set: not sent


def test_stored_secrets_appear_on_no_admin_page(
    provider: Provider, client: Any, superuser: Any, staff_user_a: Any, login: Any
) -> None:
    submit(client, url(Provider, "change", provider.pk), {"label": "Production"})  # a second version
    version = CatalogVersion.objects.get(tenant=provider.tenant, kind="providers", name="aws-prod", version=2)
    event = AuditEvent.objects.filter(entity_name="aws-prod").first()
    pages = [
        url(Provider),
        url(Provider, "add"),
        url(Provider, "change", provider.pk),
        url(Provider, "history", provider.pk),
        url(Provider, "delete", provider.pk),
        url(CatalogVersion),
        url(CatalogVersion, "change", version.pk),
        url(AuditEvent),
        url(AuditEvent, "change", event.pk),
        "/admin/",
    ]
    for viewer, may_see in ((client, set(pages)), (login(superuser), set(pages)), (login(staff_user_a), set())):
        for page in pages:
            response = viewer.get(page)
            # A plain member sees the catalog read-only; the rest is refused (403) or invisible (404).
            assert response.status_code in ((200,) if page in may_see else (200, 403, 404)), page
            html = response.content.decode()
            assert ACCESS_KEY not in html, page
            assert SECRET_KEY not in html, page
    change_page = client.get(url(Provider, "change", provider.pk)).content.decode()
    assert "A value is stored: leave blank to keep it." in change_page
    assert "&quot;$encrypted$&quot;" in change_page  # the masked Loom JSON


def test_failed_save_does_not_echo_secrets(provider: Provider, client: Any) -> None:
    response = submit(
        client, url(Provider, "change", provider.pk), {"aws__api_password": NEW_SECRET, "aws__aws_region": "mars-1"}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert NEW_SECRET not in html and SECRET_KEY not in html
    assert stored_secrets(Provider.objects.get(pk=provider.pk))["api_password"] == SECRET_KEY


def test_blank_secret_keeps_the_stored_value(provider: Provider, client: Any) -> None:
    assert submit(client, url(Provider, "change", provider.pk)).status_code == 302
    provider.refresh_from_db()
    assert provider.version == 1  # nothing changed, no new version

    assert submit(client, url(Provider, "change", provider.pk), {"aws__subnet_id": "subnet-1"}).status_code == 302
    provider.refresh_from_db()
    assert provider.version == 2
    assert stored_secrets(provider) == {"api_user": ACCESS_KEY, "api_password": SECRET_KEY}
    assert provider.document["provisioner"]["subnet_id"] == "subnet-1"
    row = CatalogVersion.objects.get(tenant=provider.tenant, kind="providers", name="aws-prod", version=2)
    assert SECRET_KEY not in str(row.document)
    assert row.secret_data and SECRET_KEY not in row.secret_data


def test_typing_replaces_and_clear_erases(provider: Provider, client: Any) -> None:
    response = submit(
        client,
        url(Provider, "change", provider.pk),
        {"aws__api_password": NEW_SECRET, "aws__api_user__clear": "on"},
    )
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.version == 2
    assert stored_secrets(provider) == {"api_password": NEW_SECRET}
    assert provider.document["provisioner"]["api_user"] == ""
    page = client.get(url(Provider, "change", provider.pk)).content.decode()
    assert NEW_SECRET not in page
    assert "No value is stored." in page


def test_missing_required_fields_are_stored_with_a_warning(catalog_a: Any, client: Any) -> None:
    """Not an error any more (issue 15): the provider is stored, not launchable, and the admin says why."""
    response = submit(client, url(Provider, "add"), {"name": "pool", "providertype": "static"})
    assert response.status_code == 302
    shown = " ".join(str(m) for m in client.get(response["Location"]).context["messages"])
    assert "provider type static requires {ssh_private_key}" in shown
    assert Provider.objects.filter(name="pool").exists()


def test_field_errors_land_on_the_type_field(provider: Provider, client: Any) -> None:
    response = submit(client, url(Provider, "change", provider.pk), {"aws__aws_ebs_delete_on_term": "perhaps"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["aws__aws_ebs_delete_on_term"]


def test_changing_the_type_drops_the_old_secrets(provider: Provider, client: Any) -> None:
    response = submit(client, url(Provider, "change", provider.pk), {"providertype": "fake", "fake__seed": "7"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.provider_type == "fake"
    assert stored_secrets(provider) == {}
    assert provider.document["provisioner"]["seed"] == "7"


def test_sample_providers_with_stored_secrets_round_trip(catalog_a: Any, client: Any) -> None:
    openstack = Provider.objects.get(tenant__name="acme", name="openstack")
    before = stored_secrets(openstack)
    assert before  # the sample carries placeholder credentials
    page = client.get(url(Provider, "change", openstack.pk))
    for value in before.values():
        assert f'value="{value}"' not in page.content.decode()
    assert client.post(url(Provider, "change", openstack.pk), form_fields(page)).status_code == 302
    openstack.refresh_from_db()
    assert (openstack.version, stored_secrets(openstack)) == (1, before)
