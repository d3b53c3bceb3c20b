"""The self-service pages in a real browser: Debian's Chromium through Playwright, against a live server and a
real Celery worker sharing the test database.

One user journey end to end (sign in, create a cluster on the fake provider through the form, watch it become
active without reloading, scale it out, delete it), and another tenant's user getting a 404 on its page. Every
page visited is saved as a screenshot in tests/frontend/screenshots/ (git-ignored).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tenants.models import Role
from tests.factories import member

SETTLE_MS = 90_000  # generous: the machine is shared; nothing here asserts on time


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    expect(page.locator("header.top")).to_contain_text(username)


def test_create_watch_scale_out_and_delete_a_cluster(site, worker, fleet, user_a, user_b, browser, screenshot):
    base = site.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/login/")
    screenshot(page, "01-login")
    sign_in(page, base, "arthur")

    # the catalog: the template with its size limits and cost
    expect(page.locator("#t-fleet")).to_be_visible()
    expect(page.locator(".cost")).to_contain_text("an hour")
    screenshot(page, "02-catalog")

    # create through the form: preview first, then create
    page.click("a[href='/clusters/new/?template=fleet']")
    page.fill("#id_name", "web1")
    page.fill("#id_size", "2")
    page.click("button[name=preview]")
    expect(page.locator("#preview")).to_contain_text("2 machines on fakecloud")
    expect(page.locator("#preview svg.dag")).to_be_visible()
    screenshot(page, "03-create-preview")
    page.click("#create-button")
    expect(page).to_have_url(re.compile(r"/clusters/\d+/$"))
    cluster_url = page.url  # no ORM here: Playwright's event loop runs in this thread

    # live progress: the status changes in place, the page is never reloaded
    page.evaluate("window.loomNotReloaded = true")
    expect(page.locator("#cluster-status")).to_have_text("active", timeout=SETTLE_MS)
    assert page.evaluate("window.loomNotReloaded === true"), "the page was reloaded"
    expect(page.locator("#job-status")).to_have_text("completed")
    expect(page.locator("svg.gantt")).to_be_visible()
    screenshot(page, "04-cluster-active")

    # scale out by one, confirmed against its preview
    page.click("#actions >> text=Scale out")
    page.fill("#id_count", "1")
    page.click("button[name=preview]")
    expect(page.locator("#preview")).to_contain_text("Machines: 2 → 3")
    screenshot(page, "05-scale-out-preview")
    page.click("#confirm-button")
    expect(page.locator(".messages")).to_contain_text("Scale out started")
    page.evaluate("window.loomNotReloaded = true")
    expect(page.locator("#cluster-size")).to_have_text("3", timeout=SETTLE_MS)
    expect(page.locator("#job-status")).to_have_text("completed", timeout=SETTLE_MS)
    expect(page.locator("#cluster-status")).to_have_text("active")
    assert page.evaluate("window.loomNotReloaded === true"), "the page was reloaded"
    screenshot(page, "06-cluster-scaled-out")

    # the clusters list and the tokens page
    page.goto(f"{base}/clusters/")
    expect(page.locator("#cluster-table")).to_contain_text("web1")
    screenshot(page, "07-clusters")
    page.goto(f"{base}/tokens/")
    page.fill("#id_name", "cli")
    page.click("text=Create token")
    expect(page.locator("#token-key")).to_contain_text("loom_")
    screenshot(page, "08-tokens")

    # delete, confirmed against the list of machines it deletes
    page.goto(cluster_url)
    page.click("#actions >> text=Delete")
    expect(page.locator("#preview")).to_contain_text("3 nodes")
    screenshot(page, "09-delete-preview")
    page.click("#confirm-button")
    expect(page.locator("#cluster-status")).to_have_text("terminated", timeout=SETTLE_MS)
    screenshot(page, "10-cluster-terminated")
    context.close()

    # tenant B's user does not even learn that the cluster exists
    other = browser.new_context()
    page = other.new_page()
    sign_in(page, base, "bella")
    response = page.goto(cluster_url)
    assert response is not None and response.status == 404
    screenshot(page, "11-other-tenant-404")
    other.close()


@pytest.fixture
def multi(tenant_a: Any, tenant_b: Any) -> Any:
    """A user of both tenants (made before the browser starts: no ORM inside Playwright's event loop)."""
    from tenants.models import Membership

    user = member(tenant_b, Role.USER, username="multi")
    Membership.objects.create(tenant=tenant_a, user=user, role=Role.USER)
    return user


def test_the_pages_own_scripts_work_under_the_content_security_policy(site, multi, browser):
    """The CSP refuses inline handlers, so the tenant switcher and the revoke confirmation live in loom.js:
    choosing a tenant switches it, dismissing the confirmation keeps the token, accepting revokes it, and the
    browser reports no refused script on the way."""
    refused: list[str] = []
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            or "Refused to" in message.text else None)  # fmt: skip
    sign_in(page, site.url, "multi")
    expect(page.locator("h1")).to_contain_text("acme")
    page.select_option("#tenant-switch", "globex")
    expect(page.locator("h1")).to_contain_text("globex")

    page.goto(f"{site.url}/tokens/")
    page.fill("#id_name", "cli")
    page.click("text=Create token")
    expect(page.locator("#token-key")).to_contain_text("loom_")
    page.goto(f"{site.url}/tokens/")  # the key is shown once; a fresh page lists the token
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.click("button.danger")
    expect(page.locator("table")).to_contain_text("active")
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.click("button.danger")
    expect(page.locator("table")).to_contain_text("revoked")
    assert questions == ["Revoke cli? Programs using it stop working."] * 2
    assert refused == []
    context.close()
