"""The signed-in landing page: login required, CSRF enforced, only the user's tenants shown."""

from __future__ import annotations

from django.test import Client


def test_home_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_plain_users_sign_in_with_csrf_and_see_their_templates(catalog_a, user_a, user_b):
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/login/")
    token = page.cookies["csrftoken"].value
    refused = browser.post("/login/", {"username": "arthur", "password": "pw-for-tests-1"})
    assert refused.status_code == 403  # no CSRF token
    signed_in = browser.post(
        "/login/", {"username": "arthur", "password": "pw-for-tests-1", "csrfmiddlewaretoken": token}
    )
    assert signed_in.status_code == 302 and signed_in["Location"] == "/"
    home = browser.get("/").content.decode()
    assert "acme" in home and "lamp" in home and "globex" not in home
    assert 'href="/admin/"' not in home  # not staff


def test_wrong_password_is_reported(user_a, client):
    response = client.post("/login/", {"username": "arthur", "password": "nope"})
    assert response.status_code == 200 and "did not match" in response.content.decode()


def test_tenant_admins_become_staff_and_lose_it_when_removed(tenant_a, admin_a, user_a, client_for):
    from tenants.models import Membership

    client = client_for(admin_a)
    membership = Membership.objects.get(user=user_a)
    assert client.patch(f"/api/v2/memberships/{membership.pk}", {"role": "admin"}, format="json").status_code == 200
    user_a.refresh_from_db()
    assert user_a.is_staff
    assert client.delete(f"/api/v2/memberships/{membership.pk}").status_code == 204
    user_a.refresh_from_db()
    assert not user_a.is_staff
