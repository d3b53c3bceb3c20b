"""Catalog entities of a tenant, each stored as its canonical Loom JSON document plus a version history.

The document is the source of truth (it is what import/export, the API and the pinned versions speak);
``name``, ``label``, ``description`` and ``version`` are copied out of it so lists can filter and sort in
SQL. Every write goes through ``templates_app.services`` which bumps ``version`` and appends a
``CatalogVersion``; old versions stay readable after later edits and after a delete, so a cluster built
from version 3 can always be shown version 3.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from tenants.models import TenantModel, name_validator


class CatalogEntity(TenantModel):
    name = models.CharField(max_length=255, validators=[name_validator])
    label = models.CharField(max_length=255, blank=True, default="")
    description = models.TextField(blank=True, default="")
    version = models.PositiveIntegerField(default=1)
    document = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    kind_key: str = ""

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def set_document(self, document: dict[str, Any]) -> None:
        self.document = document
        self.name = document["name"]
        self.label = document.get("label") or ""
        self.description = document.get("description") or ""


def _unique_name(model: str) -> list[models.UniqueConstraint]:
    return [models.UniqueConstraint(fields=["tenant", "name"], name=f"{model}_unique_tenant_name")]


class HardwareType(CatalogEntity):
    kind_key = "hardwaretypes"

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("hardwaretype")


class ImageType(CatalogEntity):
    kind_key = "imagetypes"

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("imagetype")


class Service(CatalogEntity):
    kind_key = "services"

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("service")


class ClusterTemplate(CatalogEntity):
    kind_key = "clustertemplates"

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("clustertemplate")


class PartialTemplate(CatalogEntity):
    kind_key = "partialtemplates"

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("partialtemplate")


class CatalogVersion(TenantModel):
    """One immutable version of one catalog entity, as its canonical document (secrets stay encrypted)."""

    kind = models.CharField(max_length=32)
    name = models.CharField(max_length=255)
    version = models.PositiveIntegerField()
    document = models.JSONField()
    secret_data = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind", "name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind", "name", "version"], name="catalogversion_unique")
        ]

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} v{self.version}"
