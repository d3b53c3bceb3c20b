"""factory_boy factories. One object per factory; the tenant is always explicit."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from tenants.models import Membership, Role, Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"tenant-{n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-1")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    role = Role.USER


def member(tenant: Tenant, role: str = Role.USER, **kwargs: object) -> object:
    """A user who belongs to ``tenant`` with ``role``."""
    user = UserFactory(**kwargs)
    user.save()
    MembershipFactory(user=user, tenant=tenant, role=role)
    return user


def enable_operator_providers(tenant: Tenant) -> Tenant:
    """What a superuser does for a tenant that may use operator-only provider types (the starter catalog's
    ``lab`` provider is ``local``: lab hosts on this machine)."""
    Tenant.objects.filter(pk=tenant.pk).update(operator_providers=True)
    tenant.operator_providers = True
    return tenant
