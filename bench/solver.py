"""Issue 3's benchmark: layout solver and task planner against their targets, in one run.

    python bench/solver.py            # targets, then ours against ports of the original (about a minute)
    python bench/solver.py --quick    # targets only

Each row: what was measured, the median seconds, the target, and measured/target (below 1 is within
target). The cases live in ``solver_cases.py`` and ``planner_cases.py``; both import no Django. Then the
same cases side by side with faithful ports of the original's algorithms (``baselines.py``; the
original's runs are capped at 60 s in total, and a capped case is shown as a lower bound).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines
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
    if "--quick" not in sys.argv:
        print()
        baselines.print_table(baselines.run())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
