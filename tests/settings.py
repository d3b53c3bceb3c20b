"""Test settings: PostgreSQL (a real server, never SQLite), a throwaway data folder, fast hashing."""

import os
import tempfile

os.environ.setdefault("LOOM_DATA_DIR", tempfile.mkdtemp(prefix="loom-test-"))
os.environ.setdefault("LOOM_DEBUG", "false")

from loom_site.settings import *  # noqa: F403
from loom_site.settings import env

DATABASES = {"default": env.db_url("LOOM_TEST_DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/loom")}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = True
# Tests change budgets and dispatch at once; production caches the budget for a few seconds.
LOOM_BUDGET_CACHE_SECONDS = 0
LOOM_INLINE_WAIT_SECONDS = 0  # in-process tests see every "still booting" as a release; one test turns it on
# The egress policy (providers/egress.py) refuses loopback and private ranges by default; the suite's own
# receivers (127.0.0.0/8) and lab hosts (10.0.0.0/8 bridges) are allow-listed here, explicitly. The database,
# broker and cache endpoints stay refused whatever is allowed. tests/security sets the production default.
LOOM_EGRESS_ALLOW_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8"]

# The suite calls the API far faster than any person: throttles out of the way except where
# tests/security/test_abuse.py sets low rates on purpose.
LOOM_API_RATE_USER = "1000000/min"
LOOM_API_RATE_ANON = "1000000/min"
