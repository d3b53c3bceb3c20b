"""Loom settings, all read from ``LOOM_*`` environment variables.

Defaults are for development and the embedded mode (SQLite + Celery's filesystem broker in a local data
folder). Nothing secret is hard-coded: when ``LOOM_SECRET_KEY`` or ``LOOM_FIELD_ENCRYPTION_KEYS`` is unset,
a random key is generated once and kept in the data folder (mode 0600), so a restart keeps sessions and
can still decrypt stored secrets. Production sets them explicitly. Every knob is listed in docs/configuration.md.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DATA_DIR = Path(env.str("LOOM_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _persisted_secret(filename: str, make: callable) -> str:  # type: ignore[valid-type]
    """Return the secret kept in ``DATA_DIR/filename``, creating it (0600) on first use."""
    path = DATA_DIR / filename
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


DEBUG = env.bool("LOOM_DEBUG", default=False)
SECRET_KEY = env.str("LOOM_SECRET_KEY", default="") or _persisted_secret(
    "secret_key", lambda: secrets.token_urlsafe(50)
)
# Comma-separated Fernet keys; the first encrypts, all decrypt (MultiFernet), so keys rotate by
# prepending a new one and running ``manage.py rotate_field_keys``. Deliberately separate from SECRET_KEY.
FIELD_ENCRYPTION_KEYS = env.list("LOOM_FIELD_ENCRYPTION_KEYS", default=[]) or [
    _persisted_secret("field_encryption_key", lambda: Fernet.generate_key().decode())
]
ALLOWED_HOSTS = env.list("LOOM_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("LOOM_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_celery_results",
    "axes",
    "tenants",
    "templates_app",
    "providers",
    "clusters",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "loom_site.input_guards.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Single sign-on sessions go past the identity provider again every LOOM_OIDC_RENEW_SECONDS (tenants/sso.py).
    "tenants.sso.SessionRefresh",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into loom_site.abuse.locked_out's 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "loom_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.sso.sign_in_options",
            ],
        },
    },
]

WSGI_APPLICATION = "loom_site.wsgi.application"

DATABASES = {"default": env.db_url("LOOM_DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'loom.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded mode runs web, worker and beat against one SQLite file: wait for locks instead of
    # failing at once, and take the write lock at BEGIN so concurrent writers queue up cleanly (a deferred
    # transaction that reads, then writes, gets "database is locked" at once, without waiting). WAL lets
    # readers (pages polling progress, the janitor) and the one writer proceed without blocking each
    # other; with the default rollback journal every commit waits for open reads to end (a commit's median
    # latency under two concurrent readers: 12 ms with the rollback journal, 0.3 ms with WAL). The mode is
    # stored in the file, so setting it on each new connection costs nothing after the first.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL"}
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("LOOM_DB_CONN_MAX_AGE", default=60)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username and address before any password is checked (loom_site/abuse.py).
    "axes.backends.AxesStandaloneBackend",
    # Username and password, unless LOOM_PASSWORD_LOGIN turns it off (tenants/sso.py).
    "tenants.sso.PasswordBackend",
    # OpenID Connect single sign-on, when LOOM_OIDC_ISSUER is set; answers only its own callback.
    "tenants.sso.SingleSignOnBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous requests see nothing

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

# Single sign-on with OpenID Connect (tenants/sso.py, tenants/identity.py). Setting LOOM_OIDC_ISSUER turns it
# on; the endpoints come from the issuer's discovery document. Register Loom at the provider with the
# redirect URI https://<loom>/oidc/callback/. The groups claim maps to memberships at every sign-in:
# "<prefix>:<tenant>:admin" or "<prefix>:<tenant>:user".
LOOM_OIDC_ISSUER = env.str("LOOM_OIDC_ISSUER", default="").rstrip("/")
LOOM_OIDC_NAME = env.str("LOOM_OIDC_NAME", default="single sign-on")  # the button says "Sign in with <name>"
LOOM_OIDC_GROUPS_CLAIM = env.str("LOOM_OIDC_GROUPS_CLAIM", default="groups")
LOOM_OIDC_GROUP_PREFIX = env.str("LOOM_OIDC_GROUP_PREFIX", default="loom")
LOOM_OIDC_USERNAME_CLAIM = env.str("LOOM_OIDC_USERNAME_CLAIM", default="preferred_username")
# on: passwords work; off: only single sign-on; superusers: a password only for Loom's superusers (break-glass).
LOOM_PASSWORD_LOGIN = env.str("LOOM_PASSWORD_LOGIN", default="on")
# What mozilla-django-oidc reads (it wants these names).
OIDC_RP_CLIENT_ID = env.str("LOOM_OIDC_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("LOOM_OIDC_CLIENT_SECRET", default="")
OIDC_RP_SCOPES = env.str("LOOM_OIDC_SCOPES", default="openid email profile groups")
OIDC_RP_SIGN_ALGO = env.str("LOOM_OIDC_SIGN_ALGO", default="RS256")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = env.int("LOOM_OIDC_TIMEOUT_SECONDS", default=10)
OIDC_VERIFY_SSL = env.bool("LOOM_OIDC_VERIFY_TLS", default=True)
# A single sign-on session re-applies the groups claim this often (a silent round trip to the provider).
OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS = env.int("LOOM_OIDC_RENEW_SECONDS", default=900)
OIDC_REDIRECT_REQUIRE_HTTPS = False  # "next" must stay on this host either way; HTTPS is the proxy's concern
LOGIN_REDIRECT_URL_FAILURE = "/login/"


def _check_sign_in_settings() -> None:
    """Refuse at start-up what would fail at the first sign-in or lock everyone out."""
    modes = ("on", "off", "superusers")
    if LOOM_PASSWORD_LOGIN not in modes:
        raise ImproperlyConfigured(f"LOOM_PASSWORD_LOGIN must be one of {', '.join(modes)}: {LOOM_PASSWORD_LOGIN!r}")
    if LOOM_PASSWORD_LOGIN == "off" and not LOOM_OIDC_ISSUER:
        raise ImproperlyConfigured(
            "LOOM_PASSWORD_LOGIN=off needs LOOM_OIDC_ISSUER, or nobody could sign in "
            "(LOOM_PASSWORD_LOGIN=superusers keeps a password for Loom's superusers only)"
        )
    if not LOOM_OIDC_ISSUER:
        return
    issuer = urlsplit(LOOM_OIDC_ISSUER)
    if issuer.scheme not in ("https", "http") or not issuer.hostname:
        raise ImproperlyConfigured(f"LOOM_OIDC_ISSUER must be an https:// URL, not {LOOM_OIDC_ISSUER!r}")
    if issuer.scheme == "http" and issuer.hostname not in ("localhost", "127.0.0.1", "::1"):
        # Codes and tokens would cross the network in the clear.
        raise ImproperlyConfigured(f"LOOM_OIDC_ISSUER must use https:// (http only on this host): {issuer.netloc}")
    if not OIDC_RP_CLIENT_ID:
        raise ImproperlyConfigured("LOOM_OIDC_ISSUER is set, so LOOM_OIDC_CLIENT_ID must be too")


_check_sign_in_settings()

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env.bool("LOOM_SECURE_COOKIES", default=False)
# Behind a reverse proxy that terminates HTTPS (deploy/nginx.conf), trust its X-Forwarded-Proto header so
# Django knows the request was secure (secure cookies, absolute URLs, CSRF origin checks). Only set it when
# such a proxy always sets the header: a client could otherwise claim HTTPS itself.
if env.bool("LOOM_BEHIND_HTTPS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if SESSION_COOKIE_SECURE:
    # Served over HTTPS only: browsers remember it (HSTS) and never try plain HTTP for this host again.
    SECURE_HSTS_SECONDS = env.int("LOOM_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("LOOM_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy on every response (pages, admin, API docs): scripts only from Loom's own static
# files, so injected markup cannot run script. Styles may be inline (the admin and ReDoc use style
# attributes; a style cannot run code). ReDoc renders in a blob: worker.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Sign-in lockout (django-axes; loom_site/abuse.py): per username and client address, on every sign-in form.
AXES_FAILURE_LIMIT = env.int("LOOM_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOOM_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "loom_site.abuse.locked_out"
AXES_CLIENT_IP_CALLABLE = "loom_site.abuse.client_address"
AXES_VERBOSE = False
AXES_SENSITIVE_PARAMETERS = ["password"]

# Shared by every process of a deployment: the API throttles' counters (loom_site/abuse.py). The embedded
# mode keeps them in files in the data folder; a deployment with Redis points LOOM_CACHE_URL at it.
CACHES = {"default": env.cache_url("LOOM_CACHE_URL", default=f"filecache://{DATA_DIR / 'cache'}")}
LOOM_API_RATE_USER = env.str("LOOM_API_RATE_USER", default="1200/min")
LOOM_API_RATE_ANON = env.str("LOOM_API_RATE_ANON", default="60/min")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "loom_site.input_guards.StrictJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "loom_site.api.LoomPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "loom_site.api.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["loom_site.abuse.UserThrottle", "loom_site.abuse.AnonThrottle"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Loom API",
    "DESCRIPTION": "Self-service cluster provisioning: catalog, tenants and clusters.",
    "VERSION": "2.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Serve Swagger UI and ReDoc from our own static files: Loom often runs where no CDN is reachable.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Stable names for enums whose auto-generated names ("StatusEnum") would collide across apps.
    "ENUM_NAME_OVERRIDES": {
        "WebhookEventEnum": "clusters.features.webhooks.EVENTS",
        "WebhookDeliveryStatusEnum": "clusters.models.WebhookDelivery.Status",
        "ClusterStatusEnum": "clusters.models.Cluster.Status",
        "NodeStatusEnum": "clusters.models.Node.Status",
        "JobStatusEnum": "clusters.models.Job.Status",
        "TaskStatusEnum": "clusters.models.Task.Status",
        "HealthEnum": "clusters.models.Health",
    },
}

# --- Celery -------------------------------------------------------------------------------------
BROKER_DIR = DATA_DIR / "broker"
for _sub in ("queue", "control", "processed"):
    (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)

# "localhost" means nothing to the filesystem transport; without a host kombu warns "No hostname was
# supplied" in every process that connects, which reads like a fault in the embedded mode's output.
CELERY_BROKER_URL = env.str("LOOM_BROKER_URL", default="filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Absolute folders, the same for in and out, and fast polling (lab notes: the 1 s default adds a
    # second of latency to every hop).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_DB_REUSE_MAX = env.int("LOOM_CELERY_DB_REUSE_MAX", default=1000)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# After a reconnect Celery lowers the prefetch count and raises it again from each task's acknowledgement,
# which on the thread pool runs in a task's thread: on RabbitMQ that thread then sends basic.qos on the
# consumer's channel and reads the consumer's frames itself (py-amqp is not thread-safe), and the worker
# stops receiving for good (tests/clusters/test_broker_faults.py caught it). The claim makes a full
# prefetch after a reconnect harmless, so the reduction is off.
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_TASK_ALWAYS_EAGER = env.bool("LOOM_CELERY_EAGER", default=False)

# --- Engine ---------------------------------------------------------------------------------------
# ``dag`` dispatches a task as soon as its dependencies end; ``staged`` adds the original's barrier after
# every stage (for comparison only).
LOOM_SCHEDULING = env.str("LOOM_SCHEDULING", default="dag")
if LOOM_SCHEDULING not in ("dag", "staged"):
    raise ImproperlyConfigured(f"LOOM_SCHEDULING must be dag or staged, not {LOOM_SCHEDULING!r}")
LOOM_HEARTBEAT_SECONDS = env.float("LOOM_HEARTBEAT_SECONDS", default=10.0)
LOOM_HEARTBEAT_TIMEOUT = env.float("LOOM_HEARTBEAT_TIMEOUT", default=60.0)
LOOM_REDISPATCH_SECONDS = env.float("LOOM_REDISPATCH_SECONDS", default=300.0)
# How long a worker keeps retrying a claim or a finish while the database cannot be reached (a restart, a
# failover) before it gives the task up to the janitor (clusters.engine.runner.until_the_database_answers).
LOOM_DATABASE_OUTAGE_SECONDS = env.float("LOOM_DATABASE_OUTAGE_SECONDS", default=120.0)
# Tasks ready at once that a process cannot run on its own idle threads go to the broker this many to a
# message (clusters.engine.dispatch.publish): a job's start is one or two messages, not one per node.
LOOM_DISPATCH_BATCH = env.int("LOOM_DISPATCH_BATCH", default=64)
LOOM_JANITOR_SECONDS = env.float("LOOM_JANITOR_SECONDS", default=15.0)
LOOM_IDEMPOTENCY_TTL_SECONDS = env.int("LOOM_IDEMPOTENCY_TTL_SECONDS", default=86400)
LOOM_BUDGET_CACHE_SECONDS = env.float("LOOM_BUDGET_CACHE_SECONDS", default=5.0)
LOOM_RETRY_BACKOFF_SECONDS = env.float("LOOM_RETRY_BACKOFF_SECONDS", default=5.0)
# A confirm told "still booting, ready in N s" waits in its thread when N is at most this (a sleep costs no
# CPU; releasing and re-sending the task costs a broker round trip and two claims); longer boots are
# released with a countdown and no thread waits.
LOOM_INLINE_WAIT_SECONDS = env.float("LOOM_INLINE_WAIT_SECONDS", default=2.0)
LOOM_RETRY_BACKOFF_CAP_SECONDS = env.float("LOOM_RETRY_BACKOFF_CAP_SECONDS", default=300.0)
# The orphan reaper: how often it lists each provider's tagged machines, and how long a machine without a
# live node is only reported before it is deleted.
LOOM_REAPER_SECONDS = env.float("LOOM_REAPER_SECONDS", default=600.0)
LOOM_REAPER_GRACE_SECONDS = env.int("LOOM_REAPER_GRACE_SECONDS", default=3600)
# Dotted paths of callables that may veto a job before it starts (clusters/features/hooks.py).
LOOM_JOB_HOOKS = env.list("LOOM_JOB_HOOKS", default=[])
# Webhooks (clusters/features/webhooks.py): tries per delivery, the request timeout, the retry backoff (doubling from
# BACKOFF up to the cap, jittered), how often beat sweeps for lost deliveries and how overdue one must be.
LOOM_WEBHOOK_MAX_ATTEMPTS = env.int("LOOM_WEBHOOK_MAX_ATTEMPTS", default=6)
LOOM_WEBHOOK_TIMEOUT_SECONDS = env.float("LOOM_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
LOOM_WEBHOOK_BACKOFF_SECONDS = env.float("LOOM_WEBHOOK_BACKOFF_SECONDS", default=30.0)
LOOM_WEBHOOK_BACKOFF_CAP_SECONDS = env.float("LOOM_WEBHOOK_BACKOFF_CAP_SECONDS", default=3600.0)
LOOM_WEBHOOK_SWEEP_SECONDS = env.float("LOOM_WEBHOOK_SWEEP_SECONDS", default=30.0)
LOOM_WEBHOOK_LOST_SECONDS = env.float("LOOM_WEBHOOK_LOST_SECONDS", default=60.0)
if LOOM_WEBHOOK_MAX_ATTEMPTS < 1:
    raise ImproperlyConfigured("LOOM_WEBHOOK_MAX_ATTEMPTS must be at least 1")
# Leases (clusters/features/leases.py): how often beat warns about and deletes expired clusters, and how long before
# an expiry the lease warning event is sent.
LOOM_LEASE_JANITOR_SECONDS = env.float("LOOM_LEASE_JANITOR_SECONDS", default=60.0)
LOOM_LEASE_WARNING_SECONDS = env.int("LOOM_LEASE_WARNING_SECONDS", default=86400)
# Health (clusters/features/health.py): how often beat sweeps, the default interval between two checks of a
# cluster and the default time one node's checks may take (a template's administration.healthcheck overrides
# both), how many clusters one sweep takes, checks per sweep for a tenant without a worker budget, and the
# threads one cluster's check uses for its nodes.
LOOM_HEALTH_SWEEP_SECONDS = env.float("LOOM_HEALTH_SWEEP_SECONDS", default=30.0)
LOOM_HEALTH_INTERVAL_SECONDS = env.float("LOOM_HEALTH_INTERVAL_SECONDS", default=300.0)
LOOM_HEALTH_TIMEOUT_SECONDS = env.float("LOOM_HEALTH_TIMEOUT_SECONDS", default=30.0)
LOOM_HEALTH_SWEEP_BATCH = env.int("LOOM_HEALTH_SWEEP_BATCH", default=500)
LOOM_HEALTH_CONCURRENCY = env.int("LOOM_HEALTH_CONCURRENCY", default=4)
LOOM_HEALTH_NODE_THREADS = env.int("LOOM_HEALTH_NODE_THREADS", default=8)
CELERY_BEAT_SCHEDULE = {
    "health-sweep": {"task": "clusters.tasks.health_sweep_task", "schedule": LOOM_HEALTH_SWEEP_SECONDS},
    "engine-janitor": {"task": "clusters.tasks.engine_janitor", "schedule": LOOM_JANITOR_SECONDS},
    "provider-reaper": {"task": "clusters.tasks.provider_reaper", "schedule": LOOM_REAPER_SECONDS},
    "webhook-sweep": {
        "task": "clusters.tasks.webhook_deliveries_resend_due_task",
        "schedule": LOOM_WEBHOOK_SWEEP_SECONDS,
    },
    "lease-janitor": {"task": "clusters.tasks.lease_janitor", "schedule": LOOM_LEASE_JANITOR_SECONDS},
}

# --- Loom limits ----------------------------------------------------------------------------------
LOOM_MAX_CLUSTER_SIZE = env.int("LOOM_MAX_CLUSTER_SIZE", default=10000)
# The currency of the hardware types' ``cost`` fields (the original's format holds a bare number), shown
# with every price: a code such as USD or EUR, or a symbol.
LOOM_COST_CURRENCY = env.str("LOOM_COST_CURRENCY", default="USD")
LOOM_IMPORT_MAX_BYTES = env.int("LOOM_IMPORT_MAX_BYTES", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LOOM_IMPORT_MAX_BYTES
# What one uploaded archive may hold (providers/archives.py): members, bytes unpacked, and unpacked/packed
# ratio (checked once it unpacks to more than 1 MiB), against zip and tar bombs.
LOOM_ARCHIVE_MAX_MEMBERS = env.int("LOOM_ARCHIVE_MAX_MEMBERS", default=10_000)
LOOM_ARCHIVE_MAX_UNPACKED_BYTES = env.int("LOOM_ARCHIVE_MAX_UNPACKED_BYTES", default=256 * 1024 * 1024)
LOOM_ARCHIVE_MAX_RATIO = env.int("LOOM_ARCHIVE_MAX_RATIO", default=100)

# The egress policy (providers/egress.py): networks Loom may reach for a tenant although they are private,
# loopback or link-local (a private cloud's endpoint and hosts: e.g. "10.20.0.0/16,fd00:1::/64"), and more
# host[:port] entries of the operator's own to refuse (the database, broker and cache are refused always).
LOOM_EGRESS_ALLOW_NETWORKS = env.list("LOOM_EGRESS_ALLOW_NETWORKS", default=[])
LOOM_EGRESS_DENY = env.list("LOOM_EGRESS_DENY", default=[])

# Bearer token a Prometheus server may use on /metrics instead of a superuser's token (empty: none).
LOOM_METRICS_TOKEN = env.str("LOOM_METRICS_TOKEN", default="")

# ``json``: one JSON object per line (loom_site/logging.py) with the ``extra`` fields the engine passes
# (tenant, cluster, job, task, attempt, ...); ``plain``: one readable line.
LOOM_LOG_FORMAT = env.str("LOOM_LOG_FORMAT", default="plain")
if LOOM_LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOOM_LOG_FORMAT must be json or plain, not {LOOM_LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "providers.secrets.RedactingFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "loom_site.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOOM_LOG_FORMAT, "filters": ["redact"]},
    },
    "root": {"handlers": ["console"], "level": env.str("LOOM_LOG_LEVEL", default="INFO")},
    # paramiko logs every connection, authentication and SFTP session at INFO: several lines per SSH action,
    # thousands for one cluster. Its warnings and errors still show; Loom logs what an action did itself.
    "loggers": {"paramiko": {"level": "WARNING"}},
}
# Celery workers replace the root logger's handlers with their own plain format unless told not to; JSON logs
# must reach workers too (the engine logs there), so the handler above is kept.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOOM_LOG_FORMAT == "plain"
