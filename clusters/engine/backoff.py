"""Exponential backoff with "equal jitter", shared by task retries and webhook deliveries."""

from __future__ import annotations

import random


def jittered_backoff(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = after the first failure): ``base`` doubling per
    attempt up to ``cap``, then a random point between half and all of it, so a burst of failures does not
    come back in lockstep (and the wait never drops below half the nominal backoff)."""
    nominal = min(cap, base * 2 ** max(0, attempt - 1))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)
