"""Tenant, membership and token services. Every change writes an AuditEvent."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from .errors import ApplicationError, Conflict, NotFound, PermissionDenied
from .models import ApiToken, AuditEvent, Membership, Role, Tenant


def audit(*, tenant: Tenant | None, actor: Any, action: str, kind: str, name: str, summary: dict | None = None) -> None:
    AuditEvent.objects.create(
        tenant=tenant,
        actor=actor if getattr(actor, "pk", None) else None,
        action=action,
        entity_kind=kind,
        entity_name=name,
        summary=summary or {},
    )


def _tenant_fields(tenant: Tenant) -> dict[str, Any]:
    return {
        "description": tenant.description,
        "max_clusters": tenant.max_clusters,
        "max_nodes": tenant.max_nodes,
        "workers": tenant.workers,
        "operator_providers": tenant.operator_providers,
    }


@transaction.atomic
def tenant_save(*, actor: Any, name: str, create: bool, **fields: Any) -> Tenant:
    """Create or update a tenant (superusers only)."""
    if actor is not None and not actor.is_superuser:
        raise PermissionDenied("only superusers manage tenants")
    tenant = Tenant.objects.select_for_update().filter(name=name).first()
    if create and tenant is not None:
        raise Conflict(f"tenant {name} already exists")
    if not create and tenant is None:
        raise NotFound(f"tenant {name} not found")
    before = _tenant_fields(tenant) if tenant else None
    tenant = tenant or Tenant(name=name)
    for key, value in fields.items():
        setattr(tenant, key, value)
    tenant.full_clean()
    tenant.save()
    audit(tenant=tenant, actor=actor, action="create" if before is None else "update", kind="tenant",
          name=name, summary={"before": before, "after": _tenant_fields(tenant)})  # fmt: skip
    return tenant


@transaction.atomic
def tenant_delete(*, actor: Any, tenant: Tenant) -> None:
    if actor is not None and not actor.is_superuser:
        raise PermissionDenied("only superusers manage tenants")
    audit(
        tenant=None,
        actor=actor,
        action="delete",
        kind="tenant",
        name=tenant.name,
        summary={"before": _tenant_fields(tenant)},
    )
    tenant.delete()


def membership_require_admin(*, actor: Any, tenant: Tenant) -> None:
    if actor.is_superuser:
        return
    if not Membership.objects.filter(user=actor, tenant=tenant, role=Role.ADMIN).exists():
        raise PermissionDenied(f"only admins of tenant {tenant.name} manage its members")


@transaction.atomic
def membership_save(*, actor: Any, tenant: Tenant, username: str, role: str) -> Membership:
    membership_require_admin(actor=actor, tenant=tenant)
    if role not in Role.values:
        raise ApplicationError(f"role must be one of {', '.join(Role.values)}", fields={"role": ["unknown role"]})
    user = get_user_model().objects.filter(username=username).first()
    if user is None or not _may_enroll(actor, user):
        raise ApplicationError(f"user {username} does not exist", fields={"user": [f"no user named {username}"]})
    membership, created = Membership.objects.get_or_create(user=user, tenant=tenant, defaults={"role": role})
    before = None if created else membership.role
    was_admin = before == Role.ADMIN
    if not created and membership.role != role:
        if membership.role == Role.ADMIN and not _other_admins(membership):
            raise Conflict(f"{username} is the last admin of tenant {tenant.name}")
        membership.role = role
        membership.save(update_fields=["role"])
    staff_flag_sync(user, lost_admin=was_admin and role != Role.ADMIN)
    audit(tenant=tenant, actor=actor, action="create" if created else "update", kind="membership",
          name=username, summary={"before": before, "after": role})  # fmt: skip
    return membership


def _may_enroll(actor: Any, user: Any) -> bool:
    """Whether ``actor`` may add ``user`` to a tenant: a superuser may add anyone; a tenant admin only users
    who belong to no tenant they do not administer themselves.

    Without this, an admin of one tenant could pull another tenant's users into theirs (as admin too, which
    makes them staff), change what those users' API calls resolve to, and learn which usernames exist. A user
    they may not enroll gets the same answer as one that does not exist.
    """
    if actor is None or actor.is_superuser:
        return True
    administered = Membership.objects.filter(user=actor, role=Role.ADMIN).values("tenant_id")
    return not Membership.objects.filter(user=user).exclude(tenant_id__in=administered).exists()


def staff_flag_sync(user: Any, *, lost_admin: bool) -> None:
    """Tenant admins work in the Django admin, which needs ``is_staff``.

    Promotion always grants it; it is taken away only when the user just lost their last tenant-admin
    role, so staff status given by a superuser for other reasons is left alone.
    """
    is_admin = user.is_superuser or Membership.objects.filter(user=user, role=Role.ADMIN).exists()
    if is_admin and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    elif lost_admin and not is_admin and user.is_staff:
        user.is_staff = False
        user.save(update_fields=["is_staff"])


def _other_admins(membership: Membership) -> bool:
    return Membership.objects.filter(tenant=membership.tenant, role=Role.ADMIN).exclude(pk=membership.pk).exists()


@transaction.atomic
def membership_delete(*, actor: Any, membership: Membership) -> None:
    membership_require_admin(actor=actor, tenant=membership.tenant)
    if membership.role == Role.ADMIN and not _other_admins(membership) and not actor.is_superuser:
        raise Conflict(f"{membership.user.username} is the last admin of tenant {membership.tenant.name}")
    audit(tenant=membership.tenant, actor=actor, action="delete", kind="membership",
          name=membership.user.username, summary={"before": membership.role})  # fmt: skip
    membership.delete()
    staff_flag_sync(membership.user, lost_admin=membership.role == Role.ADMIN)


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    key: str


@transaction.atomic
def api_token_create(*, user: Any, name: str, expires_at: datetime | None = None) -> NewToken:
    """Make a token; the returned key is shown once and never stored."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("expires_at must be in the future", fields={"expires_at": ["must be in the future"]})
    prefix = secrets.token_hex(4)
    key = f"{ApiToken.PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    try:
        token = ApiToken.objects.create(
            user=user, name=name, key_prefix=prefix, key_hash=ApiToken.hash_key(key), expires_at=expires_at
        )
    except IntegrityError as error:  # a 256-bit collision; retrying is the honest answer
        raise Conflict("token collision, try again") from error
    audit(tenant=None, actor=user, action="create", kind="api-token", name=f"{name} ({prefix})")
    return NewToken(token=token, key=key)


