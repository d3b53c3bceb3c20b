"""Admin forms for catalog entities: structured fields in, one Loom JSON document out.

Each form reads its initial values from ``kind.export(obj)`` and, when submitted, builds the Loom JSON
document from its fields and embedded row formsets and hands it to ``catalog_entity_save``; the service
normalises and validates it (nothing is validated twice here beyond parsing what a field holds). The
service's problems carry dotted paths (``constraints.services.mysql.quantities.max``); each form maps them
back to the field or row they came from, so the message appears where the user typed the value and the
submitted input is shown again as typed.

Saving an untouched form must not make a new version, so building a document keeps what the form cannot
show differently: the original order of names in a multi-select, the JSON type of a value that reads the
same as text (``0.1`` stays a number), and keys the document had with an empty value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from django import forms
from django.contrib import messages
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.forms.formsets import BaseFormSet, formset_factory

from tenants.admin_mixins import ServiceFormMixin, add_error_safely, administered_tenants
from tenants.errors import ApplicationError, Conflict
from tenants.models import Tenant

from .codec import SERVICE_ACTIONS
from .kinds import get_kind
from .models import ClusterTemplate, HardwareType, ImageType, PartialTemplate, Service
from .plugin_types import FieldSchema, registry
from .problems import CatalogValidationError
from .services import catalog_entity_save

Doc = dict[str, Any]
_MISSING = object()
_SEPARATORS = re.compile(r"[\s,]+")
_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))
_INDEX = re.compile(r"^\[(\d+)\]")

# --- small conversions --------------------------------------------------------------------------------


def split_names(text: str) -> list[str]:
    """Names separated by commas, spaces or newlines, de-duplicated in order."""
    names: list[str] = []
    for name in _SEPARATORS.split(text or ""):
        if name and name not in names:
            names.append(name)
    return names


def join_names(names: Iterable[str]) -> str:
    return ", ".join(names)


def as_text(value: Any) -> str:
    """A JSON scalar as a form shows it: booleans as true/false, null as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def keep_type(value: Any, original: Any) -> Any:
    """``original`` when it reads the same as ``value`` (a stored 0.5 stays a number, True a boolean)."""
    if original is not _MISSING and as_text(original) == as_text(value):
        return original
    return value


def ordered_like(selected: Iterable[str], original: Iterable[str]) -> list[str]:
    """Selected names in their original order, new ones after (a multi-select forgets the order)."""
    chosen = list(selected)
    kept = [name for name in original if name in chosen]
    return kept + [name for name in chosen if name not in kept]


def format_duration_ms(milliseconds: Any) -> str:
    """Milliseconds as the largest whole unit (604800000 → "7d"); 0 stays "0"."""
    if not isinstance(milliseconds, int) or milliseconds <= 0:
        return as_text(milliseconds) or "0"
    for suffix, size in _UNITS:
        if milliseconds % size == 0:
            return f"{milliseconds // size}{suffix}"
    return str(milliseconds)


def parse_key_values(text: str) -> dict[str, str]:
    """``key=value`` lines; raises ``ValidationError`` naming the first bad line."""
    result: dict[str, str] = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition("=")
        key = key.strip()
        if not separator or not key:
            raise forms.ValidationError(f"line {number}: expected key=value, got {line.strip()!r}")
        if key in result:
            raise forms.ValidationError(f"line {number}: {key} appears twice")
        result[key] = value.strip()
    return result


