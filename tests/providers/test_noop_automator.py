"""The noop automator: an action that only takes (real) time."""

from __future__ import annotations

import time

import pytest

from providers.automators import AutomatorResult
from providers.automators.noop import run
from providers.drivers import TerminalError


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_waits_exactly_the_latency_without_jitter() -> None:
    sleeps = Sleeps()
    result = run("install", latency_ms=250, seed="s", jitter_ms=0, sleep=sleeps)
    assert sleeps == [0.25]
    assert result == AutomatorResult(output="noop install: waited 250 ms\n")


def test_jitter_is_seeded_per_action() -> None:
    def waited(action: str, seed: str) -> list[float]:
        sleeps = Sleeps()
        run(action, latency_ms=1000, seed=seed, sleep=sleeps)
        return sleeps

    assert waited("install", "a") == waited("install", "a")
    assert waited("install", "a") != waited("configure", "a")
    assert waited("install", "a") != waited("install", "b")
    draws = [waited("start", f"seed-{n}")[0] for n in range(400)]
    assert 0.98 < sum(draws) / len(draws) < 1.02  # mean 1 s, sd 0.1 s: standard error 0.005 s


def test_the_wait_really_occupies_the_caller() -> None:
    started = time.monotonic()
    run("start", latency_ms=40, seed="real", jitter_ms=0)
    assert time.monotonic() - started >= 0.04


def test_zero_latency_does_not_sleep() -> None:
    sleeps = Sleeps()
    run("stop", latency_ms=0, seed="s", sleep=sleeps)
    assert sleeps == []


@pytest.mark.parametrize("latency", [-1, float("nan"), "slow"])
def test_unusable_latency_is_terminal(latency: object) -> None:
    with pytest.raises(TerminalError, match="latency_ms"):
        run("install", latency_ms=latency, seed="s")  # type: ignore[arg-type]
