"""Layout solver benchmarks against the targets of issue 3.

    python bench/solver_cases.py

Prints one row per case: label, median seconds of a few runs, target seconds. Imports no Django: the solver
is a pure core, so the cases build ``TemplateSpec`` / ``ServiceSpec`` values directly.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusters.planning.solver import LayoutRequest, check_layout, solve
from clusters.planning.specs import (
    HardwareOption,
    ImageOption,
    ServiceConstraint,
    ServiceSpec,
    TemplateSpec,
)

HARDWARE = (
    HardwareOption("standard-small", "2", 0.06),
    HardwareOption("standard-medium", "3", 0.12),
    HardwareOption("standard-large", "4", 0.24),
    HardwareOption("standard-xlarge", "5", 0.48),
)
IMAGES = (ImageOption("centos6", "img-c6"), ImageOption("ubuntu12", "img-u12"))


def median_seconds(function: Callable[[], object], repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def hadoop_like(size: int) -> LayoutRequest:
    """About 15 services with the usual Hadoop constraints: singleton masters, a worker must-coexist group,
    masters and workers apart, a ZooKeeper quorum of 3-5, big hardware for data nodes."""
    masters = ["hdfs-namenode", "yarn-resourcemanager", "mapreduce-historyserver", "hbase-master"]
    workers = ["hdfs-datanode", "yarn-nodemanager", "hbase-regionserver"]
    singles = ["hdfs-secondarynamenode", "hive-metastore", "hive-server2", "mysql-server", "oozie", "hue"]
    names = ["base", *masters, *workers, *singles, "zookeeper-server"]
    constraints = {
        "hdfs-namenode": ServiceConstraint(1, 1, frozenset({"standard-large", "standard-xlarge"})),
        "yarn-resourcemanager": ServiceConstraint(1, 1),
        "hdfs-datanode": ServiceConstraint(3, None, frozenset({"standard-large", "standard-xlarge"})),
        "zookeeper-server": ServiceConstraint(3, 5),
        "hdfs-secondarynamenode": ServiceConstraint(1, 1),
        **{
            name: ServiceConstraint(1, 1) for name in ("hive-metastore", "hive-server2", "mysql-server", "oozie", "hue")
        },
    }
    template = TemplateSpec(
        name="hadoop-like",
        compatible_services=frozenset(names),
        default_services=tuple(names),
        size_min=1,
        must_coexist=(frozenset(workers), frozenset(masters), frozenset({"hive-metastore", "hive-server2"})),
        cant_coexist=(
            frozenset({"yarn-resourcemanager", "yarn-nodemanager"}),
            frozenset({"hdfs-namenode", "hdfs-datanode"}),
            frozenset({"hbase-master", "hbase-regionserver"}),
            frozenset({"hdfs-namenode", "hdfs-secondarynamenode"}),
        ),
        service_constraints=MappingProxyType(constraints),
    )
    services = {name: ServiceSpec(name) for name in names}
    return LayoutRequest(
        template=template,
        services=services,
        size=size,
        hardware_options=HARDWARE,
        image_options=IMAGES,
    )


def thirty_constrained(size: int) -> LayoutRequest:
    """30 services, every one constrained: masters (exactly one, some mutually exclusive), quorums (3-5),
    two worker must-coexist groups (at least 2, kept off the masters), capped edge and gateway services
    (small hardware only), databases apart from workers, agents limited to one image."""
    masters = [f"master-{i}" for i in range(4)]
    quorums = [f"quorum-{i}" for i in range(3)]
    workers = [f"worker-{i}" for i in range(6)]
    edges = [f"edge-{i}" for i in range(5)]
    agents = [f"agent-{i}" for i in range(5)]
    databases = [f"db-{i}" for i in range(3)]
    gateways = [f"gateway-{i}" for i in range(4)]
    names = [*masters, *quorums, *workers, *edges, *agents, *databases, *gateways]
    constraints: dict[str, ServiceConstraint] = {}
    constraints.update({name: ServiceConstraint(1, 1) for name in masters})
    constraints.update({name: ServiceConstraint(3, 5) for name in quorums})
    constraints.update({name: ServiceConstraint(2, None) for name in workers})
    constraints.update({name: ServiceConstraint(1, 2) for name in edges})
    constraints.update({name: ServiceConstraint(0, None, frozenset(), frozenset({"centos6"})) for name in agents})
    constraints.update({name: ServiceConstraint(1, 1) for name in databases})
    constraints.update({name: ServiceConstraint(1, 2, frozenset({"standard-small"})) for name in gateways})
    cant = [
        frozenset({"master-0", "master-1"}),
        frozenset({"master-2", "master-3"}),
        *(frozenset({master, worker}) for master in masters for worker in ("worker-0", "worker-3")),
        *(frozenset({database, "worker-0"}) for database in databases),
        *(frozenset({gateway, "worker-3"}) for gateway in gateways),
        frozenset({"db-0", "db-1", "db-2"}),
        frozenset({"edge-0", "gateway-0"}),
    ]
    template = TemplateSpec(
        name="thirty-constrained",
        default_services=tuple(names),
        must_coexist=(frozenset(workers[:3]), frozenset(workers[3:]), frozenset({"edge-1", "edge-2"})),
        cant_coexist=tuple(cant),
        service_constraints=MappingProxyType(constraints),
    )
    services = {name: ServiceSpec(name) for name in names}
    return LayoutRequest(
        template=template,
        services=services,
        size=size,
        hardware_options=HARDWARE,
        image_options=IMAGES,
    )


def run() -> list[tuple[str, float, float]]:
    """(label, median seconds, target seconds) for each case; every layout is also checked."""
    cases = [
        ("hadoop-like, 15 services, 10,000 nodes", hadoop_like(10_000), 0.1),
        ("30 constrained services, 10 nodes", thirty_constrained(10), 1.0),
        ("30 constrained services, 100 nodes", thirty_constrained(100), 1.0),
        ("30 constrained services, 1,000 nodes", thirty_constrained(1_000), 1.0),
    ]
    rows = []
    for label, request, target in cases:
        layout = solve(request)
        problems = check_layout(request, layout)
        if problems or layout.size != request.size:
            raise AssertionError(f"{label}: invalid layout: {problems}")
        rows.append((label, median_seconds(lambda request=request: solve(request)), target))
    return rows


if __name__ == "__main__":
    for label, seconds, target in run():
        verdict = "ok" if seconds <= target else "SLOW"
        print(f"{label:45} {seconds * 1000:9.2f} ms   target {target * 1000:7.0f} ms   {verdict}")
