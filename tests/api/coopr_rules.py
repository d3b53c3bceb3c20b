"""The original's own field rules for a Coopr-format catalog, written from its codecs (loom-reference.md
§1.0, §1.4–§1.8), independently of Loom's codec, so a test can hold what Loom exports against them.

``violations(catalog)`` lists every place a document breaks a rule: a key the original's codec does not
know, an enum value not written lower-case, a required part missing (``quantities`` in a service
constraint, ``type`` of an action, ``url`` of a link), a value of the wrong shape. Loom's additions the
original would ignore (Gson skips unknown keys) are allowed only where ``extensions`` names their path,
so an export of a catalog that came from Coopr must carry none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

NAME = re.compile(r"^[\w.-]{1,255}$", re.ASCII)
DNS_LABEL = re.compile(r"^[a-zA-Z0-9\-]{0,62}[a-zA-Z0-9]$")
DURATION = re.compile(r"^(\d+|\d+[smhd])$")
ACTIONS = {"install", "configure", "initialize", "start", "stop", "remove"}  # lower-case, as Gson writes enums
BASE = {"name", "label", "description", "icon", "version"}
KEYS: dict[str, set[str]] = {
    "providers": BASE | {"providertype", "provisioner"},
    "hardwaretypes": BASE | {"providermap"},
    "imagetypes": BASE | {"providermap"},
    "services": BASE | {"dependencies", "provisioner", "links"},
    "clustertemplates": BASE | {"compatibility", "defaults", "constraints", "administration", "links", "extends",
                                "includes"},
    "partialtemplates": BASE | {"compatibility", "defaults", "constraints", "administration", "links", "immutable"},
}  # fmt: skip
TEMPLATE_PARTS = {
    "compatibility": {"hardwaretypes", "imagetypes", "services"},
    "defaults": {"services", "provider", "hardwaretype", "imagetype", "dnsSuffix", "config"},
    "constraints": {"size", "layout", "services"},
    "administration": {"leaseduration"},
}


class Checker:
    """Collects violations as ``"<kind>/<name>: <path>: <problem>"`` lines."""

    def __init__(self, extensions: Iterable[str] = ()) -> None:
        self.extensions = set(extensions)
        self.found: list[str] = []
        self.where = ""

    def bad(self, path: str, problem: str) -> None:
        self.found.append(f"{self.where}: {path}: {problem}")

    def keys(self, value: Any, allowed: set[str], path: str) -> bool:
        """True when ``value`` is an object; records every key outside ``allowed`` (or the extensions)."""
        if not isinstance(value, dict):
            self.bad(path or "(document)", f"must be an object, got {type(value).__name__}")
            return False
        for key in value:
            full = f"{path}.{key}" if path else key
            if key not in allowed and full not in self.extensions:
                self.bad(full, "is not a key the original's codec reads")
        return True

    def names(self, value: Any, path: str) -> None:
        if not isinstance(value, list) or not all(isinstance(item, str) and NAME.match(item) for item in value):
            self.bad(path, f"must be a list of names, got {value!r}")

    def text(self, value: Any, path: str, *, required: bool = False) -> None:
        if value is None and not required:
            return
        if not isinstance(value, str) or (required and not value):
            self.bad(path, f"must be {'a non-empty' if required else 'a'} string, got {value!r}")

    def string_map(self, value: Any, path: str) -> None:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.bad(path, f"must map field names to strings, got {value!r}")

    def links(self, value: Any, path: str = "links") -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.bad(path, "must be a list")
            return
        for index, link in enumerate(value):
            if self.keys(link, {"label", "url"}, f"{path}[{index}]"):
                self.text(link.get("label"), f"{path}[{index}].label")
                self.text(link.get("url"), f"{path}[{index}].url", required=True)

    # --- per kind -------------------------------------------------------------------------------------

    def document(self, kind: str, doc: Any) -> None:
        self.where = f"{kind}/{doc.get('name') if isinstance(doc, dict) else '?'}"
        if not self.keys(doc, KEYS[kind], ""):
            return
        if not isinstance(doc.get("name"), str) or not NAME.match(doc["name"]):
            self.bad("name", "invalid name. Name must be specified and consist of only [a-zA-Z0-9_.-].")
        for key in ("label", "description", "icon"):
            self.text(doc.get(key), key)
        if "version" in doc and (not isinstance(doc["version"], int) or doc["version"] < 1):
            self.bad("version", f"must be a positive whole number, got {doc['version']!r}")
        getattr(self, kind)(doc)

    def providers(self, doc: dict[str, Any]) -> None:
        self.text(doc.get("providertype"), "providertype", required=True)
        if not isinstance(doc.get("provisioner", {}), dict):
            self.bad("provisioner", "must be an object of field values")

    def hardwaretypes(self, doc: dict[str, Any]) -> None:
        providermap = doc.get("providermap", {})
        if not isinstance(providermap, dict):
            self.bad("providermap", "must be an object keyed by provider name")
            return
        for provider, fields in providermap.items():
            self.string_map(fields, f"providermap.{provider}")

    imagetypes = hardwaretypes

    def services(self, doc: dict[str, Any]) -> None:
        dependencies = doc.get("dependencies", {})
        if self.keys(dependencies, {"provides", "conflicts", "install", "runtime"}, "dependencies"):
            for key in ("provides", "conflicts"):
                self.names(dependencies.get(key, []), f"dependencies.{key}")
            for stage in ("install", "runtime"):
                part = dependencies.get(stage, {})
                if self.keys(part, {"requires", "uses"}, f"dependencies.{stage}"):
                    for key in ("requires", "uses"):
                        self.names(part.get(key, []), f"dependencies.{stage}.{key}")
        provisioner = doc.get("provisioner", {})
        if self.keys(provisioner, {"actions"}, "provisioner"):
            actions = provisioner.get("actions", {})
            if self.keys(actions, ACTIONS, "provisioner.actions"):
                for action, spec in actions.items():
                    path = f"provisioner.actions.{action}"
                    if self.keys(spec, {"type", "fields"}, path):
                        self.text(spec.get("type"), f"{path}.type", required=True)
                        if isinstance(spec.get("type"), str) and spec["type"] != spec["type"].lower():
                            self.bad(f"{path}.type", f"enum written {spec['type']!r}, not lower-case")
                        self.string_map(spec.get("fields", {}), f"{path}.fields")
        self.links(doc.get("links"))

    def clustertemplates(self, doc: dict[str, Any]) -> None:
        if doc.get("extends") is not None and self.keys(doc["extends"], {"name"}, "extends"):
            self.names([doc["extends"].get("name")], "extends.name")
        includes = doc.get("includes") or []
        if isinstance(includes, list):
            for index, item in enumerate(includes):
                if self.keys(item, {"name"}, f"includes[{index}]"):
                    self.names([item.get("name")], f"includes[{index}].name")
        else:
            self.bad("includes", "must be a list of {name}")
        self.template_parts(doc)

    def partialtemplates(self, doc: dict[str, Any]) -> None:
        if not isinstance(doc.get("immutable", False), bool):
            self.bad("immutable", "must be true or false")
        self.template_parts(doc)

    def template_parts(self, doc: dict[str, Any]) -> None:
        sections = {key: doc.get(key, {}) for key in TEMPLATE_PARTS}
        for key, allowed in TEMPLATE_PARTS.items():
            if not self.keys(sections[key], allowed, key):
                return
        for key in ("hardwaretypes", "imagetypes", "services"):
            self.names(sections["compatibility"].get(key, []), f"compatibility.{key}")
        self.defaults(sections["defaults"])
        self.constraints(sections["constraints"])
        self.administration(sections["administration"])
        self.links(doc.get("links"))

    def defaults(self, defaults: dict[str, Any]) -> None:
        for index, service in enumerate(defaults.get("services", [])):
            if isinstance(service, dict):  # the codec's {"name", "config"} form
                if self.keys(service, {"name", "config"}, f"defaults.services[{index}]"):
                    self.names([service.get("name")], f"defaults.services[{index}].name")
            else:
                self.names([service], f"defaults.services[{index}]")
        for key in ("provider", "hardwaretype", "imagetype"):
            if defaults.get(key) is not None:
                self.names([defaults[key]], f"defaults.{key}")
        suffix = defaults.get("dnsSuffix")
        if suffix is not None and (
            not isinstance(suffix, str) or len(suffix) > 191 or not all(map(DNS_LABEL.match, suffix.split(".")))
        ):
            self.bad("defaults.dnsSuffix", f"{suffix!r} is an invalid DNS suffix.")
        if not isinstance(defaults.get("config", {}), dict):
            self.bad("defaults.config", "must be a JSON object")

    def constraints(self, constraints: dict[str, Any]) -> None:
        size = constraints.get("size", {})
        if self.keys(size, {"min", "max"}, "constraints.size"):
            low, high = self.count(size.get("min", 1), "constraints.size.min", 1), size.get("max")
            if high is not None and (self.count(high, "constraints.size.max", 1) or 0) < (low or 1):
                self.bad("constraints.size.max", "Maximum must greater than or equal to the minimum.")
        layout = constraints.get("layout", {})
        if self.keys(layout, {"mustcoexist", "cantcoexist"}, "constraints.layout"):
            for key in ("mustcoexist", "cantcoexist"):
                groups = layout.get(key, [])
                if not isinstance(groups, list):
                    self.bad(f"constraints.layout.{key}", "must be a list of lists")
                    continue
                for index, group in enumerate(groups):
                    self.names(group, f"constraints.layout.{key}[{index}]")
        services = constraints.get("services", {})
        if not isinstance(services, dict):
            self.bad("constraints.services", "must be an object keyed by service")
            return
        for service, rule in services.items():
            path = f"constraints.services.{service}"
            if not self.keys(rule, {"hardwaretypes", "imagetypes", "quantities"}, path):
                continue
            for key in ("hardwaretypes", "imagetypes"):
                self.names(rule.get(key, []), f"{path}.{key}")
            if "quantities" not in rule:  # the codec dereferences it: a missing one is "invalid input"
                self.bad(f"{path}.quantities", "is required by the original's codec")
            elif self.keys(rule["quantities"], {"min", "max"}, f"{path}.quantities"):
                self.count(rule["quantities"].get("min", 0), f"{path}.quantities.min", 0)
                if rule["quantities"].get("max") is not None:
                    self.count(rule["quantities"]["max"], f"{path}.quantities.max", 0)

    def count(self, value: Any, path: str, minimum: int) -> int | None:
        """A whole number (the codec also reads one written as a string) at least ``minimum``."""
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.bad(path, f"must be a whole number >= {minimum}, got {value!r}")
            return None
        return value

    def administration(self, administration: dict[str, Any]) -> None:
        lease = administration.get("leaseduration", {})
        if not self.keys(lease, {"initial", "max", "step"}, "administration.leaseduration"):
            return
        for key, value in lease.items():
            number = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            if not number and not (isinstance(value, str) and DURATION.match(value)):
                self.bad(f"administration.leaseduration.{key}", f"Unsupported relative time format: {value!r}")


def violations(catalog: dict[str, Any], *, extensions: Iterable[str] = ()) -> list[str]:
    """Every place ``catalog`` (``{kind: [documents]}``) breaks the original's field rules."""
    checker = Checker(extensions)
    for kind, documents in catalog.items():
        if kind not in KEYS:
            checker.where = kind
            checker.bad("", "is not a kind the original's catalog holds")
            continue
        for doc in documents:
            checker.document(kind, doc)
    return checker.found
