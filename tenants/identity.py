"""Who someone signing in through the identity provider is in Loom, and which tenants they belong to.

The protocol is ``tenants.sso``'s; this module only sees claims the provider vouched for and applies them:

- The account is found by the provider's ``iss`` + ``sub`` (``ExternalIdentity``) and nothing else. A new
  one gets a fresh username from the username claim (``preferred_username`` by default), with a number
  added when that name is taken, so nobody at the provider can become an existing Loom user by choosing
  that user's name or email. Superuser status never comes from the provider.
- The groups claim (``groups``; entries ``loom:<tenant>:admin`` or ``loom:<tenant>:user``) decides the
  memberships it manages (``source=sso``) at every sign-in: new groups add them, changed ones change the
  role, missing ones end them. Memberships granted in Loom itself (``source=local``) are left alone.
- Someone the groups give no tenant is refused, with the reason; their memberships are still brought up to
  date first, so the refusal itself removes access the provider withdrew.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .errors import SignInRefused
from .models import ExternalIdentity, Membership, MembershipSource, Role, Tenant
from .services import audit, staff_flag_sync

logger = logging.getLogger(__name__)

_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")
USERNAME_MAX = 150


def groups_to_roles(groups: Any, *, prefix: str) -> dict[str, str]:
    """``{tenant name: role}`` from a groups claim; other groups (the provider's own) are ignored.

    Accepts a list, or one string of groups separated by spaces or commas, as providers differ. A tenant
    named twice gets the stronger role.
    """
    if isinstance(groups, str):
        groups = re.split(r"[\s,]+", groups)
    if not isinstance(groups, list | tuple):
        return {}
    roles: dict[str, str] = {}
    for group in groups:
        if not isinstance(group, str):
            continue
        parts = group.split(":")
        if len(parts) != 3 or parts[0] != prefix or not parts[1]:
            continue
        tenant, role = parts[1], parts[2]
        if role not in Role.values:
            logger.warning("single sign-on: group %r names no Loom role (admin or user)", group)
            continue
        if roles.get(tenant) != Role.ADMIN:
            roles[tenant] = role
    return roles


def _new_username(claims: dict[str, Any]) -> str:
    wanted = claims.get(settings.LOOM_OIDC_USERNAME_CLAIM) or str(claims.get("email") or "").split("@")[0]
    base = _USERNAME_UNSAFE.sub("-", str(wanted or "user")).strip("-.")[: USERNAME_MAX - 8] or "user"
    users = get_user_model().objects
    candidate, number = base, 1
    # Case-insensitive: "Admin" beside an existing "admin" would be a look-alike of another account.
    while users.filter(username__iexact=candidate).exists():
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def _profile(claims: dict[str, Any]) -> dict[str, str]:
    fields = {
        "email": claims.get("email"),
        "first_name": claims.get("given_name"),
        "last_name": claims.get("family_name"),
    }
    limits = {"email": 254, "first_name": 150, "last_name": 150}
    return {name: str(value)[: limits[name]] for name, value in fields.items() if isinstance(value, str)}


def memberships_apply(*, user: Any, roles: dict[str, str]) -> list[Membership]:
    """Make the user's identity-provider memberships exactly ``roles``; returns the memberships they now hold.

    Tenants the groups name that do not exist are skipped (and logged): a group for a tenant made later
    takes effect at the next sign-in after it is made.
    """
    tenants = {tenant.name: tenant for tenant in Tenant.objects.filter(name__in=roles)}
    for name in sorted(set(roles) - set(tenants)):
        logger.warning("single sign-on: %s is in a group for tenant %r, which does not exist", user.username, name)
    held = {m.tenant_id: m for m in Membership.objects.filter(user=user).select_related("tenant")}
    lost_admin = False
    for name, tenant in tenants.items():
        role = roles[name]
        membership = held.get(tenant.pk)
        if membership is None:
            membership = Membership.objects.create(user=user, tenant=tenant, role=role, source=MembershipSource.SSO)
            held[tenant.pk] = membership
            audit(tenant=tenant, actor=None, action="create", kind="membership", name=user.username,
                  summary={"before": None, "after": role, "source": "sso"})  # fmt: skip
        elif membership.role != role or membership.source != MembershipSource.SSO:
            before = membership.role
            lost_admin |= before == Role.ADMIN and role != Role.ADMIN
            membership.role, membership.source = role, MembershipSource.SSO
            membership.save(update_fields=["role", "source"])
            audit(tenant=tenant, actor=None, action="update", kind="membership", name=user.username,
                  summary={"before": before, "after": role, "source": "sso"})  # fmt: skip
    for tenant_pk, membership in list(held.items()):
        if membership.source == MembershipSource.SSO and membership.tenant.name not in tenants:
            lost_admin |= membership.role == Role.ADMIN
            membership.delete()
            del held[tenant_pk]
            audit(tenant=membership.tenant, actor=None, action="delete", kind="membership", name=user.username,
                  summary={"before": membership.role, "source": "sso"})  # fmt: skip
    staff_flag_sync(user, lost_admin=lost_admin)
    return list(held.values())


def sso_sign_in(*, issuer: str, claims: dict[str, Any]) -> Any:
    """The Loom user for verified claims, created at the first sign-in, with memberships applied.

    Raises ``SignInRefused`` (after committing the membership changes) when the account is disabled in Loom
    or the groups give it no tenant.
    """
    subject = str(claims["sub"])
    with transaction.atomic():
        identity = (
            ExternalIdentity.objects.select_for_update().select_related("user").filter(issuer=issuer, subject=subject)
        ).first()
        if identity is None:
            user = get_user_model().objects.create_user(_new_username(claims), **_profile(claims))
            user.set_unusable_password()  # only the provider signs this account in
            user.save(update_fields=["password"])
            identity = ExternalIdentity.objects.create(user=user, issuer=issuer, subject=subject)
            audit(tenant=None, actor=None, action="create", kind="user", name=user.username,
                  summary={"source": "sso", "issuer": issuer})  # fmt: skip
        user = identity.user
        profile = _profile(claims)
        if any(getattr(user, name) != value for name, value in profile.items()):
            for name, value in profile.items():
                setattr(user, name, value)
            user.save(update_fields=list(profile))
        identity.last_sign_in_at = timezone.now()
        identity.save(update_fields=["last_sign_in_at"])
        roles = groups_to_roles(claims.get(settings.LOOM_OIDC_GROUPS_CLAIM), prefix=settings.LOOM_OIDC_GROUP_PREFIX)
        memberships = memberships_apply(user=user, roles=roles)
    if not user.is_active:
        raise SignInRefused(f"The Loom account {user.username} is disabled; ask a Loom administrator.")
    if not memberships and not user.is_superuser:
        prefix = settings.LOOM_OIDC_GROUP_PREFIX
        raise SignInRefused(
            f"You are signed in at the identity provider as {user.username}, but none of your groups gives you "
            f"a Loom tenant (groups look like {prefix}:<tenant>:admin or {prefix}:<tenant>:user)."
        )
    return user
