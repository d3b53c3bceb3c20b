"""Sign-in and API abuse (issue 13, finding 6): wrong passwords lock a username out from one address on every
sign-in form, the API throttles per user and per address with a 429 in the one error shape, wrong API tokens
are counted even though they end at 401, and every page (the admin and the API docs included) carries a
Content-Security-Policy that refuses inline script.

Through the real middleware stack with the test client; the throttles' counters are in the real cache (files
in the data folder), cleared before each test."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.services import api_token_create
from tests.api.helpers import url

pytestmark = pytest.mark.django_db
PASSWORD = "pw-for-tests-1"  # tests.factories' password for every user


@pytest.fixture(autouse=True)
def fresh_counters(settings: Any) -> None:
    cache.clear()
    settings.AXES_FAILURE_LIMIT = 3


def sign_in(client: Client, path: str, username: str, password: str, address: str = "203.0.113.7") -> Any:
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


class TestSignInLockout:
    @pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
    def test_wrong_passwords_lock_the_username_out_from_that_address_even_with_the_right_one(
        self, path: str, admin_a: Any
    ) -> None:
        admin_a.is_staff = True
        admin_a.save()
        client = Client()
        for _ in range(2):
            assert sign_in(client, path, "alice", "wrong").status_code == 200  # the form again, with its error
        locked = sign_in(client, path, "alice", "wrong")
        assert locked.status_code == 429
        assert int(locked["Retry-After"]) == 15 * 60
        assert b"Too many sign-in attempts" in locked.content and b"15 minutes" in locked.content
        right = sign_in(client, path, "alice", PASSWORD)
        assert right.status_code == 429, "the right password does not get a locked-out pair in"
        assert "_auth_user_id" not in client.session

    def test_the_lockout_is_per_username_and_address(self, admin_a: Any, user_a: Any) -> None:
        for _ in range(3):
            sign_in(Client(), "/login/", "alice", "wrong")
        assert sign_in(Client(), "/login/", "alice", PASSWORD).status_code == 429
        # Someone else at that address, and alice from another address, are not locked out by the guesser.
        assert sign_in(Client(), "/login/", "arthur", PASSWORD).status_code == 302
        assert sign_in(Client(), "/login/", "alice", PASSWORD, address="198.51.100.2").status_code == 302

    def test_after_the_cool_off_the_right_password_works_and_resets_the_count(self, admin_a: Any) -> None:
        for _ in range(3):
            sign_in(Client(), "/login/", "alice", "wrong")
        AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
        assert sign_in(Client(), "/login/", "alice", PASSWORD).status_code == 302
        assert not AccessAttempt.objects.filter(username="alice").exists(), "a success resets the failures"

    def test_the_password_is_never_stored_with_the_attempt(self, admin_a: Any) -> None:
        sign_in(Client(), "/login/", "alice", "my-secret-guess-42")
        attempt = AccessAttempt.objects.get(username="alice")
        assert "my-secret-guess-42" not in f"{attempt.get_data} {attempt.post_data}"


class TestApiThrottles:
    def test_a_user_over_the_rate_gets_429_in_the_error_shape_with_retry_after(
        self, settings: Any, user_a: Any
    ) -> None:
        settings.LOOM_API_RATE_USER = "3/min"
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user_a, name='ci').key}")
        assert [client.get(url("clusters")).status_code for _ in range(3)] == [200, 200, 200]
        refused = client.get(url("clusters"))
        assert refused.status_code == 429
        assert 0 < int(refused["Retry-After"]) <= 60
        error = refused.json()["error"]
        assert error["code"] == "throttled" and error["fields"] == {}
        assert re.search(r"available in \d+ seconds", error["message"]), error

    def test_the_rate_is_per_user(self, settings: Any, user_a: Any, admin_a: Any) -> None:
        settings.LOOM_API_RATE_USER = "2/min"
        one, other = APIClient(), APIClient()
        one.force_authenticate(user_a)
        other.force_authenticate(admin_a)
        assert [one.get(url("clusters")).status_code for _ in range(3)] == [200, 200, 429]
        assert other.get(url("clusters")).status_code == 200

    def test_anonymous_calls_are_throttled_per_address(self, settings: Any) -> None:
        settings.LOOM_API_RATE_ANON = "2/min"
        client = APIClient()
        statuses = [client.get("/api/v2/schema", REMOTE_ADDR="203.0.113.9").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert client.get("/api/v2/schema", REMOTE_ADDR="203.0.113.10").status_code == 200

    def test_guessed_tokens_are_counted_though_they_end_at_401(self, settings: Any, user_a: Any) -> None:
        settings.LOOM_API_RATE_ANON = "3/min"
        guesser = APIClient(REMOTE_ADDR="203.0.113.11")
        guesses = [guesser.get(url("clusters"), HTTP_AUTHORIZATION=f"Bearer loom_0000_{n}").status_code
                   for n in range(4)]  # fmt: skip
        assert guesses == [401, 401, 401, 429]
        real = api_token_create(user=user_a, name="ci").key
        refused = guesser.get(url("clusters"), HTTP_AUTHORIZATION=f"Bearer {real}")
        assert refused.status_code == 429, "once over the rate, not even a right token is looked up"
        assert "too many invalid API tokens" in refused.json()["error"]["message"]
        elsewhere = APIClient(REMOTE_ADDR="203.0.113.12")
        assert elsewhere.get(url("clusters"), HTTP_AUTHORIZATION=f"Bearer {real}").status_code == 200

    def test_behind_the_proxy_the_address_is_the_one_the_proxy_appended(self, settings: Any) -> None:
        settings.LOOM_API_RATE_ANON = "1/min"
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        client = APIClient()
        # Both pass through the same proxy (REMOTE_ADDR); the client forges the first hop, the proxy adds the last.
        first = client.get("/api/v2/schema", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="1.1.1.1, 203.0.113.20")
        forged = client.get("/api/v2/schema", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="2.2.2.2, 203.0.113.20")
        other = client.get("/api/v2/schema", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="203.0.113.21")
        assert (first.status_code, forged.status_code, other.status_code) == (200, 429, 200)


class TestContentSecurityPolicy:
    @pytest.mark.parametrize(
        "path",
        ["/login/", "/", "/clusters/new/", "/tokens/", "/admin/", "/admin/login/", "/api/v2/docs", "/api/v2/redoc"],
    )
    def test_every_page_refuses_inline_script(self, path: str, admin_a: Any) -> None:
        admin_a.is_staff = True
        admin_a.save()
        client = Client()
        client.force_login(admin_a)
        response = client.get(path, follow=True)
        assert response.status_code == 200, path
        policy = response["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
        assert directives["script-src"] == "'self'", policy
        assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
        html = response.content.decode()
        inline = [tag for tag in re.findall(r"<script\b[^>]*>", html) if "src=" not in tag and "json" not in tag]
        assert inline == [], f"{path} has inline script the policy would block: {inline}"
        handlers = re.findall(r"<[^>]*\son[a-z]+\s*=[^>]*>", html)
        assert handlers == [], f"{path} has inline event handlers the policy would block: {handlers}"

    def test_no_template_of_the_project_has_an_inline_event_handler(self) -> None:
        """Pages not rendered above included: an onchange= or onsubmit= is silently dead under the policy
        (the tenant switcher was, once); behaviour goes in a static file (frontend/static/frontend/loom.js)."""
        root = Path(__file__).resolve().parents[2]
        templates = [path for path in root.glob("*/templates/**/*.html") if ".venv" not in path.parts]
        assert len(templates) > 10, "the scan finds the project's templates"
        found = [f"{path.relative_to(root)}: {match}" for path in templates
                 for match in re.findall(r"\son[a-z]+\s*=\s*[\"']", path.read_text())]  # fmt: skip
        assert found == []

    def test_the_swagger_ui_start_up_script_is_a_file_of_its_own(self, admin_a: Any) -> None:
        client = Client()
        client.force_login(admin_a)
        page = client.get("/api/v2/docs").content.decode()
        script = re.search(r'<script src="(/api/v2/docs\?[^"]*script=[^"]*)"', page)
        assert script, page
        answer = client.get(script.group(1).replace("&amp;", "&"))
        assert answer.status_code == 200 and "SwaggerUIBundle" in answer.content.decode()

    def test_secure_cookies_bring_hsts(self, settings: Any) -> None:
        settings.SECURE_HSTS_SECONDS = 31_536_000  # what LOOM_SECURE_COOKIES=true sets
        response = Client().get("/login/", secure=True)
        assert response["Strict-Transport-Security"] == "max-age=31536000"
        assert response["X-Frame-Options"] == "DENY" and response["X-Content-Type-Options"] == "nosniff"
