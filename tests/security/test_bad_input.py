"""Out-of-range identifiers and odd bodies are client errors, never a 500."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "url",
    [
        "/api/v2/memberships/99999999999999999999999",
        "/api/v2/tokens/99999999999999999999999",
        "/api/v2/audit-events/99999999999999999999999",
        "/api/v2/clustertemplates/lamp/versions/99999999999999999999999",
        "/api/v2/clustertemplates/lamp/versions/0",
        "/api/v2/memberships/abc",
    ],
)
def test_huge_or_odd_ids_are_client_errors(catalog_a, admin_a, client_for, url):
    response = client_for(admin_a).get(url)
    assert response.status_code in (400, 404), response.content
    assert set(response.json()["error"]) >= {"code", "message", "fields"}


def test_form_encoded_and_non_json_bodies(catalog_a, admin_a, client_for):
    client = client_for(admin_a)
    response = client.post("/api/v2/services/", "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    response = client.post("/api/v2/import", b"\xff\xfe{", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed"
    response = client.post("/api/v2/services/", "[1, 2]", content_type="application/json")
    assert response.status_code == 400 and "must be a JSON object" in response.json()["error"]["message"]


def test_nul_in_query_strings_and_forms_is_400(catalog_a, admin_a, client_for, client):
    response = client_for(admin_a).get("/api/v2/services/?name=re%00dis")
    assert response.status_code == 400 and "NUL" in response.json()["error"]["message"]
    response = client.post("/login/", {"username": "a\x00b", "password": "x"})
    assert response.status_code == 200 and "did not match" in response.content.decode()


def test_unknown_api_paths_use_the_error_shape(admin_a, client_for):
    response = client_for(admin_a).get("/api/v2/services/a%20b")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_nul_characters_from_files_are_problems_not_crashes(tenant_a, samples):
    from templates_app.problems import CatalogValidationError
    from templates_app.services import catalog_import

    samples["services"][0]["description"] = "bad\x00byte"
    samples["providers"][0]["provisioner"]["ssh_keypair"] = "k\x00"
    with pytest.raises(CatalogValidationError) as caught:
        catalog_import(tenant=tenant_a, user=None, data=samples)
    found = {(p.kind, p.field) for p in caught.value.problems}
    assert ("service", "description") in found and ("provider", "provisioner.ssh_keypair") in found


def test_tokens_of_others_cannot_be_revoked_by_service(user_a, admin_a):
    from tenants.errors import NotFound
    from tenants.services import api_token_create, api_token_revoke

    token = api_token_create(user=user_a, name="mine").token
    with pytest.raises(NotFound):
        api_token_revoke(user=admin_a, token=token)


@pytest.mark.parametrize(
    "url",
    [
        *[
            f"/api/v2/{kind}/"
            for kind in ("providers", "hardwaretypes", "imagetypes", "services", "clustertemplates", "partialtemplates")
        ],
        "/api/v2/services/base",
        "/api/v2/services/base/grants",
        "/api/v2/services/base/versions",
        "/api/v2/clusters/preview",
        "/api/v2/import",
        "/api/v2/export",
        "/api/v2/tokens/",
        "/api/v2/memberships/",
        "/api/v2/tenants/",
        "/api/v2/plugins/providertypes/",
    ],
)
def test_options_requests_describe_without_failing(catalog_a, admin_a, client_for, url):
    """Found by schemathesis: OPTIONS on document endpoints once tried to introspect a missing serializer."""
    response = client_for(admin_a).options(url)
    assert response.status_code == 200, response.content
    assert response.json()["name"]