def format_key_values(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{key}={as_text(value)}" for key, value in values.items())


def name_choices(*groups: Iterable[str]) -> list[tuple[str, str]]:
    """Sorted choices from catalog names plus the values already in the document (kept even if unknown)."""
    names: set[str] = set()
    for group in groups:
        names.update(name for name in group if isinstance(name, str) and name)
    return [(name, name) for name in sorted(names)]


def path_rest(path: str, prefix: str) -> str | None:
    """What follows ``prefix`` in a problem path, or None when the path is not under it."""
    if path == prefix:
        return ""
    if path.startswith(prefix + ".") or path.startswith(prefix + "["):
        return path[len(prefix) :]
    return None


def with_context(rest: str, message: str) -> str:
    """Prefix a message with the part of the path the field cannot show ("#2: ...", "apache: ...")."""
    rest = rest.lstrip(".")
    if not rest:
        return message
    match = _INDEX.match(rest)
    if match:
        inner = rest[match.end() :].lstrip(".")
        where = f"#{int(match.group(1)) + 1}" + (f" {inner}" if inner else "")
        return f"{where}: {message}"
    return f"{rest}: {message}"


# --- plugin field schemas as form fields ------------------------------------------------------------

CHECKBOX_CHOICES = [("", "(not set)"), ("true", "Yes"), ("false", "No")]


def schema_form_field(schema: FieldSchema) -> forms.Field:
    """A form field for one plugin field.

    A checkbox becomes a three-way select: stored documents use ``""`` for "not set", which a checkbox
    cannot show, and turning it into false would change the document on every save.
    """
    common: dict[str, Any] = {"label": schema.label, "help_text": schema.tip, "required": False}
    if schema.type == "select":
        return forms.ChoiceField(choices=[("", "---------"), *((o, o) for o in schema.options)], **common)
    if schema.type == "checkbox":
        return forms.ChoiceField(choices=CHECKBOX_CHOICES, **common)
    if schema.sensitive or schema.type == "password":
        widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
        return forms.CharField(widget=widget, strip=False, **common)
    if schema.type == "json":
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), **common)
    return forms.CharField(widget=forms.TextInput(attrs={"size": 40}), **common)


def schema_form_fields(prefix: str, fields: Mapping[str, FieldSchema]) -> dict[str, forms.Field]:
    """Form fields named ``<prefix>__<field>``; sensitive ones get a ``__clear`` checkbox next to them."""
    result: dict[str, forms.Field] = {}
    for name, schema in fields.items():
        result[f"{prefix}__{name}"] = schema_form_field(schema)
        if schema.sensitive:
            result[f"{prefix}__{name}__clear"] = forms.BooleanField(
                label=f"Clear {schema.label.lower()}", required=False
            )
    return result


def schema_initial(prefix: str, fields: Mapping[str, FieldSchema], values: Mapping[str, Any]) -> dict[str, str]:
    """Initial values for ``schema_form_fields``; sensitive values are never put in a form."""
    return {f"{prefix}__{name}": as_text(values[name]) for name, schema in fields.items()
            if name in values and not schema.sensitive}  # fmt: skip


def schema_values(
    prefix: str, fields: Mapping[str, FieldSchema], cleaned: Mapping[str, Any], original: Mapping[str, Any]
) -> dict[str, Any]:
    """The values of one plugin's fields as the document wants them.

    A blank sensitive field keeps the stored value (``original`` holds the value, or ``"$encrypted$"``
    for providers, which the provider kind reads as keep-existing); its clear checkbox sends ``""``.
    A blank ordinary field is sent only if the document had the key, so untouched forms change nothing.
    """
    values: dict[str, Any] = {}
    for name, schema in fields.items():
        text = cleaned.get(f"{prefix}__{name}")
        if schema.sensitive:
            if cleaned.get(f"{prefix}__{name}__clear"):
                values[name] = ""
            elif text:
                values[name] = text
            elif name in original:
                values[name] = original[name]
            continue
        if text in ("", None):
            if name in original:
                values[name] = original[name] if original[name] in ("", None) else ""
            continue
        value: Any = text
        if schema.type == "checkbox":
            value = text == "true"
        values[name] = keep_type(value, original.get(name, _MISSING))
    return values


# --- catalog names for choices ------------------------------------------------------------------------


class CatalogNames:
    """Names of the catalog entities a form may refer to, from the tenants the entity can live in.

    Read through ``restrict(user, "view")``, one query per kind and only when a form asks.
    """

    def __init__(self, user: Any, tenant_pks: Iterable[int]) -> None:
        self.user = user
        self.tenant_pks = list(tenant_pks)
        self._cache: dict[str, list[str]] = {}

    def _visible(self, kind_key: str) -> Any:
        return get_kind(kind_key).model.objects.restrict(self.user, "view").filter(tenant__in=self.tenant_pks)

    def names(self, kind_key: str) -> list[str]:
        if kind_key not in self._cache:
            self._cache[kind_key] = sorted(set(self._visible(kind_key).values_list("name", flat=True)))
        return self._cache[kind_key]

    def service_aliases(self) -> list[str]:
        """Names that services provide, which dependencies may require like service names."""
        if "aliases" not in self._cache:
            aliases: set[str] = set()
            for provided in self._visible("services").values_list("document__dependencies__provides", flat=True):
                aliases.update(name for name in provided or [] if isinstance(name, str))
            self._cache["aliases"] = sorted(aliases)
        return self._cache["aliases"]


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
                    mapping[key] = keep_type(value, before.get(key, _MISSING))
                elif key in before:
                    mapping[key] = before[key] if before[key] in ("", None) else ""
                elif key == form.key_field:
                    mapping[key] = ""  # let the service say that the key is required
            for key, value in form.cleaned_data["extra"].items():
                mapping[key] = keep_type(value, before.get(key, _MISSING))
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
    """The six fixed action rows; each action appears once, so there is nothing to duplicate or delete."""

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


