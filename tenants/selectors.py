"""Read-side helpers that always restrict to what the user may see."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from .errors import ApplicationError, NotFound
from .models import ApiToken, AuditEvent, Membership, Role, Tenant

TENANT_HEADER = "HTTP_X_LOOM_TENANT"


def tenant_list(*, user: Any) -> QuerySet[Tenant]:
    if user.is_superuser:
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user=user).distinct()


def tenant_for_request(*, user: Any, requested: str | None) -> Tenant:
    """The tenant a request acts in: the ``X-Loom-Tenant`` header, or the user's only tenant.

    A tenant the user does not belong to is reported as not found, like any other object.
    """
    visible = tenant_list(user=user)
    if requested:
        tenant = visible.filter(name=requested).first()
        if tenant is None:
            raise NotFound(f"tenant {requested} not found")
        return tenant
    names = list(Membership.objects.filter(user=user).values_list("tenant__name", flat=True)[:10])
    if len(names) == 1:
        return Tenant.objects.get(name=names[0])
    if not names:
        raise ApplicationError(
            "you belong to no tenant" + ("; choose one with the X-Loom-Tenant header" if user.is_superuser else ""),
            fields={"tenant": ["no tenant selected"]},
        )
    raise ApplicationError(
        f"you belong to several tenants ({', '.join(sorted(names))}); choose one with the X-Loom-Tenant header",
        fields={"tenant": ["no tenant selected"]},
    )


def user_role(*, user: Any, tenant: Tenant) -> str | None:
    if user.is_superuser:
        return Role.ADMIN
    return Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True).first()


def membership_list(*, user: Any, tenant: Tenant) -> QuerySet[Membership]:
    memberships = Membership.objects.filter(tenant=tenant).select_related("user", "tenant")
    if user_role(user=user, tenant=tenant) == Role.ADMIN:
        return memberships
    return memberships.filter(user=user)


def api_token_list(*, user: Any) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)


def audit_event_list(*, user: Any, tenant: Tenant) -> QuerySet[AuditEvent]:
    if user_role(user=user, tenant=tenant) != Role.ADMIN:
        return AuditEvent.objects.none()
    return AuditEvent.objects.filter(tenant=tenant).select_related("actor")
