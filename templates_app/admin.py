"""Django admin for the catalog: every kind edited through structured forms, written through the services.

Tenant admins see and manage their own tenants' catalog (``TenantRestrictedAdminMixin``); saves hand a Loom
JSON document to ``catalog_entity_save`` (see ``admin_forms``), deletes go through ``catalog_entity_delete``.
The delete confirmation lists the entities that still refer to the one being deleted, the same check the
service makes, so a refused delete is explained before it is attempted.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from tenants.admin_mixins import (
    ReadOnlyAdminMixin,
    ServiceBackedAdminMixin,
    TenantListFilter,
    TenantRestrictedAdminMixin,
)
from tenants.errors import Conflict

from .admin_forms import (
    CatalogEntityForm,
    ClusterTemplateForm,
    HardwareTypeForm,
    ImageTypeForm,
    PartialTemplateForm,
    ServiceForm,
)
from .kinds import get_kind
from .models import CatalogEntity, CatalogVersion, ClusterTemplate, HardwareType, ImageType, PartialTemplate, Service
from .services import catalog_entity_delete, catalog_view, launch_reasons
from .validation import dependents

BASE_FIELDS = ["label", "description", "icon"]


def pretty_json(document: Any) -> str:
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', json.dumps(document, indent=2))


class CatalogEntityAdmin(TenantRestrictedAdminMixin, ServiceBackedAdminMixin, admin.ModelAdmin):
    """Shared by every catalog kind; subclasses set ``form`` (whose ``kind_key`` names the kind)."""

    form: type[CatalogEntityForm] = CatalogEntityForm
    change_form_template = "admin/templates_app/catalog_change_form.html"
    list_display = ("name", "label", "tenant", "version", "updated_at")
    list_filter = (TenantListFilter,)
    search_fields = ("name", "label", "description")
    ordering = ("tenant__name", "name")

    @property
    def kind_key(self) -> str:
        return self.form.kind_key

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[str | None, dict[str, Any]]]:
        if obj is None:
            return [(None, {"fields": ["tenant", "name", *BASE_FIELDS]}), *self.get_form_fieldsets(request)]
        if not self.has_change_permission(request, obj):
            # View-only: the structured fields are form fields, which Django cannot show read-only.
            return [(None, {"fields": ["tenant", "name", "version", "label", "description", "updated_at"]}),
                    ("Loom JSON", {"fields": ["loom_json"]})]  # fmt: skip
        return [
            (None, {"fields": [("tenant", "version", "updated_at"), "name", *BASE_FIELDS]}),
            *self.get_form_fieldsets(request),
            ("Loom JSON", {"fields": ["loom_json"], "classes": ["collapse"]}),
        ]

    def get_form_fieldsets(self, request: HttpRequest) -> list[tuple[str, dict[str, Any]]]:
        return list(self.form.fieldsets)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if obj is None else ("tenant", "name", "version", "updated_at", "loom_json")

    @admin.display(description="Loom JSON")
    def loom_json(self, obj: CatalogEntity) -> str:
        """The document as the API exports it (secret values masked)."""
        return pretty_json(get_kind(self.kind_key).export(obj))

    def delete_via_service(self, request: HttpRequest, obj: Any) -> None:
        catalog_entity_delete(tenant=obj.tenant, user=request.user, kind_key=self.kind_key, name=obj.name)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Delete in an order that works: an entity used by another selected one goes after it."""
        pending = list(queryset.select_related("tenant"))
        while pending:
            refused: list[Any] = []
            for obj in pending:
                try:
                    with transaction.atomic():
                        self.delete_via_service(request, obj)
                except Conflict:
                    refused.append(obj)
            if len(refused) == len(pending):
                self.delete_via_service(request, refused[0])  # raises the service's own explanation
            pending = refused

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, Any, Any, Any]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        selected = {(obj.tenant_id, obj.name) for obj in objs}
        views: dict[int, Any] = {}
        users: list[str] = []
        for obj in objs:
            if obj.tenant_id not in views:
                views[obj.tenant_id] = catalog_view(obj.tenant)
            for user in dependents(views[obj.tenant_id], self.kind_key, obj.name):
                kind_singular, _, name = user.partition(" ")
                if (obj.tenant_id, name) in selected and kind_singular == get_kind(self.kind_key).singular:
                    continue
                users.append(f"{obj.name} is used by {user}")
        return deleted, counts, perms_needed, [*protected, *users]


