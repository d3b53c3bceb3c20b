"""Lifecycle webhooks against a real HTTP server on 127.0.0.1: signed deliveries of engine events, retries
with backoff driven by moving ``next_attempt_at`` (no sleeping), timeouts, the events filter, the sweep for
lost messages, the API (permissions, validation, write-only secret, audit) and tenant isolation; and one
end-to-end run where a real Celery worker delivers the events of a cluster it builds."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from clusters.engine.core import job_start
from clusters.engine.signals import JobEvent, JobEventData, send_job_event
from clusters.features import webhooks
from clusters.features.webhooks import (
    on_job_event,
    webhook_create,
    webhook_deliveries_resend_due,
    webhook_delivery_send,
    webhook_ping,
)
from clusters.models import Cluster, Job, Webhook, WebhookDelivery
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from providers.secrets import decrypt_json, redact
from templates_app.services import catalog_import
from tenants.models import AuditEvent

from .engine_helpers import lamp_job
from .workers import catalog, run_to_completion

SECRET = "whsec-Otter-2718-Lynx-3141"
OTHER_SECRET = "whsec-Heron-1618-Ibis-1414"


# --- a real receiver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """An HTTP server in a thread: records every POST and answers from a script (default 200 "ok").

    An answer is ``(status, body)`` or ``"hang"``, which holds the request until the test ends (the client's
    timeout fires first).
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: deque[Any] = deque()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                receiver.requests.append(Received(self.path, headers, body))
                answer = receiver.answers.popleft() if receiver.answers else (200, b"ok")
                if answer == "hang":
                    receiver.release.wait(timeout=30)
                    return
                status, text = answer
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def verify(request: Received, secret: str) -> int:
    """Check the signature as a receiver would (independently of Loom's code); returns the timestamp."""
    parts = dict(item.split("=", 1) for item in request.headers["x-loom-signature"].split(","))
    timestamp = int(parts["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), "signature does not match"
    assert abs(time.time() - timestamp) < 300, "stale timestamp"
    return timestamp


def make_webhook(tenant: Any, actor: Any, url: str, *, name: str = "ops", **kwargs: Any) -> Webhook:
    return webhook_create(actor=actor, tenant=tenant, name=name, url=url, secret=SECRET, **kwargs)


def make_due(delivery: WebhookDelivery) -> None:
    """Skip the backoff: the next try is due now (what the countdown message or the sweep would find)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def refreshed(delivery: WebhookDelivery) -> WebhookDelivery:
    delivery.refresh_from_db()
    return delivery


@pytest.fixture
def shop(tenant_a: Any, admin_a: Any, catalog_a: Any) -> tuple[Cluster, Any, Job]:
    """Tenant A's 3-node lamp create, persisted as a job that has not started."""
    return lamp_job(tenant_a, admin_a)


@pytest.fixture
def hook(tenant_a: Any, admin_a: Any, receiver: Receiver) -> Webhook:
    return make_webhook(tenant_a, admin_a, receiver.url())


# --- events become signed deliveries -----------------------------------------------------------------------


def test_a_job_event_is_delivered_signed_with_headers_and_payload(
    shop, hook, receiver, django_capture_on_commit_callbacks
):
    cluster, _, job = shop
    with django_capture_on_commit_callbacks(execute=True):
        job_start(job=job, on_ready=lambda ready: None)
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    delivery = WebhookDelivery.objects.get(webhook=hook)
    verify(request, SECRET)
    assert request.path == "/hook"
    assert request.headers["x-loom-event"] == "job.started"
    assert request.headers["x-loom-delivery"] == str(delivery.pk)
    assert request.headers["content-type"] == "application/json"
    payload = request.payload
    assert datetime.fromisoformat(payload.pop("time")).tzinfo is not None
    assert payload == {
        "event": "job.started",
        "delivery": delivery.pk,
        "tenant": "acme",
        "message": "",
        "cluster": {"id": cluster.pk, "name": "shop", "status": "pending", "health": "unknown"},
        "job": {"id": job.pk, "operation": "create", "status": "running", "message": ""},
    }
    assert delivery.payload == request.payload  # the log holds exactly what was sent
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.response_excerpt) == (
        "delivered", 1, 200, "ok")  # fmt: skip
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None and delivery.error == ""


def test_a_signature_made_with_another_secret_does_not_verify(shop, hook, receiver, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job_start(job=shop[2], on_ready=lambda ready: None)
    with pytest.raises(AssertionError, match="signature does not match"):
        verify(receiver.requests[0], OTHER_SECRET)


def test_500_twice_then_200_is_delivered_on_the_third_try_with_every_try_logged(
    hook, admin_a, receiver, django_capture_on_commit_callbacks, caplog
):
    receiver.answers.extend([(500, b"database down"), (500, b"still down"), (200, b"thanks")])
    caplog.set_level(logging.INFO, logger="clusters.features.webhooks")
    before = timezone.now()
    # The retry the first failure queues runs at once in eager mode and finds the delivery not yet due.
    with django_capture_on_commit_callbacks(execute=True):
        delivery = webhook_ping(actor=admin_a, webhook=hook)
    after = timezone.now()
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("pending", 1, 500)
    assert (delivery.response_excerpt, delivery.error) == ("database down", "answered HTTP 500")
    # Backoff: 30 s base with equal jitter, 15-30 s after the try.
    assert before + timedelta(seconds=15) <= delivery.next_attempt_at <= after + timedelta(seconds=30)
    assert webhook_delivery_send(delivery_pk=delivery.pk) is None, "not due yet"
    assert len(receiver.requests) == 1

    make_due(delivery)
    assert webhook_delivery_send(delivery_pk=delivery.pk).status == "pending"
    delivery = refreshed(delivery)
    assert (delivery.attempts, delivery.response_status, delivery.response_excerpt) == (2, 500, "still down")
    make_due(delivery)
    delivery = webhook_delivery_send(delivery_pk=delivery.pk)
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 3, 200)
    assert (delivery.response_excerpt, delivery.error, delivery.next_attempt_at) == ("thanks", "", None)

    assert [r.headers["x-loom-delivery"] for r in receiver.requests] == [str(delivery.pk)] * 3
    assert len({r.body for r in receiver.requests}) == 1, "every try sends the same body"
    for request in receiver.requests:
        verify(request, SECRET)  # each try is signed afresh
    tries = [r for r in caplog.records if getattr(r, "delivery", None) == delivery.pk]
    assert [(r.attempt, r.response_status, r.levelname) for r in tries] == [
        (1, 500, "WARNING"), (2, 500, "WARNING"), (3, 200, "INFO")]  # fmt: skip
    assert webhook_delivery_send(delivery_pk=delivery.pk) is None, "a delivered delivery is never sent again"


def test_backoff_doubles_with_jitter_up_to_the_cap(settings):
    import random

    settings.LOOM_WEBHOOK_BACKOFF_SECONDS = 30
    settings.LOOM_WEBHOOK_BACKOFF_CAP_SECONDS = 200
    rng = random.Random(4)
    for attempt, full in [(1, 30), (2, 60), (3, 120), (4, 200), (9, 200)]:
        delays = [webhooks.webhook_retry_delay(attempt, rng=rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays), attempt
        assert len(set(delays)) > 1


def test_a_delivery_fails_after_the_last_allowed_try(hook, admin_a, receiver, settings):
    settings.LOOM_WEBHOOK_MAX_ATTEMPTS = 2
    receiver.answers.extend([(503, b"busy"), (502, b"bad gateway")])
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    webhook_delivery_send(delivery_pk=delivery.pk)
    make_due(delivery)
    webhook_delivery_send(delivery_pk=delivery.pk)
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 2, 502)
    assert delivery.next_attempt_at is None and delivery.error == "answered HTTP 502"
    make_due(delivery)
    assert webhook_delivery_send(delivery_pk=delivery.pk) is None
    assert len(receiver.requests) == 2


def test_a_receiver_that_does_not_answer_times_out_and_is_retried(hook, admin_a, receiver, settings):
    settings.LOOM_WEBHOOK_TIMEOUT_SECONDS = 0.5
    receiver.answers.append("hang")
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    webhook_delivery_send(delivery_pk=delivery.pk)
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("pending", 1, None)
    assert delivery.error == "timed out after 0.5 s"
    make_due(delivery)
    webhook_delivery_send(delivery_pk=delivery.pk)
    assert refreshed(delivery).status == "delivered"


def test_connection_errors_are_recorded_and_retried(tenant_a, admin_a):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = make_webhook(tenant_a, admin_a, f"http://127.0.0.1:{port}/hook")
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    webhook_delivery_send(delivery_pk=delivery.pk)
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("pending", 1, None)
    assert "ConnectionRefusedError" in delivery.error


def test_redirects_are_not_followed(hook, admin_a, receiver):
    receiver.answers.append((302, b"moved"))
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    webhook_delivery_send(delivery_pk=delivery.pk)
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.response_status, delivery.error) == ("pending", 302, "answered HTTP 302")
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_a_deactivated_webhooks_pending_delivery_fails_unsent(hook, admin_a, receiver):
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    Webhook.objects.filter(pk=hook.pk).update(active=False)
    assert webhook_delivery_send(delivery_pk=delivery.pk) is None
    delivery = refreshed(delivery)
    assert (delivery.status, delivery.attempts, delivery.error) == ("failed", 0, "webhook is inactive")
    assert receiver.requests == []


