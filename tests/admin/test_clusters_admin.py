"""Clusters and webhooks in the admin: read-only engine rows, webhooks edited through their services with a
write-only secret, tenant admins limited to their own tenants (404 across tenants), members kept out."""

from __future__ import annotations

from typing import Any

import pytest

from clusters import admin as clusters_admin
from clusters.engine.core import job_start, task_claim, task_finish
from clusters.features.webhooks import webhook_create, webhook_ping
from clusters.models import Cluster, Job, Node, Task, TaskAttempt, Webhook, WebhookDelivery
from providers.secrets import decrypt_json, register_secrets
from templates_app.services import catalog_import
from tenants.models import AuditEvent
from tests.admin.conftest import field_errors, form_fields, url
from tests.clusters.engine_helpers import OK, lamp_job

SECRET = "whsec-Walrus-5772-Puffin-1123"
NEW_SECRET = "whsec-Beaver-6931-Marten-4142"
LOG_SECRET = "db-pass-Narwhal-8080"
MODELS = [Cluster, Node, Job, Task, TaskAttempt, Webhook, WebhookDelivery]


def populate(tenant: Any, admin: Any) -> dict[str, Any]:
    """A lamp create with one finished attempt (its log held a secret), a webhook and one delivery."""
    cluster, _, job = lamp_job(tenant, admin, name=f"shop-{tenant.name}")
    job_start(job=job, on_ready=lambda ready: None)
    task = Task.objects.filter(job=job, status="queued").order_by("key").first()
    attempt = task_claim(task_pk=task.pk, worker="w1")
    task_finish(
        attempt=attempt, outcome=OK, log=f"connecting with password={LOG_SECRET}\ndone", on_ready=lambda r: None
    )
    webhook = webhook_create(actor=admin, tenant=tenant, name="ops", url="https://hooks.example.com/x", secret=SECRET)
    delivery = webhook_ping(actor=admin, webhook=webhook)
    return {
        Cluster: cluster, Node: cluster.nodes.first(), Job: job, Task: task, TaskAttempt: attempt,
        Webhook: webhook, WebhookDelivery: delivery,
    }  # fmt: skip


@pytest.fixture
def world(catalog_a: Any, catalog_b: Any, tenant_a: Any, tenant_b: Any, admin_a: Any, admin_b: Any) -> Any:
    register_secrets([LOG_SECRET])
    return {"acme": populate(tenant_a, admin_a), "globex": populate(tenant_b, admin_b)}


def tenant_of(obj: Any) -> str:
    if isinstance(obj, (Cluster, Webhook, Task)):
        return obj.tenant.name
    if isinstance(obj, (Node, Job)):
        return obj.cluster.tenant.name
    if isinstance(obj, TaskAttempt):
        return obj.task.tenant.name
    return obj.webhook.tenant.name


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelists_show_only_own_tenant_rows(model: type, world: Any, staff_admin_a: Any, login: Any) -> None:
    response = login(staff_admin_a).get(url(model))
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert rows and {tenant_of(row) for row in rows} == {"acme"}
    assert b"globex" not in response.content


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_pages_render_and_never_show_a_secret(model: type, world: Any, staff_admin_a: Any, login: Any) -> None:
    client = login(staff_admin_a)
    obj = world["acme"][model]
    for page in (url(model), url(model, "change", obj.pk), url(model, "history", obj.pk)):
        response = client.get(page)
        assert response.status_code == 200, page
        text = response.content.decode()
        assert SECRET not in text and LOG_SECRET not in text, page
        assert Webhook.objects.get(pk=world["acme"][Webhook].pk).secret_data not in text


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("action", ["change", "delete", "history"])
def test_other_tenants_rows_answer_404(model: type, action: str, world: Any, staff_admin_a: Any, login: Any) -> None:
    obj = world["globex"][model]
    client = login(staff_admin_a)
    assert client.get(url(model, action, obj.pk)).status_code == 404
    if action != "history":
        assert client.post(url(model, action, obj.pk), {"post": "yes"}).status_code == 404
    assert model.objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_members_are_kept_out(model: type, world: Any, staff_user_a: Any, login: Any) -> None:
    client = login(staff_user_a)
    assert client.get(url(model)).status_code == 403
    assert client.get(url(model, "change", world["acme"][model].pk)).status_code == 404
    assert b"/admin/clusters/" not in client.get("/admin/").content


