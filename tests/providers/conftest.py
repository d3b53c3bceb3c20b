"""Fixtures for the driver contract: a controllable clock and fake drivers that never really sleep."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from providers.drivers import MachineSpec
from providers.drivers.fake import FakeDriver

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
_keys = itertools.count(1)


class Clock:
    """A clock the test moves by hand, so boot times and windows are tested without waiting."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Sleeps(list[float]):
    """Records the in-call sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


MakeDriver = Callable[..., FakeDriver]


@pytest.fixture
def make_driver(db: None, clock: Clock, sleeps: Sleeps) -> MakeDriver:
    """``make_driver(provider_key=None, **fields)``: a fake driver on the test clock, a fresh provider by default."""

    def make(provider_key: str | None = None, **fields: Any) -> FakeDriver:
        key = provider_key or f"test-provider-{next(_keys)}"
        return FakeDriver({"latency_ms": "0", **fields}, provider_key=key, clock=clock, sleep=sleeps)

    return make


def spec(node: int, cluster: str = "c1", **kwargs: Any) -> MachineSpec:
    """The spec of node number ``node`` of cluster ``cluster``, built the way the engine builds it."""
    return MachineSpec.for_node(
        cluster_key=cluster,
        node_key=f"{cluster}-node-{node}",
        node_number=node,
        flavor="small",
        image="debian-12",
        ssh_user="loom",
        **kwargs,
    )
