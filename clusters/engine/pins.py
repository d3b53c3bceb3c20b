"""What a cluster pinned: the catalog versions of its services.

A cluster runs the service definitions it was created with, not whatever the catalog holds when a task
happens to run: an admin editing ``nginx`` mid-create must not give half the nodes the old install script
and half the new one. ``Cluster.service_versions`` maps each service to the version current at create
(day-2 operations pin the services they add); services without a pin (clusters made before pinning) fall
back to the live catalog.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Q

from clusters.models import Cluster
from templates_app.models import CatalogVersion, Service


def current_service_versions(tenant_id: int, names: Iterable[str]) -> dict[str, int]:
    """The live catalog version of each named service (what a new cluster pins)."""
    return dict(Service.objects.filter(tenant_id=tenant_id, name__in=list(names)).values_list("name", "version"))


_PINNED_CACHE_SIZE = 2048
_pinned: dict[tuple[int, str, int], dict[str, Any]] = {}


def pinned_service_documents(cluster: Cluster, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The canonical documents of ``names`` as the cluster pinned them; one query for pinned ones not seen
    yet, one for the rest. A name with no document at all (deleted from the catalog and never pinned) is
    left out.

    Pinned versions never change, so a worker keeps the documents it has read (a bounded per-process cache):
    every service task of a 1,000-node cluster would otherwise read the same few rows again. Callers must
    not modify the returned documents."""
    names = list(dict.fromkeys(names))
    pins = {name: cluster.service_versions[name] for name in names if name in cluster.service_versions}
    documents: dict[str, dict[str, Any]] = {}
    missing = {}
    for name, version in pins.items():
        cached = _pinned.get((cluster.tenant_id, name, version))
        if cached is None:
            missing[name] = version
        else:
            documents[name] = cached
    if missing:
        condition = Q()
        for name, version in missing.items():
            condition |= Q(name=name, version=version)
        versions = CatalogVersion.objects.filter(condition, tenant_id=cluster.tenant_id, kind="services")
        for name, version, document in versions.values_list("name", "version", "document"):
            if len(_pinned) >= _PINNED_CACHE_SIZE:
                _pinned.clear()
            _pinned[(cluster.tenant_id, name, version)] = document
            documents[name] = document
    unpinned = [name for name in names if name not in documents]
    if unpinned:
        live = Service.objects.filter(tenant_id=cluster.tenant_id, name__in=unpinned)
        documents.update(live.values_list("name", "document"))
    return documents