def tenant_launch_reasons(request: HttpRequest, tenant: Any, kind_key: str) -> dict[str, list[str]]:
    """Why each of the tenant's templates or providers cannot launch, computed once per request (the column
    and the filter of one changelist share it) from the catalog as it is now."""
    cache: dict[tuple[int, str], dict[str, list[str]]] = request.__dict__.setdefault("_loom_launch_reasons", {})
    key = (tenant.pk, kind_key)
    if key not in cache:
        names = list(get_kind(kind_key).model.objects.filter(tenant=tenant).values_list("name", flat=True))
        cache[key] = launch_reasons(tenant=tenant, kind_key=kind_key, names=names)
    return cache[key]


class LaunchableListFilter(admin.SimpleListFilter):
    """Launchable or not, which no column stores: it follows the rest of the catalog (a template becomes
    launchable when its missing service is added), so the rows are picked by computing it."""

    title = "launchable"
    parameter_name = "launchable"

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: Any) -> None:
        self.kind_key = model_admin.kind_key
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No, with reasons")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() not in ("yes", "no"):
            return queryset
        picked = []
        for obj in queryset.select_related("tenant").only("pk", "name", "tenant"):
            blocked = bool(tenant_launch_reasons(request, obj.tenant, self.kind_key).get(obj.name))
            if blocked == (self.value() == "no"):
                picked.append(obj.pk)
        return queryset.filter(pk__in=picked)


class LaunchableAdminMixin:
    """A ``launchable`` column, filter and change-page line for kinds a cluster is launched from
    (templates, providers), with the same reasons the API gives under ``reasons``. The changelist computes
    them once per tenant for its page of rows (ModelAdmin instances are shared by every request, so
    nothing request-bound may live on ``self``)."""

    kind_key: str

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)  # type: ignore[misc]
        rows = list(changelist.result_list)
        for obj in rows:
            obj.launch_reasons = tenant_launch_reasons(request, obj.tenant, self.kind_key).get(obj.name, [])
        changelist.result_list = rows
        return changelist

    @admin.display(description="launchable")
    def launchable(self, obj: CatalogEntity) -> str:
        reasons = getattr(obj, "launch_reasons", None)
        if reasons is None:  # the change page: one object
            reasons = launch_reasons(tenant=obj.tenant, kind_key=self.kind_key, names=[obj.name]).get(obj.name, [])
        if not reasons:
            return "yes"
        return format_html('<span style="color:#b3261e">no</span>: {}', "; ".join(reasons))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = super().get_readonly_fields(request, obj)  # type: ignore[misc]
        return fields if obj is None else (*fields, "launchable")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[str | None, dict[str, Any]]]:
        fieldsets = super().get_fieldsets(request, obj)  # type: ignore[misc]
        if obj is None:
            return fieldsets
        (title, options), *rest = fieldsets
        return [(title, {**options, "fields": [*options["fields"], "launchable"]}), *rest]


@admin.register(HardwareType)
class HardwareTypeAdmin(CatalogEntityAdmin):
    form = HardwareTypeForm


@admin.register(ImageType)
class ImageTypeAdmin(CatalogEntityAdmin):
    form = ImageTypeForm


@admin.register(Service)
class ServiceAdmin(CatalogEntityAdmin):
    form = ServiceForm


@admin.register(ClusterTemplate)
class ClusterTemplateAdmin(LaunchableAdminMixin, CatalogEntityAdmin):
    form = ClusterTemplateForm
    list_display = ("name", "label", "launchable", "tenant", "version", "updated_at")
    list_filter = (*CatalogEntityAdmin.list_filter, LaunchableListFilter)


@admin.register(PartialTemplate)
class PartialTemplateAdmin(CatalogEntityAdmin):
    form = PartialTemplateForm


@admin.register(CatalogVersion)
class CatalogVersionAdmin(ReadOnlyAdminMixin, TenantRestrictedAdminMixin, admin.ModelAdmin):
    """Old versions, read-only: what a cluster built from version 3 was built from."""

    list_display = ("name", "kind", "version", "tenant", "created_by", "created_at")
    list_filter = (TenantListFilter, "kind")
    list_select_related = ("tenant", "created_by")
    search_fields = ("name",)
    fields = ("tenant", "kind", "name", "version", "created_by", "created_at", "loom_json")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("created_by")

    @admin.display(description="Loom JSON")
    def loom_json(self, obj: CatalogVersion) -> str:
        """The version as the API shows it; ``secret_data`` stays encrypted and is never displayed."""
        return pretty_json(get_kind(obj.kind).export_version(obj))
