"""Issue 3's benchmark: layout solver and task planner against their targets, in one run.

    python bench/solver.py

Each row: what was measured, the median seconds, the target, and measured/target (below 1 is within
target). The cases live in ``solver_cases.py`` and ``planner_cases.py``; both import no Django.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import planner_cases
import solver_cases


def main() -> int:
    rows = solver_cases.run() + planner_cases.run()
    width = max(len(label) for label, _, _ in rows)
    print(f"{'case':<{width}}  {'measured':>10}  {'target':>8}  {'ratio':>6}")
    failed = 0
    for label, seconds, target in rows:
        ratio = seconds / target
        failed += ratio > 1
        flag = "  OVER" if ratio > 1 else ""
        print(f"{label:<{width}}  {seconds * 1000:>8.1f}ms  {target:>7.1f}s  {ratio:>6.3f}{flag}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
