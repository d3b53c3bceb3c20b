"""Lifecycle webhooks: a tenant's HTTP endpoints told about job and lease events, with a delivery log.

How an event travels, and why it cannot hurt the engine:

1. The engine sends ``clusters.engine.signals.job_event`` after its transaction commits. ``on_job_event`` (connected
   in ``ClustersConfig.ready``) costs one indexed query when the tenant has no webhook; otherwise it stores
   one ``WebhookDelivery`` per matching active webhook and hands "send delivery N" to the broker on commit.
   It never raises: a broken receiver must not turn a finished job into an error.
2. ``webhook_delivery_send`` makes one try. It *claims* the delivery with a conditional UPDATE (pending,
   due, attempts + 1, due time pushed past the try's timeout), so a duplicate message or the sweep finds
   nothing to claim and sends nothing twice; then it POSTs with the stdlib (``urllib``, a timeout, no
   redirects followed: a redirect would turn the POST into a GET without the body) and records the result
   conditionally on still holding the claim. A 2xx is delivered; anything else, a timeout or a connection
   error is retried after an exponential, jittered backoff, up to ``LOOM_WEBHOOK_MAX_ATTEMPTS`` tries, then
   the delivery fails. Every try records the status and a short redacted excerpt of the answer (or the
   error) on the row and writes one structured log line.
3. ``webhook_deliveries_resend_due`` (beat, every ``LOOM_WEBHOOK_SWEEP_SECONDS``) sends again what is more
   than ``LOOM_WEBHOOK_LOST_SECONDS`` overdue: a message lost with a killed worker, a broker that was down
   when the event happened, or a try whose worker died mid-request.

Requests are signed: ``X-Loom-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the
webhook's secret, so a receiver can check both who sent the body and that it is fresh (replay protection:
reject a ``t`` older than a few minutes). The secret is encrypted at rest (``providers.secrets``), never
returned by the API or shown by the admin, and registered with the log redactor whenever it is decrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from clusters.engine.backoff import jittered_backoff
from clusters.engine.signals import JobEvent, JobEventData
from clusters.models import Cluster, Job, Webhook, WebhookDelivery
from providers.egress import EgressRefused, check_url_field, resolve_checked, url_host_port
from providers.secrets import ENCRYPTED, SecretsError, decrypt_json, encrypt_json, redact, register_secrets
from tenants.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from tenants.models import NAME_PATTERN, Role, Tenant
from tenants.selectors import user_role
from tenants.services import audit

logger = logging.getLogger(__name__)

EVENTS: tuple[str, ...] = tuple(event.value for event in JobEvent)
PING_EVENT = "webhook.ping"
"""Sent by ``webhook_ping`` to one webhook whatever its ``events``; not a value a webhook may subscribe to."""

SECRET_MIN_LENGTH = 16
SECRET_MAX_LENGTH = 255
URL_MAX_LENGTH = 2000
EXCERPT_BYTES = 512
"""How much of an answer is kept on the delivery: enough to read an error page's first lines."""
LEASE_MARGIN_SECONDS = 60
"""Added to the request timeout while a try holds its claim: the try has surely ended by then."""
SWEEP_BATCH = 1000
USER_AGENT = "Loom-Webhook/2"

_NAME = re.compile(NAME_PATTERN)


# --- validation ---------------------------------------------------------------------------------------------


def _invalid(field: str, message: str) -> ApplicationError:
    return ApplicationError(f"{field}: {message}", fields={field: [message]})


