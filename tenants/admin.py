"""Django admin for tenants, memberships, API tokens and the audit trail.

Superusers manage tenants; tenant admins see their tenants and manage their members; everyone sees (and may
revoke) only their own API tokens, and token hashes are never shown. Every change goes through
``tenants.services``; the audit trail is read-only.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import selectors, services
from .admin_mixins import (
    ReadOnlyAdminMixin,
    RestrictedAdminMixin,
    ServiceBackedAdminMixin,
    ServiceFormMixin,
    TenantListFilter,
    admin_tenant_pks,
    is_platform_admin,
    limit_tenant_field,
    member_tenant_pks,
)
from .errors import Conflict
from .models import ApiToken, AuditEvent, ExternalIdentity, Membership, Role, Tenant

# The admin's sign-in page gains the single sign-on button, and loses the password form when passwords are off.
admin.site.login_template = "tenants/admin_login.html"

# --- tenants ------------------------------------------------------------------------------------------


class TenantForm(ServiceFormMixin, forms.ModelForm):
    """Saved by ``tenant_save``, which runs the model's ``full_clean`` itself; its errors land on the
    matching fields."""

    name = forms.CharField(max_length=255, help_text="Cannot be changed later.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
    max_clusters = forms.IntegerField(
        required=False, min_value=0, help_text="Live clusters allowed; empty means unlimited."
    )
    max_nodes = forms.IntegerField(
        required=False, min_value=0, help_text="Nodes across live clusters; empty means unlimited."
    )
    workers = forms.IntegerField(
        min_value=0, initial=10, help_text="Worker budget: tasks of this tenant that may run at once."
    )
    operator_providers = forms.BooleanField(
        required=False,
        label="Operator-only provider types",
        help_text=Tenant._meta.get_field("operator_providers").help_text,
    )

    class Meta:
        model = Tenant
        fields: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adding = self.instance.pk is None
        if self.adding:
            return
        del self.fields["name"]
        for name in ("description", "max_clusters", "max_nodes", "workers", "operator_providers"):
            self.initial.setdefault(name, getattr(self.instance, name))

    def persist(self) -> Tenant:
        data = self.cleaned_data
        return services.tenant_save(
            actor=self.request.user,
            name=data["name"] if self.adding else self.instance.name,
            create=self.adding,
            description=data.get("description") or "",
            max_clusters=data.get("max_clusters"),
            max_nodes=data.get("max_nodes"),
            workers=data["workers"],
            operator_providers=bool(data.get("operator_providers")),
        )

    def handle_service_error(self, error: Any) -> None:
        if isinstance(error, Conflict) and self.adding:
            self.add_error("name", error.message)
            return
        super().handle_service_error(error)


@admin.register(Tenant)
class TenantAdmin(RestrictedAdminMixin, ServiceBackedAdminMixin, admin.ModelAdmin):
    """Superusers manage every tenant; members see their own tenants, read-only."""

    form = TenantForm
    list_display = ("name", "description", "max_clusters", "max_nodes", "workers", "created_at")
    search_fields = ("name", "description")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return selectors.tenant_list(user=request.user)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[str | None, dict[str, Any]]]:
        quotas = ("Quotas", {"fields": [("max_clusters", "max_nodes"), "workers"]})
        if is_platform_admin(request):  # the only ones who may change it (tenant_save checks too)
            quotas = ("Quotas and trust", {"fields": [("max_clusters", "max_nodes"), "workers", "operator_providers"]})
        if obj is None:
            return [(None, {"fields": ["name", "description"]}), quotas]
        return [(None, {"fields": ["name", "description", "created_at"]}), quotas]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if obj is None else ("name", "created_at")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if is_platform_admin(request):
            return True
        members = member_tenant_pks(request)
        return bool(members) if obj is None else obj.pk in members

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_platform_admin(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_platform_admin(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_platform_admin(request)

    def delete_via_service(self, request: HttpRequest, obj: Tenant) -> None:
        services.tenant_delete(actor=request.user, tenant=obj)


# --- memberships --------------------------------------------------------------------------------------


class MembershipForm(ServiceFormMixin, forms.ModelForm):
    """Add a member by user name (choosing from a list would show tenant admins every user of the
    platform) or change a member's role; saved by ``membership_save``."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    username = forms.CharField(label="User name", max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.USER)

    class Meta:
        model = Membership
        fields: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adding = self.instance.pk is None
        limit_tenant_field(self, self.request, adding=self.adding)
        if not self.adding:
            del self.fields["username"]
            self.initial.setdefault("role", self.instance.role)

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"].strip()
        tenant = self.cleaned_data.get("tenant")
        if tenant is not None and Membership.objects.filter(tenant=tenant, user__username=username).exists():
            raise forms.ValidationError(f"{username} is already a member of {tenant}; change that membership.")
        return username

    def problem_field(self, path: str) -> str | None:
        return {"user": "username", "role": "role"}.get(path)

    def persist(self) -> Membership:
        data = self.cleaned_data
        if self.adding:
            tenant, username = data["tenant"], data["username"]
        else:
            tenant, username = self.instance.tenant, self.instance.user.username
        return services.membership_save(actor=self.request.user, tenant=tenant, username=username, role=data["role"])


