"""A worker thread keeps one task that became ready at once for itself and publishes the rest; tasks with a
backoff countdown always go through the broker (the real-worker tests run this path end to end)."""

from __future__ import annotations

import pytest

from clusters.engine import dispatch
from clusters.engine.core import Ready


def test_the_first_task_ready_at_once_is_kept_and_the_rest_published(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[list[Ready]] = []
    monkeypatch.setattr(dispatch, "enqueue", published.append)  # the broker publish is not what is tested here
    continuation = dispatch._Continuation(keep=True)
    continuation([Ready(1, 5.0), Ready(2), Ready(3)])
    assert continuation.kept == 2 and published == [[Ready(1, 5.0), Ready(3)]]
    continuation([Ready(4)])  # a second batch (e.g. a JOIN cascade) is published: one task is kept at most
    assert continuation.kept == 2 and published[-1] == [Ready(4)]


def test_a_thread_that_used_up_its_continuations_publishes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[list[Ready]] = []
    monkeypatch.setattr(dispatch, "enqueue", published.append)
    continuation = dispatch._Continuation(keep=False)
    continuation([Ready(7), Ready(8)])
    assert continuation.kept is None and published == [[Ready(7), Ready(8)]]
