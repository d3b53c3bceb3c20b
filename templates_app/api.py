"""Catalog API: CRUD by name for every kind, old versions, grants, plugin types, import and export.

Bodies are the Loom JSON documents themselves, so a file from a Loom/Coopr catalog can be PUT as it is.
Validation warnings (for example a compatibility list naming an image type the catalog lacks) do not fail
a write; they come back in the ``Loom-Warnings`` response header as a JSON list.
"""

from __future__ import annotations

import json
from typing import Any

import django_filters
from django.db.models import Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.metadata import SimpleMetadata
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from loom_site.input_guards import StrictJSONParser
from tenants.api import TENANT_PARAMETER, TenantScopedMixin
from tenants.errors import NotFound
from tenants.services import object_grant

from . import services
from .kinds import CatalogKind, get_kind
from .models import CatalogVersion
from .plugin_types import registry
from .problems import Problem

NAME_REGEX = r"[A-Za-z0-9_.\-]+"


def _with_warnings(response: Response, warnings: list[Problem]) -> Response:
    if warnings:
        response["Loom-Warnings"] = json.dumps([w.to_json() for w in warnings])
    return response


class CatalogFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(field_name="name")
    q = django_filters.CharFilter(method="search", label="Search name, label and description")

    def search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(Q(name__icontains=value) | Q(label__icontains=value) | Q(description__icontains=value))


class ProviderMapFilter(CatalogFilter):
    provider = django_filters.CharFilter(field_name="document__providermap", lookup_expr="has_key")


class ProviderFilter(CatalogFilter):
    providertype = django_filters.CharFilter(field_name="provider_type")


class DocumentMetadata(SimpleMetadata):
    """OPTIONS for endpoints whose bodies are Loom JSON documents: name, description, media types, and no
    field listing (there is no serializer to introspect; the OpenAPI schema documents the format)."""

    def determine_actions(self, request: Request, view: Any) -> dict[str, Any]:
        return {}


class GrantSerializer(serializers.Serializer):
    user = serializers.CharField()
    action = serializers.ChoiceField(choices=["view", "change", "delete"])


READ_ONLY_KEYS = ("launchable", "reasons")


