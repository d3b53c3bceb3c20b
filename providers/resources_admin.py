"""Django admin for plugin resources, tenant admins only: upload a file as a new version, then stage,
recall and activate versions with list actions. Contents are never shown (some are keys)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from templates_app.plugin_types import registry
from tenants.admin_mixins import (
    ServiceBackedAdminMixin,
    ServiceFormMixin,
    TenantAdminScopeMixin,
    TenantRestrictedAdminMixin,
    limit_tenant_field,
)
from tenants.models import Tenant

from . import resources
from .models import PluginResource
from .resources import ResourceKey


def resource_type_choices() -> list[tuple[str, str]]:
    """Every (plugin kind, plugin, resource type) as ``pt/plugin/rt``."""
    choices = []
    for plugin_kind, kind in resources.PLUGIN_KINDS.items():
        for plugin in registry.all(kind):  # type: ignore[arg-type]
            for resource_type, spec in plugin.resource_types.items():
                value = f"{plugin_kind}/{plugin.name}/{resource_type}"
                choices.append((value, f"{kind} {plugin.name}: {resource_type} ({spec.format})"))
    return choices


class PluginResourceUploadForm(ServiceFormMixin, forms.ModelForm):
    """Add = upload a new version through ``resources.resource_upload`` (which validates everything)."""

    request: HttpRequest
    problem_fields = {"content": "file", "name": "name"}

    kind = forms.ChoiceField(label="Resource type", choices=resource_type_choices)
    file = forms.FileField(help_text="Scripts and keys as files; archives as .tar, .tar.gz or .zip.")

    class Meta:
        model = PluginResource
        fields = ["tenant", "kind", "name", "file"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit_tenant_field(self, self.request, adding=True)

    def problem_field(self, path: str) -> str | None:
        return self.problem_fields.get(path)

    def persist(self) -> PluginResource:
        plugin_kind, plugin, resource_type = self.cleaned_data["kind"].split("/")
        tenant: Tenant = self.cleaned_data["tenant"]
        key = ResourceKey(plugin_kind, plugin, resource_type, self.cleaned_data["name"])
        return resources.resource_upload(tenant=tenant, user=self.request.user, key=key,
                                         data=resources.read_upload(self.cleaned_data["file"]))  # fmt: skip


def _key(resource: PluginResource) -> ResourceKey:
    return ResourceKey(resource.plugin_kind, resource.plugin, resource.resource_type, resource.name)


@admin.register(PluginResource)
class PluginResourceAdmin(TenantAdminScopeMixin, TenantRestrictedAdminMixin, ServiceBackedAdminMixin, admin.ModelAdmin):
    form = PluginResourceUploadForm
    list_display = ("name", "version", "status", "plugin", "resource_type", "size", "tenant", "created_at")
    list_filter = ("plugin_kind", "plugin", "resource_type", "live", "slated")
    search_fields = ("name",)
    readonly_fields = ("tenant", "plugin_kind", "plugin", "resource_type", "name", "version", "status", "size",
                       "sha256", "created_by", "created_at")  # fmt: skip
    actions = ["stage", "recall", "activate"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and self.has_view_permission(request)  # versions are immutable; actions change status

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj else ["tenant", "kind", "name", "file"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj else ()

    def delete_via_service(self, request: HttpRequest, obj: PluginResource) -> None:
        resources.resource_delete(tenant=obj.tenant, user=request.user, key=_key(obj), version=obj.version)

    @admin.action(description="Stage the selected versions")
    def stage(self, request: HttpRequest, queryset: QuerySet) -> None:
        for resource in queryset:
            resources.resource_stage(tenant=resource.tenant, user=request.user, key=_key(resource),
                                     version=resource.version)  # fmt: skip
        self.message_user(request, f"Staged {len(queryset)} version(s); activate to put them in use.")

    @admin.action(description="Recall the selected versions")
    def recall(self, request: HttpRequest, queryset: QuerySet) -> None:
        for resource in queryset:
            resources.resource_recall(tenant=resource.tenant, user=request.user, key=_key(resource),
                                      version=resource.version)  # fmt: skip
        self.message_user(request, f"Recalled {len(queryset)} version(s); activate to take them out of use.")

    @admin.action(description="Activate staged and recalled changes of these tenants")
    def activate(self, request: HttpRequest, queryset: QuerySet) -> None:
        for tenant in Tenant.objects.filter(pk__in=queryset.values("tenant_id")):
            counts = resources.resources_activate(tenant=tenant, user=request.user)
            self.message_user(request, f"{tenant}: {counts['activated']} activated, {counts['retired']} retired.",
                              messages.SUCCESS)  # fmt: skip
