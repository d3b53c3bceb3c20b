"""API for tenants, memberships, tokens and the audit trail, plus the tenant-scoping mixin."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from . import selectors, services
from .models import NAME_PATTERN, ApiToken, AuditEvent, Membership, Role, Tenant

TENANT_PARAMETER = OpenApiParameter(
    "X-Loom-Tenant",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Tenant to act in; needed only by users who belong to several tenants.",
)


class TenantScopedMixin:
    """Resolves ``self.tenant`` after authentication: the X-Loom-Tenant header or the user's tenant."""

    tenant: Tenant
    request: Request

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        requested = request.META.get(selectors.TENANT_HEADER) or request.query_params.get("tenant")
        self.tenant = selectors.tenant_for_request(user=request.user, requested=requested)

    @property
    def is_schema_view(self) -> bool:
        return getattr(self, "swagger_fake_view", False)


class TenantSerializer(serializers.ModelSerializer):
    name = serializers.RegexField(NAME_PATTERN, max_length=255)

    class Meta:
        model = Tenant
        fields = ["name", "description", "max_clusters", "max_nodes", "workers", "created_at"]
        read_only_fields = ["created_at"]


class TenantViewSet(viewsets.ModelViewSet):
    """Tenants. Everyone sees the tenants they belong to; only superusers create, change or delete."""

    serializer_class = TenantSerializer
    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z0-9_.\-]+"
    filterset_fields = ["name"]

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return Tenant.objects.none()
        return selectors.tenant_list(user=self.request.user).order_by("name")

    def perform_create(self, serializer: TenantSerializer) -> None:
        data = dict(serializer.validated_data)
        serializer.instance = services.tenant_save(actor=self.request.user, create=True, **data)

    def perform_update(self, serializer: TenantSerializer) -> None:
        data = dict(serializer.validated_data)
        data.pop("name", None)
        serializer.instance = services.tenant_save(
            actor=self.request.user, name=self.get_object().name, create=False, **data
        )

    def perform_destroy(self, instance: Tenant) -> None:
        services.tenant_delete(actor=self.request.user, tenant=instance)


class MembershipSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    tenant = serializers.CharField(source="tenant.name", read_only=True)
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "user", "tenant", "role", "created_at"]
        read_only_fields = ["id", "tenant", "created_at"]


@extend_schema(parameters=[TENANT_PARAMETER])
class MembershipViewSet(TenantScopedMixin, viewsets.ModelViewSet):
    """Members of the current tenant. Admins manage them; users see their own membership."""

    serializer_class = MembershipSerializer
    filterset_fields = ["role"]

    def get_queryset(self) -> Any:
        if self.is_schema_view:
            return Membership.objects.none()
        return selectors.membership_list(user=self.request.user, tenant=self.tenant).order_by("user__username")

    def perform_create(self, serializer: MembershipSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = services.membership_save(
            actor=self.request.user, tenant=self.tenant, username=data["user"]["username"], role=data["role"]
        )

    def perform_update(self, serializer: MembershipSerializer) -> None:
        membership = self.get_object()
        serializer.instance = services.membership_save(
            actor=self.request.user,
            tenant=self.tenant,
            username=membership.user.username,
            role=serializer.validated_data.get("role", membership.role),
        )

    def perform_destroy(self, instance: Membership) -> None:
        services.membership_delete(actor=self.request.user, membership=instance)


class ApiTokenSerializer(serializers.ModelSerializer):
    name = serializers.CharField(max_length=100)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at"]
        read_only_fields = ["id", "key_prefix", "created_at", "last_used_at", "revoked_at"]


class ApiTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):  # fmt: skip
    """Your API tokens. The key is returned once, on creation; DELETE revokes."""

    serializer_class = ApiTokenSerializer

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return selectors.api_token_list(user=self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        new = services.api_token_create(user=request.user, **serializer.validated_data)
        data = {**ApiTokenSerializer(new.token).data, "key": new.key}
        return Response(data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.api_token_revoke(user=request.user, token=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(
        source="actor.username",
        default=None,
        allow_null=True,
        read_only=True,
        help_text="Who did it; null for Loom itself.",
    )

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "entity_kind", "entity_name", "version", "summary"]


@extend_schema(parameters=[TENANT_PARAMETER])
class AuditEventViewSet(TenantScopedMixin, viewsets.ReadOnlyModelViewSet):
    """The tenant's audit trail (tenant admins)."""

    serializer_class = AuditEventSerializer
    filterset_fields = ["entity_kind", "entity_name", "action"]

    def get_queryset(self) -> Any:
        if self.is_schema_view:
            return AuditEvent.objects.none()
        return selectors.audit_event_list(user=self.request.user, tenant=self.tenant)
