"""Providers: a provider type plus field values. Sensitive values are encrypted at rest.

The public part of the document (non-sensitive fields) is stored like every catalog entity; sensitive
values live only in ``secret_data``, a MultiFernet token of a JSON object, and never leave the server
except to the worker that needs them.
"""

from __future__ import annotations

from django.db import models

from templates_app.models import CatalogEntity, _unique_name


class Provider(CatalogEntity):
    kind_key = "providers"

    provider_type = models.CharField(max_length=64, db_index=True)
    secret_data = models.TextField(blank=True, default="")

    class Meta(CatalogEntity.Meta):
        constraints = _unique_name("provider")