# --- the entity forms ---------------------------------------------------------------------------------


class CatalogEntityForm(ServiceFormMixin, forms.ModelForm):
    """Base of every catalog admin form: base fields, the tenant, and the save through the service.

    Every field is declared (``Meta.fields`` is empty): the form maps to a document, not to model fields,
    and the service is the validator (see ``ServiceFormMixin._post_clean``). Subclasses set ``kind_key``,
    ``fieldsets``, ``problem_fields`` (problem path prefix → form field) and implement
    ``initial_from_document``, ``build_sections`` and ``to_document``.
    """

    kind_key: ClassVar[str] = ""
    fieldsets: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    problem_fields: ClassVar[dict[str, str]] = {}
    base_problem_fields: ClassVar[dict[str, str]] = {
        "name": "name", "label": "label", "description": "description", "icon": "icon",
    }  # fmt: skip

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    name = forms.CharField(max_length=255, help_text="Letters, digits, '_', '.' and '-'. Cannot be changed later.")
    label = forms.CharField(max_length=255, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
    icon = forms.CharField(required=False, max_length=255)

    class Meta:
        fields: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adding = self.instance.pk is None
        self.kind = get_kind(self.kind_key)
        self.original: Doc = self.kind.export(self.instance) if not self.adding else {}
        if self.adding:
            tenants = administered_tenants(self.request)
            self.fields["tenant"].queryset = tenants
            if len(tenants) > 1:
                self.fields["tenant"].empty_label = "---------"
        else:
            del self.fields["tenant"]
            del self.fields["name"]
        self.add_dynamic_fields()
        self.names = CatalogNames(self.request.user, self.catalog_tenant_pks())
        document_initial = {
            "label": self.original.get("label") or "",
            "description": self.original.get("description") or "",
            "icon": self.original.get("icon") or "",
            **self.initial_from_document(self.original),
        }
        self.initial = {**document_initial, **self.initial}
        self.set_choices()
        data = self.data if self.is_bound else None
        self.sections: list[Section] = self.build_sections(data)

    # hooks

    def add_dynamic_fields(self) -> None:
        """Fields that depend on the plugin registry (providers)."""

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        return {}

    def set_choices(self) -> None:
        """Fill choices of selects from ``self.names`` plus the names the document already uses."""

    def build_sections(self, data: Any) -> list[Section]:
        return []

    def to_document(self) -> Doc:
        raise NotImplementedError

    # machinery

    def catalog_tenant_pks(self) -> list[int]:
        """Tenants whose catalog the choices come from: the entity's, else the one chosen, else all."""
        if not self.adding:
            return [self.instance.tenant_id]
        allowed = list(self.fields["tenant"].queryset.values_list("pk", flat=True))
        chosen = self.data.get("tenant") if self.is_bound else self.initial.get("tenant")
        chosen = getattr(chosen, "pk", chosen)
        if str(chosen).isdigit() and int(chosen) in allowed:
            return [int(chosen)]
        return allowed

    def subforms(self) -> list[Section]:
        return self.sections

    def base_document(self) -> Doc:
        data = self.cleaned_data
        original = self.original

        def optional(key: str) -> str | None:
            # None and "" both mean "no label"; keep whichever the document had.
            return data.get(key) or (original.get(key) if original.get(key) in ("", None) else None)

        return {
            "name": data["name"] if self.adding else self.instance.name,
            "label": optional("label"),
            "description": data.get("description") or "",
            "icon": optional("icon"),
        }

    def persist(self) -> Any:
        tenant = self.cleaned_data["tenant"] if self.adding else self.instance.tenant
        result = catalog_entity_save(
            tenant=tenant,
            user=self.request.user,
            kind_key=self.kind_key,
            data=self.to_document(),
            name=None if self.adding else self.instance.name,
            create=self.adding,
        )
        self.service_messages = [(messages.WARNING, str(warning)) for warning in result.warnings]
        if not result.changed:
            self.service_messages.append(
                (messages.INFO, f"Nothing changed, so {result.entity.name} stays at version {result.entity.version}.")
            )
        return result.entity

    def handle_service_error(self, error: ApplicationError) -> None:
        if isinstance(error, CatalogValidationError):
            own_name = self.cleaned_data.get("name") if self.adding else self.instance.name
            for problem in error.problems:
                if problem.kind == self.kind.singular and problem.name in ("", own_name):
                    self.route_problem(problem.field, problem.message)
                else:  # another entity this change would break: say which
                    self.add_error(None, str(problem))
            return
        if isinstance(error, Conflict) and self.adding and not error.fields:
            add_error_safely(self, "name", error.message)
            return
        super().handle_service_error(error)

    def route_problem(self, path: str, message: str) -> None:
        for section in self.sections:
            if section.route(path, message):
                return
        routes = {**self.base_problem_fields, **self.problem_fields}
        for prefix in sorted(routes, key=len, reverse=True):
            rest = path_rest(path, prefix)
            if rest is not None and routes[prefix] in self.fields:
                self.add_error(routes[prefix], with_context(rest, message))
                return
        self.add_error(None, f"{path}: {message}" if path else message)

    @property
    def sections_have_errors(self) -> bool:
        return self.is_bound and any(section.has_errors for section in self.sections)


def multi_select(label: str, help_text: str = "") -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        label=label, required=False, help_text=help_text, widget=FilteredSelectMultiple(label, is_stacked=False)
    )


