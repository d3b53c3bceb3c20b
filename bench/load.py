"""Many users at once on the production layout: latency per endpoint with 10,000 clusters in the database.

    python bench/load.py             # 10,000 clusters, 50,000 nodes, 50 users for 60 s: about three minutes
    python bench/load.py --quick     # 500 clusters, 10 users for 15 s, to check that it works
    python bench/load.py --users 100 --seconds 120 --clusters 10000

What runs. ``bench/deployment.py`` starts Loom as production runs it (gunicorn web from ``deploy/loom-serve``
with ``LOOM_WEB_PROCESSES`` processes of 4 threads, a worker of 8 threads and beat) on a private PostgreSQL
and Redis. The demo tenant gets ``--clusters`` clusters of 5 nodes each (``bench/seed.py``), then locust
(from PyPI, in a virtualenv of its own, ``.venv-locust``, made on the first run) runs ``bench/locustfile.py``
headless: ``--users`` users, each waiting 0.5-1.5 s between requests, browse the clusters list and cluster
pages, poll live progress, read the API and create and delete 3-node clusters on the simulated cloud.

Printed: requests, failures, p50/p95/p99 and the mean per endpoint, from locust's own statistics, and the
goal (p95 ≤ 100 ms for pages and API reads, no failures) met or not. Everything runs on this machine:
the load generator competes with the server for the same cores, so the figures are an upper bound.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.deployment import PrivateDeployment
from bench.workers import print_table

ROOT = Path(__file__).resolve().parent.parent
LOCUST_VENV = ROOT / ".venv-locust"
LOCUST = "locust==2.47.0"
GOAL_MS = 100

_SEED = """
from django.contrib.auth import get_user_model
from bench.seed import grow_clusters
from clusters.models import Cluster
from templates_app.models import CatalogVersion
from tenants.models import Tenant
tenant = Tenant.objects.get(name="demo")
owner = get_user_model().objects.get(username="admin")
version = lambda kind, name: CatalogVersion.objects.filter(tenant=tenant, kind=kind, name=name).latest("pk")
model = Cluster(template_name="demo-web", template_version=version("clustertemplates", "demo-web"),
                provider_name="demo-cloud", provider_version=version("providers", "demo-cloud"),
                services=["demo-nginx", "demo-webapp"])
grow_clusters(tenant, owner, model, {clusters})
from django.db import connection
with connection.cursor() as cursor:  # what autovacuum would do after such an insert, before the load starts
    cursor.execute("ANALYZE")
first = Cluster.objects.filter(tenant=tenant).order_by("pk").values_list("pk", flat=True).first()
print(first)
"""


def locust_binary() -> Path:
    binary = LOCUST_VENV / "bin" / "locust"
    if not binary.exists():
        venv.create(LOCUST_VENV, with_pip=True)
        subprocess.run([str(LOCUST_VENV / "bin" / "pip"), "install", "-q", LOCUST], check=True)
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 clusters, 10 users, 15 s")
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--web-processes", type=int, default=2)
    arguments = parser.parse_args(argv)
    clusters, users, seconds = (
        (500, 10, 15) if arguments.quick else (arguments.clusters, arguments.users, arguments.seconds)
    )
    locust = locust_binary()
    work = Path(tempfile.mkdtemp(prefix="loom-load-"))
    env = {"LOOM_WEB_PROCESSES": str(arguments.web_processes), "LOOM_WORKER_CONCURRENCY": "8"}
    with PrivateDeployment(work / "deployment", env=env) as deployment:
        first = int(deployment.shell(_SEED.format(clusters=int(clusters))).split()[-1])
        load_env = {
            **os.environ,
            "LOAD_TOKEN": deployment.token,
            "LOAD_PASSWORD": deployment.environment()["LOOM_DEMO_ADMIN_PASSWORD"],
            "LOAD_FIRST": str(first),
            "LOAD_CLUSTERS": str(clusters),
        }
        command = [str(locust), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "--host", deployment.base,
                   "-u", str(users), "-r", str(max(1, users // 5)), "-t", f"{seconds}s", "--csv", str(work / "load"),
                   "--only-summary", "--loglevel", "WARNING"]  # fmt: skip
        done = subprocess.run(command, env=load_env, capture_output=True, text=True, timeout=seconds + 300)
        if done.returncode not in (0, 1):  # 1: some requests failed, which the table shows
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            return 1
        rows_in = list(csv.DictReader((work / "load_stats.csv").open()))
    print(f"{clusters:,} clusters ({clusters * 5:,} nodes), {users} users for {seconds} s, "
          f"gunicorn {arguments.web_processes}x4 threads, on {os.cpu_count()} cores shared with the load")  # fmt: skip
    rows = [["endpoint", "requests", "failures", "p50", "p95", "p99", "mean", f"p95 ≤ {GOAL_MS} ms"]]
    met = True
    for row in rows_in:
        name = row["Name"]
        if name == "login":
            continue
        p95 = float(row["95%"])
        read = name != "Aggregated" and not any(verb in name for verb in ("POST", "DELETE"))
        ok = p95 <= GOAL_MS and int(row["Failure Count"]) == 0
        if read:
            met = met and ok
        rows.append([f"{row['Type']} {name}".strip(), row["Request Count"], row["Failure Count"], f"{row['50%']} ms",
                     f"{row['95%']} ms", f"{row['99%']} ms", f"{float(row['Average Response Time']):.0f} ms",
                     ("yes" if ok else "NO") if read else "-"])  # fmt: skip
    print_table(rows)
    print(f"goal (pages and API reads p95 ≤ {GOAL_MS} ms, no failures): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
