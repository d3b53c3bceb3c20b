"""Settings for a real Celery worker started by a test: the test database pytest-django created, a real broker.

``LOOM_WORKER_DATABASE_URL`` names that database (its name is only known once pytest-django made it) and
``LOOM_BROKER_URL`` the broker (read by ``loom_site.settings``). Tasks are never eager here: the worker must
publish what became ready to the broker like a production worker.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import env

DATABASES = {"default": env.db_url_config(os.environ["LOOM_WORKER_DATABASE_URL"])}
DATABASES["default"]["CONN_MAX_AGE"] = 60
CELERY_TASK_ALWAYS_EAGER = False
