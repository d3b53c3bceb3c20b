"""Row formsets embedded in the catalog admin forms: links, provider mappings, per-service constraints and
service actions. Each row set turns its rows into one part of a Loom JSON document and maps the service's
problem paths back onto the row that caused them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from django import forms
from django.forms.formsets import BaseFormSet, formset_factory

from tenants.admin_mixins import add_error_safely

from .admin_fields import (
    MISSING,
    as_text,
    format_key_values,
    keep_type,
    ordered_like,
    parse_key_values,
    path_rest,
    schema_form_fields,
    schema_initial,
    schema_values,
)
from .codec import SERVICE_ACTIONS
from .plugin_types import registry

Doc = dict[str, Any]

# --- embedded row formsets ----------------------------------------------------------------------------


class RowForm(forms.Form):
    """One row of an embedded table. Rows where every field is blank are ignored."""

    def is_blank(self) -> bool:
        data = getattr(self, "cleaned_data", {}) or {}
        return all(value in ("", None, [], False) for key, value in data.items() if key != "DELETE")


class RowFormSet(BaseFormSet):
    """Rows of a table; deleted and blank rows are dropped when building the document."""

    def used_forms(self) -> list[RowForm]:
        return [
            form
            for form in self.forms
            if hasattr(form, "cleaned_data")
            and not (self.can_delete and self._should_delete_form(form))
            and not form.is_blank()
        ]


def _unique_rows(formset: RowFormSet, key: str, label: str) -> None:
    seen: set[str] = set()
    for form in formset.used_forms():
        value = form.cleaned_data.get(key)
        if value and value in seen:
            form.add_error(key, f"{label} {value} appears in two rows")
        seen.add(value)


class LinkForm(RowForm):
    label = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": 20}))
    url = forms.CharField(
        label="URL", required=False, widget=forms.TextInput(attrs={"size": 50}), help_text="May contain macros."
    )


class LinkFormSet(RowFormSet):
    @staticmethod
    def initial_rows(links: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{"label": link.get("label", ""), "url": link.get("url", "")} for link in links]

    def to_document(self) -> list[dict[str, str]]:
        self.emitted = self.used_forms()
        return [{"label": form.cleaned_data["label"], "url": form.cleaned_data["url"]} for form in self.emitted]

    def route(self, path: str, message: str) -> bool:
        match = re.match(r"^links\[(\d+)\](?:\.(\w+))?$", path)
        if not match or int(match.group(1)) >= len(getattr(self, "emitted", [])):
            return False
        add_error_safely(self.emitted[int(match.group(1))], match.group(2) or "url", message)
        return True


class ProviderMappingForm(RowForm):
    """One provider of a hardware or image type's ``providermap``; subclasses name the key field."""

    key_field: ClassVar[str] = ""
    named_fields: ClassVar[tuple[str, ...]] = ()

    provider = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": 18}))
    cost = forms.CharField(required=False, help_text="Per hour", widget=forms.TextInput(attrs={"size": 8}))
    extra = forms.CharField(
        label="Extra keys",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 28}),
        help_text="key=value, one per line (kept as they are, e.g. vcpu=2)",
    )

    def clean_extra(self) -> dict[str, str]:
        extra = parse_key_values(self.cleaned_data.get("extra", ""))
        taken = sorted(set(extra) & set(self.named_fields))
        if taken:
            raise forms.ValidationError(f"{', '.join(taken)} has its own column")
        return extra

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not cleaned.get("provider") and not self.is_blank():
            self.add_error("provider", "name the provider this row maps")
        return cleaned

    def is_blank(self) -> bool:
        data = getattr(self, "cleaned_data", {}) or {}
        return not any(data.get(key) for key in ("provider", *self.named_fields, "extra"))


class HardwareMappingForm(ProviderMappingForm):
    key_field = "flavor"
    named_fields = ("flavor", "cost")

    flavor = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": 18}))
    field_order = ["provider", "flavor", "cost", "extra"]


class ImageMappingForm(ProviderMappingForm):
    key_field = "image"
    named_fields = ("image", "sshuser", "cost")

    image = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": 24}))
    sshuser = forms.CharField(label="SSH user", required=False, widget=forms.TextInput(attrs={"size": 10}))
    field_order = ["provider", "image", "sshuser", "cost", "extra"]


