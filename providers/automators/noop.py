"""The ``noop`` automator: an action that only takes time, for the fake provider, the demo and benchmarks.

Unlike the fake driver's boot time, this latency is *real work time*: it occupies the worker for the whole
duration, as an SSH command running an install script would, so benchmarks measure the engine under the
same worker occupancy as a real run. The duration is drawn around ``latency_ms`` from a generator seeded
by ``seed`` and ``action`` (reproducible, and no generator is shared between worker threads).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable

from providers.drivers.base import TerminalError

from . import AutomatorResult


def run(
    action: str,
    *,
    latency_ms: float,
    seed: str,
    jitter_ms: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> AutomatorResult:
    """Wait about ``latency_ms`` and report it.

    ``jitter_ms`` is the standard deviation of the wait (default 10 % of ``latency_ms``; 0 waits exactly
    ``latency_ms``). A negative or non-finite latency is a configuration error, raised as ``TerminalError``
    because no retry can fix it.
    """
    try:
        latency = float(latency_ms)
        jitter = latency / 10 if jitter_ms is None else float(jitter_ms)
    except (TypeError, ValueError):
        raise TerminalError(f"noop latency_ms must be a number, got {latency_ms!r}") from None
    if not (math.isfinite(latency) and math.isfinite(jitter)) or latency < 0 or jitter < 0:
        raise TerminalError(f"noop latency_ms and jitter_ms must be finite and ≥ 0, got {latency_ms!r}, {jitter_ms!r}")
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}\x00{action}".encode()).digest()[:16], "big"))
    waited_ms = latency if jitter == 0 or latency == 0 else max(0.0, rng.gauss(latency, jitter))
    if waited_ms > 0:
        sleep(waited_ms / 1000)
    return AutomatorResult(output=f"noop {action}: waited {waited_ms:.0f} ms\n")