def webhook_check_url(url: Any) -> str:
    """``url`` if it is an absolute http(s) URL Loom can POST to; else ApplicationError naming the problem.

    Stricter than Django's URLValidator where that matters here (no credentials in the URL: it is shown to
    every tenant admin and in logs, while the secret is not) and looser where it would get in the way
    (single-label hosts such as ``http://jenkins:8080/hook`` are normal inside a company network).
    """
    if not isinstance(url, str) or not url:
        raise _invalid("url", "is required")
    if len(url) > URL_MAX_LENGTH:
        raise _invalid("url", f"must be at most {URL_MAX_LENGTH} characters")
    if not url.isascii():
        raise _invalid("url", "must be ASCII: percent-encode other characters and give the host in punycode")
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        raise _invalid("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is the check: a bad one raises ValueError
    except ValueError as error:
        raise _invalid("url", f"is not a valid URL ({error})") from error
    if parts.scheme.lower() not in ("http", "https"):
        raise _invalid("url", "must be an http:// or https:// URL")
    if not parts.hostname:
        raise _invalid("url", "must name a host")
    if parts.username is not None or parts.password is not None:
        raise _invalid("url", "must not contain a user name or password: requests are signed with the secret")
    check_url_field("url", url)
    return url


def webhook_check_events(events: Any) -> list[str]:
    """The subscribed events, deduplicated in the engine's order; empty means every event."""
    if events is None:
        return []
    if not isinstance(events, (list, tuple)):
        raise _invalid("events", "must be a list of event names")
    problems = [
        f"events[{index}]: unknown event {event!r}; known: {', '.join(EVENTS)}"
        for index, event in enumerate(events)
        if event not in EVENTS
    ]
    if problems:
        raise ApplicationError(problems[0], fields={"events": problems})
    return [event for event in EVENTS if event in events]


def webhook_check_secret(secret: Any) -> str:
    if not isinstance(secret, str) or not secret:
        raise _invalid("secret", "is required: it signs every request")
    if secret == ENCRYPTED:
        raise _invalid("secret", f"{ENCRYPTED} keeps a stored secret, and none is stored: give the actual value")
    if len(secret) < SECRET_MIN_LENGTH:
        raise _invalid("secret", f"must be at least {SECRET_MIN_LENGTH} characters (it is an HMAC key)")
    if len(secret) > SECRET_MAX_LENGTH:
        raise _invalid("secret", f"must be at most {SECRET_MAX_LENGTH} characters")
    return secret


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _invalid("name", "must be 1-255 characters of letters, digits, '_', '.' or '-'")
    return name


# --- selectors ----------------------------------------------------------------------------------------------


def webhook_is_admin(*, user: Any, tenant: Tenant) -> bool:
    return user_role(user=user, tenant=tenant) == Role.ADMIN


def webhook_require_admin(*, actor: Any, tenant: Tenant) -> None:
    """Webhooks are managed by the tenant's admins: their URLs and delivery log describe every cluster."""
    if actor is None or not webhook_is_admin(user=actor, tenant=tenant):
        raise PermissionDenied(f"only admins of tenant {tenant.name} manage its webhooks")


def webhook_list(*, user: Any, tenant: Tenant) -> QuerySet[Webhook]:
    """The tenant's webhooks that ``user`` may see (every member sees the list; secrets never leave)."""
    return Webhook.objects.restrict(user, "view").filter(tenant=tenant).select_related("tenant")


def webhook_get(*, user: Any, tenant: Tenant, name: str) -> Webhook:
    webhook = webhook_list(user=user, tenant=tenant).filter(name=name).first()
    if webhook is None:
        raise NotFound(f"webhook {name} not found")
    return webhook


def webhook_delivery_list(*, user: Any, webhook: Webhook) -> QuerySet[WebhookDelivery]:
    """A webhook's delivery log, newest first. Admins only: payloads name every cluster of the tenant."""
    webhook_require_admin(actor=user, tenant=webhook.tenant)
    return WebhookDelivery.objects.filter(webhook=webhook).order_by("-created_at", "-pk")


def webhook_delivery_get(*, user: Any, webhook: Webhook, pk: int) -> WebhookDelivery:
    delivery = webhook_delivery_list(user=user, webhook=webhook).filter(pk=pk).first()
    if delivery is None:
        raise NotFound(f"delivery {pk} of webhook {webhook.name} not found")
    return delivery


def webhook_has_secret(webhook: Webhook) -> bool:
    return bool(webhook.secret_data)


# --- services -----------------------------------------------------------------------------------------------


def _public_fields(webhook: Webhook) -> dict[str, Any]:
    """What the audit trail records of a webhook: never the secret, only whether it changed."""
    return {"url": webhook.url, "events": list(webhook.events), "active": webhook.active}


def _store_secret(webhook: Webhook, secret: str) -> None:
    register_secrets([secret])
    webhook.secret_data = encrypt_json({"secret": secret})


@transaction.atomic
def webhook_create(
    *, actor: Any, tenant: Tenant, name: str, url: str, secret: str, events: Sequence[str] = (), active: bool = True
) -> Webhook:
    """Create a webhook of ``tenant``. Raises PermissionDenied unless ``actor`` administers the tenant,
    ApplicationError naming the field for bad input, Conflict when the name is taken."""
    webhook_require_admin(actor=actor, tenant=tenant)
    webhook = Webhook(
        tenant=tenant,
        name=_check_name(name),
        url=webhook_check_url(url),
        events=webhook_check_events(events),
        active=bool(active),
    )
    _store_secret(webhook, webhook_check_secret(secret))
    if Webhook.objects.filter(tenant=tenant, name=name).exists():
        raise Conflict(f"webhook {name} already exists", fields={"name": ["already exists"]})
    try:
        with transaction.atomic():
            webhook.save()
    except IntegrityError as error:  # created by someone else since the check
        raise Conflict(f"webhook {name} already exists", fields={"name": ["already exists"]}) from error
    audit(tenant=tenant, actor=actor, action="create", kind="webhook", name=name,
          summary={"after": _public_fields(webhook)})  # fmt: skip
    return webhook


@transaction.atomic
def webhook_update(
    *,
    actor: Any,
    webhook: Webhook,
    url: str | None = None,
    secret: str | None = None,
    events: Sequence[str] | None = None,
    active: bool | None = None,
) -> Webhook:
    """Change what is given; ``secret`` None (or ``"$encrypted$"``) keeps the stored one."""
    webhook_require_admin(actor=actor, tenant=webhook.tenant)
    webhook = Webhook.objects.select_for_update().select_related("tenant").get(pk=webhook.pk)
    before = _public_fields(webhook)
    if url is not None:
        webhook.url = webhook_check_url(url)
    if events is not None:
        webhook.events = webhook_check_events(events)
    if active is not None:
        webhook.active = bool(active)
    secret_changed = secret is not None and secret != ENCRYPTED
    if secret == ENCRYPTED and not webhook.secret_data:
        webhook_check_secret(secret)  # raises: nothing stored to keep
    if secret_changed:
        _store_secret(webhook, webhook_check_secret(secret))
    after = _public_fields(webhook)
    if before != after or secret_changed:
        webhook.save(update_fields=["url", "events", "active", "secret_data"])
        audit(tenant=webhook.tenant, actor=actor, action="update", kind="webhook", name=webhook.name,
              summary={"before": before, "after": after, "secret_changed": secret_changed})  # fmt: skip
    return webhook


@transaction.atomic
def webhook_delete(*, actor: Any, webhook: Webhook) -> None:
    """Delete a webhook and its delivery log; messages still queued for it find nothing and send nothing."""
    webhook_require_admin(actor=actor, tenant=webhook.tenant)
    audit(tenant=webhook.tenant, actor=actor, action="delete", kind="webhook", name=webhook.name,
          summary={"before": _public_fields(webhook)})  # fmt: skip
    webhook.delete()


def _require_active(webhook: Webhook) -> None:
    if not webhook.active:
        raise Conflict(f"webhook {webhook.name} is inactive: activate it first", fields={"active": ["is false"]})


@transaction.atomic
def webhook_ping(*, actor: Any, webhook: Webhook) -> WebhookDelivery:
    """Queue a ``webhook.ping`` delivery to ``webhook`` (whatever events it subscribes to), to test the
    endpoint and the signature check. Raises Conflict for an inactive webhook."""
    webhook_require_admin(actor=actor, tenant=webhook.tenant)
    _require_active(webhook)
    payload = {
        "event": PING_EVENT,
        "time": _iso(timezone.now()),
        "tenant": webhook.tenant.name,
        "webhook": webhook.name,
        "message": "test event",
        "cluster": None,
        "job": None,
    }
    delivery = _create_deliveries([webhook.pk], PING_EVENT, payload)[0]
    audit(tenant=webhook.tenant, actor=actor, action="ping", kind="webhook", name=webhook.name,
          summary={"delivery": delivery.pk})  # fmt: skip
    return delivery


@transaction.atomic
def webhook_delivery_redeliver(*, actor: Any, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a finished delivery's payload again, as a new delivery (its own id, tries and log line); the
    event time stays the original's. Raises Conflict while the delivery is still being tried."""
    webhook = delivery.webhook
    webhook_require_admin(actor=actor, tenant=webhook.tenant)
    _require_active(webhook)
    if delivery.status == WebhookDelivery.Status.PENDING:
        raise Conflict(
            f"delivery {delivery.pk} is still pending (try {delivery.attempts} of "
            f"{settings.LOOM_WEBHOOK_MAX_ATTEMPTS}); redeliver it once it has been delivered or has failed"
        )
    again = _create_deliveries([webhook.pk], delivery.event, dict(delivery.payload))[0]
    audit(tenant=webhook.tenant, actor=actor, action="redeliver", kind="webhook", name=webhook.name,
          summary={"delivery": delivery.pk, "new_delivery": again.pk})  # fmt: skip
    return again


# --- events → deliveries ------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _create_deliveries(webhook_pks: Iterable[int], event: str, payload: dict[str, Any]) -> list[WebhookDelivery]:
    """One pending delivery per webhook, due now, sent to the broker once the caller's transaction commits.

    The payload names its own delivery id (receivers deduplicate on it), which is known only after the
    insert; hence the second, bulk UPDATE in the same transaction.
    """
    now = timezone.now()
    with transaction.atomic():
        deliveries = WebhookDelivery.objects.bulk_create(
            [WebhookDelivery(webhook_id=pk, event=event, payload=payload, next_attempt_at=now) for pk in webhook_pks]
        )
        for delivery in deliveries:
            delivery.payload = {**payload, "event": event, "delivery": delivery.pk}
        WebhookDelivery.objects.bulk_update(deliveries, ["payload"])
        _enqueue_on_commit([delivery.pk for delivery in deliveries])
    return deliveries


def _enqueue_on_commit(pks: list[int], countdown: float | None = None) -> None:
    def send() -> None:
        for pk in pks:
            try:
                webhook_delivery_send_task.apply_async((pk,), countdown=countdown)
            except Exception:  # the broker is down: the sweep sends it once the broker is back
                logger.exception("could not queue webhook delivery", extra={"delivery": pk})

    transaction.on_commit(send)


def _event_payload(data: JobEventData, cluster: Cluster, job: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "event": str(data.event),
        "time": _iso(timezone.now()),
        "tenant": cluster.tenant.name,
        "message": data.message,
        "cluster": {"id": cluster.pk, "name": cluster.name, "status": cluster.status, "health": cluster.health},
        "job": None
        if job is None
        else {"id": job["pk"], "operation": job["operation"], "status": job["status"], "message": job["message"]},
    }


def webhook_deliveries_create(*, data: JobEventData) -> list[WebhookDelivery]:
    """Store and queue one delivery of ``data`` per active webhook of its tenant that subscribes to it.

    One query when no webhook matches (the common case: the engine pays nothing for the feature unused).
    """
    event = str(data.event)
    candidates = Webhook.objects.filter(tenant_id=data.tenant_id, active=True).values_list("pk", "events")
    # The events filter runs here, not in SQL: JSON containment is not portable to SQLite (embedded mode),
    # and a tenant has a handful of webhooks.
    matching = [pk for pk, events in candidates if not events or event in events]
    if not matching:
        return []
    cluster = Cluster.objects.select_related("tenant").filter(pk=data.cluster_id).first()
    if cluster is None:  # deleted since the event was sent
        return []
    job = None
    if data.job_id is not None:
        job = Job.objects.filter(pk=data.job_id).values("pk", "operation", "status", "message").first()
    return _create_deliveries(matching, event, _event_payload(data, cluster, job))


def on_job_event(sender: Any, data: JobEventData, **kwargs: Any) -> None:
    """Receiver of ``clusters.engine.signals.job_event``. Never raises: the job it reports on has committed, and a
    webhook problem must not surface as an engine error."""
    try:
        webhook_deliveries_create(data=data)
    except Exception:
        logger.exception(
            "could not record webhook deliveries",
            extra={"event": str(data.event), "tenant": data.tenant_id, "cluster": data.cluster_id, "job": data.job_id},
        )


# --- sending ------------------------------------------------------------------------------------------------


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Loom-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_retry_delay(attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds before try ``attempt + 1``: ``LOOM_WEBHOOK_BACKOFF_SECONDS`` doubling per try up to
    ``LOOM_WEBHOOK_BACKOFF_CAP_SECONDS``, with "equal jitter" (half to all of it) so the deliveries of one
    outage do not all come back at once. Longer than the engine's task backoff: a receiver that is down is
    often down for minutes."""
    return jittered_backoff(
        attempt, base=settings.LOOM_WEBHOOK_BACKOFF_SECONDS, cap=settings.LOOM_WEBHOOK_BACKOFF_CAP_SECONDS, rng=rng
    )


@dataclass(frozen=True)
class HttpResult:
    """What one POST came back with: a status (None when no answer came) and an excerpt, or the error."""

    status: int | None
    excerpt: str = ""
    error: str = ""

    @property
    def is_success(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer like any other non-2xx: following it would resend as a GET without the body, or
    to wherever the receiver points (another host, an internal address)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _excerpt(raw: bytes) -> str:
    return redact(raw[:EXCERPT_BYTES].decode("utf-8", errors="replace"))


def _describe(error: BaseException, timeout: float) -> str:
    """A one-line error: the underlying cause of a URLError (refused, unknown host, TLS), else the error."""
    cause: Any = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, TimeoutError):
        return f"timed out after {timeout:g} s"
    if not isinstance(cause, BaseException):
        cause = error
    return redact(f"{type(cause).__name__}: {cause}")[:EXCERPT_BYTES]


class _PinnedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Connects to the one address the egress policy checked, not to whatever the host name resolves to
    when the connection opens (no DNS-rebinding window). The URL's host still goes in the Host header
    and, for https, in SNI and the certificate check."""

    def __init__(self, address: str) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self.address = address

    def _pinned(self, connection_class: type[http.client.HTTPConnection]) -> Any:
        def factory(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            connection = connection_class(host, **kwargs)
            connection._create_connection = lambda target, *args: socket.create_connection(  # type: ignore[attr-defined]
                (self.address, target[1]), *args
            )
            return connection

        return factory

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._pinned(http.client.HTTPConnection), req)

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._pinned(http.client.HTTPSConnection), req, context=self._context)


def http_post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> HttpResult:
    """POST ``body`` to ``url``; never raises for anything the network or the receiver can do. The host
    passes the egress policy first (resolved once; the connection goes to the checked address), and no
    proxy from the environment is used (a proxy would make the connection on Loom's behalf unchecked)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    target = url_host_port(url)
    try:
        if target is None:
            raise EgressRefused(f"url {url!r} names no host")
        address = resolve_checked(*target, what="url")
    except EgressRefused as error:
        return HttpResult(None, "", error.message)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PinnedHandler(address), _NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            return HttpResult(response.status, _excerpt(response.read(EXCERPT_BYTES)))
    except urllib.error.HTTPError as error:
        try:
            raw = error.read(EXCERPT_BYTES)
        except (OSError, HTTPException):
            raw = b""
        finally:
            error.close()
        return HttpResult(error.code, _excerpt(raw), f"answered HTTP {error.code}")
    except (OSError, HTTPException, ValueError) as error:  # URLError, timeouts, resets, bad status lines
        return HttpResult(None, "", _describe(error, timeout))


def _claim(delivery: WebhookDelivery, now: datetime) -> int | None:
    """Take the right to make the next try of ``delivery`` (as just read): one conditional UPDATE on the
    facts read. Returns the try's number, or None when the delivery is not due or another sender took it
    first. The due time moves past the try's timeout, so the sweep leaves a try in progress alone."""
    if delivery.attempts >= settings.LOOM_WEBHOOK_MAX_ATTEMPTS:
        return None
    lease = now + timedelta(seconds=settings.LOOM_WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS)
    claimable = WebhookDelivery.objects.filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
        pk=delivery.pk,
        status=WebhookDelivery.Status.PENDING,
        attempts=delivery.attempts,
    )
    if not claimable.update(attempts=F("attempts") + 1, next_attempt_at=lease):
        return None
    return delivery.attempts + 1


def _finish(delivery: WebhookDelivery, attempt: int, fields: dict[str, Any]) -> bool:
    """Record a try, provided no one took the delivery over meanwhile (a try that outlived its claim)."""
    held = WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING, attempts=attempt)
    if not held.update(**fields):
        return False
    for name, value in fields.items():
        setattr(delivery, name, value)
    return True


