"""``GET /api/v2/usage/nodes``: node-hours over a time range, bucketed, with per-tenant/user/template/cluster
totals (the original's ``/v2/metrics/nodes/usage``, loom-reference §2.5). The definition of a node-hour is in
``clusters/features/metering.py``.

Query: ``start`` and ``end`` (ISO 8601, or Unix seconds as in the original; default the last 30 days up to
now), ``groupby`` (``hour``, ``day`` (default), ``week``, ``month``), and the filters ``user`` (a username),
``template`` (a template name) and ``cluster`` (an id). The tenant is the request's (``X-Loom-Tenant`` or
``?tenant=``). Tenant admins read the whole tenant, other members their own clusters; bad input is a 400
naming the parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clusters.features.metering import GROUPS, MAX_BUCKETS, bucket_starts, node_usage, usage_nodes
from tenants.api import TENANT_PARAMETER, TenantScopedMixin
from tenants.models import NAME_PATTERN

DEFAULT_RANGE = timedelta(days=30)


class MomentField(serializers.Field):
    """A point in time: ISO 8601 with a zone (a naive one is read as UTC) or Unix seconds."""

    default_error_messages = {"invalid": "must be an ISO 8601 date-time or Unix seconds, not {value!r}"}

    def to_internal_value(self, data: Any) -> datetime:
        text = str(data).strip()
        try:
            if text.lstrip("-").replace(".", "", 1).isdigit():
                return datetime.fromtimestamp(float(text), tz=UTC)
            moment = parse_datetime(text)
        except (ValueError, OverflowError, OSError):
            moment = None
        if moment is None:
            self.fail("invalid", value=text[:64])
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class UsageQuerySerializer(serializers.Serializer):
    start = MomentField(required=False, help_text="Range start (inclusive); default end − 30 days.")
    end = MomentField(required=False, help_text="Range end (exclusive); default now.")
    groupby = serializers.ChoiceField(choices=GROUPS, default="day")
    user = serializers.RegexField(r"^[\w.@+-]{1,150}\Z", required=False, help_text="A username.")
    template = serializers.RegexField(NAME_PATTERN, max_length=255, required=False)
    cluster = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or timezone.now()
        start = attrs.get("start") or end - DEFAULT_RANGE
        if start >= end:
            raise serializers.ValidationError({"start": [f"must be before end ({end.isoformat()})"]})
        try:
            bucket_starts(start, end, attrs["groupby"])
        except ValueError as error:
            raise serializers.ValidationError(
                {"groupby": [f"{error}: the range needs at most {MAX_BUCKETS} buckets; use a coarser groupby"]}
            ) from error
        return {**attrs, "start": start, "end": end}


class UsageNamedSerializer(serializers.Serializer):
    name = serializers.CharField()
    value = serializers.FloatField(help_text="Node-hours.")


USAGE_RESPONSE = inline_serializer(
    "NodeUsage",
    {
        "start": serializers.DateTimeField(),
        "end": serializers.DateTimeField(),
        "groupby": serializers.ChoiceField(choices=GROUPS),
        "unit": serializers.CharField(),
        "total": serializers.FloatField(),
        "data": inline_serializer(
            "NodeUsageBucket", {"time": serializers.DateTimeField(), "value": serializers.FloatField()}, many=True
        ),
        "tenants": UsageNamedSerializer(many=True),
        "users": UsageNamedSerializer(many=True),
        "templates": UsageNamedSerializer(many=True),
        "clusters": inline_serializer(
            "UsageCluster",
            {"id": serializers.IntegerField(), "name": serializers.CharField(), "value": serializers.FloatField()},
            many=True,
        ),
    },
)


class NodeUsageApi(TenantScopedMixin, APIView):
    """Node-hours of the tenant (admins) or of your own clusters (members)."""

    @extend_schema(
        summary="Node-hours over a time range",
        parameters=[
            TENANT_PARAMETER,
            OpenApiParameter("start", str, description="ISO 8601 or Unix seconds; default end − 30 days."),
            OpenApiParameter("end", str, description="ISO 8601 or Unix seconds (exclusive); default now."),
            OpenApiParameter("groupby", str, enum=GROUPS, description="Bucket size (UTC periods); default day."),
            OpenApiParameter("user", str, description="Only clusters owned by this username."),
            OpenApiParameter("template", str, description="Only clusters of this template."),
            OpenApiParameter("cluster", int, description="Only this cluster."),
        ],
        responses=USAGE_RESPONSE,
    )
    def get(self, request: Request) -> Response:
        """Node-hours per bucket and in total, with totals per tenant, user, template and cluster; a machine
        counts from its successful create to its successful delete (see clusters/features/metering.py)."""
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        nodes = usage_nodes(
            user=request.user,
            tenant=self.tenant,
            owner=data.get("user"),
            template=data.get("template"),
            cluster=data.get("cluster"),
        )
        usage = node_usage(nodes=nodes, start=data["start"], end=data["end"], groupby=data["groupby"])
        return Response(usage.to_json())
