"""Fixtures for engine tests that need real worker processes (see ``workers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .workers import WorkerPool


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
