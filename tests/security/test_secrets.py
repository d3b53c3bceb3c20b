"""Provider secrets: encrypted at rest, write-only in the API, never in responses, versions, audit rows
or logs, and rotatable to a new key."""

from __future__ import annotations

import json
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from providers.models import Provider
from providers.secrets import ENCRYPTED, RedactingFilter, SecretsError, decrypt_json
from templates_app.models import CatalogVersion
from tenants.models import AuditEvent

SECRET = "sup3r-s3cret-api-key"
PROVIDER = {
    "name": "rs",
    "providertype": "rackspace",
    "provisioner": {"api_user": "loom-user-7", "api_password": SECRET, "rackspace_region": "ord"},
}


@pytest.fixture
def provider(admin_a, client_for):
    response = client_for(admin_a).post("/api/v2/providers/", PROVIDER, format="json")
    assert response.status_code == 201, response.content
    return response


def test_responses_mask_sensitive_fields(provider, admin_a, user_a, client_for):
    assert provider.json()["provisioner"] == {
        "api_password": ENCRYPTED,
        "api_user": ENCRYPTED,
        "rackspace_region": "ord",
    }
    for client in (client_for(admin_a), client_for(user_a)):
        for url in ["/api/v2/providers/rs", "/api/v2/providers/", "/api/v2/export",
                    "/api/v2/providers/rs/versions/1", "/api/v2/audit-events/"]:  # fmt: skip
            body = client.get(url).content.decode()
            assert SECRET not in body and "loom-user-7" not in body, url


def test_secrets_are_encrypted_at_rest(provider, tenant_a):
    row = Provider.objects.get(tenant=tenant_a, name="rs")
    stored = json.dumps(row.document) + row.secret_data
    stored += "".join(json.dumps(v.document) + v.secret_data for v in CatalogVersion.objects.all())
    stored += "".join(json.dumps(e.summary) for e in AuditEvent.objects.all())
    assert SECRET not in stored and "loom-user-7" not in stored
    assert decrypt_json(row.secret_data) == {"api_password": SECRET, "api_user": "loom-user-7"}


def test_writing_the_mask_back_keeps_the_secret_and_empty_clears_it(provider, admin_a, client_for, tenant_a):
    client = client_for(admin_a)
    exported = client.get("/api/v2/providers/rs").json()
    exported["description"] = "renamed"
    assert client.put("/api/v2/providers/rs", exported, format="json").status_code == 200
    assert decrypt_json(Provider.objects.get(name="rs").secret_data)["api_password"] == SECRET
    cleared = {**exported, "provisioner": {**exported["provisioner"], "api_password": ""}}
    assert client.put("/api/v2/providers/rs", cleared, format="json").status_code == 200
    assert "api_password" not in decrypt_json(Provider.objects.get(name="rs").secret_data)


def test_the_mask_without_a_stored_secret_is_an_error(admin_a, client_for):
    body = {**PROVIDER, "provisioner": {**PROVIDER["provisioner"], "api_password": ENCRYPTED}}
    response = client_for(admin_a).post("/api/v2/providers/", body, format="json")
    assert response.status_code == 400
    assert "no stored secret to keep" in response.json()["error"]["fields"]["provisioner.api_password"][0]


def test_log_lines_are_redacted_once_a_secret_was_decrypted(provider):
    decrypt_json(Provider.objects.get(name="rs").secret_data)
    record = logging.LogRecord("loom", logging.INFO, __file__, 1, "calling cloud with %s", (SECRET,), None)
    RedactingFilter().filter(record)
    assert SECRET not in record.getMessage() and "***" in record.getMessage()


def test_keys_rotate(provider, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]  # the MultiFernet is cached per key tuple
    call_command("rotate_field_keys")
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key is gone: everything must still decrypt
    assert decrypt_json(Provider.objects.get(name="rs").secret_data)["api_password"] == SECRET
    assert all(decrypt_json(v.secret_data) for v in CatalogVersion.objects.exclude(secret_data=""))
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(SecretsError, match="cannot be decrypted"):
        decrypt_json(Provider.objects.get(name="rs").secret_data)


WEBHOOK_SECRET = "whsec-Kestrel-9090-Osprey"


def test_webhook_secrets_are_write_only_encrypted_and_rotate(admin_a, user_a, client_for, settings, caplog):
    from clusters.models import Webhook, WebhookDelivery

    caplog.set_level(logging.DEBUG)
    body = {"name": "ops", "url": "https://hooks.example.com/acme", "secret": WEBHOOK_SECRET}
    created = client_for(admin_a).post("/api/v2/webhooks/", body, format="json")
    assert created.status_code == 201 and created.json()["has_secret"] is True
    ping = client_for(admin_a).post("/api/v2/webhooks/ops/ping").json()
    for client in (client_for(admin_a), client_for(user_a)):
        for url in ["/api/v2/webhooks/", "/api/v2/webhooks/ops", "/api/v2/webhooks/ops/deliveries",
                    f"/api/v2/webhooks/ops/deliveries/{ping['id']}", "/api/v2/audit-events/"]:  # fmt: skip
            assert WEBHOOK_SECRET not in client.get(url).content.decode(), url
    row = Webhook.objects.get(name="ops")
    stored = row.secret_data + "".join(json.dumps(e.summary) for e in AuditEvent.objects.all())
    stored += "".join(json.dumps(d.payload) for d in WebhookDelivery.objects.all())
    assert WEBHOOK_SECRET not in stored and WEBHOOK_SECRET not in caplog.text + created.content.decode()
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, settings.FIELD_ENCRYPTION_KEYS[0]]
    call_command("rotate_field_keys")
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert decrypt_json(Webhook.objects.get(name="ops").secret_data) == {"secret": WEBHOOK_SECRET}