def _links_section(data: Any, links: list[dict[str, str]]) -> Section:
    formset_class = row_formset(LinkForm, LinkFormSet)
    formset = formset_class(data, prefix="links", initial=LinkFormSet.initial_rows(links))
    return Section("links", "Links", formset, formset.route, help="Shown to users of the entity.")


class _ProviderMapEntityForm(CatalogEntityForm):
    mapping_form: ClassVar[type[ProviderMappingForm]]

    def build_sections(self, data: Any) -> list[Section]:
        formset_class = row_formset(self.mapping_form, ProviderMapFormSet, extra=2)
        initial = formset_class.initial_rows(self.original.get("providermap", {}))  # type: ignore[attr-defined]
        formset = formset_class(data, prefix="providermap", initial=initial)
        return [
            Section(
                "providermap",
                "Provider mapping",
                formset,
                help=f"What this type is called at each provider ({self.mapping_form.key_field}).",
                route=formset.route,
            )
        ]

    def to_document(self) -> Doc:
        formset = self.sections[0].rows
        return {**self.base_document(), "providermap": formset.to_document(self.original.get("providermap", {}))}


class HardwareTypeForm(_ProviderMapEntityForm):
    kind_key = "hardwaretypes"
    mapping_form = HardwareMappingForm

    class Meta(CatalogEntityForm.Meta):
        model = HardwareType


class ImageTypeForm(_ProviderMapEntityForm):
    kind_key = "imagetypes"
    mapping_form = ImageMappingForm

    class Meta(CatalogEntityForm.Meta):
        model = ImageType


_DEPENDENCY_FIELDS = {
    "conflicts": ("conflicts",),
    "install_requires": ("install", "requires"),
    "install_uses": ("install", "uses"),
    "runtime_requires": ("runtime", "requires"),
    "runtime_uses": ("runtime", "uses"),
}


