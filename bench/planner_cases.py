"""Planner benchmarks: plan a Hadoop-like cluster create at 1,000 and 10,000 nodes.

    python bench/planner_cases.py

Prints, per size, the median planning time of three runs against its target, the task and edge counts,
and (at 1,000 nodes) how many edges the same plan would have with every all-to-all dependency written
out pair by pair, join by join (the original's N×M: about 7 million edges for this model at 1,000 nodes). ``run()``
returns (label, seconds, target seconds) rows for ``bench/solver.py``, which prints the targets of both
pure cores together. Imports no Django.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusters.planning.planner import Operation, Plan, plan
from clusters.planning.specs import NodeSpec, ServiceSpec

ALL_ACTIONS = frozenset({"install", "configure", "initialize", "start", "stop", "remove"})
NO_INIT = ALL_ACTIONS - {"initialize"}


def service(
    name: str,
    *,
    actions: frozenset[str] = NO_INIT,
    install: tuple[str, ...] = ("base",),
    requires: tuple[str, ...] = (),
    uses: tuple[str, ...] = (),
    provides: tuple[str, ...] = (),
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        provides=frozenset(provides),
        install_requires=frozenset(install),
        runtime_requires=frozenset(requires),
        runtime_uses=frozenset(uses),
        actions=actions,
    )


def hadoop_services() -> dict[str, ServiceSpec]:
    """15 services shaped like coopr-templates' hadoop/hbase/hive stack (install deps on base and the
    client packages; runtime deps as the daemons need each other; "hdfs" is an alias the namenode
    provides)."""
    specs = [
        service("base", actions=frozenset({"install", "configure"}), install=()),
        service("java", actions=frozenset({"install"})),
        service("hadoop-client", actions=frozenset({"install", "configure"}), install=("base", "java")),
        service("zookeeper-server", actions=ALL_ACTIONS, install=("java",)),
        service(
            "hadoop-hdfs-namenode",
            actions=ALL_ACTIONS,
            install=("hadoop-client",),
            uses=("zookeeper-server",),
            provides=("hdfs",),
        ),
        service("hadoop-hdfs-secondarynamenode", install=("hadoop-client",), requires=("hadoop-hdfs-namenode",)),
        service("hadoop-hdfs-datanode", install=("hadoop-client",), requires=("hdfs",)),
        service(
            "hadoop-yarn-resourcemanager",
            actions=ALL_ACTIONS,
            install=("hadoop-client",),
            requires=("hdfs",),
        ),
        service(
            "hadoop-yarn-nodemanager",
            install=("hadoop-client",),
            requires=("hadoop-yarn-resourcemanager", "hadoop-hdfs-datanode"),
        ),
        service(
            "hadoop-mapreduce-historyserver",
            install=("hadoop-client",),
            requires=("hadoop-yarn-resourcemanager", "hadoop-hdfs-datanode"),
        ),
        service(
            "hbase-master",
            actions=ALL_ACTIONS,
            install=("hadoop-client",),
            requires=("hdfs", "zookeeper-server"),
        ),
        service(
            "hbase-regionserver",
            install=("hadoop-client",),
            requires=("hbase-master", "hadoop-hdfs-datanode", "zookeeper-server"),
        ),
        service("mysql-server", actions=ALL_ACTIONS, install=("base",)),
        service(
            "hive-metastore",
            actions=ALL_ACTIONS,
            install=("hadoop-client",),
            requires=("mysql-server", "hdfs"),
            uses=("hadoop-hdfs-datanode",),
        ),
        service("hive-server2", install=("hadoop-client",), requires=("hive-metastore", "hadoop-yarn-resourcemanager")),
    ]
    return {spec.name: spec for spec in specs}


def hadoop_nodes(size: int) -> list[NodeSpec]:
    """3 master nodes and ``size - 3`` identical workers (datanode, nodemanager, regionserver)."""
    common = {"base", "java", "hadoop-client"}
    masters = [
        common | {"hadoop-hdfs-namenode", "hadoop-yarn-resourcemanager", "zookeeper-server"},
        common
        | {"hadoop-hdfs-secondarynamenode", "hbase-master", "zookeeper-server", "hadoop-mapreduce-historyserver"},
        common | {"mysql-server", "hive-metastore", "hive-server2", "zookeeper-server"},
    ]
    worker = frozenset(common | {"hadoop-hdfs-datanode", "hadoop-yarn-nodemanager", "hbase-regionserver"})
    roles = [frozenset(m) for m in masters] + [worker] * (size - len(masters))
    return [
        NodeSpec(node_id=f"node-{i:05d}", number=1000 + i, hardware="large", image="centos", services=services)
        for i, services in enumerate(roles)
    ]


def timed_create(size: int, repeat: int = 3) -> tuple[float, Plan]:
    """Median seconds of ``repeat`` plans of a ``size``-node create, and the plan."""
    services, nodes = hadoop_services(), hadoop_nodes(size)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = plan(before=(), after=nodes, operation=Operation.CREATE, services=services)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result


CASES = ((1_000, 1.0), (10_000, 10.0))


def print_joins(result: Plan) -> None:
    """Each JOIN with its fan-in and fan-out: what it replaces is fan-in × fan-out edges."""
    fan_in, fan_out = result.pending_counts(), result.successors()
    for task in result.tasks:
        if task.is_join:
            p, s = fan_in[task.key], len(fan_out[task.key])
            print(f"    join after {task.label}: {p:,} in + {s:,} out instead of {p * s:,}")


def run() -> list[tuple[str, float, float]]:
    """(label, seconds, target seconds) per case; also prints the counts behind each number."""
    rows: list[tuple[str, float, float]] = []
    for size, target in CASES:
        seconds, result = timed_create(size)
        label = f"planner: Hadoop-like create, {size:,} nodes"
        print(
            f"{label}: {seconds:.2f} s (target {target:.0f} s); {result.real_task_count:,} tasks + "
            f"{result.join_count} joins, {len(result.edges):,} edges; {result.stages} stages"
        )
        if size <= 1_000:
            naive = result.expanded_edge_count
            print(f"    written out N×M: {naive:,} edges ({naive / len(result.edges):.0f}× as many)")
            print_joins(result)
        rows.append((label, seconds, target))
    return rows


if __name__ == "__main__":
    for label, seconds, target in run():
        verdict = "ok" if seconds <= target else "TOO SLOW"
        print(f"{verdict:8} {label}: {seconds:.2f} s / {target:.0f} s")
