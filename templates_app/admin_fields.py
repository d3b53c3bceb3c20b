"""Field-level helpers of the catalog admin forms: text conversions that keep documents stable, form
fields built from plugin schemas, the tenant's catalog names for choices, and a JSON-object field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms

from loom_site.input_guards import nul_paths

from .kinds import get_kind
from .plugin_types import FieldSchema

Doc = dict[str, Any]
MISSING = object()
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
    if original is not MISSING and as_text(original) == as_text(value):
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
        values[name] = keep_type(value, original.get(name, MISSING))
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
        if next(nul_paths(parsed), None) is not None:
            raise forms.ValidationError("must not contain NUL characters (\\u0000)")
        return parsed

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, indent=2) if value else ""
        return value


def _group_lines(groups: list[list[str]]) -> str:
    return "\n".join(join_names(group) for group in groups)
