"""Local dispatch (``clusters/engine/local_dispatch.py``) and the batches of ``clusters.tasks``: what a worker can run
on its own idle threads never crosses the broker, and what it cannot goes out a batch to a message.

The pool is a real ``ThreadPoolExecutor`` (what Celery's thread pool wraps); the broker edge is recorded by
replacing ``apply_async``. The real-worker tests (``test_execution*.py``, ``bench/``) run the same code
with Celery's own pool over Redis, where every fan-out and every job start goes this way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from clusters.engine import dispatch as handoff
from clusters.engine.core import Claimed, Ready
from clusters.engine.local_dispatch import LocalDispatch, attach_to_worker

WAIT_S = 10


class Recorder:
    """A ``run`` for spills: records which pk ran on which thread; ``gate`` holds every run until it is set."""

    def __init__(self) -> None:
        self.ran: list[tuple[int, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.done = threading.Semaphore(0)

    def __call__(self, task_pk: int) -> None:
        assert self.gate.wait(WAIT_S)
        self.ran.append((task_pk, threading.current_thread().name))
        self.done.release()

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self.done.acquire(timeout=WAIT_S), f"only {len(self.ran)} of {count} spilled runs ran"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pool")
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture
def dispatch(pool: ThreadPoolExecutor) -> LocalDispatch:
    local = LocalDispatch()
    local.attach(pool, limit=4, hostname="w1@host")
    return local


def test_a_spill_takes_all_idle_threads_but_one_in_order_and_runs_them_there(dispatch, pool):
    run = Recorder()
    with dispatch.busy():  # this thread's own task: 3 of 4 threads are idle, one stays Celery's
        assert dispatch.idle() == 3
        taken = dispatch.spill([11, 12, 13, 14, 15], run)
        assert taken == [11, 12]
        run.wait_for(2)
    assert sorted(pk for pk, _ in run.ran) == [11, 12]
    assert all(thread.startswith("pool") for _, thread in run.ran)
    pool.shutdown(wait=True)
    assert dispatch.idle() == 4, "every thread is idle again once its spilled run ended"


def test_spilled_tasks_hold_their_threads_until_they_end_and_one_thread_is_always_left_to_celery(dispatch):
    run = Recorder()
    run.gate.clear()
    assert dispatch.spill([1, 2], run) == [1, 2]
    assert dispatch.idle() == 2
    # Two threads are idle, but spilling both would leave Celery none: a message its consumer is already
    # waiting for (maybe a batch) would find no thread to run it.
    assert dispatch.spill([3, 4, 5], run) == [3]
    assert dispatch.idle() == 1 and dispatch.spill([6], run) == []
    run.gate.set()
    run.wait_for(3)
    assert sorted(pk for pk, _ in run.ran) == [1, 2, 3]


class FakeQoS:
    """kombu's ``QoS`` arithmetic (the consumer applies ``value`` on its next turn): never below 1."""

    def __init__(self, value: int) -> None:
        self.value = value

    def decrement_eventually(self, n: int = 1) -> int:
        self.value = max(1, self.value - n)
        return self.value

    def increment_eventually(self, n: int = 1) -> int:
        self.value += n
        return self.value


def test_the_consumer_takes_as_many_fewer_messages_as_spills_run_and_gets_them_back_as_they_end(pool):
    consumer = type("Consumer", (), {"qos": FakeQoS(4)})()
    local = LocalDispatch()
    local.attach(pool, limit=4, hostname="w1@host", consumer=consumer)
    run = Recorder()
    run.gate.clear()
    assert local.spill([1, 2, 3], run) == [1, 2, 3]
    assert consumer.qos.value == 1, "three of four threads are spilled: Celery may hold one message"
    run.gate.set()
    pool.shutdown(wait=True)
    assert consumer.qos.value == 4


def test_a_prefetch_already_at_its_floor_is_not_raised_by_what_a_spill_could_not_take(pool):
    consumer = type("Consumer", (), {"qos": FakeQoS(2)})()  # Celery lowered it (tasks with an ETA)
    local = LocalDispatch()
    local.attach(pool, limit=4, hostname="w1@host", consumer=consumer)
    assert local.spill([1, 2, 3], Recorder()) == [1, 2, 3]
    pool.shutdown(wait=True)
    assert consumer.qos.value == 2, "only the one slot the spill really took was given back"


def test_a_process_without_a_thread_pool_or_one_shutting_down_spills_nothing(pool):
    run = Recorder()
    assert LocalDispatch().spill([1, 2], run) == [], "the web process and eager tests have no pool"
    local = LocalDispatch()
    local.attach(pool, limit=4, hostname="w1@host")
    local.detach()  # worker_shutting_down
    assert local.spill([1, 2], run) == []
    local.attach(pool, limit=4, hostname="w1@host")
    pool.shutdown(wait=True)  # the pool stopped before the worker said so
    assert local.spill([1, 2], run) == []
    assert local.idle() == 4, "a spill the pool refused leaves no thread reserved"
    assert run.ran == []


