"""The engine benchmarks keep working: each runs in ``--quick`` mode, as a user would start it, against
PostgreSQL and Redis with real worker processes, and prints its table and ratios.

No timing is asserted (the machine is shared); a goal that is missed only changes the exit code to 1,
which is accepted here. What must hold is that the run completes (exit 0 or 1, never a harness error or a
traceback) and that what it prints is well-formed and self-consistent: ratios are positive numbers, a
makespan is never below its lower bound, the task counts match the cluster that was asked for.

Each benchmark drops and re-creates a database of its own, named after the test database
(``<name>_bench_<script>``), so nothing here touches the test database pytest-django manages.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900
NUMBER = r"(\d+(?:\.\d+)?)"


def bench_database_url(script: str) -> str:
    """The server of the test database, with a database of the benchmark's own on it."""
    database = settings.DATABASES["default"]
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    host, port = database.get("HOST") or "127.0.0.1", database.get("PORT") or 5432
    return f"postgres://{database['USER']}{password}@{host}:{port}/{database['NAME']}_bench_{script}"


def run_quick(script: str) -> str:
    """Run ``bench/<script>.py --quick``; returns its output, failing on a harness error or a crash."""
    result = subprocess.run(
        [sys.executable, f"bench/{script}.py", "--quick", "--database-url", bench_database_url(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode in (0, 1), f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return result.stdout


def number_after(label: str, output: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s*{NUMBER}", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return float(match.group(1))


def test_makespan_compares_dag_and_staged_against_the_critical_path_bound() -> None:
    output = run_quick("makespan")
    assert "a 20-node create (3 coordinator, 1 master, 16 worker)" in output
    assert "1 worker process with 20 threads; the DAG is exactly 20 wide" in output
    assert "tenant worker budget unlimited" in output
    rows = {
        match.group(1): (int(match.group(2)), float(match.group(3)), float(match.group(4)), float(match.group(5)))
        for match in re.finditer(rf"^(dag|staged)\s+(\d+)\s+{NUMBER} s\s+{NUMBER} s\s+{NUMBER}\s", output, re.M)
    }
    assert set(rows) == {"dag", "staged"}, output
    assert rows["staged"][0] > rows["dag"][0]  # the barriers are join points of their own
    for _, makespan, bound, ratio in rows.values():
        assert makespan >= bound > 0, output  # a true lower bound
        assert ratio == pytest.approx(makespan / bound, abs=0.002)
    assert number_after("dag makespan / bound:", output) == rows["dag"][3]
    assert number_after("staged / dag makespan:", output) > 0
    paths = re.findall(r"^critical path \((dag|staged)\): (\d+) tasks, .*: create n\d+ → confirm n\d+", output, re.M)
    assert [mode for mode, _ in paths] == ["dag", "staged"], output


def test_throughput_puts_the_engine_next_to_raw_celery() -> None:
    output = run_quick("throughput")
    assert "20-node creates of zero-latency tasks (220 tasks a job)" in output
    rates = dict(
        re.findall(rf"^(raw Celery no-op|engine, budget unlimited|engine, budget 10)\s+{NUMBER}", output, re.M)
    )
    assert set(rates) == {"raw Celery no-op", "engine, budget unlimited", "engine, budget 10"}, output
    assert all(float(rate) > 0 for rate in rates.values())
    ratio = number_after("engine / raw Celery:", output)
    assert ratio == pytest.approx(float(rates["engine, budget unlimited"]) / float(rates["raw Celery no-op"]), abs=0.01)


def test_engine_scale_completes_a_create_and_reports_time_and_memory() -> None:
    output = run_quick("engine_scale")
    assert "a 100-node create of zero-latency tasks: 1100 tasks" in output
    run = number_after("job run (started → finished)", output)
    wall = number_after("wall time (create call → job done seen)", output)
    assert 0 < run <= wall
    assert number_after("tasks/s over the run", output) > 0
    peak = number_after("worker peak memory (VmHWM)", output)
    warm = number_after("worker memory once warm (VmRSS)", output)
    assert peak >= warm > 0


def test_health_sweeps_a_provider_with_one_listing_and_queries_that_do_not_follow_the_nodes() -> None:
    output = run_quick("health")
    rows = re.findall(rf"^(first \(all change\)|steady \(no change\)|1% missing)\s+(\d+)\s+{NUMBER} s\s+{NUMBER} s\s+"
                      r"(\d+)\s+(\d+)", output, re.M)  # fmt: skip
    assert [(name, int(nodes)) for name, nodes, *_ in rows] == [
        ("first (all change)", 200), ("first (all change)", 20), ("steady (no change)", 200),
        ("steady (no change)", 20), ("1% missing", 200), ("1% missing", 20)], output  # fmt: skip
    assert all(int(listings) == 1 for *_, listings in rows)  # one provider listing per sweep
    steady = [int(queries) for name, _, _, _, queries, _ in rows if name.startswith("steady")]
    assert steady[0] == steady[1], output  # ten times the nodes, the same queries
    assert re.search(r"^goal: under 5 s of CPU for 200 nodes: worst \d+\.\d+ s \((met|NOT met)\)$", output, re.M)
