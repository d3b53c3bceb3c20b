"""Single sign-on through a real OpenID provider (the npm ``oidc-provider`` run with Node, tests/oidc).

Django's test client plays Loom's side; a ``requests`` session plays the browser at the provider, filling its
development sign-in and consent forms. Every token exchange, key fetch and userinfo call is a real HTTP call
from Loom to the provider. The browser test (tests/frontend/test_sso_browser.py) walks the same path in
Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client

from tenants import sso
from tenants.identity import groups_to_roles
from tenants.models import AuditEvent, ExternalIdentity, Membership, MembershipSource, Role, Tenant
from tests.factories import member
from tests.oidc.provider import OpenIdProvider, serving

CALLBACK = "http://testserver/oidc/callback/"
ALICE = {"email": "alice@example.com", "preferred_username": "alice", "groups": ["loom:acme:admin", "loom:globex:user"]}


@pytest.fixture
def provider(tmp_path: Path, settings: Any) -> Iterator[OpenIdProvider]:
    with serving(tmp_path, settings, [CALLBACK], {"alice-sub": dict(ALICE)}) as idp:
        yield idp


@pytest.fixture
def tenants(db: None) -> dict[str, Tenant]:
    return {name: Tenant.objects.create(name=name) for name in ("acme", "globex", "initech")}


def _form(page: str, base: str) -> tuple[str, dict[str, str]]:
    """The first form of a provider page: its absolute action and its hidden fields."""
    action = re.search(r'<form[^>]*action="([^"]+)"', page)
    assert action, f"no form on the provider's page: {page[:500]}"
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    return urljoin(base, html.unescape(action.group(1))), hidden


def at_provider(location: str, login: str, *, agent: requests.Session | None = None) -> str:
    """Follow the provider's pages as a browser would, signing in as ``login`` and consenting, until it sends
    the browser back to Loom; returns that URL (Loom's callback with ``code`` and ``state``, or an error)."""
    agent = agent or requests.Session()
    url, method, data = location, "GET", None
    for _ in range(12):
        answer = agent.request(method, url, data=data, allow_redirects=False, timeout=10)
        if answer.is_redirect:
            url, method, data = urljoin(url, answer.headers["Location"]), "GET", None
            if url.startswith("http://testserver/"):
                return url
            continue
        assert answer.status_code == 200, f"{answer.status_code} from the provider: {answer.text[:500]}"
        url, data = _form(answer.text, url)
        if data.get("prompt") == "login":
            data |= {"login": login, "password": "any password: the development sign-in takes any"}
        method = "POST"
    raise AssertionError("the provider never sent the browser back")


def sign_in(client: Client, login: str, *, next_url: str = "/", agent: requests.Session | None = None) -> Any:
    """The whole sign-in: Loom's redirect out, the provider's pages, Loom's callback. Returns the callback's
    answer (a redirect to ``next_url`` when it worked, to /login/ with a message when not)."""
    start = client.get("/oidc/authenticate/", {"next": next_url})
    assert start.status_code == 302, start
    back = at_provider(start["Location"], login, agent=agent)
    return client.get(back.removeprefix("http://testserver"))


def messages_of(client: Client) -> str:
    return client.get("/login/").content.decode()


def test_first_sign_in_creates_the_user_with_the_groups_memberships(provider, tenants):
    client = Client()
    answer = sign_in(client, "alice-sub", next_url="/clusters/")

    assert answer.status_code == 302 and answer["Location"] == "/clusters/"
    user = get_user_model().objects.get(external_identities__issuer=provider.issuer)
    assert (user.username, user.email) == ("alice", "alice@example.com")
    assert not user.has_usable_password(), "an account made by the provider has no Loom password"
    assert user.is_staff and not user.is_superuser  # admin of acme works in the Django admin
    roles = {m.tenant.name: (m.role, m.source) for m in Membership.objects.filter(user=user)}
    assert roles == {"acme": (Role.ADMIN, MembershipSource.SSO), "globex": (Role.USER, MembershipSource.SSO)}
    assert ExternalIdentity.objects.get(user=user).subject == "alice-sub"
    page = client.get("/")
    assert page.status_code == 200 and b"acme" in page.content and b'href="/admin/"' in page.content
    assert AuditEvent.objects.filter(entity_kind="membership", entity_name="alice", actor=None).count() == 2


def test_next_may_only_point_back_into_loom(provider, tenants):
    for elsewhere in ("https://evil.example.com/", "//evil.example.com/x", "javascript:alert(1)"):
        assert sign_in(Client(), "alice-sub", next_url=elsewhere)["Location"] == "/", elsewhere


def test_groups_are_applied_again_at_every_sign_in(provider, tenants):
    sign_in(Client(), "alice-sub")
    user = get_user_model().objects.get(username="alice")
    member_by_hand = Membership.objects.create(user=user, tenant=tenants["initech"], role=Role.USER)

    # acme: admin -> user; globex: gone; a granted-in-Loom membership stays.
    provider.set_accounts({"alice-sub": {**ALICE, "groups": ["loom:acme:user", "unrelated-group"]}})
    answer = sign_in(Client(), "alice-sub")

    assert answer["Location"] == "/"
    roles = {m.tenant.name: m.role for m in Membership.objects.filter(user=user)}
    assert roles == {"acme": Role.USER, "initech": Role.USER}
    assert Membership.objects.get(pk=member_by_hand.pk).source == MembershipSource.LOCAL
    user.refresh_from_db()
    assert not user.is_staff, "no longer an admin anywhere, so no longer staff"


def _expire(client: Client) -> None:
    session = client.session
    session["oidc_id_token_expiration"] = 0  # as if LOOM_OIDC_RENEW_SECONDS had passed
    session.save()


def test_a_long_session_goes_past_the_provider_again_and_picks_up_group_changes(provider, tenants):
    client, at_idp = Client(), requests.Session()  # at_idp keeps the provider's session cookie, as a browser does
    sign_in(client, "alice-sub", agent=at_idp)
    assert client.get("/clusters/").status_code == 200, "fresh: no refresh yet"
    provider.set_accounts({"alice-sub": {**ALICE, "groups": ["loom:globex:admin"]}})

    _expire(client)
    for path in ("/api/v2/clusters", "/clusters/"):
        kept = client.get(path, headers={"HX-Request": "true"} if path == "/clusters/" else {})
        assert kept.status_code != 302, f"{path}: API calls and htmx fragments are never sent away"
    refresh = client.get("/clusters/?page=1")
    assert refresh.status_code == 302 and refresh["Location"].startswith(provider.issuer)
    assert "prompt=none" in refresh["Location"]
    back = at_provider(refresh["Location"], "alice-sub", agent=at_idp)  # no page: straight back
    assert client.get(back.removeprefix("http://testserver"))["Location"] == "/clusters/?page=1"
    roles = {m.tenant.name: m.role for m in Membership.objects.filter(user__username="alice")}
    assert roles == {"globex": Role.ADMIN}

    # Out of every group: the next refresh ends the session.
    provider.set_accounts({"alice-sub": {**ALICE, "groups": []}})
    _expire(client)
    back = at_provider(client.get("/clusters/")["Location"], "alice-sub", agent=at_idp)
    assert client.get(back.removeprefix("http://testserver"))["Location"] == "/login/"
    assert "none of your groups gives you a Loom tenant" in messages_of(client)
    assert client.get("/clusters/").status_code == 302 and "_auth_user_id" not in client.session


def test_a_provider_session_that_ended_ends_the_loom_session_at_the_refresh(provider, tenants):
    client = Client()
    sign_in(client, "alice-sub")
    _expire(client)
    back = at_provider(client.get("/clusters/")["Location"], "alice-sub", agent=requests.Session())  # no cookie
    assert "error=login_required" in back
    assert client.get(back.removeprefix("http://testserver"))["Location"] == "/login/"
    assert "_auth_user_id" not in client.session


def test_password_sessions_are_never_sent_to_the_provider(provider, tenants):
    member(tenants["acme"], Role.USER, username="carol")
    client = Client()
    assert _password_sign_in(client, "/login/", "carol")
    _expire(client)
    assert client.get("/clusters/").status_code == 200


def test_someone_the_groups_give_no_tenant_is_refused_and_loses_what_the_groups_gave(provider, tenants):
    sign_in(Client(), "alice-sub")
    provider.set_accounts({"alice-sub": {**ALICE, "groups": []}})

    client = Client()
    answer = sign_in(client, "alice-sub")

    assert answer["Location"] == "/login/"
    assert "_auth_user_id" not in client.session
    assert "none of your groups gives you a Loom tenant" in messages_of(client)
    assert not Membership.objects.filter(user__username="alice").exists()
    assert client.get("/").status_code == 302  # still signed out


def test_a_provider_account_cannot_become_an_existing_loom_user(provider, tenants):
    """The attack: at a provider where users choose their own name and email, someone takes the operator's."""
    operator = get_user_model().objects.create_superuser("admin", "ops@example.com", "pw-for-tests-1")
    provider.set_accounts(
        {"mallory": {"preferred_username": "Admin", "email": "ops@example.com", "groups": ["loom:acme:user"]}}
    )

    client = Client()
    sign_in(client, "mallory")

    signed_in = get_user_model().objects.get(pk=client.session["_auth_user_id"])
    assert signed_in.pk != operator.pk
    assert signed_in.username == "Admin-2" and not signed_in.is_superuser and not signed_in.is_staff
    operator.refresh_from_db()
    assert operator.check_password("pw-for-tests-1") and operator.email == "ops@example.com"
    assert not ExternalIdentity.objects.filter(user=operator).exists()


def test_groups_name_only_real_tenants_and_real_roles(provider, tenants):
    provider.set_accounts(
        {
            "alice-sub": {
                **ALICE,
                "groups": ["loom:acme:superuser", "loom:nowhere:admin", "loom:globex:admin:extra", "other:acme:admin"],
            }
        }
    )
    client = Client()
    answer = sign_in(client, "alice-sub")

    assert answer["Location"] == "/login/", "no valid group, so no tenant"
    assert not Membership.objects.exists() and not Tenant.objects.filter(name="nowhere").exists()
    assert not get_user_model().objects.get(username="alice").is_superuser


def test_groups_claim_parsing():
    assert groups_to_roles(["loom:a:user", "loom:a:admin", "loom:b:user"], prefix="loom") == {"a": "admin", "b": "user"}
    assert groups_to_roles("loom:a:user, loom:b:admin", prefix="loom") == {"a": "user", "b": "admin"}
    assert groups_to_roles(["corp:a:admin", 7, None, "loom::admin"], prefix="loom") == {}
    assert groups_to_roles({"loom:a:admin": True}, prefix="loom") == {}
    assert groups_to_roles(["corp:a:admin"], prefix="corp") == {"a": "admin"}


def test_a_disabled_account_stays_out(provider, tenants):
    sign_in(Client(), "alice-sub")
    get_user_model().objects.filter(username="alice").update(is_active=False)

    client = Client()
    answer = sign_in(client, "alice-sub")

    assert answer["Location"] == "/login/" and "_auth_user_id" not in client.session
    assert "account alice is disabled" in messages_of(client)
    assert not get_user_model().objects.get(username="alice").is_active, "the provider does not re-enable it"


def test_a_callback_replayed_or_not_started_here_signs_nobody_in(provider, tenants):
    client = Client()
    start = client.get("/oidc/authenticate/")
    back = at_provider(start["Location"], "alice-sub").removeprefix("http://testserver")
    assert client.get(back)["Location"] == "/"
    client.post("/logout/")

    replay = client.get(back)  # the same code and state again, in the same browser
    assert replay.status_code == 302 and replay["Location"] == "/login/"
    assert "_auth_user_id" not in client.session

    # A code another browser obtained (login CSRF: signing the victim in as the attacker) has no state here.
    stranger = Client()
    start = Client().get("/oidc/authenticate/")
    foreign = at_provider(start["Location"], "alice-sub").removeprefix("http://testserver")
    answer = stranger.get(foreign)
    assert answer.status_code == 302 and answer["Location"] == "/login/"
    assert "_auth_user_id" not in stranger.session
    stranger.get("/oidc/authenticate/")  # now it has a state, but not that one
    answer = stranger.get(foreign)
    assert answer["Location"] == "/login/" and "was not started here" in messages_of(stranger)


def test_the_provider_saying_no_is_shown(provider, tenants):
    client = Client()
    client.get("/oidc/authenticate/")
    state = next(iter(client.session["oidc_states"]))
    answer = client.get(
        "/oidc/callback/", {"error": "access_denied", "error_description": "End-User aborted", "state": state}
    )

    assert answer["Location"] == "/login/"
    assert "did not sign you in: End-User aborted" in messages_of(client)


def test_a_provider_that_does_not_answer_is_a_message_not_an_error_page(provider, tenants, settings):
    provider.stop()
    client = Client()
    answer = client.get("/oidc/authenticate/")

    assert answer.status_code == 302 and answer["Location"] == "/login/"
    page = messages_of(client)
    assert "Single sign-on is not available right now" in page and provider.issuer in page


def test_an_id_token_for_another_client_is_refused(tmp_path, settings, tenants):
    """The library checks neither ``aud`` nor ``iss``; Loom does. A real ID token the provider signed for
    another application of it must not be taken here, and the same token is taken by that application."""
    other = {
        "client_id": "other-app",
        "client_secret": "other-secret-of-reasonable-length",
        "redirect_uris": [CALLBACK],
    }
    with serving(tmp_path, settings, [CALLBACK], {"alice-sub": dict(ALICE)}, other_clients=(other,)):
        metadata = sso.provider_metadata()
        verifier = "v" * 64
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = {
            "client_id": "other-app", "response_type": "code", "scope": "openid", "redirect_uri": CALLBACK,
            "state": "s" * 20, "nonce": "n" * 20, "code_challenge": challenge, "code_challenge_method": "S256",
        }  # fmt: skip
        back = at_provider(f"{metadata['authorization_endpoint']}?{urlencode(query)}", "alice-sub")
        code = parse_qs(urlsplit(back).query)["code"][0]
        tokens = requests.post(
            metadata["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": CALLBACK,
                "code_verifier": verifier,
            },
            auth=("other-app", other["client_secret"]),
            timeout=10,
        ).json()
        backend = sso.SingleSignOnBackend()

        with pytest.raises(sso.TokenRejected, match="not for this client"):
            backend.verify_token(tokens["id_token"], nonce="n" * 20)
        settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = "other-app", other["client_secret"]
        assert backend.verify_token(tokens["id_token"], nonce="n" * 20)["aud"] == "other-app"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"iss": "https://idp.example.com/"}, None),
        ({"iss": "https://evil.example.com"}, "issued by 'https://evil.example.com'"),
        ({"sub": ""}, "names no subject"),
        ({"aud": "other-app"}, "not for this client"),
        ({"aud": ["other-app", "loom"]}, "several audiences"),
        ({"aud": ["other-app", "loom"], "azp": "loom"}, None),
    ],
)
def test_id_token_claims_loom_checks(changes, problem):
    payload = {"iss": "https://idp.example.com", "sub": "alice-sub", "aud": "loom", **changes}
    found = sso.id_token_problem(payload, issuer="https://idp.example.com", client_id="loom")
    assert (found is None) if problem is None else (problem in found), found