def test_the_events_filter_and_inactive_webhooks(shop, tenant_a, admin_a, receiver, django_capture_on_commit_callbacks):
    cluster, _, job = shop
    everything = make_webhook(tenant_a, admin_a, receiver.url("/all"), name="all")
    failures = make_webhook(tenant_a, admin_a, receiver.url("/failures"), name="failures", events=["job.failed"])
    make_webhook(tenant_a, admin_a, receiver.url("/off"), name="off", active=False)
    with django_capture_on_commit_callbacks(execute=True):
        send_job_event(JobEventData(JobEvent.STARTED, tenant_a.pk, cluster.pk, job.pk))
        send_job_event(JobEventData(JobEvent.FAILED, tenant_a.pk, cluster.pk, job.pk, "node 2 failed"))
        send_job_event(JobEventData(JobEvent.LEASE_WARNING, tenant_a.pk, cluster.pk, None, "expires in 1 day"))
    got = sorted((r.path, r.headers["x-loom-event"]) for r in receiver.requests)
    assert got == [("/all", "cluster.lease_warning"), ("/all", "job.failed"), ("/all", "job.started"),
                   ("/failures", "job.failed")]  # fmt: skip
    assert WebhookDelivery.objects.filter(webhook=everything).count() == 3
    assert WebhookDelivery.objects.filter(webhook=failures).count() == 1
    lease = next(r.payload for r in receiver.requests if r.headers["x-loom-event"] == "cluster.lease_warning")
    assert (lease["job"], lease["message"], lease["cluster"]["name"]) == (None, "expires in 1 day", "shop")


