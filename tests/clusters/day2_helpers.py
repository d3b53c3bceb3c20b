"""A small catalog for day-2 tests (template ``stack``) and a cluster made active by playing its create job."""

from __future__ import annotations

from typing import Any

from clusters.models import Cluster, Job, Node
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from tenants.models import Tenant

from .engine_helpers import run_by_hand


def stack_catalog(*, boot_ms: str = "50", config: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """Template ``stack``: one db, one lb (never together), web and base on every node; ``cache`` may be added
    (at most one node). web needs db at runtime, lb needs web: stop/start pull each other in."""
    action = {"type": "noop", "fields": {"latency_ms": "1"}}
    full = {name: action for name in ("install", "configure", "initialize", "start", "stop", "remove")}
    return {
        "providers": [{"name": "fakecloud", "providertype": "fake",
                       "provisioner": {"latency_ms": boot_ms, "failure_rate": "0", "call_latency_ms": "1"}}],
        "hardwaretypes": [{"name": "small", "providermap": {"fakecloud": {"flavor": "f1", "cost": "0.5"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"fakecloud": {"image": "deb12", "sshuser": "loom"}}}],
        "services": [
            {"name": "base", "dependencies": {}, "provisioner": {"actions": {"install": action, "configure": action}}},
            {"name": "db", "dependencies": {}, "provisioner": {"actions": full}},
            {"name": "web", "dependencies": {"runtime": {"requires": ["db"]}}, "provisioner": {"actions": full}},
            {"name": "lb", "dependencies": {"runtime": {"requires": ["web"]}}, "provisioner": {"actions": full}},
            {"name": "cache", "dependencies": {}, "provisioner": {"actions": full}},
        ],
        "clustertemplates": [
            {"name": "stack", "description": "a web stack",
             "defaults": {"services": ["base", "db", "web", "lb"], "provider": "fakecloud", "hardwaretype": "small",
                          "imagetype": "debian",
                          "config": config if config is not None else {"db": "%host.service.db%", "tier": "gold"}},
             "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"],
                               "services": ["base", "db", "web", "lb", "cache"]},
             "constraints": {"layout": {"mustcoexist": [], "cantcoexist": [["db", "lb"]]},
                             "services": {"db": {"quantities": {"min": 1, "max": 1}},
                                          "lb": {"quantities": {"min": 1, "max": 1}},
                                          "cache": {"quantities": {"max": 1}}}}},
        ],
    }  # fmt: skip


def active_cluster(user: Any, tenant: Tenant, size: int = 3, name: str = "shop") -> Cluster:
    """A created cluster whose create job was played to the end, its nodes marked as having machines."""
    cluster, job = cluster_create(user=user, tenant=tenant, request=PreviewRequest(name, "stack", size))
    assert run_by_hand(job).status == Job.Status.COMPLETED
    for node in Node.objects.filter(cluster=cluster):
        Node.objects.filter(pk=node.pk).update(
            status=Node.Status.ACTIVE, ip_addresses={"bind_v4": f"10.0.0.{node.number - 999}"}
        )
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    return cluster