def test_a_discovery_document_for_another_issuer_is_refused(provider, tenants, settings):
    settings.LOOM_OIDC_ISSUER = provider.issuer.replace("127.0.0.1", "localhost")  # the same server, another name
    client = Client()
    answer = client.get("/oidc/authenticate/")

    assert answer["Location"] == "/login/"
    assert f"is not for issuer {settings.LOOM_OIDC_ISSUER}" in messages_of(client)


def test_sign_in_pages_offer_the_button(provider, tenants):
    client = Client()
    for path in ("/login/?next=/clusters/", "/admin/login/?next=/admin/"):
        page = client.get(path).content.decode()
        assert "Sign in with Test IdP" in page and 'name="password"' in page, path
    assert 'href="/oidc/authenticate/?next=/clusters/"' in client.get("/login/?next=/clusters/").content.decode()


def test_without_an_issuer_there_is_no_single_sign_on(db, settings):
    settings.LOOM_OIDC_ISSUER = ""
    client = Client()
    assert "Sign in with" not in client.get("/login/").content.decode()
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/", {"code": "x", "state": "y"}).status_code == 404


# --- password sign-in switched off -----------------------------------------------------------------------


def _password_sign_in(client: Client, path: str, username: str) -> bool:
    client.post(path, {"username": username, "password": "pw-for-tests-1", "next": "/"})
    return "_auth_user_id" in client.session