def test_events_reach_only_their_own_tenants_webhooks(
    shop, tenant_a, tenant_b, admin_a, admin_b, receiver, django_capture_on_commit_callbacks
):
    theirs = make_webhook(tenant_b, admin_b, receiver.url("/globex"), name="ops")
    with django_capture_on_commit_callbacks(execute=True):
        job_start(job=shop[2], on_ready=lambda ready: None)
    assert receiver.requests == []
    assert not WebhookDelivery.objects.filter(webhook=theirs).exists()


def test_the_receiver_never_raises_and_costs_one_query_without_webhooks(
    shop, tenant_a, admin_a, monkeypatch, caplog, django_assert_num_queries
):
    cluster, _, job = shop
    with django_assert_num_queries(1):
        on_job_event(None, data=JobEventData(JobEvent.STARTED, tenant_a.pk, cluster.pk, job.pk))
    make_webhook(tenant_a, admin_a, "http://127.0.0.1:9/hook")
    on_job_event(None, data=JobEventData(JobEvent.STARTED, tenant_a.pk, 10**12, None))  # no such cluster
    assert not WebhookDelivery.objects.exists()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(webhooks, "_create_deliveries", broken)
    on_job_event(None, data=JobEventData(JobEvent.STARTED, tenant_a.pk, cluster.pk, job.pk))
    assert "could not record webhook deliveries" in caplog.text


