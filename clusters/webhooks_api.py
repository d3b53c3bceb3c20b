"""API of lifecycle webhooks: ``/api/v2/webhooks`` by name, their delivery log, redelivery and a test ping.

Tenant admins manage webhooks and read the log; other members may list the webhooks (to know what is
wired up) but see only each URL's origin, since a receiver URL often carries a token of its own, and get
403 on writes and on the log. The ``secret`` is write-only: it is accepted on create and change and never
returned (``has_secret`` says whether one is stored); sending it back as ``"$encrypted$"`` keeps it, as with
provider secrets. Another tenant's webhook is a 404 like anything else of another tenant. Every write goes
through ``clusters.features.webhooks``, which validates, audits and queues.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from clusters.features import webhooks
from clusters.features.webhooks import EVENTS, SECRET_MAX_LENGTH, URL_MAX_LENGTH
from clusters.models import Webhook, WebhookDelivery
from tenants.api import TENANT_PARAMETER, TenantScopedMixin
from tenants.errors import ApplicationError
from tenants.models import NAME_PATTERN

DELIVERY_PK_PATTERN = r"[0-9]{1,18}"  # beyond that, not a bigint: a 404 rather than a database error


class WebhookSerializer(serializers.ModelSerializer):
    name = serializers.RegexField(NAME_PATTERN, max_length=255)
    url = serializers.CharField(
        max_length=URL_MAX_LENGTH, help_text="http(s) URL the events are POSTed to (members see its origin only)."
    )
    secret = serializers.CharField(
        write_only=True,
        required=False,
        trim_whitespace=False,
        max_length=SECRET_MAX_LENGTH,
        help_text="HMAC-SHA256 key that signs every request (at least 16 characters). Required on create; "
        'never returned; omit it or send "$encrypted$" to keep the stored one.',
    )
    has_secret = serializers.SerializerMethodField()
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENTS),
        required=False,
        help_text="Events to send; empty (the default) means every event.",
    )
    active = serializers.BooleanField(required=False, default=True)

    class Meta:
        model = Webhook
        fields = ["name", "url", "secret", "has_secret", "events", "active", "created_at"]
        read_only_fields = ["created_at"]

    def get_has_secret(self, webhook: Webhook) -> bool:
        return webhooks.webhook_has_secret(webhook)

    def to_representation(self, instance: Webhook) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.context.get("is_admin"):
            parts = urlsplit(instance.url)
            data["url"] = f"{parts.scheme}://{parts.netloc}/"
        return data


class WebhookDeliverySerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="This delivery in the API.")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id", "url", "event", "status", "attempts", "next_attempt_at", "response_status", "response_excerpt",
            "error", "created_at", "delivered_at", "payload",
        ]  # fmt: skip
        read_only_fields = fields

    def get_url(self, delivery: WebhookDelivery) -> str:
        name = self.context["webhook_name"]
        return reverse("webhook-delivery", kwargs={"name": name, "delivery_pk": delivery.pk})


DELIVERY_PK = OpenApiParameter("delivery_pk", int, OpenApiParameter.PATH, description="Delivery id.")
ACCEPTED = OpenApiResponse(WebhookDeliverySerializer, description="Queued; the delivery to follow.")


@extend_schema_view(
    deliveries=extend_schema(
        parameters=[
            TENANT_PARAMETER,
            OpenApiParameter("status", str, enum=list(WebhookDelivery.Status.values)),
            OpenApiParameter("event", str, description="Event name, e.g. job.failed or webhook.ping."),
        ],
        responses=WebhookDeliverySerializer(many=True),
    ),
    delivery=extend_schema(parameters=[TENANT_PARAMETER, DELIVERY_PK], responses=WebhookDeliverySerializer),
    redeliver=extend_schema(parameters=[TENANT_PARAMETER, DELIVERY_PK], request=None, responses={202: ACCEPTED}),
    ping=extend_schema(parameters=[TENANT_PARAMETER], request=None, responses={202: ACCEPTED}),
)
@extend_schema(parameters=[TENANT_PARAMETER])
class WebhookViewSet(TenantScopedMixin, viewsets.ModelViewSet):
    """Webhooks of the current tenant: signed POSTs on job and lease events, with a delivery log."""

    serializer_class = WebhookSerializer
    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z0-9_.\-]+"
    filterset_fields = ["active"]

    def get_queryset(self) -> Any:
        if self.is_schema_view:
            return Webhook.objects.none()
        return webhooks.webhook_list(user=self.request.user, tenant=self.tenant)

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if not self.is_schema_view and hasattr(self, "tenant"):
            context["is_admin"] = self.is_admin
        return context

    @property
    def is_admin(self) -> bool:
        if not hasattr(self, "_is_admin"):
            self._is_admin = webhooks.webhook_is_admin(user=self.request.user, tenant=self.tenant)
        return self._is_admin

    def require_admin(self) -> None:
        """403 for members; called after the webhook was found, so another tenant's name stays a 404."""
        webhooks.webhook_require_admin(actor=self.request.user, tenant=self.tenant)

    def _respond(self, webhook: Webhook, status_code: int = status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(webhook).data, status=status_code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.require_admin()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        webhook = webhooks.webhook_create(
            actor=request.user,
            tenant=self.tenant,
            name=data["name"],
            url=data["url"],
            secret=data.get("secret", ""),
            events=data.get("events", []),
            active=data.get("active", True),
        )
        return self._respond(webhook, status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        webhook = self.get_object()
        self.require_admin()
        partial = kwargs.get("partial", False)
        serializer = self.get_serializer(webhook, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "name" in data and data["name"] != webhook.name:
            raise ApplicationError(
                "name: cannot be changed; create a new webhook instead", fields={"name": ["cannot be changed"]}
            )
        webhook = webhooks.webhook_update(
            actor=request.user,
            webhook=webhook,
            url=data.get("url"),
            secret=data.get("secret"),
            # PUT replaces: a missing list means every event, as on create.
            events=data.get("events", None if partial else []),
            active=data.get("active", None if partial else True),
        )
        return self._respond(webhook)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        webhook = self.get_object()
        self.require_admin()
        webhooks.webhook_delete(actor=request.user, webhook=webhook)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _delivery_response(self, delivery: WebhookDelivery, webhook: Webhook, status_code: int) -> Response:
        serializer = WebhookDeliverySerializer(delivery, context={"webhook_name": webhook.name})
        headers = {"Location": str(serializer.data["url"])} if status_code == status.HTTP_202_ACCEPTED else None
        return Response(serializer.data, status=status_code, headers=headers)

    @action(detail=True, methods=["get"], filter_backends=[])
    def deliveries(self, request: Request, name: str) -> Response:
        """The webhook's delivery log, newest first (tenant admins). Filter with ``?status=`` and ``?event=``."""
        webhook = self.get_object()
        deliveries = webhooks.webhook_delivery_list(user=request.user, webhook=webhook)
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in WebhookDelivery.Status.values:
                problem = f"must be one of {', '.join(WebhookDelivery.Status.values)}"
                raise ApplicationError(f"status: {problem}", fields={"status": [problem]})
            deliveries = deliveries.filter(status=wanted)
        if request.query_params.get("event"):
            deliveries = deliveries.filter(event=request.query_params["event"])
        page = self.paginate_queryset(deliveries)
        serializer = WebhookDeliverySerializer(page, many=True, context={"webhook_name": webhook.name})
        return self.get_paginated_response(serializer.data)

    @action(detail=True, methods=["get"], url_path=rf"deliveries/(?P<delivery_pk>{DELIVERY_PK_PATTERN})",
            url_name="delivery", filter_backends=[])  # fmt: skip
    def delivery(self, request: Request, name: str, delivery_pk: str) -> Response:
        """One delivery: its payload, tries, last answer or error."""
        webhook = self.get_object()
        delivery = webhooks.webhook_delivery_get(user=request.user, webhook=webhook, pk=int(delivery_pk))
        return self._delivery_response(delivery, webhook, status.HTTP_200_OK)

    @action(detail=True, methods=["post"], url_path=rf"deliveries/(?P<delivery_pk>{DELIVERY_PK_PATTERN})/redeliver")
    def redeliver(self, request: Request, name: str, delivery_pk: str) -> Response:
        """Send a delivered or failed delivery's payload again, as a new delivery (202 with it)."""
        webhook = self.get_object()
        delivery = webhooks.webhook_delivery_get(user=request.user, webhook=webhook, pk=int(delivery_pk))
        again = webhooks.webhook_delivery_redeliver(actor=request.user, delivery=delivery)
        return self._delivery_response(again, webhook, status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"])
    def ping(self, request: Request, name: str) -> Response:
        """Send a ``webhook.ping`` test event to this webhook, whatever its events (202 with the delivery)."""
        webhook = self.get_object()
        delivery = webhooks.webhook_ping(actor=request.user, webhook=webhook)
        return self._delivery_response(delivery, webhook, status.HTTP_202_ACCEPTED)