def test_password_sign_in_off_refuses_every_password_form(provider, tenants, settings):
    member(tenants["acme"], Role.ADMIN, username="carol")
    get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-1")
    signed_in_before = Client()
    assert _password_sign_in(signed_in_before, "/login/", "carol")

    settings.LOOM_PASSWORD_LOGIN = "off"
    for path in ("/login/", "/admin/login/", "/api/v2/auth/login/"):
        for username in ("carol", "root"):
            assert not _password_sign_in(Client(), path, username), (path, username)
    assert signed_in_before.get("/").status_code == 302, "a session made with a password ends too"
    page = Client().get("/login/").content.decode()
    assert 'name="password"' not in page and "Password sign-in is turned off" in page
    admin_page = Client().get("/admin/login/").content.decode()
    assert 'name="password"' not in admin_page and "Sign in with Test IdP" in admin_page
    assert sign_in(Client(), "alice-sub")["Location"] == "/", "single sign-on still works"


def test_password_sign_in_for_superusers_only(provider, tenants, settings):
    member(tenants["acme"], Role.ADMIN, username="carol")
    get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-1")
    settings.LOOM_PASSWORD_LOGIN = "superusers"

    refused = Client()
    assert not _password_sign_in(refused, "/login/", "carol")
    page = refused.post("/login/", {"username": "carol", "password": "pw-for-tests-1"}).content.decode()
    assert "this account may not use a password here (only superusers may)" in page
    assert _password_sign_in(Client(), "/admin/login/", "root")
    assert "only for Loom's superusers" in Client().get("/login/").content.decode()


