"""Plugin resource API, tenant admins only, under ``/api/v2/plugins/`` with the original's paths
(loom-reference §2.4): ``{pt}`` is ``automatortypes`` or ``providertypes``, ``{plugin}`` a plugin type,
``{rt}`` one of its resource types.

Uploads are the raw request body (``Content-Type: application/octet-stream``) or a multipart form with a
``file`` field. Key material (``ssh_keys``, ``api_keys``, anything with permissions 0400) can be uploaded and
used but never downloaded again.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.api import TENANT_PARAMETER, TenantScopedMixin
from tenants.errors import ApplicationError, NotFound, PermissionDenied
from tenants.models import Role
from tenants.selectors import user_role

from . import resources
from .resources import ResourceKey, resource_meta

STATUSES = ("inactive", "staged", "active", "recalled")
PATH_PARAMETERS = [
    OpenApiParameter("pt", str, OpenApiParameter.PATH, enum=["automatortypes", "providertypes"]),
    OpenApiParameter("plugin", str, OpenApiParameter.PATH),
    OpenApiParameter("rt", str, OpenApiParameter.PATH, description="A resource type of the plugin"),
]
NAME_PARAMETER = OpenApiParameter("name", str, OpenApiParameter.PATH)
VERSION_PARAMETER = OpenApiParameter("version", int, OpenApiParameter.PATH)
STATUS_PARAMETER = OpenApiParameter("status", str, OpenApiParameter.QUERY, enum=list(STATUSES), required=False)


class PluginResourceMetaSerializer(serializers.Serializer):
    """One version of a resource (documentation only: responses are built by ``resource_meta``)."""

    name = serializers.CharField()
    version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=STATUSES)
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    createdAt = serializers.DateTimeField()


class RawBodyParser(BaseParser):
    """The request body as bytes, whatever it is (the original streamed raw bytes)."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> bytes:
        return stream.read() if stream is not None else b""


class _AdminOnly(TenantScopedMixin, APIView):
    """Every endpoint here is for tenant admins (the original answered 403 to everyone else)."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if user_role(user=request.user, tenant=self.tenant) != Role.ADMIN:
            raise PermissionDenied("only tenant admins manage plugin resources")

    def key(self, **kwargs: Any) -> ResourceKey:
        return ResourceKey(kwargs["pt"], kwargs["plugin"], kwargs["rt"], kwargs.get("name", ""))

    def filtered(self, request: Request, key: ResourceKey) -> Any:
        resources.resource_type_of(key)
        rows = key.filter(self.tenant).order_by("name", "version")
        wanted = request.query_params.get("status")
        if wanted is None:
            return list(rows)
        if wanted not in STATUSES:
            raise ApplicationError(f"invalid status filter {wanted!r}; use one of {', '.join(STATUSES)}",
                                   fields={"status": ["invalid status filter"]})  # fmt: skip
        return [row for row in rows if row.status == wanted]


class ResourceTypeApi(_AdminOnly):
    @extend_schema(
        operation_id="plugin_resources_list",
        parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, STATUS_PARAMETER],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="name → list of version metas")},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in self.filtered(request, self.key(**kwargs)):
            grouped.setdefault(row.name, []).append(resource_meta(row))
        return Response(grouped)


class ResourceApi(_AdminOnly):
    parser_classes = [RawBodyParser, MultiPartParser]

    @extend_schema(
        operation_id="plugin_resource_versions",
        parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, NAME_PARAMETER, STATUS_PARAMETER],
        responses={200: PluginResourceMetaSerializer(many=True)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response([resource_meta(row) for row in self.filtered(request, self.key(**kwargs))])

    @extend_schema(
        operation_id="plugin_resource_upload",
        parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, NAME_PARAMETER],
        request={"application/octet-stream": OpenApiTypes.BINARY, "multipart/form-data": OpenApiTypes.OBJECT},
        responses={201: PluginResourceMetaSerializer},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = request.data
        if not isinstance(data, bytes):
            upload = request.FILES.get("file")
            if upload is not None:
                data = resources.read_upload(upload)
            elif (request.content_type or "").startswith(RawBodyParser.media_type):
                data = b""  # an empty raw body: resource_upload names the problem
            else:
                raise ApplicationError("send the resource as the raw body or as a multipart field named file",
                                       fields={"file": ["missing"]})  # fmt: skip
        resource = resources.resource_upload(tenant=self.tenant, user=request.user, key=self.key(**kwargs), data=data)
        return Response(resource_meta(resource), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="plugin_resource_delete",
        parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, NAME_PARAMETER],
        responses={204: None},
    )
    def delete(self, request: Request, **kwargs: Any) -> Response:
        resources.resource_delete(tenant=self.tenant, user=request.user, key=self.key(**kwargs))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ResourceVersionApi(_AdminOnly):
    @extend_schema(
        operation_id="plugin_resource_version_delete",
        parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, NAME_PARAMETER, VERSION_PARAMETER],
        responses={204: None},
    )
    def delete(self, request: Request, version: int, **kwargs: Any) -> Response:
        resources.resource_delete(tenant=self.tenant, user=request.user, key=self.key(**kwargs), version=version)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ResourceContentApi(_AdminOnly):
    @extend_schema(
        operation_id="plugin_resource_content",
        parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, NAME_PARAMETER, VERSION_PARAMETER],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, version: int, **kwargs: Any) -> HttpResponse:
        key = self.key(**kwargs)
        if resources.is_secret(key):
            raise PermissionDenied(f"{key.resource_type} resources hold keys and are never downloaded")
        row = key.filter(self.tenant).filter(version=version).first()
        if row is None:
            raise NotFound(f"resource {key.label} has no version {version}")
        response = HttpResponse(resources.resource_content(row), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{row.name}-v{row.version}"'
        return response


def _transition_view(action: str) -> type[APIView]:
    function = {"stage": resources.resource_stage, "recall": resources.resource_recall}[action]

    class TransitionApi(_AdminOnly):
        @extend_schema(
            operation_id=f"plugin_resource_{action}",
            parameters=[TENANT_PARAMETER, *PATH_PARAMETERS, NAME_PARAMETER, VERSION_PARAMETER],
            request=None,
            responses={200: PluginResourceMetaSerializer},
        )
        def post(self, request: Request, version: int, **kwargs: Any) -> Response:
            resource = function(tenant=self.tenant, user=request.user, key=self.key(**kwargs), version=version)
            return Response(resource_meta(resource))

    TransitionApi.__name__ = f"Resource{action.title()}Api"
    TransitionApi.__doc__ = f"{action.title()} one version of a plugin resource."
    return TransitionApi


ResourceStageApi = _transition_view("stage")
ResourceRecallApi = _transition_view("recall")


class ResourcesActivateApi(_AdminOnly):
    """Make every staged version live and retire every recalled one, for the whole tenant at once."""

    @extend_schema(
        operation_id="plugin_resources_activate",
        parameters=[TENANT_PARAMETER],
        request=None,
        responses={200: inline_serializer("ActivateResult", {"activated": serializers.IntegerField(),
                                                             "retired": serializers.IntegerField()})},
    )  # fmt: skip
    def post(self, request: Request) -> Response:
        return Response(resources.resources_activate(tenant=self.tenant, user=request.user))
