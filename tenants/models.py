"""Tenants, memberships, API tokens, the audit trail, and the restricted queryset every app uses.

``TenantQuerySet.restrict(user, action)`` is the one place that decides what a user may see or touch.
It combines tenant membership (admins: everything in their tenant; users: the catalog, and objects they
own) with django-guardian object grants (e.g. a cluster shared with a colleague, or one template a user
may edit). Objects of tenants the user does not belong to are simply absent, so views answer 404.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,255}\Z"  # \Z, not $: "$" also matches before a final newline
name_validator = RegexValidator(NAME_PATTERN, "must be 1-255 characters of letters, digits, '_', '.' or '-'.")


class Role(models.TextChoices):
    ADMIN = "admin", "Tenant admin"
    USER = "user", "User"


class Tenant(models.Model):
    """An isolation unit: its own catalog, clusters, quotas and worker budget."""

    name = models.CharField(max_length=255, unique=True, validators=[name_validator])
    description = models.TextField(blank=True, default="")
    max_clusters = models.PositiveIntegerField(
        null=True, blank=True, help_text="Live clusters allowed; empty means unlimited."
    )
    max_nodes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Nodes across live clusters; empty means unlimited."
    )
    workers = models.PositiveIntegerField(
        default=10, help_text="Worker budget: tasks of this tenant that may run at once."
    )
    operator_providers = models.BooleanField(
        default=False,
        help_text=(
            "May use provider types whose machines run on Loom's own hosts (local lab hosts share the worker's "
            "filesystem). Only superusers change it; never give it to a tenant whose admins you do not trust "
            "with root on the worker."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MembershipSource(models.TextChoices):
    LOCAL = "local", "Granted in Loom"
    SSO = "sso", "The identity provider's groups"


class Membership(models.Model):
    """A user's role in a tenant.

    ``source`` says who keeps it: ``local`` memberships are granted in Loom (the admin, the API) and stay
    until someone removes them there; ``sso`` ones mirror the identity provider's groups claim and are
    rewritten at every single sign-on, so leaving the group in the identity provider ends them.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.USER)
    source = models.CharField(max_length=8, choices=MembershipSource.choices, default=MembershipSource.LOCAL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")]
        ordering = ["tenant__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class ExternalIdentity(models.Model):
    """The link from a Loom user to an account at an OpenID provider: the provider's ``iss`` and ``sub``.

    Single sign-on finds users only through this link, never by username or email: an identity provider
    whose users may pick their own ``preferred_username`` or (unverified) email must not let one of them
    become an existing Loom account, such as the operator's ``admin``.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="external_identity_unique_issuer_subject")
        ]
        ordering = ["issuer", "subject"]
        verbose_name_plural = "external identities"

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class TenantQuerySet(models.QuerySet):
    """NetBox-style restricted queryset, tenant-aware.

    Models opt into ownership by setting ``owner_field``: owners may view, change and delete what they own.
    Catalog models (no owner) are readable by every member of their tenant and writable by its admins.
    Guardian grants add single objects for a given action, but only inside tenants the user still belongs
    to (leaving a tenant revokes them).
    """

    def restrict(self, user: Any, action: str = "view") -> TenantQuerySet:
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self
        memberships = Membership.objects.filter(user=user)
        member_tenants = memberships.values("tenant")
        owner_field = getattr(self.model, "owner_field", None)
        if action == "view" and owner_field is None:
            # Every member sees the whole catalog of their tenants; object grants could add nothing.
            return self.filter(tenant__in=member_tenants)
        allowed = Q(tenant__in=memberships.filter(role=Role.ADMIN).values("tenant"))
        if owner_field is not None:
            # Owners manage what they own (a user deletes their own cluster), while still members.
            allowed |= Q(tenant__in=member_tenants, **{owner_field: user})
        allowed |= Q(tenant__in=member_tenants) & _guardian_granted_pks(user, self.model, action)
        return self.filter(allowed)

    def for_tenant(self, tenant: Tenant) -> TenantQuerySet:
        return self.filter(tenant=tenant)


def _guardian_granted_pks(user: Any, model: type[models.Model], action: str) -> Any:
    """Subquery of ``model`` primary keys on which ``user`` (or one of their groups) holds ``action``.

    guardian keeps ``object_pk`` as text, so it is cast to the integer key inside the SQL; the whole
    restriction stays one lazy query however many grants exist.
    """
    from django.contrib.contenttypes.models import ContentType
    from django.db.models.functions import Cast
    from guardian.models import GroupObjectPermission, UserObjectPermission

    codename = f"{action}_{model._meta.model_name}"
    content_type = ContentType.objects.get_for_model(model)
    by_user = UserObjectPermission.objects.filter(user=user, permission__codename=codename, content_type=content_type)
    by_group = GroupObjectPermission.objects.filter(
        group__user=user, permission__codename=codename, content_type=content_type
    )
    as_int = Cast("object_pk", models.BigIntegerField())
    return Q(pk__in=by_user.annotate(pk_int=as_int).values("pk_int")) | Q(
        pk__in=by_group.annotate(pk_int=as_int).values("pk_int")
    )


class TenantModel(models.Model):
    """Base of every tenant-owned row."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")

    owner_field: str | None = None

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True


class ApiToken(models.Model):
    """A per-user API token. Only a SHA-256 hash is stored; the secret is shown once, at creation."""

    PREFIX = "loom_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def is_active(self) -> bool:
        from django.utils import timezone

        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class AuditEvent(models.Model):
    """Who changed what, with a before/after summary. Written explicitly by services, never by signals.

    Events outlive their tenant (the link is cleared, the entity names stay), so deleting a tenant does
    not erase the record of what was done in it.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=32)
    entity_kind = models.CharField(max_length=64)
    entity_name = models.CharField(max_length=255)
    version = models.PositiveIntegerField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["tenant", "entity_kind", "entity_name"])]

    def __str__(self) -> str:
        return f"{self.action} {self.entity_kind} {self.entity_name}"