def _import_settings(data_dir: Path, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import Loom's settings in a fresh interpreter with no sign-in settings but ``settings``; prints the issuer."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOOM_OIDC_", "LOOM_PASSWORD_LOGIN", "DJANGO_SETTINGS_MODULE"))
    }
    return subprocess.run(
        [sys.executable, "-c", "import loom_site.settings as s; print(s.LOOM_OIDC_ISSUER)"],
        env={**inherited, "LOOM_DATA_DIR": str(data_dir), **settings},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize(
    ("environment", "complaint"),
    [
        ({"LOOM_PASSWORD_LOGIN": "maybe"}, "LOOM_PASSWORD_LOGIN must be one of on, off, superusers"),
        ({"LOOM_PASSWORD_LOGIN": "off"}, "LOOM_PASSWORD_LOGIN=off needs LOOM_OIDC_ISSUER"),
        ({"LOOM_OIDC_ISSUER": "http://idp.example.com", "LOOM_OIDC_CLIENT_ID": "x"}, "must use https://"),
        ({"LOOM_OIDC_ISSUER": "idp.example.com"}, "must be an https:// URL"),
        ({"LOOM_OIDC_ISSUER": "https://idp.example.com"}, "LOOM_OIDC_CLIENT_ID must be too"),
    ],
)
def test_settings_that_would_lock_people_out_refuse_to_start(environment, complaint, tmp_path):
    run = _import_settings(tmp_path, environment)
    assert run.returncode != 0 and complaint in run.stderr, run.stderr[-800:]


def test_an_http_issuer_is_allowed_only_on_this_host(tmp_path):
    environment = {"LOOM_OIDC_ISSUER": "http://127.0.0.1:1/", "LOOM_OIDC_CLIENT_ID": "x", "LOOM_PASSWORD_LOGIN": "off"}
    run = _import_settings(tmp_path, environment)
    assert run.returncode == 0 and run.stdout.strip() == "http://127.0.0.1:1", run.stderr[-800:]
