"""Cluster API. For now: the create preview (layout, plan, cost) — nothing is created."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from loom_site.input_guards import StrictJSONParser
from tenants.api import TENANT_PARAMETER, TenantScopedMixin
from tenants.models import NAME_PATTERN

from .services.preview import PreviewRequest, cluster_preview


class ClusterCreateInputSerializer(serializers.Serializer):
    """A create request in the Loom format (camelCase keys as the original's API and CLI sent them)."""

    name = serializers.RegexField(NAME_PATTERN, max_length=255)
    clusterTemplate = serializers.RegexField(NAME_PATTERN, max_length=255)
    numMachines = serializers.IntegerField(min_value=1)
    provider = serializers.RegexField(NAME_PATTERN, max_length=255, required=False, allow_null=True)
    hardwaretype = serializers.RegexField(NAME_PATTERN, max_length=255, required=False, allow_null=True)
    imagetype = serializers.RegexField(NAME_PATTERN, max_length=255, required=False, allow_null=True)
    services = serializers.ListField(child=serializers.RegexField(NAME_PATTERN, max_length=255), required=False)
    config = serializers.DictField(required=False, allow_null=True)
    dnsSuffix = serializers.CharField(max_length=191, required=False, allow_null=True, allow_blank=True)

    def to_request(self) -> PreviewRequest:
        data = self.validated_data
        return PreviewRequest(
            name=data["name"],
            template=data["clusterTemplate"],
            size=data["numMachines"],
            provider=data.get("provider") or None,
            hardware=data.get("hardwaretype") or None,
            image=data.get("imagetype") or None,
            services=tuple(dict.fromkeys(data.get("services") or ())),
            config=data.get("config"),
            dns_suffix=data.get("dnsSuffix") or None,
        )


@extend_schema(
    parameters=[
        TENANT_PARAMETER,
        OpenApiParameter("tasks", bool, description="Include the full task and edge lists even for large plans"),
    ],
    request=ClusterCreateInputSerializer,
    responses=OpenApiTypes.OBJECT,
)
class ClusterPreviewApi(TenantScopedMixin, APIView):
    """Solve the layout, plan the create and price it, without creating anything.

    Answers 400 naming the field for bad input, and with the solver's reasons when no layout satisfies the
    template. Task and edge lists are included for plans of up to 2,000 tasks, or always with ``?tasks=true``.
    """

    parser_classes = [StrictJSONParser]

    def post(self, request: Request) -> Response:
        serializer = ClusterCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        preview = cluster_preview(user=request.user, tenant=self.tenant, request=serializer.to_request())
        include_tasks = request.query_params.get("tasks", "").lower() in {"1", "true", "yes"}
        return Response(preview.to_json(include_tasks=include_tasks))
