"""``/metrics`` (loom_site/metrics.py) after a real engine run, who may scrape it, what a scrape costs; and the
JSON log formatter (loom_site/logging.py)."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from clusters.engine.core import job_start, task_claim
from clusters.models import Node, Task, TaskAttempt
from loom_site.logging import JsonFormatter
from loom_site.metrics import DURATION_BUCKETS, SCRAPE_QUERIES, collect
from providers.secrets import RedactingFilter, register_secrets
from tenants.services import api_token_create
from tests.clusters.engine_helpers import Driver, lamp_job

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of an exposition, keyed by (name, labels); fails on any line that is not HELP, TYPE or a sample."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"]))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def engine_run(transactional_db: None, tenant_a: Any, admin_a: Any, catalog_a: Any) -> dict[str, Any]:
    """A lamp create driven to completion with one transient install failure (so one retry), then a second lamp
    create started with one task running on ``worker-1`` (heartbeat 30 s old) and the rest queued."""
    _, _, done = lamp_job(tenant_a, admin_a, name="shop")
    failed_once: set[int] = set()

    def fail_first_install(task: Task) -> tuple[str, bool] | None:
        if task.action == "install" and not failed_once:
            failed_once.add(task.pk)
            return "HTTP503", True
        return None

    driver = Driver(seed=3, fail=fail_first_install)
    job_start(job=done, on_ready=driver.on_ready)
    driver.run()
    _, _, busy = lamp_job(tenant_a, admin_a, name="shop2")
    ready: list[Any] = []
    job_start(job=busy, on_ready=ready.extend)
    running = task_claim(task_pk=ready[0].task_pk, worker="worker-1")
    Task.objects.filter(pk=running.task_id).update(heartbeat_at=timezone.now() - timedelta(seconds=30))
    return {"done": done, "busy": busy, "retried": failed_once.pop()}


def scrape(client: Client, **headers: str) -> Any:
    return client.get("/metrics", headers=headers)


def test_metrics_show_jobs_tasks_attempts_durations_queues_and_workers(engine_run, superuser):
    client = Client()
    client.force_login(superuser)
    done_nodes = Node.objects.filter(cluster__jobs=engine_run["done"])
    Node.objects.filter(pk__in=done_nodes.values("pk")[:1]).update(status="active", health="degraded")
    response = scrape(client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.content.decode())

    assert value(samples, "loom_clusters", tenant="acme", status="active") == 1
    live = Node.objects.filter(status="active", cluster__status__in=["active", "pending"])
    assert value(samples, "loom_node_health", tenant="acme", state="degraded") == 1
    assert value(samples, "loom_node_health", tenant="acme", state="unknown") == live.count() - 1  # not swept yet
    assert value(samples, "loom_node_health", tenant="acme", state="missing") == 0  # every state, 0 included
    assert value(samples, "loom_jobs", operation="create", status="completed") == 1
    assert value(samples, "loom_jobs", operation="create", status="running") == 1
    done = Task.objects.filter(job=engine_run["done"]).exclude(action="join")
    assert value(samples, "loom_tasks", action="create", status="completed") == done.filter(action="create").count()
    assert value(samples, "loom_tasks", action="create", status="running") == 1
    assert value(samples, "loom_tasks_retried", action="install", status="completed") == 1

    attempts = TaskAttempt.objects.all()
    assert value(samples, "loom_task_attempts_total", outcome="failed") == 1
    assert value(samples, "loom_task_attempts_total", outcome="running") == 1
    assert (
        value(samples, "loom_task_attempts_total", outcome="succeeded") == attempts.filter(outcome="succeeded").count()
    )
    assert value(samples, "loom_task_retries_total", outcome="succeeded") == 1

    installs = attempts.filter(task__action="install", finished_at__isnull=False).count()
    labels = {"action": "install", "provider": "rackspace"}
    assert value(samples, "loom_task_duration_seconds_count", **labels) == installs
    assert value(samples, "loom_task_duration_seconds_bucket", **labels, le="+Inf") == installs
    cumulative = [
        value(samples, "loom_task_duration_seconds_bucket", **labels, le=f"{bound:g}") for bound in DURATION_BUCKETS
    ]
    assert cumulative == sorted(cumulative) and cumulative[-1] == installs  # driven in-process: all well under an hour
    assert value(samples, "loom_task_duration_seconds_sum", **labels) >= 0

    queued = Task.objects.filter(job=engine_run["busy"], status="queued").count()
    assert queued > 0
    assert value(samples, "loom_queue_depth", tenant="acme") == queued
    assert value(samples, "loom_queue_backoff", tenant="acme") == 0
    assert value(samples, "loom_queue_oldest_wait_seconds", tenant="acme") >= 0
    assert value(samples, "loom_worker_running_tasks", worker="worker-1") == 1
    assert 29 <= value(samples, "loom_worker_heartbeat_age_seconds", worker="worker-1") < 3600


def test_a_scrape_costs_a_fixed_number_of_queries(engine_run, django_assert_num_queries):
    with django_assert_num_queries(SCRAPE_QUERIES):
        collect()


def test_queue_wait_counts_from_the_end_of_a_backoff(engine_run):
    queued = Task.objects.filter(job=engine_run["busy"], status="queued")
    now = timezone.now()
    first, second = queued[:2]
    Task.objects.filter(pk=first.pk).update(not_before=now - timedelta(seconds=120))
    Task.objects.filter(pk=second.pk).update(not_before=now + timedelta(seconds=60))
    families = {family.name: family for family in collect(now=now)}
    oldest = {labels["tenant"]: sample for _, labels, sample in families["loom_queue_oldest_wait_seconds"].samples}
    backoff = {labels["tenant"]: sample for _, labels, sample in families["loom_queue_backoff"].samples}
    assert oldest["acme"] >= 120 and backoff["acme"] == 1


# --- who may scrape --------------------------------------------------------------------------------------------


def test_anonymous_and_bad_tokens_get_401(db):
    anonymous = scrape(Client())
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    assert scrape(Client(), Authorization="Bearer loom_nope_nope").status_code == 401
    assert scrape(Client(), Authorization="Basic dXNlcjpwdw==").status_code == 401


def test_tenant_admins_get_403_and_superuser_tokens_are_accepted(db, admin_a, superuser):
    client = Client()
    client.force_login(admin_a)
    assert scrape(client).status_code == 403
    member_key = api_token_create(user=admin_a, name="cli").key
    assert scrape(Client(), Authorization=f"Bearer {member_key}").status_code == 403
    root_key = api_token_create(user=superuser, name="prometheus").key
    response = scrape(Client(), Authorization=f"Bearer {root_key}")
    assert response.status_code == 200 and "# TYPE loom_jobs gauge" in response.content.decode()


def test_the_metrics_token_opens_metrics_only_when_configured(db, settings):
    settings.LOOM_METRICS_TOKEN = ""
    assert scrape(Client(), Authorization="Bearer ").status_code == 401
    settings.LOOM_METRICS_TOKEN = "scrape-me-0123456789"
    assert scrape(Client(), Authorization="Bearer scrape-me-0123456789").status_code == 200
    assert scrape(Client(), Authorization="Bearer scrape-me-012345678").status_code == 401
    assert Client().post("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"}).status_code == 405


def test_label_values_are_escaped(db):
    from loom_site.metrics import Family, render

    family = Family("loom_x", "gauge", "x")
    family.add({"worker": 'a"b\\c\nd'}, 1.5)
    assert render([family]).splitlines()[-1] == 'loom_x{worker="a\\"b\\\\c\\nd"} 1.5'


# --- JSON logs --------------------------------------------------------------------------------------------------


def json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_logs_carry_the_engine_extras_one_object_per_line():
    logger, stream = json_logger("loom.test.json")
    logger.info("task %s finished", 7, extra={"tenant": 3, "cluster": 4, "job": 5, "task": 7, "attempt": 9})
    logger.warning("job failed", extra={"job": {"id": 5, "status": "failed"}, "message_id": "x"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "task 7 finished" and first["level"] == "INFO" and first["logger"] == "loom.test.json"
    assert {key: first[key] for key in ("tenant", "cluster", "job", "task", "attempt")} == {
        "tenant": 3, "cluster": 4, "job": 5, "task": 7, "attempt": 9,
    }  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["job"] == {"id": 5, "status": "failed"} and second["level"] == "WARNING"


def test_json_logs_redact_secrets_in_the_message_the_extras_and_the_traceback():
    register_secrets(["hunter2-very-secret"])
    logger, stream = json_logger("loom.test.redact")
    try:
        raise RuntimeError("login with hunter2-very-secret failed")
    except RuntimeError:
        logger.exception("password hunter2-very-secret refused", extra={"detail": {"pw": ["hunter2-very-secret"]}})
    text = stream.getvalue()
    assert "hunter2-very-secret" not in text
    entry = json.loads(text)
    assert entry["message"] == "password *** refused" and entry["detail"] == {"pw": ["***"]}
    assert "RuntimeError: login with *** failed" in entry["exception"]
