"""Fixtures of the page tests: a fast catalog that really provisions, and Debian's Chromium for Playwright.

The browser is Debian's ``/usr/bin/chromium`` (``scripts/test`` installs it); Playwright never downloads one.
A missing Chromium fails the browser tests rather than skipping them, so CI cannot pass without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from templates_app.services import catalog_import
from tenants.models import Tenant
from tests.clusters.day2_helpers import stack_catalog
from tests.clusters.workers import catalog

CHROMIUM = os.environ.get("LOOM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


@pytest.fixture
def fleet(tenant_a: Tenant) -> dict[str, list[Any]]:
    """Tenant A with the ``fleet`` template on the fake provider: machines boot in 0.3 s, actions take 20 ms."""
    data = catalog(boot_ms="300", action_ms="20")
    catalog_import(tenant=tenant_a, user=None, data=data)
    return data


@pytest.fixture
def stack(tenant_a: Tenant) -> dict[str, list[Any]]:
    """Tenant A with the day-2 tests' ``stack`` template (db, web, lb, base; cache may be added)."""
    data = stack_catalog()
    catalog_import(tenant=tenant_a, user=None, data=data)
    return data


@pytest.fixture
def site(transactional_db: None) -> Iterator[Any]:
    """A live server for this test only (``.url``). pytest-django's ``live_server`` lives for the session and
    its thread keeps a database session open past the test database's teardown; this one is stopped, and
    its connections closed, when the test ends."""
    from pytest_django.live_server_helper import LiveServer

    server = LiveServer("localhost")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(transactional_db: None) -> Iterator[Any]:
    """A headless Chromium (it starts in about a second). Per test, after the database is set up: the sync
    API runs an event loop in the test's thread, which makes Django refuse ORM calls there (so pytest-django
    must not create or flush the database while it runs, and the browser tests make no ORM calls)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(page, name)`` saves a full-page PNG to tests/frontend/screenshots/ (git-ignored)."""
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
