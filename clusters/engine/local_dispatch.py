"""Local dispatch: tasks that became ready inside a worker go straight to its own idle threads.

When a finish releases many tasks at once (a fan-out: 96 worker starts after one master start), each would
otherwise cross the broker: the finishing thread publishes a message per task and the worker's one consumer
thread receives them one by one, a millisecond or two of Python each, competing for the GIL with every
thread at work. The last of 96 started about 0.4 s after the first on a 2-core machine, longer than the
actions themselves. A worker with idle threads needs no broker to hand work to itself: ``spill`` gives
ready tasks to its own thread pool (Celery's, so ``-c`` stays the bound on threads and database
connections), one to each idle thread but one, and only the rest are published.

Nothing about recovery changes. A spilled task is dispatched in the database exactly like a published one
(``dispatched_at`` set, still ``queued``), and the thread that picks it up claims it with the same
conditional UPDATE. Should the process die between the spill and the claim, the janitor's lost-message pass
sends it again after ``LOOM_REDISPATCH_SECONDS``, as it does for a message the broker lost; after the
claim, the heartbeat and the janitor's dead-worker pass take over as for any task.

A thread running a spilled task is one Celery does not know is busy: its consumer would go on taking messages
from the broker up to its prefetch limit, and with every thread taken they would wait in this process's
queue while another worker sat idle. So each spill lowers the consumer's prefetch count by the threads it
takes, and each spilled task gives its slot back when it ends, as Celery itself does around tasks with an
ETA; and one idle thread is left for the message the consumer may already be waiting for (``spill``).
With two worker processes of 50 threads in ``bench/makespan.py``, the last of 100 creates started 1.2 s into
the job when spills left only a prefetch slot free, not a thread; 0.2-0.8 s with the thread left.

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
        self._delivered = 0  # engine tasks Celery delivered, running (``busy``)
        self._spilled = 0  # spilled tasks, from the spill until they end
        self._consumer: Any = None
        self._held = 0  # prefetch slots taken from the consumer by spills not yet ended
        self.hostname = "local"

    def attach(self, executor: Executor, *, limit: int, hostname: str, consumer: Any = None) -> None:
        """Use ``executor`` (``limit`` threads) for spills; ``hostname`` names this worker in attempts;
        ``consumer`` (Celery's, with a kombu ``QoS`` as ``qos``) has its prefetch lowered while spills run."""
        with self._lock:
            self._executor, self._limit, self.hostname, self._consumer = executor, limit, hostname, consumer

    def detach(self) -> None:
        """Stop spilling (the worker is shutting down: what is ready from now on goes to the broker)."""
        with self._lock:
            self._executor = None

    def idle(self) -> int:
        """Threads neither running an engine task nor promised to a spill."""
        with self._lock:
            return self._idle()

    def _idle(self) -> int:
        return max(0, self._limit - self._delivered - self._spilled) if self._executor is not None else 0

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count an engine task Celery delivered, running in this thread for as long as the block runs."""
        with self._lock:
            self._delivered += 1
        try:
            yield
        finally:
            with self._lock:
                self._delivered -= 1

    def spill(self, task_pks: Sequence[int], run: Callable[[int], Any]) -> list[int]:
        """Start ``run(pk)`` on an idle thread of this process for as many of ``task_pks`` (in order) as there
        are idle threads; returns those pks. The caller publishes the others.

        One idle thread is always left to Celery. Its consumer may already be waiting on the broker for the
        next message, asked for while that thread was free; the lowered prefetch count applies only to what
        it asks for after. Were that thread spilled too, the message (maybe a batch) would wait in this
        worker's queue for a thread while other workers idle. It also keeps the count at 1 or more: kombu
        does not lower it further."""
        with self._lock:
            executor = self._executor
            taking = max(0, min(len(task_pks), self._idle() - 1))
            self._spilled += taking
        self._hold_prefetch(taking)  # before the runs start: the first may end before this loop does
        taken: list[int] = []
        try:
            for task_pk in task_pks[:taking]:
                executor.submit(self._run, run, task_pk)  # type: ignore[union-attr]
                taken.append(task_pk)
        except RuntimeError:  # the pool shut down under us (a warm shutdown): publish the rest
            logger.info("worker pool shut down; publishing instead of spilling", extra={"tasks": taking})
        finally:
            with self._lock:
                self._spilled -= taking - len(taken)
            for _ in range(taking - len(taken)):
                self._release_prefetch()
        return taken

    def _hold_prefetch(self, count: int) -> None:
        """Lower the consumer's prefetch count by ``count``. Should it be at kombu's floor of 1 anyway (Celery
        moves it too, for tasks with an ETA), what was really taken is remembered (``_held``) and only that
        is given back."""
        qos = getattr(self._consumer, "qos", None)
        if qos is None or not count:
            return
        before = qos.value
        after = qos.decrement_eventually(count)  # the consumer's loop applies it on its next turn
        with self._lock:
            self._held += max(0, before - after)

    def _release_prefetch(self) -> None:
        """Give back one prefetch slot a spill took, if any is still held."""
        qos = getattr(self._consumer, "qos", None)
        with self._lock:
            if qos is None or not self._held:
                return
            self._held -= 1
        qos.increment_eventually(1)

    def _run(self, run: Callable[[int], Any], task_pk: int) -> None:
        try:
            # What Celery's Django fix-up does around every task it runs: no connection past its age or broken.
            close_old_connections()
            run(task_pk)
        except Exception:  # nobody waits on this future: log what would otherwise vanish
            logger.exception("spilled task %s failed in the worker", task_pk, extra={"task": task_pk})
        finally:
            close_old_connections()
            with self._lock:
                self._spilled -= 1
            self._release_prefetch()


local = LocalDispatch()


def attach_to_worker(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: spill into the worker's pool when it is Celery's thread pool."""
    pool = getattr(sender, "pool", None)
    executor = getattr(pool, "executor", None)
    if isinstance(executor, Executor):
        hostname = str(getattr(sender, "hostname", None) or "local")
        local.attach(executor, limit=int(pool.limit), hostname=hostname, consumer=sender)


def detach_from_worker(**kwargs: Any) -> None:
    """``worker_shutting_down`` receiver."""
    local.detach()