def test_superusers_see_every_tenant(world: Any, superuser: Any, login: Any) -> None:
    client = login(superuser)
    for model in MODELS:
        rows = client.get(url(model)).context["cl"].result_list
        assert {tenant_of(row) for row in rows} == {"acme", "globex"}, model


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelists_take_a_constant_number_of_queries(
    model: type, world: Any, superuser: Any, login: Any, tenant_c: Any, samples: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = login(superuser)
    client.get(url(model))  # warm caches (content types, sessions)
    with CaptureQueriesContext(connection) as two_tenants:
        client.get(url(model))
    catalog_import(tenant=tenant_c, user=None, data=samples)
    populate(tenant_c, superuser)
    with CaptureQueriesContext(connection) as three_tenants:
        response = client.get(url(model))
    assert len(response.context["cl"].result_list) > 2
    assert len(three_tenants) == len(two_tenants), [q["sql"] for q in three_tenants.captured_queries]


def test_the_job_page_shows_its_tasks_inline_up_to_the_limit(world: Any, staff_admin_a: Any, login: Any, monkeypatch):
    monkeypatch.setattr(clusters_admin, "INLINE_LIMIT", 5)
    job = world["acme"][Job]
    response = login(staff_admin_a).get(url(Job, "change", job.pk))
    (tasks,) = [inline for inline in response.context["inline_admin_formsets"] if inline.opts.model is Task]
    shown = [form.instance for form in tasks.formset.forms]
    assert [task.key for task in shown] == [0, 1, 2, 3, 4]
    total = Task.objects.filter(job=job).count()
    text = response.content.decode()
    assert f"{total} tasks (the first 5 shown below)" in text
    assert f"/admin/clusters/task/?job__id__exact={job.pk}" in text
    assert "waiting_reason" in text or "Waiting reason" in text


def test_the_cluster_page_lists_nodes_and_jobs(world: Any, staff_admin_a: Any, login: Any) -> None:
    cluster = world["acme"][Cluster]
    response = login(staff_admin_a).get(url(Cluster, "change", cluster.pk))
    inlines = {inline.opts.model: inline for inline in response.context["inline_admin_formsets"]}
    assert len(inlines[Node].formset.forms) == cluster.nodes.count() == 3
    assert [form.instance for form in inlines[Job].formset.forms] == [world["acme"][Job]]
    assert "lamp (version 1)" in response.content.decode()


def test_the_attempt_page_shows_the_redacted_log_tail(world: Any, staff_admin_a: Any, login: Any) -> None:
    attempt = world["acme"][TaskAttempt]
    text = login(staff_admin_a).get(url(TaskAttempt, "change", attempt.pk)).content.decode()
    assert "connecting with password=***" in text and LOG_SECRET not in text


# --- webhooks -----------------------------------------------------------------------------------------------


def submit(client: Any, page_url: str, changes: dict[str, Any]) -> Any:
    page = client.get(page_url)
    assert page.status_code == 200
    return client.post(page_url, {**form_fields(page), **changes})


def test_webhooks_are_created_and_changed_through_the_service(
    tenant_a: Any, staff_admin_a: Any, login: Any, admin_a: Any
) -> None:
    client = login(staff_admin_a)
    add = {"name": "alerts", "url": "https://hooks.example.com/alerts", "secret": SECRET,
           "events": ["job.failed", "cluster.lease_expired"]}  # fmt: skip
    response = submit(client, url(Webhook, "add"), add)
    assert response.status_code == 302, response.context["adminform"].form.errors
    webhook = Webhook.objects.get(tenant=tenant_a, name="alerts")
    assert webhook.events == ["job.failed", "cluster.lease_expired"] and webhook.active
    assert decrypt_json(webhook.secret_data) == {"secret": SECRET}
    assert AuditEvent.objects.filter(entity_kind="webhook", action="create", actor=admin_a).exists()

    change = url(Webhook, "change", webhook.pk)
    page = client.get(change)
    assert (
        SECRET not in page.content.decode() and "A secret is stored: leave blank to keep it." in page.content.decode()
    )
    assert form_fields(page)["secret"] == ""
    response = submit(client, change, {"url": "https://hooks.example.com/v2", "events": []})
    assert response.status_code == 302
    webhook.refresh_from_db()
    assert (webhook.url, webhook.events, decrypt_json(webhook.secret_data)["secret"]) == (
        "https://hooks.example.com/v2", [], SECRET)  # fmt: skip
    assert submit(client, change, {"secret": NEW_SECRET}).status_code == 302
    webhook.refresh_from_db()
    assert decrypt_json(webhook.secret_data)["secret"] == NEW_SECRET
    history = client.get(url(Webhook, "history", webhook.pk)).content.decode()
    assert SECRET not in history and NEW_SECRET not in history


def test_bad_webhook_input_lands_on_the_form_fields(tenant_a: Any, staff_admin_a: Any, login: Any) -> None:
    client = login(staff_admin_a)
    response = submit(client, url(Webhook, "add"), {"name": "bad", "url": "ftp://x.example.com/", "secret": SECRET})
    assert response.status_code == 200
    assert field_errors(response, "url") == ["must be an http:// or https:// URL"]
    response = submit(client, url(Webhook, "add"), {"name": "bad", "url": "https://x.example.com/", "secret": ""})
    assert field_errors(response, "secret") == ["is required: it signs every request"]
    assert SECRET not in response.content.decode()  # a re-rendered form does not echo the secret either
    assert not Webhook.objects.filter(name="bad").exists()


def test_the_ping_and_redeliver_actions_and_delete(world: Any, staff_admin_a: Any, login: Any, admin_a: Any) -> None:
    client = login(staff_admin_a)
    webhook, delivery = world["acme"][Webhook], world["acme"][WebhookDelivery]
    response = client.post(url(Webhook), {"action": "ping", "_selected_action": [webhook.pk]})
    assert response.status_code == 302
    assert WebhookDelivery.objects.filter(webhook=webhook, event="webhook.ping").count() == 2

    # A pending delivery is refused (the message says why); a finished one goes out again as a new delivery.
    response = client.post(url(WebhookDelivery), {"action": "redeliver", "_selected_action": [delivery.pk]},
                           follow=True)  # fmt: skip
    assert "still pending" in response.content.decode()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed")
    client.post(url(WebhookDelivery), {"action": "redeliver", "_selected_action": [delivery.pk]})
    assert WebhookDelivery.objects.filter(webhook=webhook).count() == 3
    assert AuditEvent.objects.filter(entity_kind="webhook", action="redeliver", actor=admin_a).count() == 1

    confirm = client.get(url(Webhook, "delete", webhook.pk)).content.decode()
    assert "Webhook: ops (acme)" in confirm and "Deliveries: 3" in confirm
    assert client.post(url(Webhook, "delete", webhook.pk), {"post": "yes"}).status_code == 302
    assert not Webhook.objects.filter(pk=webhook.pk).exists()
    assert AuditEvent.objects.filter(entity_kind="webhook", action="delete", actor=admin_a).exists()
