"""The Celery application.

Workers and beat load Django settings with the ``CELERY_`` namespace. Celery's Django fix-up reads
``CELERY_DB_REUSE_MAX`` under its old upper-case name only, so it is copied over explicitly: without it
the fix-up closes the database connection around every task (lab notes: ~350 → ~100 tasks/s).

The ``filesystem`` transport (the embedded mode's broker) is Loom's own, atomic variant
(``loom_site/filesystem_broker.py``), registered before anything connects.
"""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

TRANSPORT_ALIASES["filesystem"] = "loom_site.filesystem_broker:Transport"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loom_site.settings")

app = Celery("loom_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _copy_db_reuse_max(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    sender.conf.CELERY_DB_REUSE_MAX = settings.CELERY_DB_REUSE_MAX
