"""The orphan reaper's schedule: which providers to scan and what counts as a live node.

It lives in ``clusters`` because "live" is a fact about nodes; ``providers.services.reaper_scan`` does
the scan itself and knows nothing about clusters. Beat runs it through ``provider_reaper`` below.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from clusters.models import Node
from providers.drivers import DRIVERS, DriverError
from providers.models import Provider
from providers.services import ReaperReport, reaper_scan

logger = logging.getLogger(__name__)


def reaper_run() -> list[ReaperReport]:
    """Scan every provider whose type has a driver. A node is live unless it is deleted: a node whose
    create is still running counts as live, so its machine is never reaped from under it (and the grace
    period covers a machine made before its node row was read). One failing provider does not stop the
    others; it is logged and scanned again next time."""
    reports: list[ReaperReport] = []
    for provider in Provider.objects.filter(provider_type__in=list(DRIVERS)).order_by("pk"):
        live = set(
            Node.objects.filter(cluster__tenant_id=provider.tenant_id)
            .exclude(status=Node.Status.DELETED)
            .values_list("node_key", flat=True)
        )
        try:
            report = reaper_scan(
                provider=provider,
                live_node_keys=live,
                grace_seconds=settings.LOOM_REAPER_GRACE_SECONDS,
                now=timezone.now(),
            )
        except DriverError as error:
            logger.warning("reaper could not list provider %s: %s", provider.pk, error, extra={"provider": provider.pk})
            continue
        reports.append(report)
        if report.orphans:
            logger.warning(
                "reaper found orphaned machines",
                extra={"provider": provider.pk, "orphans": len(report.orphans), "deleted": list(report.deleted)},
            )
    return reports


@shared_task(name="clusters.tasks.provider_reaper", ignore_result=True)
def provider_reaper() -> dict[str, int]:
    """Beat entry point of ``reaper_run``; returns counts for the worker log."""
    reports = reaper_run()
    return {
        "providers": len(reports),
        "orphans": sum(len(r.orphans) for r in reports),
        "deleted": sum(len(r.deleted) for r in reports),
    }