class ServiceForm(CatalogEntityForm):
    kind_key = "services"
    fieldsets = [
        (
            "Dependencies",
            {
                "fields": ["provides", "conflicts", *(name for name in _DEPENDENCY_FIELDS if name != "conflicts")],
                "description": "Requires: must be in the cluster. Uses: ordered after it when present. "
                "Install dependencies order installation; runtime dependencies order start-up.",
            },
        ),
    ]
    problem_fields = {
        "dependencies.provides": "provides",
        "dependencies.conflicts": "conflicts",
        "dependencies.install": "install_requires",
        "dependencies.install.requires": "install_requires",
        "dependencies.install.uses": "install_uses",
        "dependencies.runtime": "runtime_requires",
        "dependencies.runtime.requires": "runtime_requires",
        "dependencies.runtime.uses": "runtime_uses",
    }

    provides = forms.CharField(
        required=False,
        help_text="Other names this service answers to (e.g. a generic 'database'), comma or space separated.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    conflicts = multi_select("Conflicts with")
    install_requires = multi_select("Install requires")
    install_uses = multi_select("Install uses")
    runtime_requires = multi_select("Runtime requires")
    runtime_uses = multi_select("Runtime uses")

    class Meta(CatalogEntityForm.Meta):
        model = Service

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        deps = doc.get("dependencies", {})
        initial: dict[str, Any] = {"provides": join_names(deps.get("provides", []))}
        for name, path in _DEPENDENCY_FIELDS.items():
            initial[name] = self._dependency(deps, path)
        return initial

    @staticmethod
    def _dependency(deps: Doc, path: tuple[str, ...]) -> list[str]:
        value: Any = deps
        for key in path:
            value = (value or {}).get(key, [])
        return list(value or [])

    def set_choices(self) -> None:
        deps = self.original.get("dependencies", {})
        known = [*self.names.names("services"), *self.names.service_aliases()]
        for name, path in _DEPENDENCY_FIELDS.items():
            self.fields[name].choices = name_choices(known, self._dependency(deps, path))

    def build_sections(self, data: Any) -> list[Section]:
        actions = ActionForms(data, self.original.get("provisioner", {}).get("actions", {}))
        return [
            Section(
                "actions",
                "Actions",
                actions,
                help="What the automator runs for each action; the fields follow the selected automator type.",
                layout="actions",
                route=actions.route,
            ),
            _links_section(data, self.original.get("links", [])),
        ]

    def to_document(self) -> Doc:
        data = self.cleaned_data
        before = self.original.get("dependencies", {})

        def names(field_name: str) -> list[str]:
            return ordered_like(data[field_name], self._dependency(before, _DEPENDENCY_FIELDS[field_name]))

        actions, links = self.sections
        return {
            **self.base_document(),
            "dependencies": {
                "provides": split_names(data.get("provides", "")),
                "conflicts": names("conflicts"),
                "install": {"requires": names("install_requires"), "uses": names("install_uses")},
                "runtime": {"requires": names("runtime_requires"), "uses": names("runtime_uses")},
            },
            "provisioner": {
                "actions": actions.rows.to_document(self.original.get("provisioner", {}).get("actions", {}))
            },
            "links": links.rows.to_document(),
        }


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


class JsonObjectField(forms.CharField):
    """Free-form configuration: JSON is the honest form for it. Blank means ``{}``."""

    widget = forms.Textarea(attrs={"rows": 8, "cols": 80, "class": "vLargeTextField", "spellcheck": "false"})

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text.strip():
            return {}
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            message = f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
            raise forms.ValidationError(message) from error
        if not isinstance(parsed, dict):
            raise forms.ValidationError("must be a JSON object ({...})")
        # An escaped NUL (\u0000) parses fine but PostgreSQL cannot store it; the text field's own
        # NUL check only sees the unparsed text.
        if _contains_nul(parsed):
            raise forms.ValidationError("must not contain NUL characters (\\u0000)")
        return parsed

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, indent=2) if value else ""
        return value


def _group_lines(groups: list[list[str]]) -> str:
    return "\n".join(join_names(group) for group in groups)


