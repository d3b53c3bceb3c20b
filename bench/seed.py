"""Bulk rows for scale tests and benchmarks: a tenant's clusters grown to a given count, each with nodes and a
finished job, as bulk-inserted copies of one cluster's catalog references (so pages and serializers see real,
consistent data without running 10,000 creates). Used by ``tests/api/test_query_budget.py`` and
``bench/load.py``."""

from __future__ import annotations

import itertools
from typing import Any

from clusters.models import Cluster, Job, Node

STATUSES = (Cluster.Status.ACTIVE, Cluster.Status.ACTIVE, Cluster.Status.INCOMPLETE, Cluster.Status.TERMINATED)


def grow_clusters(tenant: Any, owner: Any, model: Cluster, upto: int, *, nodes: int = 5) -> int:
    """Insert copies of ``model`` (unsaved is fine: only its catalog fields are read) until ``tenant`` has
    ``upto`` clusters, each with ``nodes`` active nodes and a completed create job; returns how many were
    added. Statuses cycle through ``STATUSES``, so lists mix live and ended clusters."""
    have = Cluster.objects.filter(tenant=tenant).count()
    statuses = itertools.cycle(STATUSES)
    made = Cluster.objects.bulk_create(
        (Cluster(tenant=tenant, owner=owner, name=f"c{number:05d}", template_name=model.template_name,
                 template_version=model.template_version, provider_name=model.provider_name,
                 provider_version=model.provider_version, size=nodes, services=model.services,
                 status=next(statuses))
         for number in range(have, upto)),
        batch_size=2000,
    )  # fmt: skip
    Node.objects.bulk_create(
        (Node(cluster=cluster, number=n, hostname=f"{cluster.name}-{n}.example.com", hardware="small", image="debian",
              services=["apache", "php"], status=Node.Status.ACTIVE, machine_id=f"m-{cluster.name}-{n}")
         for cluster in made for n in range(1, nodes + 1)),
        batch_size=5000,
    )  # fmt: skip
    Job.objects.bulk_create(
        (Job(cluster=cluster, operation="create", status=Job.Status.COMPLETED) for cluster in made), batch_size=5000
    )
    return len(made)
