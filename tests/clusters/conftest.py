"""Fixtures for engine tests that need real worker processes (see ``workers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusters.models import Cluster, Job
from clusters.planner import Plan

from .engine_helpers import lamp_job
from .workers import WorkerPool


@pytest.fixture
def lamp(tenant_a: Any, admin_a: Any, catalog_a: Any) -> tuple[Cluster, Plan, Job]:
    """A 3-node lamp create of tenant A, persisted as a job that has not started."""
    return lamp_job(tenant_a, admin_a)


@pytest.fixture
def workers(transactional_db: None, tmp_path: Path) -> Iterator[WorkerPool]:
    """A pool with no worker started yet; the test starts (and may kill) them."""
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
