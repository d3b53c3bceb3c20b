"""Every Celery task of ``clusters``, gathered for Celery's autodiscovery (``loom_site/celery.py``).

Each task is defined where its work lives and only forwarded here; nothing imports this module, so it can
import everything. Task names stay ``clusters.tasks.<name>``: beat's schedule and messages queued by an older
release keep working.

- ``task_run_task``, ``task_run_batch_task``: run engine tasks (``clusters/engine/dispatch.py``).
- ``engine_janitor``: lost workers, timeouts, lost messages (``clusters/engine/janitor.py``).
- ``provider_reaper``: machines no node owns (``clusters/engine/reaper.py``).
- ``webhook_delivery_send_task``, ``webhook_deliveries_resend_due_task``: (``clusters/features/webhooks.py``).
- ``lease_janitor``: lease warnings and expiry (``clusters/services/lease_expiry.py``).
- ``health_sweep_task``: health checks and auto-repair (``clusters/services/repair.py``), with
  ``cluster_health_check_task`` for one cluster's checks over SSH (``clusters/features/health.py``).
"""

from __future__ import annotations

from clusters.engine.dispatch import task_run_batch_task, task_run_task
from clusters.engine.janitor import engine_janitor
from clusters.engine.reaper import provider_reaper
from clusters.features.health import cluster_health_check_task
from clusters.features.webhooks import webhook_deliveries_resend_due_task, webhook_delivery_send_task
from clusters.services.lease_expiry import lease_janitor
from clusters.services.repair import health_sweep_task

__all__ = [
    "cluster_health_check_task",
    "engine_janitor",
    "health_sweep_task",
    "lease_janitor",
    "provider_reaper",
    "task_run_batch_task",
    "task_run_task",
    "webhook_deliveries_resend_due_task",
    "webhook_delivery_send_task",
]
