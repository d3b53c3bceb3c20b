"""Django admin for static pool hosts, tenant admins only: register and edit hosts, return repaired ones to
the pool, take hosts out of service and retire them with list actions. Every write goes through
``providers.pool`` (validation naming the field, 409 for a host a node holds, the audit trail)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants.admin_mixins import (
    ServiceBackedAdminMixin,
    ServiceFormMixin,
    TenantAdminScopeMixin,
    TenantListFilter,
    TenantRestrictedAdminMixin,
    administered_tenants,
)

from . import pool
from .models import PoolHost, Provider

EDITABLE = ["address", "ssh_port", "ssh_user", "host_key"]


class PoolHostForm(ServiceFormMixin, forms.ModelForm):
    """Add registers a host (``pool_host_register``); change sends the changed fields (``pool_host_update``)."""

    request: HttpRequest

    class Meta:
        model = PoolHost
        fields = ["provider", *EDITABLE]
        widgets = {"host_key": forms.Textarea(attrs={"rows": 2, "cols": 80})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            del self.fields["provider"]  # a host stays in its pool; register it in another one instead
        else:
            tenants = administered_tenants(self.request)
            providers = Provider.objects.filter(provider_type=pool.STATIC_TYPE, tenant__in=tenants)
            field: Any = self.fields["provider"]
            field.queryset = providers.select_related("tenant").order_by("tenant__name", "name")
            field.label_from_instance = lambda provider: f"{provider.name} ({provider.tenant.name})"
            field.help_text = "A static provider of a tenant you administer."

    def persist(self) -> PoolHost:
        values = {name: self.cleaned_data[name] for name in EDITABLE if name in self.cleaned_data}
        if self.instance.pk is None:
            return pool.pool_host_register(actor=self.request.user, provider=self.cleaned_data["provider"], **values)
        changes = {name: values[name] for name in EDITABLE if name in self.changed_data}
        return pool.pool_host_update(actor=self.request.user, host=self.instance, changes=changes)


@admin.register(PoolHost)
class PoolHostAdmin(TenantAdminScopeMixin, TenantRestrictedAdminMixin, ServiceBackedAdminMixin, admin.ModelAdmin):
    form = PoolHostForm
    list_display = ("endpoint", "provider", "state", "node_key", "allocated_at", "hostname", "short_error", "tenant")
    list_filter = (TenantListFilter, "state")
    list_select_related = ("tenant", "provider")
    search_fields = ("address", "node_key", "hostname", "provider__name")
    readonly_fields = ("provider", "state", "state_changed_at", "node_key", "machine_name", "tags", "allocations",
                       "allocated_at", "cleaning_since", "hostname", "last_error", "created_at")  # fmt: skip
    actions = ["return_to_pool", "take_out_of_service", "retire"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["provider", *EDITABLE] if obj is None else [*EDITABLE, *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj else ()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # hosts are retired (an action), never deleted: the row is the record

    @admin.display(description="Last error")
    def short_error(self, host: PoolHost) -> str:
        return host.last_error[:80] + ("…" if len(host.last_error) > 80 else "")

    def _set_state(self, request: HttpRequest, queryset: QuerySet, state: str) -> int:
        for host in queryset:
            pool.pool_host_update(actor=request.user, host=host, changes={"state": state})
        return len(queryset)

    @admin.action(description="Return the selected hosts to the pool (repaired)")
    def return_to_pool(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_state(request, queryset, PoolHost.State.FREE)
        self.message_user(request, f"{count} host(s) free and back in the pool.")

    @admin.action(description="Take the selected hosts out of service (broken)")
    def take_out_of_service(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_state(request, queryset, PoolHost.State.BROKEN)
        self.message_user(request, f"{count} host(s) out of service; they are not handed out until returned.")

    @admin.action(description="Retire the selected hosts")
    def retire(self, request: HttpRequest, queryset: QuerySet) -> None:
        for host in queryset:
            pool.pool_host_retire(actor=request.user, host=host)
        self.message_user(request, f"{len(queryset)} host(s) retired.")
