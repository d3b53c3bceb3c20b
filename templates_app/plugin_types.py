"""Plugin type specifications: the field schemas of provider types and automator types.

As in the original, a plugin type is a catalog concept (its schema decides what a provider or a service
action may contain), so the schema classes and the registry live here; the concrete types are registered in
code by ``providers.plugin_specs`` at start-up, next to their implementations. Validation, the API and the
admin forms all read the same registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FieldType = Literal["text", "password", "select", "checkbox", "number", "file", "json"]
PluginKind = Literal["provider", "automator"]
FIELD_TYPES: tuple[str, ...] = ("text", "password", "select", "checkbox", "number", "file", "json")


@dataclass(frozen=True)
class FieldSchema:
    """One field of a plugin type. ``sensitive`` fields are encrypted at rest and write-only."""

    name: str
    label: str
    type: FieldType = "text"
    tip: str = ""
    default: Any = None
    override: bool = False
    sensitive: bool = False
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label, "type": self.type, "tip": self.tip}
        if self.default is not None:
            data["default"] = self.default
        data["override"] = self.override
        data["sensitive"] = self.sensitive
        if self.options:
            data["options"] = list(self.options)
        return data

    def check_value(self, value: Any) -> str | None:
        """Return a problem with ``value`` for this field, or None. Empty values are allowed here."""
        if value is None or value == "":
            return None
        is_boolean = isinstance(value, bool) or (isinstance(value, str) and value.lower() in {"true", "false"})
        if self.type == "checkbox" and not is_boolean:
            return "must be true or false"
        if self.type == "number":
            try:
                float(value)
            except (TypeError, ValueError):
                return "must be a number"
        if self.type == "select" and self.options and str(value) not in self.options:
            return f"must be one of {', '.join(self.options)}"
        if self.type in {"text", "password", "file"} and not isinstance(value, (str, int, float)):
            return "must be a string"
        return None


@dataclass(frozen=True)
class ParameterSpec:
    """Fields of one audience (admin or user) and the alternative sets of required fields.

    ``required`` holds alternatives: the values are complete when any one set is fully present.
    """

    fields: Mapping[str, FieldSchema] = field(default_factory=dict)
    required: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        undeclared = sorted({name for group in self.required for name in group} - set(self.fields))
        if undeclared:
            raise ValueError(f"{', '.join(undeclared)} specified as required, but are not fields.")

    def missing(self, present: Iterable[str]) -> list[list[str]]:
        """Missing field names per required set, or [] when one set is satisfied (Coopr semantics)."""
        present_set = set(present)
        groups = [group for group in self.required if group]
        if not groups:
            return []
        missing = [sorted(group - present_set) for group in groups]
        if any(not names for names in missing):
            return []
        return missing

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": {name: schema.to_json() for name, schema in self.fields.items()},
            "required": [sorted(group) for group in self.required] or [[]],
        }


@dataclass(frozen=True)
class ResourceType:
    format: Literal["file", "archive"]
    permissions: str | None = None


@dataclass(frozen=True)
class PluginType:
    """A provider type or an automator type.

    For provider types, ``admin`` fields are set on the Provider and ``user`` fields per cluster request;
    for automator types, ``admin`` fields are a service action's fields.
    """

    kind: PluginKind
    name: str
    description: str
    admin: ParameterSpec = field(default_factory=ParameterSpec)
    user: ParameterSpec = field(default_factory=ParameterSpec)
    resource_types: Mapping[str, ResourceType] = field(default_factory=dict)
    has_driver: bool = True
    """Provider types only: False for a type the original supported that Loom has no driver for (its
    providers import and export unchanged, and cannot launch)."""

    @property
    def sensitive_fields(self) -> frozenset[str]:
        return frozenset(
            name for spec in (self.admin, self.user) for name, schema in spec.fields.items() if schema.sensitive
        )

    def field(self, name: str) -> FieldSchema | None:
        return self.admin.fields.get(name) or self.user.fields.get(name)

    def to_json(self) -> dict[str, Any]:
        driver = {"driver": self.has_driver} if self.kind == "provider" else {}
        return {
            "name": self.name,
            "description": self.description,
            **driver,
            "parameters": {"admin": self.admin.to_json(), "user": self.user.to_json()},
            "resourceTypes": {
                name: {"format": rt.format, **({"permissions": rt.permissions} if rt.permissions else {})}
                for name, rt in self.resource_types.items()
            },
        }


class PluginRegistry:
    """Provider and automator types by name. Registration happens once, at import time."""

    def __init__(self) -> None:
        self._types: dict[tuple[PluginKind, str], PluginType] = {}

    def register(self, plugin_type: PluginType) -> PluginType:
        key = (plugin_type.kind, plugin_type.name)
        if key in self._types and self._types[key] != plugin_type:
            raise ValueError(f"{plugin_type.kind} type {plugin_type.name} is already registered")
        self._types[key] = plugin_type
        return plugin_type

    def get(self, kind: PluginKind, name: str) -> PluginType | None:
        return self._types.get((kind, name))

    def names(self, kind: PluginKind) -> list[str]:
        return sorted(name for (k, name) in self._types if k == kind)

    def all(self, kind: PluginKind) -> list[PluginType]:
        return [self._types[(kind, name)] for name in self.names(kind)]


registry = PluginRegistry()


def text(name: str, label: str, tip: str = "", **kwargs: Any) -> FieldSchema:
    return FieldSchema(name=name, label=label, type="text", tip=tip, **kwargs)


def secret(name: str, label: str, tip: str = "", **kwargs: Any) -> FieldSchema:
    return FieldSchema(name=name, label=label, type="password", tip=tip, sensitive=True, **kwargs)


def choice(name: str, label: str, options: Iterable[str], tip: str = "", **kwargs: Any) -> FieldSchema:
    return FieldSchema(name=name, label=label, type="select", tip=tip, options=tuple(options), **kwargs)


def flag(name: str, label: str, tip: str = "", **kwargs: Any) -> FieldSchema:
    return FieldSchema(name=name, label=label, type="checkbox", tip=tip, **kwargs)


def params(*fields: FieldSchema, required: Iterable[Iterable[str]] = ()) -> ParameterSpec:
    return ParameterSpec(fields={f.name: f for f in fields}, required=tuple(frozenset(r) for r in required))
