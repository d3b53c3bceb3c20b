"""The embedded mode's database for the engine's SQLite code paths (``scripts/test`` runs
tests/clusters/test_engine_db.py once more with these settings). Everything else is tested on PostgreSQL."""

from tests.settings import *  # noqa: F403
from tests.settings import DATA_DIR

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "loom.sqlite3"),
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        "TEST": {"NAME": str(DATA_DIR / "loom-test.sqlite3")},
    }
}
