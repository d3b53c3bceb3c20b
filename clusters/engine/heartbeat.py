"""Worker heartbeats: proof that a running task's worker is alive, even while one action runs for minutes.

Each worker process keeps the set of tasks its threads are running; one daemon thread per process stamps
``heartbeat_at`` on all of them every ``LOOM_HEARTBEAT_SECONDS`` with a single UPDATE. A worker that dies
(``kill -9``, OOM, a lost machine) stops stamping, and the janitor (``clusters.engine.janitor``) takes the task
back after ``LOOM_HEARTBEAT_TIMEOUT`` seconds. One thread per process rather than one per task keeps the
cost at one query per interval however many tasks a worker runs.

The UPDATE is conditional on the task still being ``running`` for this worker id, so a heartbeat can never
revive a task the janitor already gave to someone else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from clusters.models import Task

logger = logging.getLogger(__name__)


class Heartbeat:
    """The running tasks of this process and the thread that stamps them."""

    def __init__(self) -> None:
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    @contextmanager
    def beating(self, task_pk: int, worker: str) -> Iterator[None]:
        """Keep ``task_pk`` (claimed by ``worker``) stamped while the block runs."""
        with self._lock:
            self._running[task_pk] = worker
            self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(task_pk, None)

    def running(self) -> dict[int, str]:
        with self._lock:
            return dict(self._running)

    def beat(self) -> int:
        """Stamp every task this process runs; returns how many rows were stamped."""
        running = self.running()
        if not running:
            return 0
        condition = Q()
        for task_pk, worker in running.items():
            condition |= Q(pk=task_pk, worker=worker)
        return Task.objects.filter(condition, status=Task.Status.RUNNING).update(heartbeat_at=timezone.now())

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="loom-heartbeat", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        interval = float(settings.LOOM_HEARTBEAT_SECONDS)
        while not self._wake.wait(interval):
            try:
                close_old_connections()
                self.beat()
            except Exception:  # a database hiccup must not kill the thread: the next beat may succeed
                logger.exception("heartbeat failed")
                connection.close()


heartbeat = Heartbeat()
"""The process-wide heartbeat (each worker process has its own)."""