def _request(delivery: WebhookDelivery, secret: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Loom-Event": delivery.event,
        "X-Loom-Delivery": str(delivery.pk),
        "X-Loom-Signature": webhook_signature(secret, int(time.time()), body),
    }
    return body, headers


def webhook_delivery_send(*, delivery_pk: int, now: datetime | None = None) -> WebhookDelivery | None:
    """Make one try of a delivery that is due; schedule the next one or settle the delivery.

    Returns the delivery as recorded, or None when there was nothing to do (not due, taken by another
    sender, finished, deleted). Side effects: one HTTP POST; the row's attempts, next_attempt_at, status,
    response_status, response_excerpt, error and delivered_at; a log line; on failure with tries left, a
    broker message for the retry (sent on commit, with the backoff as countdown).
    """
    now = now or timezone.now()
    delivery = WebhookDelivery.objects.select_related("webhook__tenant").filter(pk=delivery_pk).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    webhook = delivery.webhook
    if not webhook.active:
        inactive = WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING)
        inactive.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None, error="webhook is inactive")
        return None
    attempt = _claim(delivery, now)
    if attempt is None:
        return None
    delivery.attempts = attempt
    try:
        secret = str(decrypt_json(webhook.secret_data).get("secret", ""))
    except SecretsError as error:
        result = HttpResult(None, "", str(error))
    else:
        body, headers = _request(delivery, secret)
        result = http_post(webhook.url, body, headers, timeout=settings.LOOM_WEBHOOK_TIMEOUT_SECONDS)
    finished = timezone.now()
    fields: dict[str, Any] = {
        "response_status": result.status,
        "response_excerpt": result.excerpt,
        "error": "" if result.is_success else result.error,
    }
    delay = None
    if result.is_success:
        fields.update(status=WebhookDelivery.Status.DELIVERED, delivered_at=finished, next_attempt_at=None)
    elif attempt >= settings.LOOM_WEBHOOK_MAX_ATTEMPTS:
        fields.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None)
    else:
        delay = webhook_retry_delay(attempt)
        fields["next_attempt_at"] = finished + timedelta(seconds=delay)
    with transaction.atomic():
        if not _finish(delivery, attempt, fields):
            return None
        if delay is not None:
            _enqueue_on_commit([delivery.pk], countdown=delay)
    log = logger.info if result.is_success else logger.warning
    log(
        "webhook delivery %s (%s) to webhook %s, try %s of %s: %s",
        delivery.pk,
        delivery.event,
        webhook.name,
        attempt,
        settings.LOOM_WEBHOOK_MAX_ATTEMPTS,
        f"HTTP {result.status}" if result.status is not None else result.error,
        extra={
            "tenant": webhook.tenant.name,
            "webhook": webhook.name,
            "delivery": delivery.pk,
            "attempt": attempt,
            "response_status": result.status,
            "delivery_status": delivery.status,
        },
    )
    return delivery


