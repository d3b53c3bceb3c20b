"""``manage.py rotate_field_keys``: re-encrypt every stored secret with the newest field key.

It lives in ``clusters``, the app that depends on all the others, because it must know every model that
stores secrets (providers, catalog versions, webhooks, plugin resources).

Rotation: prepend a new key to ``LOOM_FIELD_ENCRYPTION_KEYS``, restart, run this command, then remove the
old key. Rows are rewritten in batches inside one transaction, so a failure leaves the old tokens intact.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from clusters.models import Webhook
from providers.models import PluginResource, Provider
from providers.secrets import fernet, rotate_token
from templates_app.models import CatalogVersion


class Command(BaseCommand):
    help = "Re-encrypt stored secrets with the first key of LOOM_FIELD_ENCRYPTION_KEYS."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        for model in (Provider, CatalogVersion, Webhook):
            rows = list(model.objects.exclude(secret_data="").only("pk", "secret_data"))
            for row in rows:
                row.secret_data = rotate_token(row.secret_data)
            model.objects.bulk_update(rows, ["secret_data"], batch_size=500)
            total += len(rows)
        # Plugin resources one at a time: they can be megabytes each.
        for resource in PluginResource.objects.only("pk", "content").iterator(chunk_size=50):
            PluginResource.objects.filter(pk=resource.pk).update(content=fernet().rotate(bytes(resource.content)))
            total += 1
        self.stdout.write(self.style.SUCCESS(f"re-encrypted {total} secret record(s) with the newest key"))
