"""Catalog read helpers, always restricted to what the user may see."""

from __future__ import annotations

from typing import Any

from tenants.selectors import tenant_list

from .models import ClusterTemplate


def template_list_for_user(*, user: Any) -> list[tuple[Any, list[ClusterTemplate]]]:
    """(tenant, templates) for each tenant the user belongs to, two queries in all."""
    tenants = list(tenant_list(user=user).order_by("name"))
    templates = ClusterTemplate.objects.restrict(user, "view").filter(tenant__in=tenants).order_by("name")
    by_tenant: dict[int, list[ClusterTemplate]] = {t.pk: [] for t in tenants}
    for template in templates:
        by_tenant[template.tenant_id].append(template)
    return [(tenant, by_tenant[tenant.pk]) for tenant in tenants]
