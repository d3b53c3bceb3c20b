"""Automators: how a service action is carried out on a node (shell, ansible, puppet, chef-solo, noop).

Like drivers, automators receive plain values and return plain results, so ``providers`` stays free of
``clusters``. ``AutomatorResult`` is the shared result type; ``noop`` is the first implementation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutomatorResult:
    """What an action printed. The engine redacts it and keeps the tail on the TaskAttempt."""

    output: str


__all__ = ["AutomatorResult"]