@transaction.atomic
def api_token_revoke(*, user: Any, token: ApiToken) -> ApiToken:
    """Revoke a token of ``user`` (superusers may revoke anyone's). Someone else's token is not found."""
    if token.user_id != user.pk and not user.is_superuser:
        raise NotFound("token not found")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit(tenant=None, actor=user, action="revoke", kind="api-token", name=f"{token.name} ({token.key_prefix})")
    return token


def object_grant(*, actor: Any, tenant: Tenant, obj: Any, username: str, action: str, grant: bool) -> None:
    """Grant or withdraw one object-level permission (django-guardian) to a member of the tenant."""
    membership_require_admin(actor=actor, tenant=tenant)
    if action not in {"view", "change", "delete"}:
        raise ApplicationError("action must be view, change or delete", fields={"action": ["unknown action"]})
    if obj.tenant_id != tenant.pk:  # the callers look obj up in tenant; this keeps a future one honest
        raise NotFound(f"{obj._meta.verbose_name} not found")
    membership = Membership.objects.filter(tenant=tenant, user__username=username).select_related("user").first()
    if membership is None:
        raise ApplicationError(f"{username} is not a member of tenant {tenant.name}", fields={"user": ["not a member"]})
    codename = f"{obj._meta.app_label}.{action}_{obj._meta.model_name}"
    (assign_perm if grant else remove_perm)(codename, membership.user, obj)
    audit(tenant=tenant, actor=actor, action="grant" if grant else "revoke-grant", kind=obj._meta.model_name,
          name=str(obj), summary={"user": username, "permission": action})  # fmt: skip
