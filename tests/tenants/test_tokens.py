"""API tokens: created once-visible, stored hashed, usable as Bearer, and dead once revoked or expired."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from tenants.models import ApiToken


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def test_token_lifecycle(user_a, client_for, catalog_a):
    created = client_for(user_a).post("/api/v2/tokens/", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("loom_")
    token = ApiToken.objects.get(pk=created.json()["id"])
    assert token.key_hash == ApiToken.hash_key(key) and key not in token.key_hash

    client = bearer(key)
    assert client.get("/api/v2/services/").status_code == 200
    listed = client.get("/api/v2/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["laptop"] and "key" not in listed[0]
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None

    assert client.delete(f"/api/v2/tokens/{token.pk}").status_code == 204
    refused = client.get("/api/v2/services/")
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "invalid, expired or revoked token"
    assert refused["WWW-Authenticate"].startswith("Bearer")


def test_expired_and_unknown_tokens_fail(user_a, client_for):
    response = client_for(user_a).post(
        "/api/v2/tokens/", {"name": "short", "expires_at": (timezone.now() + timedelta(hours=1)).isoformat()},
        format="json",
    )  # fmt: skip
    key = response.json()["key"]
    ApiToken.objects.filter(pk=response.json()["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert bearer(key).get("/api/v2/tokens/").status_code == 401
    assert bearer("loom_deadbeef_nope").get("/api/v2/tokens/").status_code == 401
    assert bearer(key + "x").get("/api/v2/tokens/").status_code == 401


def test_expiry_in_the_past_is_refused(user_a, client_for):
    response = client_for(user_a).post(
        "/api/v2/tokens/", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"expires_at": ["must be in the future"]}


def test_inactive_users_tokens_fail(user_a, client_for):
    key = client_for(user_a).post("/api/v2/tokens/", {"name": "x"}, format="json").json()["key"]
    user_a.is_active = False
    user_a.save()
    assert bearer(key).get("/api/v2/tokens/").status_code == 401