def test_the_receiver_makes_as_many_queries_for_five_webhooks_as_for_one(shop, tenant_a, admin_a):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    cluster, _, job = shop
    counts = []
    for names in (["one"], ["two", "three", "four", "five"]):
        for name in names:
            make_webhook(tenant_a, admin_a, f"http://127.0.0.1:9/{name}", name=name)
        with CaptureQueriesContext(connection) as queries:
            on_job_event(None, data=JobEventData(JobEvent.SUCCEEDED, tenant_a.pk, cluster.pk, job.pk))
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 7, counts
    assert WebhookDelivery.objects.filter(event="job.succeeded").count() == 1 + 5


def test_a_broker_outage_leaves_the_delivery_for_the_sweep(
    hook, admin_a, receiver, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    from clusters.features.webhooks import webhook_delivery_send_task

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(webhook_delivery_send_task, "apply_async", down)
        with django_capture_on_commit_callbacks(execute=True):
            delivery = webhook_ping(actor=admin_a, webhook=hook)
    assert "could not queue webhook delivery" in caplog.text
    assert refreshed(delivery).status == "pending" and receiver.requests == []
    later = timezone.now() + timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_deliveries_resend_due(now=later) == [delivery.pk]
    assert refreshed(delivery).status == "delivered" and len(receiver.requests) == 1


def test_the_sweep_resends_lost_messages_and_fails_lost_last_tries(hook, admin_a, receiver, settings):
    settings.LOOM_WEBHOOK_LOST_SECONDS = 60
    now = timezone.now()
    lost, recent, last = (webhook_ping(actor=admin_a, webhook=hook) for _ in range(3))
    WebhookDelivery.objects.filter(pk=lost.pk).update(next_attempt_at=now - timedelta(seconds=120))
    WebhookDelivery.objects.filter(pk=recent.pk).update(next_attempt_at=now - timedelta(seconds=10))
    WebhookDelivery.objects.filter(pk=last.pk).update(
        next_attempt_at=now - timedelta(seconds=120), attempts=settings.LOOM_WEBHOOK_MAX_ATTEMPTS
    )
    assert webhook_deliveries_resend_due(now=now) == [lost.pk]  # the recent one's message may still come
    assert (refreshed(last).status, last.error) == ("failed", "the last try was lost")
    assert refreshed(recent).status == "pending"


def test_of_two_senders_that_read_a_delivery_only_one_claims_the_try(hook, admin_a):
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    first, second = WebhookDelivery.objects.get(pk=delivery.pk), WebhookDelivery.objects.get(pk=delivery.pk)
    now = timezone.now()
    assert webhooks._claim(first, now) == 1
    assert webhooks._claim(second, now) is None
    # The claim holds the delivery past the try's timeout, so the sweep leaves it alone meanwhile.
    assert refreshed(delivery).next_attempt_at > now + timedelta(seconds=webhooks.LEASE_MARGIN_SECONDS)


# --- the API -----------------------------------------------------------------------------------------------

BODY = {"name": "ops", "url": "https://hooks.example.com/loom/T0K3N", "secret": SECRET, "events": ["job.failed"]}


def test_create_returns_no_secret_and_stores_it_encrypted(admin_a, client_for, tenant_a):
    response = client_for(admin_a).post("/api/v2/webhooks/", BODY, format="json")
    assert response.status_code == 201, response.content
    assert response.json() == {
        "name": "ops", "url": BODY["url"], "has_secret": True, "events": ["job.failed"], "active": True,
        "created_at": response.json()["created_at"],
    }  # fmt: skip
    row = Webhook.objects.get(tenant=tenant_a, name="ops")
    assert SECRET not in row.secret_data and decrypt_json(row.secret_data) == {"secret": SECRET}
    assert redact(f"x {SECRET} y") == "x *** y", "the secret is known to the log redactor"
    audit = AuditEvent.objects.get(entity_kind="webhook", action="create")
    assert (audit.actor, audit.entity_name) == (admin_a, "ops") and SECRET not in json.dumps(audit.summary)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"url": "ftp://files.example.com/x"}, "url", "must be an http:// or https:// URL"),
        ({"url": "https://bob:pw@example.com/x"}, "url", "must not contain a user name or password"),
        ({"url": "https:///nohost"}, "url", "must name a host"),
        ({"url": "http://example.com:99999/"}, "url", "is not a valid URL"),
        ({"url": "http://exämple.com/"}, "url", "must be ASCII"),
        ({"url": "http://example.com/a b"}, "url", "must not contain spaces"),
        ({"events": ["job.started", "job.exploded"]}, "events.1", "is not a valid choice"),
        ({"secret": "short"}, "secret", "at least 16 characters"),
        ({"secret": "$encrypted$"}, "secret", "none is stored"),
        ({"secret": ...}, "secret", "is required"),
        ({"name": "no spaces"}, "name", "does not match"),
        ({"events": "job.failed"}, "events", "list"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(admin_a, client_for, change, field, message):
    body = {key: value for key, value in {**BODY, **change}.items() if value is not ...}
    response = client_for(admin_a).post("/api/v2/webhooks/", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert any(message in text for text in error["fields"][field]), error


def test_single_label_hosts_are_accepted(admin_a, client_for):
    body = {**BODY, "url": "http://jenkins:8080/loom-hook"}
    assert client_for(admin_a).post("/api/v2/webhooks/", body, format="json").status_code == 201


def test_a_taken_name_is_a_409(admin_a, client_for):
    client = client_for(admin_a)
    assert client.post("/api/v2/webhooks/", BODY, format="json").status_code == 201
    response = client.post("/api/v2/webhooks/", BODY, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_changes_keep_the_secret_unless_a_new_one_is_given(admin_a, client_for, tenant_a):
    client = client_for(admin_a)
    client.post("/api/v2/webhooks/", BODY, format="json")

    def stored() -> str:
        return decrypt_json(Webhook.objects.get(tenant=tenant_a, name="ops").secret_data)["secret"]

    shown = client.get("/api/v2/webhooks/ops").json()
    response = client.put("/api/v2/webhooks/ops", {**shown, "url": "https://hooks.example.com/v2"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["url"] == "https://hooks.example.com/v2" and stored() == SECRET
    assert client.patch("/api/v2/webhooks/ops", {"secret": "$encrypted$"}, format="json").status_code == 200
    assert stored() == SECRET
    response = client.patch("/api/v2/webhooks/ops", {"secret": OTHER_SECRET, "active": False}, format="json")
    assert response.status_code == 200 and response.json()["active"] is False and stored() == OTHER_SECRET
    response = client.put("/api/v2/webhooks/ops", {"name": "ops", "url": BODY["url"]}, format="json")
    assert response.json()["events"] == [] and response.json()["active"] is True  # PUT replaces
    response = client.patch("/api/v2/webhooks/ops", {"name": "renamed"}, format="json")
    assert response.status_code == 400 and "cannot be changed" in response.json()["error"]["message"]
    updates = AuditEvent.objects.filter(entity_kind="webhook", action="update").order_by("pk")
    assert [e.summary["secret_changed"] for e in updates] == [False, True, False]
    assert all(SECRET not in json.dumps(e.summary) and OTHER_SECRET not in json.dumps(e.summary) for e in updates)
    assert client.delete("/api/v2/webhooks/ops").status_code == 204
    assert not Webhook.objects.exists() and AuditEvent.objects.filter(entity_kind="webhook", action="delete").exists()


def test_members_see_no_secret_and_no_url_path_and_may_not_write(hook, user_a, client_for, admin_a, receiver):
    client = client_for(user_a)
    listed = client.get("/api/v2/webhooks/").json()["results"]
    assert listed == [{"name": "ops", "url": f"http://127.0.0.1:{receiver.port}/", "has_secret": True,
                       "events": [], "active": True, "created_at": listed[0]["created_at"]}]  # fmt: skip
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    forbidden = [
        client.post("/api/v2/webhooks/", {**BODY, "name": "mine"}, format="json"),
        client.post("/api/v2/webhooks/", {}, format="json"),  # 403 before any validation
        client.patch("/api/v2/webhooks/ops", {"active": False}, format="json"),
        client.put("/api/v2/webhooks/ops", BODY, format="json"),
        client.delete("/api/v2/webhooks/ops"),
        client.post("/api/v2/webhooks/ops/ping"),
        client.get("/api/v2/webhooks/ops/deliveries"),
        client.get(f"/api/v2/webhooks/ops/deliveries/{delivery.pk}"),
        client.post(f"/api/v2/webhooks/ops/deliveries/{delivery.pk}/redeliver"),
    ]
    for response in forbidden:
        assert response.status_code == 403, (response.request["PATH_INFO"], response.content)
        assert response.json()["error"]["code"] == "permission_denied"
    assert Webhook.objects.get(pk=hook.pk).active and WebhookDelivery.objects.count() == 1


def test_ping_redeliver_and_the_delivery_log(hook, admin_a, client_for, receiver, django_capture_on_commit_callbacks):
    client = client_for(admin_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v2/webhooks/ops/ping")
    assert response.status_code == 202, response.content
    ping = response.json()
    assert response["Location"] == ping["url"] == f"/api/v2/webhooks/ops/deliveries/{ping['id']}"
    assert (ping["event"], ping["status"], ping["payload"]["webhook"]) == ("webhook.ping", "pending", "ops")
    verify(receiver.requests[0], SECRET)
    assert receiver.requests[0].payload["event"] == "webhook.ping"
    shown = client.get(ping["url"]).json()
    assert (shown["status"], shown["attempts"], shown["response_status"]) == ("delivered", 1, 200)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{ping['url']}/redeliver")
    assert response.status_code == 202, response.content
    again = response.json()
    assert again["id"] != ping["id"] and again["payload"]["delivery"] == again["id"]
    assert {k: v for k, v in again["payload"].items() if k != "delivery"} == {
        k: v for k, v in ping["payload"].items() if k != "delivery"}  # fmt: skip
    assert receiver.requests[1].headers["x-loom-delivery"] == str(again["id"])

    pending = webhook_ping(actor=admin_a, webhook=hook)
    response = client.post(f"/api/v2/webhooks/ops/deliveries/{pending.pk}/redeliver")
    assert response.status_code == 409 and "still pending" in response.json()["error"]["message"]

    log = client.get("/api/v2/webhooks/ops/deliveries", {"page_size": 2}).json()
    assert log["count"] == 3 and [d["id"] for d in log["results"]] == [pending.pk, again["id"]]
    delivered = client.get("/api/v2/webhooks/ops/deliveries", {"status": "delivered"}).json()["results"]
    assert {d["id"] for d in delivered} == {ping["id"], again["id"]}
    response = client.get("/api/v2/webhooks/ops/deliveries", {"status": "lost"})
    assert response.status_code == 400 and "status" in response.json()["error"]["fields"]
    assert client.get("/api/v2/webhooks/ops/deliveries/999999999").status_code == 404
    actions = AuditEvent.objects.filter(entity_kind="webhook", entity_name="ops").values_list("action", flat=True)
    assert sorted(actions) == ["create", "ping", "ping", "redeliver"]


def test_ping_of_an_inactive_webhook_is_a_409(hook, admin_a, client_for):
    Webhook.objects.filter(pk=hook.pk).update(active=False)
    response = client_for(admin_a).post("/api/v2/webhooks/ops/ping")
    assert response.status_code == 409 and "inactive" in response.json()["error"]["message"]


def test_another_tenants_webhook_is_a_404_everywhere(hook, admin_a, admin_b, user_b, client_for):
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    for user in (admin_b, user_b):
        client = client_for(user)
        assert client.get("/api/v2/webhooks/").json()["results"] == []
        responses = [
            client.get("/api/v2/webhooks/ops"),
            client.patch("/api/v2/webhooks/ops", {"active": False}, format="json"),
            client.put("/api/v2/webhooks/ops", BODY, format="json"),
            client.delete("/api/v2/webhooks/ops"),
            client.post("/api/v2/webhooks/ops/ping"),
            client.get("/api/v2/webhooks/ops/deliveries"),
            client.get(f"/api/v2/webhooks/ops/deliveries/{delivery.pk}"),
            client.post(f"/api/v2/webhooks/ops/deliveries/{delivery.pk}/redeliver"),
        ]
        assert [r.status_code for r in responses] == [404] * len(responses)
    assert client_for(admin_b, tenant="acme").get("/api/v2/webhooks/ops").status_code == 404
    # Same name in B's own namespace is B's, and A's delivery ids mean nothing under it.
    assert client_for(admin_b).post("/api/v2/webhooks/", BODY, format="json").status_code == 201
    assert client_for(admin_b).get(f"/api/v2/webhooks/ops/deliveries/{delivery.pk}").status_code == 404
    assert Webhook.objects.get(pk=hook.pk).active


def test_the_secret_never_appears_in_responses_or_logs(hook, admin_a, client_for, caplog, receiver):
    caplog.set_level(logging.DEBUG)
    client = client_for(admin_a)
    delivery = webhook_ping(actor=admin_a, webhook=hook)
    webhook_delivery_send(delivery_pk=delivery.pk)
    urls = ["/api/v2/webhooks/", "/api/v2/webhooks/ops", "/api/v2/webhooks/ops/deliveries",
            f"/api/v2/webhooks/ops/deliveries/{delivery.pk}", "/api/v2/audit-events/"]  # fmt: skip
    bodies = [client.get(url).content.decode() for url in urls]
    bodies.append(client.patch("/api/v2/webhooks/ops", {"secret": OTHER_SECRET}, format="json").content.decode())
    for text in [*bodies, caplog.text]:
        assert SECRET not in text and OTHER_SECRET not in text


# --- a real worker -----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_a_clusters_job_events(worker: Path, tenant_a, admin_a, receiver):
    catalog_import(tenant=tenant_a, user=None, data=catalog(seed="5"))
    make_webhook(tenant_a, admin_a, receiver.url())
    cluster, job = cluster_create(
        user=admin_a, tenant=tenant_a, request=PreviewRequest(name="hooked", template="fleet", size=2)
    )
    run_to_completion(job, worker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(receiver.requests) < 2:
        time.sleep(0.1)
    events = sorted((r.headers["x-loom-event"], r.payload["job"]["status"]) for r in receiver.requests)
    assert events == [("job.started", "running"), ("job.succeeded", "completed")], worker.read_text()[-3000:]
    for request in receiver.requests:
        verify(request, SECRET)
        assert request.payload["cluster"]["id"] == cluster.pk
    succeeded = next(r.payload for r in receiver.requests if r.headers["x-loom-event"] == "job.succeeded")
    assert succeeded["cluster"]["status"] == Cluster.Status.ACTIVE
    deliveries = WebhookDelivery.objects.filter(webhook__tenant=tenant_a)
    deadline = time.monotonic() + 30  # the worker records the answer just after the receiver saw the request
    while time.monotonic() < deadline and deliveries.exclude(status="delivered").exists():
        time.sleep(0.1)
    assert sorted(deliveries.values_list("event", "status", "attempts")) == [
        ("job.started", "delivered", 1), ("job.succeeded", "delivered", 1)]  # fmt: skip
    assert Job.objects.get(pk=job.pk).status == Job.Status.COMPLETED
