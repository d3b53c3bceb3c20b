"""Single sign-on in a real browser: Chromium signs in through a real OpenID provider (the npm ``oidc-provider``
run with Node, tests/oidc) and lands in the tenant, with the role, its groups claim names; a change of groups
at the provider changes both at the next sign-in; the admin's sign-in page does the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tenants.models import Tenant
from tests.oidc.provider import OpenIdProvider, serving

ACCOUNTS = {
    "alice-sub": {"preferred_username": "alice", "email": "alice@example.com", "groups": ["loom:acme:admin"]},
}


@pytest.fixture
def provider(site: Any, tmp_path: Any, settings: Any, tenant_a: Tenant, tenant_b: Tenant) -> Iterator[OpenIdProvider]:
    """The provider, knowing the live server's callback; Loom's settings point at it (the live server runs
    in this process, so it sees them)."""
    with serving(tmp_path, settings, [f"{site.url}/oidc/callback/"], ACCOUNTS) as idp:
        yield idp


def through_the_provider(page: Any, provider: OpenIdProvider, login: str) -> None:
    """The provider's own pages: its sign-in form, then its consent page (the first time only)."""
    page.wait_for_url(f"{provider.issuer}/interaction/**")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    with page.expect_navigation():
        page.click("button[type=submit]")
    if page.url.startswith(f"{provider.issuer}/interaction/"):
        expect(page.locator("body")).to_contain_text("Authorize")
        page.click("button:has-text('Continue')")


def test_sign_in_through_the_provider_lands_in_the_groups_tenant_and_role(site, provider, browser, screenshot):
    base = site.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    page.goto(f"{base}/clusters/")  # signed out: Loom sends the browser to its sign-in page
    expect(page.locator("#sign-in-sso")).to_have_text("Sign in with Test IdP")
    screenshot(page, "sso-01-login")
    page.click("#sign-in-sso")
    through_the_provider(page, provider, "alice-sub")

    page.wait_for_url(f"{base}/clusters/")
    header = page.locator("header.top")
    expect(header).to_contain_text("alice")
    expect(page.locator("#tenant-name")).to_have_text("acme")
    expect(header.locator("a[href='/admin/']")).to_be_visible()  # the admin role of acme
    screenshot(page, "sso-02-signed-in-as-acme-admin")

    # The provider's admin moves alice to globex as a user; she signs out and in again.
    provider.set_accounts({"alice-sub": {**ACCOUNTS["alice-sub"], "groups": ["loom:globex:user"]}})
    page.click("header.top button:has-text('Sign out')")
    page.wait_for_url(f"{base}/login/")
    page.click("#sign-in-sso")  # the provider remembers her and her consent: straight back
    page.wait_for_url(f"{base}/")
    expect(page.locator("#tenant-name")).to_have_text("globex")
    expect(page.locator("header.top a[href='/admin/']")).to_have_count(0)
    screenshot(page, "sso-03-signed-in-as-globex-user")

    # Out of every Loom group: refused, with the reason, and signed out.
    provider.set_accounts({"alice-sub": {**ACCOUNTS["alice-sub"], "groups": ["staff"]}})
    page.click("header.top button:has-text('Sign out')")
    page.click("#sign-in-sso")
    page.wait_for_url(f"{base}/login/")
    expect(page.locator("ul.messages")).to_contain_text("none of your groups gives you a Loom tenant")
    page.goto(f"{base}/clusters/")
    expect(page).to_have_url(f"{base}/login/?next=/clusters/")
    context.close()


def test_the_admin_sign_in_page_signs_in_through_the_provider(site, provider, browser, screenshot):
    base = site.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    page.goto(f"{base}/admin/")
    page.wait_for_url(f"{base}/admin/login/**")
    screenshot(page, "sso-04-admin-login")
    page.click("#sign-in-sso")
    through_the_provider(page, provider, "alice-sub")

    page.wait_for_url(f"{base}/admin/")
    expect(page.locator("#content")).to_contain_text("Memberships")  # acme's admin manages its members
    expect(page.locator("#user-tools")).to_contain_text("alice")
    context.close()