@admin.register(Membership)
class MembershipAdmin(RestrictedAdminMixin, ServiceBackedAdminMixin, admin.ModelAdmin):
    """Tenant admins manage the memberships of the tenants they administer."""

    form = MembershipForm
    list_display = ("user", "tenant", "role", "source", "created_at")
    list_filter = (TenantListFilter, "role", "source")
    list_select_related = ("user", "tenant")
    search_fields = ("user__username",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        memberships = Membership.objects.select_related("user", "tenant")
        if is_platform_admin(request):
            return memberships
        return memberships.filter(tenant__in=admin_tenant_pks(request))

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[str | None, dict[str, Any]]]:
        if obj is None:
            return [(None, {"fields": ["tenant", "username", "role"]})]
        return [(None, {"fields": ["tenant", "user", "role", "source", "created_at"]})]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A membership from the identity provider's groups is rewritten at the user's next single sign-on.
        return () if obj is None else ("tenant", "user", "source", "created_at")

    def _may_manage(self, request: HttpRequest, obj: Any = None) -> bool:
        if is_platform_admin(request):
            return True
        admins = admin_tenant_pks(request)
        return bool(admins) if obj is None else obj.tenant_id in admins

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may_manage(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_manage(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._may_manage(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_manage(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_manage(request, obj)

    def delete_via_service(self, request: HttpRequest, obj: Membership) -> None:
        services.membership_delete(actor=request.user, membership=obj)


@admin.register(ExternalIdentity)
class ExternalIdentityAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Which account at the identity provider signs in as which Loom user. Superusers only: who may become
    whom is the platform's business, not a tenant's."""

    list_display = ("user", "issuer", "subject", "created_at", "last_sign_in_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "subject")
    fields = list_display
    readonly_fields = fields

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)


# --- API tokens ---------------------------------------------------------------------------------------


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    # No add: a new key is shown once, by the API; the admin has nowhere safe to show it. Revoke is an action.
    """Read-only, with a revoke action. Users see their own tokens; superusers see all. The hash is never
    shown: only the prefix, which is what a user recognises a token by."""

    list_display = ("name", "user", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at", "active")
    list_filter = ("revoked_at",)
    list_select_related = ("user",)
    search_fields = ("name", "key_prefix")
    fields = ("name", "user", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at", "active")
    readonly_fields = fields
    actions = ("revoke",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        if is_platform_admin(request):
            return ApiToken.objects.select_related("user")
        return selectors.api_token_list(user=request.user).select_related("user")

    @admin.display(boolean=True, description="active")
    def active(self, obj: ApiToken) -> bool:
        return obj.is_active

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            services.api_token_revoke(user=request.user, token=token)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} token{'s' if revoked != 1 else ''}.", messages.SUCCESS)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff) and (
            obj is None or is_platform_admin(request) or obj.user_id == user.pk
        )


# --- audit trail --------------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Read-only. Tenant admins see the events of the tenants they administer; events without a tenant
    (tokens, deleted tenants) are for superusers."""

    list_display = ("created_at", "tenant", "actor", "action", "entity_kind", "entity_name", "version")
    list_filter = (TenantListFilter, "action", "entity_kind")
    list_select_related = ("tenant", "actor")
    search_fields = ("entity_name",)
    date_hierarchy = "created_at"
    fields = ("created_at", "tenant", "actor", "action", "entity_kind", "entity_name", "version", "summary_json")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        events = AuditEvent.objects.select_related("tenant", "actor")
        if is_platform_admin(request):
            return events
        return events.filter(tenant__in=admin_tenant_pks(request))

    @admin.display(description="summary")
    def summary_json(self, obj: AuditEvent) -> str:
        """Services write summaries from exported documents, so secret values are already masked."""
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', json.dumps(obj.summary, indent=2))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if is_platform_admin(request):
            return True
        admins = admin_tenant_pks(request)
        return bool(admins) if obj is None else obj.tenant_id in admins