class _TemplateForm(CatalogEntityForm):
    """Shared by cluster and partial templates: compatibility, defaults, constraints, lease, links."""

    template_fieldsets: ClassVar[list[tuple[str, dict[str, Any]]]] = [
        ("Compatibility", {
            "fields": ["compat_services", "compat_hardwaretypes", "compat_imagetypes"],
            "description": "What users may choose when they create a cluster from this template.",
        }),
        ("Defaults", {"fields": ["default_services", ("default_provider", "default_hardwaretype", "default_imagetype"),
                                 "dns_suffix", "config"]}),
        ("Constraints", {"fields": [("size_min", "size_max"), "must_coexist", "cant_coexist"]}),
        ("Lease", {
            "fields": [("lease_initial", "lease_max", "lease_step")],
            "description": "Milliseconds, or a number with s, m, h or d (e.g. 7d). 0 means no limit.",
        }),
    ]  # fmt: skip
    problem_fields = {
        "compatibility.services": "compat_services",
        "compatibility.hardwaretypes": "compat_hardwaretypes",
        "compatibility.imagetypes": "compat_imagetypes",
        "defaults.services": "default_services",
        "defaults.provider": "default_provider",
        "defaults.hardwaretype": "default_hardwaretype",
        "defaults.imagetype": "default_imagetype",
        "defaults.dnsSuffix": "dns_suffix",
        "defaults.config": "config",
        "constraints.size": "size_max",
        "constraints.size.min": "size_min",
        "constraints.size.max": "size_max",
        "constraints.layout.mustcoexist": "must_coexist",
        "constraints.layout.cantcoexist": "cant_coexist",
        "administration.leaseduration.initial": "lease_initial",
        "administration.leaseduration.max": "lease_max",
        "administration.leaseduration.step": "lease_step",
    }

    compat_services = multi_select("Services")
    compat_hardwaretypes = multi_select("Hardware types")
    compat_imagetypes = multi_select("Image types")
    default_services = multi_select("Services")
    default_provider = forms.ChoiceField(label="Provider", required=False)
    default_hardwaretype = forms.ChoiceField(label="Hardware type", required=False)
    default_imagetype = forms.ChoiceField(label="Image type", required=False)
    dns_suffix = forms.CharField(label="DNS suffix", required=False)
    config = JsonObjectField(label="Config", required=False, help_text="A JSON object; may contain macros.")
    size_min = forms.IntegerField(label="Min nodes", required=False)
    size_max = forms.IntegerField(label="Max nodes", required=False)
    must_coexist = forms.CharField(
        label="Must coexist",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="One group per line: services that must always be on the same nodes.",
    )
    cant_coexist = forms.CharField(
        label="Can't coexist",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="One group per line: services that must never share a node.",
    )
    lease_initial = forms.CharField(label="Initial", required=False, widget=forms.TextInput(attrs={"size": 10}))
    lease_max = forms.CharField(label="Max", required=False, widget=forms.TextInput(attrs={"size": 10}))
    lease_step = forms.CharField(label="Step", required=False, widget=forms.TextInput(attrs={"size": 10}))

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        compat = doc.get("compatibility", {})
        defaults = doc.get("defaults", {})
        constraints = doc.get("constraints", {})
        layout = constraints.get("layout", {})
        lease = doc.get("administration", {}).get("leaseduration", {})
        size = constraints.get("size", {})
        return {
            "compat_services": compat.get("services", []),
            "compat_hardwaretypes": compat.get("hardwaretypes", []),
            "compat_imagetypes": compat.get("imagetypes", []),
            "default_services": defaults.get("services", []),
            "default_provider": defaults.get("provider") or "",
            "default_hardwaretype": defaults.get("hardwaretype") or "",
            "default_imagetype": defaults.get("imagetype") or "",
            "dns_suffix": defaults.get("dnsSuffix") or "",
            "config": defaults.get("config", {}),
            "size_min": size.get("min"),
            "size_max": size.get("max"),
            "must_coexist": _group_lines(layout.get("mustcoexist", [])),
            "cant_coexist": _group_lines(layout.get("cantcoexist", [])),
            "lease_initial": format_duration_ms(lease.get("initial", 0)),
            "lease_max": format_duration_ms(lease.get("max", 0)),
            "lease_step": format_duration_ms(lease.get("step", 0)),
        }

    def set_choices(self) -> None:
        compat = self.original.get("compatibility", {})
        defaults = self.original.get("defaults", {})
        constraint_specs = self.original.get("constraints", {}).get("services", {}).values()
        services = self.names.names("services")
        hardware = self.names.names("hardwaretypes")
        images = self.names.names("imagetypes")
        self.fields["compat_services"].choices = name_choices(services, compat.get("services", []))
        self.fields["default_services"].choices = name_choices(services, defaults.get("services", []))
        self.fields["compat_hardwaretypes"].choices = name_choices(hardware, compat.get("hardwaretypes", []))
        self.fields["compat_imagetypes"].choices = name_choices(images, compat.get("imagetypes", []))
        blank = [("", "---------")]
        self.fields["default_provider"].choices = blank + name_choices(
            self.names.names("providers"), [defaults.get("provider") or ""]
        )
        self.fields["default_hardwaretype"].choices = blank + name_choices(hardware, [defaults.get("hardwaretype")])
        self.fields["default_imagetype"].choices = blank + name_choices(images, [defaults.get("imagetype")])
        self.row_choices = {
            "services": name_choices(services, self.original.get("constraints", {}).get("services", {})),
            "hardwaretypes": name_choices(hardware, *(spec.get("hardwaretypes", []) for spec in constraint_specs)),
            "imagetypes": name_choices(images, *(spec.get("imagetypes", []) for spec in constraint_specs)),
        }

    def build_sections(self, data: Any) -> list[Section]:
        formset_class = row_formset(ServiceConstraintForm, ServiceConstraintFormSet)
        constraints = formset_class(
            data,
            prefix="constraints",
            initial=ServiceConstraintFormSet.initial_rows(self.original.get("constraints", {}).get("services", {})),
            form_kwargs={"choices": self.row_choices},
        )
        return [
            Section(
                "constraints",
                "Per-service constraints",
                constraints,
                help="How many nodes may run a service, and on which hardware and image types.",
                route=constraints.route,
            ),
            _links_section(data, self.original.get("links", [])),
        ]

    def template_document(self) -> Doc:
        data = self.cleaned_data
        original = self.original
        compat = original.get("compatibility", {})
        defaults = original.get("defaults", {})
        constraints_rows, links = self.sections
        size: Doc = {"min": data.get("size_min")}
        if data.get("size_max") is not None:
            size["max"] = data["size_max"]
        return {
            **self.base_document(),
            "compatibility": {
                key: ordered_like(data[f"compat_{key}"], compat.get(key, []))
                for key in ("services", "hardwaretypes", "imagetypes")
            },
            "defaults": {
                "services": ordered_like(data["default_services"], defaults.get("services", [])),
                "provider": data.get("default_provider") or None,
                "hardwaretype": data.get("default_hardwaretype") or None,
                "imagetype": data.get("default_imagetype") or None,
                "dnsSuffix": data.get("dns_suffix") or None,
                "config": data.get("config") or {},
            },
            "constraints": {
                "size": size,
                "layout": {
                    "mustcoexist": [split_names(line) for line in data["must_coexist"].splitlines() if line.strip()],
                    "cantcoexist": [split_names(line) for line in data["cant_coexist"].splitlines() if line.strip()],
                },
                "services": constraints_rows.rows.to_document(original.get("constraints", {}).get("services", {})),
            },
            "administration": {
                "leaseduration": {key: data.get(f"lease_{key}", "").strip() for key in ("initial", "max", "step")}
            },
            "links": links.rows.to_document(),
        }


