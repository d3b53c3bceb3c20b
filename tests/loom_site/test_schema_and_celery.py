"""Project wiring: the OpenAPI schema and docs render, and the Celery app is configured as documented
and really carries a task through Redis."""

from __future__ import annotations

import pytest
from django.conf import settings

from loom_site.celery import app


def test_schema_and_docs_render(client, admin_a):
    client.force_login(admin_a)
    schema = client.get("/api/v2/schema")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v2/clustertemplates/{name}/versions/{version}/" in text and "ApiToken" in text
    docs = client.get("/api/v2/docs")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content and b"cdn.jsdelivr" not in docs.content


def test_celery_settings_follow_the_house_rules():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_backend == "django-db"
    # Celery's Django fix-up reads this under its old name only (see loom_site/celery.py).
    assert conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX == 1000


@pytest.mark.django_db(transaction=True)
def test_a_task_round_trips_through_redis():
    """A real worker thread consumes from a real Redis broker (the production transport)."""
    from celery.contrib.testing.worker import start_worker

    @app.task(name="tests.add")
    def add(x: int, y: int) -> int:
        return x + y

    app.conf.update(broker_url="redis://127.0.0.1:6379/15", task_always_eager=False, result_backend="cache+memory://")
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10):
            assert add.delay(2, 3).get(timeout=20) == 5
    finally:
        app.conf.update(broker_url=settings.CELERY_BROKER_URL, task_always_eager=True, result_backend="django-db")
