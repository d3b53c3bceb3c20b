"""Local dispatch: tasks that became ready inside a worker go straight to its own idle threads.

When a finish releases many tasks at once (a fan-out: 96 worker starts after one master start), each would
otherwise cross the broker: the finishing thread publishes a message per task and the worker's one consumer
thread receives them one by one, a millisecond or two of Python each, competing for the GIL with every
thread at work. The last of 96 started about 0.4 s after the first on a 2-core machine, longer than the
actions themselves. A worker with idle threads needs no broker to hand work to itself: ``spill`` gives up to
as many ready tasks as this process has idle threads to its own thread pool (Celery's, so ``-c`` stays the
bound on threads and database connections), and only the rest are published.

Nothing about recovery changes. A spilled task is dispatched in the database exactly like a published one
(``dispatched_at`` set, still ``queued``), and the thread that picks it up claims it with the same
conditional UPDATE. Should the process die between the spill and the claim, the janitor's lost-message pass
sends it again after ``LOOM_REDISPATCH_SECONDS``, as it does for a message the broker lost; after the
claim, the heartbeat and the janitor's dead-worker pass take over as for any task.

Only a worker running Celery's thread pool attaches (``worker_ready``); anywhere else (the web process, the
embedded worker on another pool, tests calling the engine in-process) ``spill`` takes nothing and
everything goes to the broker as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from django.db import close_old_connections

logger = logging.getLogger(__name__)


class LocalDispatch:
    """This process's thread pool and how many of its threads are taken, by engine work or by spills."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: Executor | None = None
        self._limit = 0
        self._busy = 0  # engine tasks running in this process, however they arrived
        self._reserved = 0  # spilled and not started yet
        self.hostname = "local"

    def attach(self, executor: Executor, *, limit: int, hostname: str) -> None:
        """Use ``executor`` (``limit`` threads) for spills; ``hostname`` names this worker in attempts."""
        with self._lock:
            self._executor, self._limit, self.hostname = executor, limit, hostname

    def detach(self) -> None:
        """Stop spilling (the worker is shutting down: what is ready from now on goes to the broker)."""
        with self._lock:
            self._executor = None

    def idle(self) -> int:
        with self._lock:
            return self._idle()

    def _idle(self) -> int:
        return max(0, self._limit - self._busy - self._reserved) if self._executor is not None else 0

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count an engine task running in this thread for as long as the block runs."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def spill(self, task_pks: Sequence[int], run: Callable[[int], Any]) -> list[int]:
        """Start ``run(pk)`` on an idle thread of this process for as many of ``task_pks`` (in order) as there
        are idle threads; returns those pks. The caller publishes the others."""
        with self._lock:
            executor, taking = self._executor, min(len(task_pks), self._idle())
            self._reserved += taking
        taken: list[int] = []
        try:
            for task_pk in task_pks[:taking]:
                executor.submit(self._run, run, task_pk)  # type: ignore[union-attr]
                taken.append(task_pk)
        except RuntimeError:  # the pool shut down under us (a warm shutdown): publish the rest
            logger.info("worker pool shut down; publishing instead of spilling", extra={"tasks": taking})
        finally:
            with self._lock:
                self._reserved -= taking - len(taken)
        return taken

    def _run(self, run: Callable[[int], Any], task_pk: int) -> None:
        with self._lock:
            self._reserved -= 1
            self._busy += 1
        try:
            # What Celery's Django fix-up does around every task it runs: no connection past its age or broken.
            close_old_connections()
            run(task_pk)
        except Exception:  # nobody waits on this future: log what would otherwise vanish
            logger.exception("spilled task %s failed in the worker", task_pk, extra={"task": task_pk})
        finally:
            close_old_connections()
            with self._lock:
                self._busy -= 1


local = LocalDispatch()


def attach_to_worker(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: spill into the worker's pool when it is Celery's thread pool."""
    pool = getattr(sender, "pool", None)
    executor = getattr(pool, "executor", None)
    if isinstance(executor, Executor):
        local.attach(executor, limit=int(pool.limit), hostname=str(getattr(sender, "hostname", None) or "local"))


def detach_from_worker(**kwargs: Any) -> None:
    """``worker_shutting_down`` receiver."""
    local.detach()