class ClusterTemplateForm(_TemplateForm):
    kind_key = "clustertemplates"
    fieldsets = [
        ("Inheritance", {
            "fields": ["extends", "includes"],
            "description": "A template may extend one parent and include partial templates, merged in order.",
        }),
        *_TemplateForm.template_fieldsets,
    ]  # fmt: skip
    problem_fields = {**_TemplateForm.problem_fields, "extends": "extends", "includes": "includes"}

    extends = forms.ChoiceField(label="Extends", required=False)
    includes = forms.CharField(
        label="Includes",
        required=False,
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="Partial templates, comma separated, in merge order.",
    )

    class Meta(CatalogEntityForm.Meta):
        model = ClusterTemplate

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        return {
            **super().initial_from_document(doc),
            "extends": (doc.get("extends") or {}).get("name", ""),
            "includes": join_names(include["name"] for include in doc.get("includes", [])),
        }

    def set_choices(self) -> None:
        super().set_choices()
        own = self.original.get("name")
        parents = [name for name in self.names.names("clustertemplates") if name != own]
        current = (self.original.get("extends") or {}).get("name")
        self.fields["extends"].choices = [("", "(none)"), *name_choices(parents, [current])]
        partials = self.names.names("partialtemplates")
        if partials:
            self.fields["includes"].help_text += f" Available: {join_names(partials)}."

    def to_document(self) -> Doc:
        data = self.cleaned_data
        return {
            **self.template_document(),
            "extends": {"name": data["extends"]} if data.get("extends") else None,
            "includes": [{"name": name} for name in split_names(data.get("includes", ""))],
        }


class PartialTemplateForm(_TemplateForm):
    kind_key = "partialtemplates"
    fieldsets = [
        ("Partial template", {
            "fields": ["immutable"],
            "description": "Immutable: templates that include this one cannot override its config keys.",
        }),
        *_TemplateForm.template_fieldsets,
    ]  # fmt: skip
    problem_fields = {**_TemplateForm.problem_fields, "immutable": "immutable"}

    immutable = forms.BooleanField(required=False)

    class Meta(CatalogEntityForm.Meta):
        model = PartialTemplate

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        return {**super().initial_from_document(doc), "immutable": bool(doc.get("immutable"))}

    def to_document(self) -> Doc:
        return {**self.template_document(), "immutable": bool(self.cleaned_data.get("immutable"))}
