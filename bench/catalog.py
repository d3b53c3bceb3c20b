"""Catalog benchmarks, measured side by side in one run.

    python bench/catalog.py                    # SQLite in a temporary folder
    LOOM_DATABASE_URL=postgres://postgres@127.0.0.1:5432/loom_bench python bench/catalog.py

Prints, for catalogs of growing size: the time of one validated template save (which loads the whole
catalog view and checks the entities the change touches) and of a whole validated import, and the cost of
the tenant + guardian restriction on a catalog list compared with a bare tenant filter. Ratios, not
absolute numbers, are what to compare between machines.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LOOM_DATA_DIR", tempfile.mkdtemp(prefix="loom-bench-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loom_site.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from templates_app.models import Service  # noqa: E402
from templates_app.services import catalog_entity_save, catalog_import  # noqa: E402
from tenants.models import Membership, Role, Tenant  # noqa: E402


def timed(function: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def synthetic_catalog(services: int, templates: int) -> dict[str, list[dict]]:
    """Services in groups of five, each requiring its group's first; a template deploys one group."""
    service_docs = [
        {
            "name": f"svc-{i}",
            "dependencies": {"install": {"requires": [f"svc-{i - i % 5}"] if i % 5 else []}},
            "provisioner": {"actions": {"install": {"type": "shell", "fields": {"script": "install.sh"}}}},
        }
        for i in range(services)
    ]
    template_docs = []
    for t in range(templates):
        first = (t * 5) % services
        window = [f"svc-{i}" for i in range(first, min(first + 5, services))]
        template_docs.append(
            {
                "name": f"tpl-{t}",
                "compatibility": {"services": window, "hardwaretypes": ["small"]},
                "defaults": {
                    "services": window,
                    "provider": "fake",
                    "config": {"peers": f"%host.service.{window[-1]}%"},
                },
                "constraints": {"size": {"min": 1, "max": 100}, "services": {window[-1]: {"quantities": {"min": 1}}}},
            }
        )
    return {
        "providers": [{"name": "fake", "providertype": "fake", "provisioner": {}}],
        "hardwaretypes": [{"name": "small", "providermap": {"fake": {"flavor": "s", "cost": "0.01"}}}],
        "imagetypes": [{"name": "linux", "providermap": {"fake": {"image": "l"}}}],
        "services": service_docs,
        "clustertemplates": template_docs,
    }


def measure(size: int, user: object) -> tuple[int, float, float, float, float]:
    """(templates, import ms, save ms, restricted list ms, bare list ms) for a catalog of ``size`` services."""
    tenant = Tenant.objects.create(name=f"bench-{size}")
    Membership.objects.create(user=user, tenant=tenant, role=Role.USER)
    data = synthetic_catalog(size, max(2, size // 5))
    start = time.perf_counter()
    catalog_import(tenant=tenant, user=None, data=data)
    import_ms = (time.perf_counter() - start) * 1000
    template = dict(data["clustertemplates"][0])
    edits = iter(range(10_000))

    def save() -> None:
        body = {**template, "description": f"edit {next(edits)}"}
        catalog_entity_save(tenant=tenant, user=None, kind_key="clustertemplates", name=template["name"], data=body)

    save_ms = timed(save)
    restricted = timed(lambda: list(Service.objects.restrict(user, "view").filter(tenant=tenant)[:50]), 9)
    bare = timed(lambda: list(Service.objects.filter(tenant=tenant)[:50]), 9)
    return len(data["clustertemplates"]), import_ms, save_ms, restricted, bare


def main() -> None:
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench-user")
    print(f"database: {django.db.connection.vendor}")
    header = ("services", "templates", "import ms", "save ms", "save/10", "list ms", "bare ms", "ratio")
    print(" ".join(f"{h:>9}" for h in header))
    baseline = None
    for size in (10, 100, 1000):
        templates, import_ms, save_ms, restricted, bare = measure(size, user)
        baseline = baseline or save_ms
        row = (size, templates, f"{import_ms:.1f}", f"{save_ms:.1f}", f"{save_ms / baseline:.2f}",
               f"{restricted:.2f}", f"{bare:.2f}", f"{restricted / bare:.2f}")  # fmt: skip
        print(" ".join(f"{value:>9}" for value in row))


if __name__ == "__main__":
    main()