class ProviderMapFormSet(RowFormSet):
    def clean(self) -> None:
        _unique_rows(self, "provider", "provider")

    @classmethod
    def initial_rows(cls, providermap: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        named = cls.form.named_fields  # type: ignore[attr-defined]
        return [
            {
                "provider": provider,
                **{key: as_text(mapping.get(key)) for key in named},
                "extra": format_key_values({k: v for k, v in mapping.items() if k not in named}),
            }
            for provider, mapping in providermap.items()
        ]

    def to_document(self, original: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        # Routing errors later removes fields from cleaned_data, so remember which row is which provider.
        self.emitted = [(form.cleaned_data["provider"], form) for form in self.used_forms()]
        for provider, form in self.emitted:
            before = original.get(provider, {})
            mapping: dict[str, Any] = {}
            for key in form.named_fields:
                value = form.cleaned_data.get(key) or ""
                if value:
                    mapping[key] = keep_type(value, before.get(key, MISSING))
                elif key in before:
                    mapping[key] = before[key] if before[key] in ("", None) else ""
                elif key == form.key_field:
                    mapping[key] = ""  # let the service say that the key is required
            for key, value in form.cleaned_data["extra"].items():
                mapping[key] = keep_type(value, before.get(key, MISSING))
            result[provider] = mapping
        return result

    def route(self, path: str, message: str) -> bool:
        for provider, form in sorted(getattr(self, "emitted", []), key=lambda row: -len(row[0])):
            rest = path_rest(path, f"providermap.{provider}")
            if rest is None:
                continue
            key = rest.lstrip(".")
            if not key:
                form.add_error("provider", message)
            elif key in form.named_fields:
                form.add_error(key, message)
            else:
                form.add_error("extra", f"{key}: {message}")
            return True
        return False


class ServiceConstraintForm(RowForm):
    service = forms.ChoiceField(required=False)
    min = forms.IntegerField(label="Min nodes", required=False, widget=forms.NumberInput(attrs={"style": "width:5em"}))
    max = forms.IntegerField(label="Max nodes", required=False, widget=forms.NumberInput(attrs={"style": "width:5em"}))
    hardwaretypes = forms.MultipleChoiceField(
        label="Allowed hardware types", required=False, widget=forms.SelectMultiple(attrs={"size": 4})
    )
    imagetypes = forms.MultipleChoiceField(
        label="Allowed image types", required=False, widget=forms.SelectMultiple(attrs={"size": 4})
    )

    def __init__(self, *args: Any, choices: Mapping[str, list[tuple[str, str]]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["service"].choices = [("", "---------"), *choices["services"]]
        self.fields["hardwaretypes"].choices = choices["hardwaretypes"]
        self.fields["imagetypes"].choices = choices["imagetypes"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not cleaned.get("service") and not self.is_blank():
            self.add_error("service", "choose the service this row constrains")
        return cleaned


class ServiceConstraintFormSet(RowFormSet):
    def clean(self) -> None:
        _unique_rows(self, "service", "service")

    @staticmethod
    def initial_rows(services: dict[str, Doc]) -> list[dict[str, Any]]:
        return [
            {
                "service": name,
                "min": spec.get("quantities", {}).get("min"),
                "max": spec.get("quantities", {}).get("max"),
                "hardwaretypes": spec.get("hardwaretypes", []),
                "imagetypes": spec.get("imagetypes", []),
            }
            for name, spec in services.items()
        ]

    def to_document(self, original: dict[str, Doc]) -> dict[str, Doc]:
        result: dict[str, Doc] = {}
        self.emitted = [(form.cleaned_data["service"], form) for form in self.used_forms()]
        for _, form in self.emitted:
            data = form.cleaned_data
            before = original.get(data["service"], {})
            quantities: Doc = {}
            if data.get("min") is not None:
                quantities["min"] = data["min"]
            if data.get("max") is not None:
                quantities["max"] = data["max"]
            result[data["service"]] = {
                "hardwaretypes": ordered_like(data["hardwaretypes"], before.get("hardwaretypes", [])),
                "imagetypes": ordered_like(data["imagetypes"], before.get("imagetypes", [])),
                "quantities": quantities,
            }
        return result

    def route(self, path: str, message: str) -> bool:
        for service, form in sorted(getattr(self, "emitted", []), key=lambda row: -len(row[0])):
            rest = path_rest(path, f"constraints.services.{service}")
            if rest is None:
                continue
            key = rest.lstrip(".")
            target = {"quantities.min": "min", "quantities.max": "max", "quantities": "max"}.get(key)
            if target is None:
                target = next((name for name in ("hardwaretypes", "imagetypes") if key.startswith(name)), "service")
            form.add_error(target, message)
            return True
        return False


class ActionForm(forms.Form):
    """One service action (install, configure, ...): an automator type and that type's fields.

    The fields of every automator type are present, named ``<type>__<field>``; the page shows only those of
    the selected type, and only those are read.
    """

    def __init__(self, *args: Any, action: str, **kwargs: Any) -> None:
        super().__init__(*args, prefix=f"action-{action}", **kwargs)
        self.action = action
        self.fields["type"] = forms.ChoiceField(
            label="Automator",
            required=False,
            choices=[("", "(no action)"), *((name, name) for name in registry.names("automator"))],
            widget=forms.Select(attrs={"data-loom-automator": "1"}),
        )
        for plugin in registry.all("automator"):
            self.fields.update(schema_form_fields(plugin.name, plugin.admin.fields))

    def automator_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "name": plugin.name,
                "description": plugin.description,
                "fields": [self[name] for name in schema_form_fields(plugin.name, plugin.admin.fields)],
            }
            for plugin in registry.all("automator")
        ]


class ActionForms:
    """The fixed action rows (the original's six and Loom's ``check``); each action appears once, so there is
    nothing to duplicate or delete."""

    prefix = "actions"

    def __init__(self, data: Any, actions: dict[str, Doc]) -> None:
        self.forms = []
        for action in SERVICE_ACTIONS:
            spec = actions.get(action) or {}
            initial: dict[str, Any] = {"type": spec.get("type", "")}
            plugin = registry.get("automator", spec.get("type") or "")
            if plugin is not None:
                initial.update(schema_initial(plugin.name, plugin.admin.fields, spec.get("fields", {})))
            self.forms.append(ActionForm(data, action=action, initial=initial))

    def __iter__(self) -> Any:
        return iter(self.forms)

    def is_valid(self) -> bool:
        return all([form.is_valid() for form in self.forms])

    def to_document(self, original: dict[str, Doc]) -> dict[str, Doc]:
        actions: dict[str, Doc] = {}
        self.types = {form.action: form.cleaned_data.get("type") or "" for form in self.forms}
        for form in self.forms:
            automator = self.types[form.action]
            plugin = registry.get("automator", automator or "")
            if plugin is None:
                continue
            before = original.get(form.action) or {}
            before_fields = before.get("fields", {}) if before.get("type") == automator else {}
            fields = schema_values(plugin.name, plugin.admin.fields, form.cleaned_data, before_fields)
            actions[form.action] = {"type": plugin.name, "fields": fields}
        return actions

    def route(self, path: str, message: str) -> bool:
        for form in self.forms:
            rest = path_rest(path, f"provisioner.actions.{form.action}")
            if rest is None:
                continue
            key = rest.lstrip(".")
            automator = getattr(self, "types", {}).get(form.action, "")
            if key == "type":
                form.add_error("type", message)
            elif key.startswith("fields."):
                add_error_safely(form, f"{automator}__{key[len('fields.') :]}", message)
            else:
                form.add_error(None, message)
            return True
        return False


@dataclass
class Section:
    """A block of rows shown after the fieldsets (see ``catalog_change_form.html``)."""

    key: str
    title: str
    rows: Any
    route: Callable[[str, str], bool]
    help: str = ""
    layout: str = "table"

    def is_valid(self) -> bool:
        return bool(self.rows.is_valid())

    @property
    def has_errors(self) -> bool:
        if isinstance(self.rows, BaseFormSet):
            return bool(self.rows.total_error_count())
        return any(form.errors for form in self.rows)


def row_formset(form: type[forms.Form], formset: type[BaseFormSet], extra: int = 1) -> type[BaseFormSet]:
    return formset_factory(form, formset=formset, extra=extra, can_delete=True)
