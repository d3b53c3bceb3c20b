"""The scheduled reaper: machines of live nodes are kept, a machine with no live node is reported, then
deleted after the grace period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from clusters.engine.reaper import reaper_run
from clusters.models import Node
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from providers.drivers import MachineSpec
from providers.models import Provider
from providers.services import provider_driver
from templates_app.services import catalog_import

from .engine_helpers import drive
from .workers import catalog, machines

pytestmark = pytest.mark.django_db


def test_the_reaper_keeps_live_nodes_machines_and_reaps_an_orphan_after_the_grace(tenant_a, admin_a, settings):
    settings.LOOM_REAPER_GRACE_SECONDS = 600
    catalog_import(tenant=tenant_a, user=None, data=catalog(boot_ms="0"))
    _, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("kept", "fleet", 2))
    drive(job)
    provider = Provider.objects.get(tenant=tenant_a, name="fakecloud")
    # A machine whose node row is gone (say, a create reply lost before a failed cluster was cleaned up by hand).
    stray = MachineSpec.for_node(cluster_key="c999-gone", node_key="gone-node", node_number=1, flavor="f1",
                                 image="deb12", ssh_user="root")  # fmt: skip
    orphan = provider_driver(provider=provider).create(stray).machine_id

    (first,) = reaper_run()
    assert [o.machine_id for o in first.orphans] == [orphan] and first.waiting == (orphan,) and not first.deleted
    later = timezone.now() + timedelta(seconds=601)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("clusters.engine.reaper.timezone.now", lambda: later)
        (second,) = reaper_run()
    assert second.deleted == (orphan,)
    live = machines(provider).filter(deleted_at__isnull=True)
    assert set(live.values_list("node_key", flat=True)) == set(Node.objects.values_list("node_key", flat=True))
