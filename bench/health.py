"""One health sweep over 1,000 nodes on the fake provider: wall time, CPU and SQL queries, side by side with 100.

    python bench/health.py            # 1,000 nodes in 20 clusters, and 100 nodes in the same 20 clusters
    python bench/health.py --quick    # 200 and 20 nodes

What runs. ``clusters.features.health.health_sweep`` in this process, as a worker runs it from beat, over
clusters of the fake provider whose services are noop (so no SSH: the sweep is the provider listing, the
comparison and the recording). Clusters, nodes and their ``FakeMachine`` rows are bulk-inserted, every
machine running at the address its node records. Three sweeps per size, each with every cluster due:

* **first**: every node goes unknown → healthy (a change per node: the most the sweep writes);
* **steady**: nothing changed (what almost every sweep is);
* **1% missing**: 1 machine in 100 deleted out of band (missing nodes, drift, history, webhook events).

Printed per sweep: wall time, this process's CPU time (``time.process_time``: the worker's share), SQL
queries, and the provider listings made. The goal (issue 17): under 5 s of CPU for 1,000 nodes, and a query
count that does not grow with the nodes per provider, which the ratio column shows (1,000 nodes / 100 nodes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import catalog
from bench.workers import HarnessError, bench_environment, bench_tenant, parse_arguments, print_table

CLUSTERS = 20
NODES, QUICK_NODES = 1000, 200
CPU_GOAL_S = 5.0


@dataclass
class Sweep:
    wall_s: float
    cpu_s: float
    queries: int
    listings: int
    nodes: int


def seed(tenant: Any, owner: Any, *, prefix: str, clusters: int, per_cluster: int) -> list[Any]:
    """``clusters`` active clusters of ``per_cluster`` nodes, each node with a running fake machine."""
    from django.utils import timezone

    from clusters.models import Cluster, Node
    from clusters.services.lifecycle import cluster_create
    from clusters.services.preview import PreviewRequest
    from providers.drivers.base import TAG_CLUSTER, TAG_NODE
    from providers.models import FakeMachine, Provider
    from providers.services import provider_key

    model, _ = cluster_create(user=owner, tenant=tenant, request=PreviewRequest(f"{prefix}-model", "flat", 1))
    Cluster.objects.filter(pk=model.pk).update(status=Cluster.Status.TERMINATED)
    made = Cluster.objects.bulk_create(
        Cluster(tenant=tenant, owner=owner, name=f"{prefix}-{number:03d}", template_name=model.template_name,
                template_version=model.template_version, provider_name=model.provider_name,
                provider_version=model.provider_version, size=per_cluster, services=model.services,
                service_versions=model.service_versions, status=Cluster.Status.ACTIVE)
        for number in range(clusters)
    )  # fmt: skip
    nodes = Node.objects.bulk_create(
        (Node(cluster=cluster, number=1000 + n, hostname=f"{cluster.name}-{n}", hardware="small", image="debian",
              services=list(model.services), status=Node.Status.ACTIVE, machine_id=f"fake-{cluster.name}-{n}",
              ip_addresses={"access_v4": f"100.64.{i // 250}.{i % 250 + 1}"})
         for i, (cluster, n) in enumerate((c, n) for c in made for n in range(per_cluster))),
        batch_size=5000,
    )  # fmt: skip
    key = provider_key(provider=Provider.objects.get(tenant=tenant, name=model.provider_name))
    past = timezone.now() - timezone.timedelta(minutes=5)
    FakeMachine.objects.bulk_create(
        (FakeMachine(provider_key=key, machine_id=node.machine_id, name=node.hostname, client_token=node.node_key,
                     node_key=node.node_key, tags={TAG_CLUSTER: str(node.cluster_id), TAG_NODE: node.node_key},
                     created_at=past, ready_at=past, access_v4=node.ip_addresses["access_v4"])
         for node in nodes),
        batch_size=5000,
    )  # fmt: skip
    return made


def sweep(clusters: list[Any]) -> Sweep:
    from django.db import connection

    from clusters.features import health
    from clusters.models import Cluster
    from providers.drivers.fake import FakeDriver

    Cluster.objects.filter(pk__in=[c.pk for c in clusters]).update(health_due_at=None)
    queries = [0]
    listings = [0]
    real = FakeDriver.list_tagged

    def counted(self: Any) -> Any:
        listings[0] += 1
        return real(self)

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries[0] += 1
        return execute(sql, params, many, context)

    FakeDriver.list_tagged = counted  # type: ignore[method-assign]
    try:
        with connection.execute_wrapper(count):
            wall, cpu = time.perf_counter(), time.process_time()
            report = health.health_sweep()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        FakeDriver.list_tagged = real  # type: ignore[method-assign]
    if report.clusters != len(clusters):
        raise HarnessError(f"the sweep took {report.clusters} clusters, {len(clusters)} were due")
    return Sweep(wall, cpu, queries[0], listings[0], report.nodes)


def run(*, nodes: int) -> int:
    from django.utils import timezone

    from clusters.models import Cluster, Health, Node
    from providers.models import FakeMachine

    user, tenant = bench_tenant(name="health", workers=0, catalog=catalog())
    results: dict[int, dict[str, Sweep]] = {}
    for size in (nodes, nodes // 10):
        clusters = seed(tenant, user, prefix=f"n{size}", clusters=CLUSTERS, per_cluster=size // CLUSTERS)
        first = sweep(clusters)
        steady = sweep(clusters)
        live = Node.objects.filter(cluster__in=clusters).order_by("pk")
        gone = list(live.values_list("machine_id", flat=True)[::100])
        FakeMachine.objects.filter(machine_id__in=gone).update(deleted_at=timezone.now())
        missing = sweep(clusters)
        found = live.filter(health=Health.MISSING).count()
        if found != len(gone) or live.filter(health=Health.HEALTHY).count() != size - len(gone):
            raise HarnessError(f"{found} missing nodes found, {len(gone)} machines were deleted")
        Cluster.objects.filter(pk__in=[c.pk for c in clusters]).update(status=Cluster.Status.TERMINATED)
        results[size] = {"first (all change)": first, "steady (no change)": steady, "1% missing": missing}
    big, small = nodes, nodes // 10
    print(f"health sweep: {CLUSTERS} clusters on one fake provider, noop services (no SSH), in this process")
    print()
    rows = [["sweep", "nodes", "wall", "CPU", "queries", "listings", f"queries ×{big}/×{small} nodes"]]
    for name in results[big]:
        for size in (big, small):
            s = results[size][name]
            ratio = f"{s.queries / results[small][name].queries:.2f}" if size == big else ""
            rows.append([name, str(s.nodes), f"{s.wall_s:.2f} s", f"{s.cpu_s:.2f} s", str(s.queries),
                         str(s.listings), ratio])  # fmt: skip
    print_table(rows)
    worst = max(s.cpu_s for s in results[big].values())
    print()
    print(f"goal: under {CPU_GOAL_S:.0f} s of CPU for {big} nodes: worst {worst:.2f} s "
          f"({'met' if worst < CPU_GOAL_S else 'NOT met'})")  # fmt: skip
    return 0 if worst < CPU_GOAL_S else 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments("health", __doc__ or "", argv)
    try:
        with bench_environment(arguments):
            return run(nodes=QUICK_NODES if arguments.quick else NODES)
    except HarnessError as error:
        print(f"health: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
