"""Fixtures for engine tests. The real-worker fixtures ``workers`` and ``worker`` (see ``workers.py``) are in
``tests/conftest.py``, so tests outside this folder can use them too."""

from __future__ import annotations

from typing import Any

import pytest

from clusters.models import Cluster, Job
from clusters.planning.planner import Plan

from .engine_helpers import lamp_job


@pytest.fixture
def lamp(tenant_a: Any, admin_a: Any, catalog_a: Any) -> tuple[Cluster, Plan, Job]:
    """A 3-node lamp create of tenant A, persisted as a job that has not started."""
    return lamp_job(tenant_a, admin_a)
