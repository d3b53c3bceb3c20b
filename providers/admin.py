"""Django admin for providers: the fields of the chosen provider type, rendered from its schema.

Sensitive fields are write-only. Their inputs are always empty; leaving one blank keeps the stored secret
(the form sends ``"$encrypted$"``, which the provider kind reads as keep-existing), typing replaces it,
and the "clear" box next to it erases it. No page shows a stored secret: the read-only Loom JSON is the
masked export, and the admin's history records field names, never values.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from templates_app.admin import CatalogEntityAdmin, LaunchableAdminMixin, LaunchableListFilter
from templates_app.admin_fields import Doc, path_rest, schema_form_fields, schema_initial, schema_values
from templates_app.admin_forms import CatalogEntityForm
from templates_app.plugin_types import PluginType, registry

from . import pool_admin, resources_admin  # noqa: F401 - register the pool host and plugin resource admins
from .models import Provider
from .secrets import ENCRYPTED


def _type_fieldset(plugin: PluginType) -> tuple[str, dict[str, Any]]:
    rows: list[Any] = []
    for name, schema in plugin.admin.fields.items():
        field = f"{plugin.name}__{name}"
        rows.append((field, f"{field}__clear") if schema.sensitive else field)
    return (
        f"Fields of provider type {plugin.name}",
        {
            "fields": rows,
            "description": plugin.description,
            # The page shows only the fieldset of the selected type (see catalog_change_form.html).
            "classes": ["loom-provider-type", f"loom-type-{plugin.name}"],
        },
    )


class ProviderForm(CatalogEntityForm):
    kind_key = "providers"
    problem_fields = {"providertype": "providertype"}

    providertype = forms.ChoiceField(label="Provider type", widget=forms.Select(attrs={"data-loom-provider-type": "1"}))

    class Meta(CatalogEntityForm.Meta):
        model = Provider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stored = self.original.get("provisioner", {}) if self.original else {}
        stored_type = self.original.get("providertype")
        for plugin in registry.all("provider"):
            for name, schema in plugin.admin.fields.items():
                if not schema.sensitive:
                    continue
                is_stored = plugin.name == stored_type and stored.get(name) == ENCRYPTED
                state = "A value is stored: leave blank to keep it." if is_stored else "No value is stored."
                field = self.fields[f"{plugin.name}__{name}"]
                field.help_text = f"{field.help_text} {state}".strip()

    def add_dynamic_fields(self) -> None:
        choices = [(name, name) for name in registry.names("provider")]
        self.fields["providertype"].choices = [("", "---------"), *choices]
        for plugin in registry.all("provider"):
            self.fields.update(schema_form_fields(plugin.name, plugin.admin.fields))

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        """The stored type's values (never secrets); other types start from their schema defaults."""
        stored_type = doc.get("providertype")
        initial: dict[str, Any] = {"providertype": stored_type or ""}
        for plugin in registry.all("provider"):
            if plugin.name == stored_type:
                initial.update(schema_initial(plugin.name, plugin.admin.fields, doc.get("provisioner", {})))
                continue
            defaults = {name: schema.default for name, schema in plugin.admin.fields.items()
                        if schema.default is not None}  # fmt: skip
            initial.update(schema_initial(plugin.name, plugin.admin.fields, defaults))
        return initial

    def to_document(self) -> Doc:
        provider_type = self.emitted_type = self.cleaned_data["providertype"]
        plugin = registry.get("provider", provider_type)
        assert plugin is not None  # the select only offers registered types
        same_type = self.original.get("providertype") == provider_type
        original = self.original.get("provisioner", {}) if same_type else {}
        return {
            **self.base_document(),
            "providertype": provider_type,
            "provisioner": schema_values(plugin.name, plugin.admin.fields, self.cleaned_data, original),
        }

    def route_problem(self, path: str, message: str) -> None:
        rest = path_rest(path, "provisioner")
        field = f"{getattr(self, 'emitted_type', '')}__{rest[1:]}" if rest else ""
        if field in self.fields:
            self.add_error(field, message)
            return
        super().route_problem(path, message)


@admin.register(Provider)
class ProviderAdmin(LaunchableAdminMixin, CatalogEntityAdmin):
    form = ProviderForm
    list_display = ("name", "provider_type", "label", "launchable", "tenant", "version", "updated_at")
    list_filter = (*CatalogEntityAdmin.list_filter, "provider_type", LaunchableListFilter)

    def get_form_fieldsets(self, request: HttpRequest) -> list[tuple[str, dict[str, Any]]]:
        return [("Provider type", {"fields": ["providertype"]}), *map(_type_fieldset, registry.all("provider"))]
