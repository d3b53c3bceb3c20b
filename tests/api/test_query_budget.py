"""A query budget per request, as NetBox keeps one: the SQL statements a list or detail request runs do not
grow with the installation (issue 16). Tenant A's clusters are grown from 100 to 10,000 (5 nodes and a job
each, 50,000 nodes in all), and every endpoint a user browses or polls must run the same number of queries
at both sizes, within its budget. A query added per row (an N+1) or per cluster in the tenant fails here
long before a load test would show it.

The rows are bulk-inserted (``bench/seed.py``) with the catalog references of a cluster made the ordinary
way, so the pages and serializers see real data: statuses vary, every cluster has nodes and a finished job.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from bench.seed import grow_clusters
from clusters.models import Cluster, Job, Node
from tests.clusters.engine_helpers import make_cluster

pytestmark = pytest.mark.django_db

NODES = 5
SIZES = (100, 10_000)
# Queries per request, at any size: what a request costs today (2026-12-07) plus 2. Raising one needs a reason.
# (The home page lists the catalog's templates; how its count grows with the catalog is not measured here.)
BUDGET = {
    "api clusters list": 7,
    "api cluster detail": 9,
    "api cluster nodes": 7,
    "api cluster jobs": 8,
    "api job detail": 6,
    "page clusters list": 11,
    "page cluster": 16,
    "page cluster live": 14,
    "page home": 28,
}


def measure(api: Any, page: Client, cluster: Cluster, job: Job) -> dict[str, int]:
    calls = {
        "api clusters list": lambda: api.get("/api/v2/clusters"),
        "api cluster detail": lambda: api.get(f"/api/v2/clusters/{cluster.pk}"),
        "api cluster nodes": lambda: api.get(f"/api/v2/clusters/{cluster.pk}/nodes"),
        "api cluster jobs": lambda: api.get(f"/api/v2/clusters/{cluster.pk}/jobs"),
        "api job detail": lambda: api.get(f"/api/v2/jobs/{job.pk}"),
        "page clusters list": lambda: page.get("/clusters/"),
        "page cluster": lambda: page.get(f"/clusters/{cluster.pk}/"),
        "page cluster live": lambda: page.get(f"/clusters/{cluster.pk}/live/"),
        "page home": lambda: page.get("/"),
    }
    counts = {}
    for name, call in calls.items():
        call()  # warm what is cached per process (budgets, pinned documents), as a running server has
        with CaptureQueriesContext(connection) as queries:
            response = call()
        assert response.status_code == 200, f"{name}: {response.status_code}"
        counts[name] = len(queries)
    return counts


def test_queries_per_request_do_not_grow_from_100_to_10000_clusters(tenant_a, admin_a, catalog_a, client_for):
    api = client_for(admin_a, tenant_a.name)
    page = Client()
    page.force_login(admin_a)
    template = make_cluster(tenant_a, admin_a, name="model")
    template.delete()
    measured = {}
    for size in SIZES:
        grow_clusters(tenant_a, admin_a, template, size, nodes=NODES)
        cluster = Cluster.objects.filter(tenant=tenant_a, status=Cluster.Status.ACTIVE).order_by("pk").first()
        job = Job.objects.filter(cluster=cluster).get()
        measured[size] = measure(api, page, cluster, job)
    small, large = measured[SIZES[0]], measured[SIZES[-1]]
    assert Node.objects.filter(cluster__tenant=tenant_a).count() == SIZES[-1] * NODES
    grew = {name: (small[name], large[name]) for name in small if large[name] != small[name]}
    assert not grew, f"queries per request grew with the clusters (at {SIZES[0]}, at {SIZES[-1]}): {grew}"
    over = {name: (count, BUDGET[name]) for name, count in large.items() if count > BUDGET[name]}
    assert not over, f"over budget (queries, budget): {over}"