def webhook_deliveries_resend_due(*, now: datetime | None = None) -> list[int]:
    """The sweep (beat): queue again every pending delivery more than ``LOOM_WEBHOOK_LOST_SECONDS`` overdue.

    Overdue means its message was lost or its sender died mid-try (the claim pushed the due time past the
    try's timeout). A delivery whose last allowed try was lost that way fails. A duplicate message is
    harmless: the claim lets one sender through. Returns the pks queued.
    """
    now = now or timezone.now()
    overdue = WebhookDelivery.objects.filter(
        status=WebhookDelivery.Status.PENDING,
        next_attempt_at__lt=now - timedelta(seconds=settings.LOOM_WEBHOOK_LOST_SECONDS),
    )
    exhausted = overdue.filter(attempts__gte=settings.LOOM_WEBHOOK_MAX_ATTEMPTS)
    exhausted.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None, error="the last try was lost")
    pks = list(overdue.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:SWEEP_BATCH])
    if pks:
        logger.warning("resending overdue webhook deliveries", extra={"deliveries": pks})
        _enqueue_on_commit(pks)
    return pks


@shared_task(name="clusters.tasks.webhook_delivery_send_task", ignore_result=True, acks_late=True)
def webhook_delivery_send_task(delivery_pk: int) -> None:
    """One try of a webhook delivery; a duplicate message finds it claimed or not due and does nothing."""
    webhook_delivery_send(delivery_pk=delivery_pk)


@shared_task(name="clusters.tasks.webhook_deliveries_resend_due_task", ignore_result=True)
def webhook_deliveries_resend_due_task() -> int:
    """Beat entry point of ``webhook_deliveries_resend_due``; returns how many were queued."""
    return len(webhook_deliveries_resend_due())