def test_a_spill_the_pool_refused_gives_the_consumer_its_prefetch_back(pool):
    consumer = type("Consumer", (), {"qos": FakeQoS(4)})()
    local = LocalDispatch()
    local.attach(pool, limit=4, hostname="w1@host", consumer=consumer)
    pool.shutdown(wait=True)
    assert local.spill([1, 2], Recorder()) == []
    assert consumer.qos.value == 4 and local.idle() == 4


def test_a_spilled_run_that_raises_is_logged_and_gives_its_thread_back(dispatch, pool, caplog):
    def broken(task_pk: int) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="clusters.engine.local_dispatch"):
        assert dispatch.spill([7], broken) == [7]
        pool.shutdown(wait=True)
    assert "spilled task 7 failed" in caplog.text and "boom" in caplog.text
    assert dispatch.idle() == 4


def test_the_worker_ready_signal_attaches_a_thread_pool_and_nothing_else(pool):
    class Consumer:
        hostname = "celery@box"

        def __init__(self, pool: Any) -> None:
            self.pool = pool

    class ThreadPool:
        limit = 4
        executor = pool

    class PreforkPool:
        limit = 4

    from clusters.engine.local_dispatch import local

    try:
        attach_to_worker(sender=Consumer(PreforkPool()))
        assert local.idle() == 0, "a prefork pool has no threads to spill into"
        attach_to_worker(sender=Consumer(ThreadPool()))
        assert local.idle() == 4 and local.hostname == "celery@box"
    finally:
        local.detach()


# --- clusters.tasks: what goes where ------------------------------------------------------------------


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, float | None]]:
    """Every message ``clusters.tasks`` sends: (task, its argument, countdown)."""
    sent: list[tuple[str, Any, float | None]] = []
    for task in (handoff.task_run_task, handoff.task_run_batch_task):
        monkeypatch.setattr(task, "apply_async",
                            lambda args, countdown=None, name=task.name: sent.append((name, args[0], countdown)))  # fmt: skip
    return sent


@pytest.fixture
def spills(monkeypatch: pytest.MonkeyPatch, dispatch: LocalDispatch) -> Recorder:
    """``clusters.tasks`` spilling into ``dispatch`` (4 threads, all idle), recording what ran there."""
    run = Recorder()
    monkeypatch.setattr(handoff, "local", dispatch)
    monkeypatch.setattr(handoff, "_run_spilled", run)
    return run


def test_enqueue_spills_what_idle_threads_can_take_and_batches_the_rest(broker, spills, settings):
    settings.LOOM_DISPATCH_BATCH = 4
    claimed = Claimed(attempt=None, action="install", service="app", node_id=None, job_id=1, node=None)  # type: ignore[arg-type]
    ready = [Ready(pk) for pk in range(1, 11)] + [Ready(20, countdown=5.0), Ready(30, claimed=claimed)]
    handoff.enqueue(ready)
    spills.wait_for(3)
    assert sorted(pk for pk, _ in spills.ran) == [1, 2, 3], "4 idle threads: 3 spilled, one left to Celery"
    name = handoff.task_run_batch_task.name
    assert broker == [
        (name, [4, 5, 6, 7], None),
        (name, [8, 9, 10], None),
        (handoff.task_run_task.name, 20, 5.0),  # a countdown is never spilled nor batched
    ], "task 30 was claimed by the finish for its own thread: it is never sent"


def test_a_batch_of_one_is_a_plain_message(broker, settings):
    settings.LOOM_DISPATCH_BATCH = 4
    handoff.publish([1, 2, 3, 4, 5])
    assert broker == [(handoff.task_run_batch_task.name, [1, 2, 3, 4], None), (handoff.task_run_task.name, 5, None)]


def test_a_batch_runs_its_first_task_in_the_receiving_thread_spills_what_it_can_and_sends_on_the_rest(
    broker, spills, dispatch, monkeypatch, settings
):
    settings.LOOM_DISPATCH_BATCH = 2
    chains: list[tuple[int, str]] = []
    monkeypatch.setattr(handoff, "run_chain", lambda task_pk, *, worker: chains.append((task_pk, worker)))
    spills.gate.clear()  # two threads already busy with earlier spills
    assert dispatch.spill([90, 91], spills) == [90, 91]
    handoff.task_run_batch_task([1, 2, 3, 4, 5])
    assert chains == [(1, f"local/{threading.current_thread().name}")]
    # The receiving thread is the third busy one; the fourth is the one left to Celery: the rest goes on.
    name = handoff.task_run_batch_task.name
    assert broker == [(name, [2, 3], None), (name, [4, 5], None)]
    spills.gate.set()
    spills.wait_for(2)
    assert sorted(pk for pk, _ in spills.ran) == [90, 91]
