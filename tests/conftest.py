"""Shared fixtures: two tenants with an admin and a user each, API clients, the sample catalog."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from templates_app.catalog_files import SAMPLES_DIR, read_catalog_dir
from templates_app.services import catalog_import
from tenants.models import Role, Tenant
from tests.clusters.workers import WorkerPool
from tests.factories import TenantFactory, UserFactory, member

# The real-host lab (``lab``, ``sudo_users``): lab hosts made by the local provider, for any test folder.
pytest_plugins = ["tests.lab.fixtures"]


@pytest.fixture(autouse=True)
def _forget_pinned_documents() -> None:
    """Workers cache pinned service documents by (tenant, name, version) and a job's cluster by job, which
    never change in production; tests roll back and reuse ids, so each test starts with empty caches."""
    from clusters.engine import pins, runner

    pins._pinned.clear()
    runner._clusters.clear()


@pytest.fixture
def tenant_a(db: None) -> Tenant:
    return TenantFactory(name="acme")


@pytest.fixture
def tenant_b(db: None) -> Tenant:
    return TenantFactory(name="globex")


@pytest.fixture
def admin_a(tenant_a: Tenant) -> Any:
    return member(tenant_a, Role.ADMIN, username="alice")


@pytest.fixture
def user_a(tenant_a: Tenant) -> Any:
    return member(tenant_a, Role.USER, username="arthur")


@pytest.fixture
def admin_b(tenant_b: Tenant) -> Any:
    return member(tenant_b, Role.ADMIN, username="bob")


@pytest.fixture
def user_b(tenant_b: Tenant) -> Any:
    return member(tenant_b, Role.USER, username="bella")


@pytest.fixture
def superuser(db: None) -> Any:
    user = UserFactory(username="root", is_superuser=True, is_staff=True)
    user.save()
    return user


@pytest.fixture
def client_for() -> Callable[..., APIClient]:
    """An API client authenticated as ``user`` (session-free, so CSRF does not apply)."""

    def make(user: Any, tenant: str | None = None) -> APIClient:
        client = APIClient()
        client.force_authenticate(user=user)
        if tenant:
            client.credentials(HTTP_X_LOOM_TENANT=tenant)
        return client

    return make


@pytest.fixture
def workers(transactional_db: None, tmp_path: Path) -> Iterator[WorkerPool]:
    """Real Celery worker processes on the test database (``tests/clusters/workers.py``), none started yet;
    the test starts (and may kill) them. Until one runs, what the code under test enqueues waits in Redis."""
    pool = WorkerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def worker(workers: WorkerPool) -> Path:
    """One running worker (8 threads); yields its log."""
    workers.start()
    return workers.log


@pytest.fixture(scope="session")
def sample_catalog() -> dict[str, list[Any]]:
    return read_catalog_dir(SAMPLES_DIR)


TEST_RACKSPACE_CREDENTIALS = {"api_user": "loom-tests", "api_password": "rk-0f3a9c-tests"}


@pytest.fixture
def samples(sample_catalog: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A private deep copy of the sample catalog that a test may modify, its rackspace provider holding
    credentials instead of the shipped ``USERNAME`` / ``API_KEY`` so that lamp and base can be previewed
    and created. Rackspace itself is never reached: the tests that run jobs on them use the fake driver.
    ``sample_catalog`` is the catalog as shipped."""
    catalog = copy.deepcopy(sample_catalog)
    for provider in catalog["providers"]:
        if provider["name"] == "rackspace":
            provider["provisioner"].update(TEST_RACKSPACE_CREDENTIALS)
    return catalog


@pytest.fixture
def catalog_a(tenant_a: Tenant, samples: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Tenant A with the sample catalog imported."""
    catalog_import(tenant=tenant_a, user=None, data=samples)
    return samples


def sample(samples: dict[str, list[Any]], kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(next(item for item in samples[kind] if item["name"] == name))


def as_json(response: Any) -> Any:
    return json.loads(response.content)