@extend_schema(parameters=[TENANT_PARAMETER], request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
class CatalogViewSet(TenantScopedMixin, viewsets.GenericViewSet):
    """One catalog kind; subclasses set ``kind_key``. Entities are addressed by name."""

    kind_key = ""
    metadata_class = DocumentMetadata
    parser_classes = [StrictJSONParser]  # bodies are Loom JSON documents; form encoding cannot express them
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX
    filterset_class = CatalogFilter

    @property
    def kind(self) -> CatalogKind:
        return get_kind(self.kind_key)

    def get_queryset(self) -> QuerySet:
        model = self.kind.model
        if self.is_schema_view:
            return model.objects.none()
        return model.objects.restrict(self.request.user, "view").filter(tenant=self.tenant).order_by("name")

    def get_object(self) -> Any:
        name = self.kwargs["name"]
        found = self.get_queryset().filter(name=name).first()
        if found is None:
            raise NotFound(f"{self.kind.label} {name} not found")
        return found

    def list(self, request: Request) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self._present(list(page)))

    def retrieve(self, request: Request, name: str) -> Response:
        return Response(self._present([self.get_object()])[0])

    def _present(self, objs: list[Any]) -> list[dict[str, Any]]:
        """Exported documents; templates and providers also say whether they can launch now and, if not,
        why (``launchable``, ``reasons``: read-only, dropped when a document is written back)."""
        docs = [self.kind.export(obj) for obj in objs]
        if self.kind_key not in services.LAUNCHABLE_KINDS or not docs:
            return docs
        reasons = services.launch_reasons(tenant=self.tenant, kind_key=self.kind_key, names=[d["name"] for d in docs])
        return [{**doc, "launchable": not reasons.get(doc["name"]), "reasons": reasons.get(doc["name"], [])}
                for doc in docs]  # fmt: skip

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if isinstance(request.data, dict):  # what _present adds is not part of the document
            for key in READ_ONLY_KEYS:
                request.data.pop(key, None)

    def create(self, request: Request) -> Response:
        result = services.catalog_entity_save(
            tenant=self.tenant, user=request.user, kind_key=self.kind_key, data=request.data, create=True
        )
        return _with_warnings(Response(self._present([result.entity])[0], status=status.HTTP_201_CREATED),
                              result.warnings)  # fmt: skip

    def update(self, request: Request, name: str) -> Response:
        """Create or replace (a new version) — Loom's PUT semantics."""
        self._visible_or_new(name)
        result = services.catalog_entity_save(
            tenant=self.tenant, user=request.user, kind_key=self.kind_key, data=request.data, name=name
        )
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return _with_warnings(Response(self._present([result.entity])[0], status=code), result.warnings)

    def partial_update(self, request: Request, name: str) -> Response:
        """Replace only the top-level keys given."""
        obj = self.get_object()
        if not isinstance(request.data, dict):
            raise serializers.ValidationError({"non_field_errors": ["body must be a JSON object"]})
        data = {**self.kind.export(obj), **request.data}
        result = services.catalog_entity_save(
            tenant=self.tenant, user=request.user, kind_key=self.kind_key, data=data, name=name
        )
        return _with_warnings(Response(self._present([result.entity])[0]), result.warnings)

    def destroy(self, request: Request, name: str) -> Response:
        self.get_object()
        services.catalog_entity_delete(tenant=self.tenant, user=request.user, kind_key=self.kind_key, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _visible_or_new(self, name: str) -> None:
        """A name that exists in the tenant but is hidden from the user must not leak through PUT or the
        version history; a name that no longer exists (deleted) is the tenant's to show."""
        model = self.kind.model
        if model.objects.filter(tenant=self.tenant, name=name).exists():
            self.get_object()

    @action(detail=True, methods=["get"], url_path="versions")
    def versions(self, request: Request, name: str) -> Response:
        """Every version, newest first; still readable after the entity itself was deleted."""
        self._visible_or_new(name)
        queryset = CatalogVersion.objects.filter(tenant=self.tenant, kind=self.kind_key, name=name).order_by("-version")
        page = self.paginate_queryset(queryset.values("version", "created_at", "created_by__username"))
        if not page and not queryset.exists():
            raise NotFound(f"{self.kind.label} {name} not found")
        rows = [
            {"version": v["version"], "created_at": v["created_at"], "created_by": v["created_by__username"]}
            for v in page
        ]
        return self.get_paginated_response(rows)

    @action(detail=True, methods=["get"], url_path=r"versions/(?P<version>\d+)")
    def version_detail(self, request: Request, name: str, version: str) -> Response:
        self._visible_or_new(name)
        if len(version) > 9:  # beyond any version we could have written; also keeps SQL integers in range
            raise NotFound(f"{self.kind.label} {name} version {version} not found")
        found = services.catalog_version_get(
            tenant=self.tenant, kind_key=self.kind_key, name=name, version=int(version)
        )
        return Response(self.kind.export_version(found))

    @extend_schema(request=GrantSerializer, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get", "post", "delete"], url_path="grants")
    def grants(self, request: Request, name: str) -> Response:
        """Object-level grants (django-guardian): let one tenant member view/change/delete this entity."""
        from guardian.shortcuts import get_users_with_perms

        obj = self.get_object()
        if request.method == "GET":
            users = get_users_with_perms(obj, attach_perms=True, with_superusers=False, with_group_users=False)
            return Response(
                [
                    {"user": user.username, "permissions": sorted(p.split("_")[0] for p in perms)}
                    for user, perms in users.items()
                ]
            )
        serializer = GrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        object_grant(
            actor=request.user, tenant=self.tenant, obj=obj, username=serializer.validated_data["user"],
            action=serializer.validated_data["action"], grant=request.method == "POST",
        )  # fmt: skip
        return Response(status=status.HTTP_204_NO_CONTENT)


def catalog_viewset(kind_key: str, filterset: type[CatalogFilter] = CatalogFilter) -> type[CatalogViewSet]:
    kind = get_kind(kind_key)
    name = "".join(part.capitalize() for part in kind.label.split()) + "ViewSet"
    attributes = {
        "kind_key": kind_key,
        "filterset_class": filterset,
        "__doc__": f"{kind.label.capitalize()}s of the tenant's catalog, addressed by name.",
    }
    viewset = type(name, (CatalogViewSet,), attributes)
    return extend_schema_view(
        list=extend_schema(operation_id=f"{kind_key}_list"),
        versions=extend_schema(operation_id=f"{kind_key}_versions_list"),
    )(viewset)


class PluginTypeViewSet(viewsets.ViewSet):
    """Registered provider or automator types with their field schemas (read-only, global)."""

    plugin_kind = "provider"
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def list(self, request: Request) -> Response:
        return Response([plugin.to_json() for plugin in registry.all(self.plugin_kind)])  # type: ignore[arg-type]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def retrieve(self, request: Request, name: str) -> Response:
        plugin = registry.get(self.plugin_kind, name)  # type: ignore[arg-type]
        if plugin is None:
            raise NotFound(f"{self.plugin_kind} type {name} not found")
        return Response(plugin.to_json())


@extend_schema_view(list=extend_schema(operation_id="plugins_providertypes_list"))
class ProviderTypeViewSet(PluginTypeViewSet):
    plugin_kind = "provider"


@extend_schema_view(list=extend_schema(operation_id="plugins_automatortypes_list"))
class AutomatorTypeViewSet(PluginTypeViewSet):
    plugin_kind = "automator"


@extend_schema(parameters=[TENANT_PARAMETER], responses=OpenApiTypes.OBJECT)
class CatalogExportApi(TenantScopedMixin, APIView):
    """The tenant's whole catalog in the Loom JSON format (latest versions, secrets masked)."""

    def get(self, request: Request) -> Response:
        return Response(services.catalog_export(tenant=self.tenant))


@extend_schema(
    parameters=[
        TENANT_PARAMETER,
        OpenApiParameter("replace", bool, description="Delete entities absent from the import"),
    ],
    request=OpenApiTypes.OBJECT,
    responses=OpenApiTypes.OBJECT,
)
class CatalogImportApi(TenantScopedMixin, APIView):
    """Validate a Loom-format catalog and apply it in one transaction; on any error nothing changes."""

    parser_classes = [StrictJSONParser]

    def post(self, request: Request) -> Response:
        replace = request.query_params.get("replace", "").lower() in {"1", "true", "yes"}
        result = services.catalog_import(tenant=self.tenant, user=request.user, data=request.data, replace=replace)
        return Response(result.to_json())
