"""Reading and writing catalog entities in the Loom/Coopr JSON format.

``normalize_*`` turns a document as users write it (the original's format, with its optional keys, numbers
as strings, ``"7d"`` lease durations, service objects inside ``defaults.services``) into one canonical
document, collecting every problem on the way. The canonical form is what we store, version and export;
normalising it again yields the same document, which is what makes export → import round-trip exactly.
Only checks that need nothing but the document itself live here; cross-entity checks are in
``validation.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .macro_syntax import macro_errors
from .plugin_types import registry
from .problems import Problems

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")  # always used with fullmatch: "$" would allow a final newline
NAME_RULE = "must be 1-255 characters of letters, digits, '_', '.' or '-'"
SERVICE_ACTIONS = ("install", "configure", "initialize", "start", "stop", "remove", "check")
"""The original's six actions, and Loom's ``check``: the health sweep runs it (exit 0 healthy). No plan runs it,
and a service without one is checked only for reachability."""
DNS_LABEL_RE = re.compile(r"^[a-zA-Z0-9\-]{0,62}[a-zA-Z0-9]$")
_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

Doc = dict[str, Any]


def check_name(value: Any, problems: Problems, path: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        problems.error(path, f"{value!r} is not a valid name: {NAME_RULE}")
        return value if isinstance(value, str) else ""
    return value


def base_fields(raw: Doc, problems: Problems) -> Doc:
    """The fields every catalog entity has: name, label, description, icon."""
    name = check_name(raw.get("name"), problems)
    problems.name = name
    doc: Doc = {"name": name}
    for key in ("label", "description", "icon"):
        value = raw.get(key)
        if value is None:
            value = "" if key == "description" else None
        if value is not None and not isinstance(value, str):
            problems.error(key, "must be a string")
            value = str(value)
        doc[key] = value
    return doc


def as_object(raw: Any, problems: Problems, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.error(path, f"must be a JSON object, got {type(raw).__name__}")
        return {}
    return raw


def _name_list(raw: Any, problems: Problems, path: str) -> list[str]:
    """A list of entity names, de-duplicated in order."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.error(path, "must be a list of names")
        return []
    names: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not NAME_RE.fullmatch(item):
            problems.error(f"{path}[{index}]", f"{item!r} is not a valid name: {NAME_RULE}")
        elif item not in names:
            names.append(item)
    return names


def check_unknown_keys(raw: Doc, allowed: set[str], problems: Problems, path: str = "") -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            problems.error(where, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _count(value: Any, problems: Problems, path: str, *, minimum: int = 0) -> int | None:
    """An integer that the original also accepted as a string ("1")."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        problems.error(path, "must be a whole number")
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        problems.error(path, f"{value!r} is not a whole number")
        return None
    if number < minimum:
        problems.error(path, f"must be at least {minimum}, got {number}")
        return None
    return number


def parse_duration_ms(value: Any, problems: Problems, path: str) -> int:
    """Lease durations: milliseconds as a number or digits, or ``<n>s|m|h|d``. Missing means 0."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        problems.error(path, "must be milliseconds or a duration like '7d'")
        return 0
    if isinstance(value, (int, float)):
        if value < 0:
            problems.error(path, f"must be 0 or more, got {value}")
            return 0
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = _DURATION_RE.match(text)
    if not match:
        problems.error(path, f"{value!r} is not a duration: use milliseconds or <number>s|m|h|d")
        return 0
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _links(raw: Any, problems: Problems) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.error("links", "must be a list of {label, url}")
        return []
    links = []
    for index, item in enumerate(raw):
        path = f"links[{index}]"
        if not isinstance(item, dict):
            problems.error(path, "must be an object with label and url")
            continue
        url = item.get("url")
        if not isinstance(url, str) or not url.strip():
            problems.error(f"{path}.url", "url must be specified")
            continue
        label = item.get("label") or ""
        for where, message in macro_errors(url, f"{path}.url"):
            problems.error(where, message)
        links.append({"label": str(label), "url": url})
    return links


# --- hardware and image types ---------------------------------------------------------------------


def _provider_map(raw: Doc, problems: Problems, required_key: str) -> dict[str, dict[str, Any]]:
    providermap = as_object(raw.get("providermap"), problems, "providermap")
    result: dict[str, dict[str, Any]] = {}
    for provider, mapping in providermap.items():
        path = f"providermap.{provider}"
        if not NAME_RE.fullmatch(str(provider)):
            problems.error(path, f"{provider!r} is not a valid provider name: {NAME_RULE}")
            continue
        if not isinstance(mapping, dict):
            problems.error(path, 'must be an object such as {"' + required_key + '": "..."}')
            continue
        value = mapping.get(required_key)
        if not isinstance(value, str) or not value.strip():
            problems.error(f"{path}.{required_key}", f"{required_key} must be a non-empty string")
        clean: dict[str, Any] = {}
        for key, item in mapping.items():
            if isinstance(item, (dict, list)):
                problems.error(f"{path}.{key}", "must be a string or a number")
                continue
            clean[str(key)] = item
        if "cost" in clean and clean["cost"] not in (None, ""):
            try:
                if float(clean["cost"]) < 0:
                    problems.error(f"{path}.cost", "must not be negative")
            except (TypeError, ValueError):
                problems.error(f"{path}.cost", f"{clean['cost']!r} is not a number (hourly cost)")
        result[str(provider)] = clean
    return dict(sorted(result.items()))


def _normalize_mapped_type(raw: Doc, kind: str, required_key: str) -> tuple[Doc, Problems]:
    """Hardware and image types: base fields plus a per-provider map that must name ``required_key``."""
    problems = Problems(kind)
    doc = base_fields(raw, problems)
    check_unknown_keys(raw, {"name", "label", "description", "icon", "version", "providermap"}, problems)
    doc["providermap"] = _provider_map(raw, problems, required_key)
    return doc, problems


def normalize_hardwaretype(raw: Doc) -> tuple[Doc, Problems]:
    return _normalize_mapped_type(raw, "hardwaretype", "flavor")


def normalize_imagetype(raw: Doc) -> tuple[Doc, Problems]:
    return _normalize_mapped_type(raw, "imagetype", "image")


# --- services ---------------------------------------------------------------------------------------


def _requires_uses(raw: Any, problems: Problems, path: str) -> dict[str, list[str]]:
    section = as_object(raw, problems, path)
    check_unknown_keys(section, {"requires", "uses"}, problems, path)
    return {
        "requires": _name_list(section.get("requires"), problems, f"{path}.requires"),
        "uses": _name_list(section.get("uses"), problems, f"{path}.uses"),
    }


def check_action_fields(automator: str, fields: dict[str, Any], problems: Problems, path: str) -> None:
    """Fields of one service action against its automator type's schema."""
    plugin = registry.get("automator", automator)
    if plugin is None:
        known = ", ".join(registry.names("automator"))
        problems.error(f"{path}.type", f"unknown automator type {automator!r}; known: {known}")
        return
    for key, value in fields.items():
        schema = plugin.admin.fields.get(key)
        if schema is None:
            problems.error(
                f"{path}.fields.{key}",
                f"not a field of automator {automator}; expected one of {', '.join(plugin.admin.fields)}",
            )
            continue
        issue = schema.check_value(value)
        if issue:
            problems.error(f"{path}.fields.{key}", issue)
    present = [key for key, value in fields.items() if value not in (None, "")]
    missing = plugin.admin.missing(present)
    if missing:
        options = " or ".join("{" + ", ".join(group) + "}" for group in missing)
        problems.error(f"{path}.fields", f"automator {automator} requires {options}")


def normalize_service(raw: Doc) -> tuple[Doc, Problems]:
    problems = Problems("service")
    doc = base_fields(raw, problems)
    check_unknown_keys(
        raw,
        {"name", "label", "description", "icon", "version", "dependencies", "provisioner", "links"},
        problems,
    )
    deps = as_object(raw.get("dependencies"), problems, "dependencies")
    check_unknown_keys(deps, {"provides", "conflicts", "install", "runtime"}, problems, "dependencies")
    doc["dependencies"] = {
        "provides": _name_list(deps.get("provides"), problems, "dependencies.provides"),
        "conflicts": _name_list(deps.get("conflicts"), problems, "dependencies.conflicts"),
        "install": _requires_uses(deps.get("install"), problems, "dependencies.install"),
        "runtime": _requires_uses(deps.get("runtime"), problems, "dependencies.runtime"),
    }
    name = doc["name"]
    for section in ("install", "runtime"):
        for relation in ("requires", "uses"):
            if name in doc["dependencies"][section][relation]:
                problems.error(f"dependencies.{section}.{relation}", f"{name} cannot depend on itself")
    if name in doc["dependencies"]["conflicts"]:
        problems.error("dependencies.conflicts", f"{name} cannot conflict with itself")
    provisioner = as_object(raw.get("provisioner"), problems, "provisioner")
    check_unknown_keys(provisioner, {"actions"}, problems, "provisioner")
    actions_raw = as_object(provisioner.get("actions"), problems, "provisioner.actions")
    actions: dict[str, dict[str, Any]] = {}
    for action, spec in actions_raw.items():
        path = f"provisioner.actions.{action}"
        if action not in SERVICE_ACTIONS:
            hint = " (action names are lower-case)" if str(action).lower() in SERVICE_ACTIONS else ""
            problems.error(path, f"unknown action{hint}; expected one of {', '.join(SERVICE_ACTIONS)}")
            continue
        if not isinstance(spec, dict):
            problems.error(path, "must be an object with type and fields")
            continue
        check_unknown_keys(spec, {"type", "fields"}, problems, path)
        automator = spec.get("type")
        if not isinstance(automator, str) or not automator:
            problems.error(f"{path}.type", "Type must be specified.")
            continue
        fields = as_object(spec.get("fields"), problems, f"{path}.fields")
        check_action_fields(automator, fields, problems, path)
        actions[action] = {"type": automator, "fields": dict(fields)}
    doc["provisioner"] = {"actions": {a: actions[a] for a in SERVICE_ACTIONS if a in actions}}
    doc["links"] = _links(raw.get("links"), problems)
    return doc, problems


# --- cluster and partial templates ----------------------------------------------------------------


def _compatibility(raw: Any, problems: Problems) -> Doc:
    section = as_object(raw, problems, "compatibility")
    check_unknown_keys(section, {"hardwaretypes", "imagetypes", "services"}, problems, "compatibility")
    return {
        key: _name_list(section.get(key), problems, f"compatibility.{key}")
        for key in ("hardwaretypes", "imagetypes", "services")
    }


def _defaults(raw: Any, problems: Problems) -> Doc:
    section = as_object(raw, problems, "defaults")
    check_unknown_keys(
        section,
        {"services", "provider", "hardwaretype", "imagetype", "dnsSuffix", "config"},
        problems,
        "defaults",
    )
    config = dict(as_object(section.get("config"), problems, "defaults.config"))
    services: list[str] = []
    raw_services = section.get("services")
    if raw_services is not None and not isinstance(raw_services, list):
        problems.error("defaults.services", "must be a list")
        raw_services = []
    for index, item in enumerate(raw_services or []):
        # The original also accepts {"name": ..., "config": {...}}: the config lands under config[name].
        if isinstance(item, dict):
            name = item.get("name")
            if isinstance(item.get("config"), dict) and isinstance(name, str):
                config[name] = item["config"]
            item = name
        if not isinstance(item, str) or not NAME_RE.fullmatch(item):
            problems.error(f"defaults.services[{index}]", f"{item!r} is not a valid service name")
        elif item not in services:
            services.append(item)
    doc: Doc = {"services": services}
    for key in ("provider", "hardwaretype", "imagetype"):
        value = section.get(key) or None
        if value is not None and (not isinstance(value, str) or not NAME_RE.fullmatch(value)):
            problems.error(f"defaults.{key}", f"{value!r} is not a valid name: {NAME_RULE}")
        doc[key] = value
    suffix = section.get("dnsSuffix") or None
    if suffix is not None:
        suffix = str(suffix).lstrip(".")
        if len(suffix) > 191 or not all(DNS_LABEL_RE.match(label) for label in suffix.split(".")):
            problems.error("defaults.dnsSuffix", f"{suffix} is an invalid DNS suffix.")
    doc["dnsSuffix"] = suffix
    for where, message in macro_errors(config, "defaults.config"):
        problems.error(where, message)
    doc["config"] = config
    return doc


def _group_list(raw: Any, problems: Problems, path: str) -> list[list[str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.error(path, "must be a list of service-name lists")
        return []
    groups: list[list[str]] = []
    for index, group in enumerate(raw):
        names = _name_list(group, problems, f"{path}[{index}]")
        if len(names) < 2:
            problems.error(f"{path}[{index}]", "a group must name at least two services")
            continue
        if sorted(names) not in [sorted(g) for g in groups]:
            groups.append(names)
    return groups


def _range(raw: Any, problems: Problems, path: str, *, minimum: int, default_min: int) -> Doc:
    section = as_object(raw, problems, path)
    check_unknown_keys(section, {"min", "max"}, problems, path)
    low = _count(section.get("min"), problems, f"{path}.min", minimum=minimum)
    high = _count(section.get("max"), problems, f"{path}.max", minimum=minimum)
    low = default_min if low is None else low
    if high is not None and high < low:
        problems.error(path, f"min ({low}) is greater than max ({high})")
    result: Doc = {"min": low}
    if high is not None:
        result["max"] = high
    return result


def _constraints(raw: Any, problems: Problems) -> Doc:
    section = as_object(raw, problems, "constraints")
    check_unknown_keys(section, {"size", "layout", "services"}, problems, "constraints")
    layout = as_object(section.get("layout"), problems, "constraints.layout")
    check_unknown_keys(layout, {"mustcoexist", "cantcoexist"}, problems, "constraints.layout")
    services_raw = as_object(section.get("services"), problems, "constraints.services")
    services: Doc = {}
    for service, spec in services_raw.items():
        path = f"constraints.services.{service}"
        if not NAME_RE.fullmatch(str(service)):
            problems.error(path, f"{service!r} is not a valid service name")
            continue
        spec = as_object(spec, problems, path)
        check_unknown_keys(spec, {"hardwaretypes", "imagetypes", "quantities"}, problems, path)
        services[service] = {
            "hardwaretypes": _name_list(spec.get("hardwaretypes"), problems, f"{path}.hardwaretypes"),
            "imagetypes": _name_list(spec.get("imagetypes"), problems, f"{path}.imagetypes"),
            "quantities": _range(spec.get("quantities"), problems, f"{path}.quantities", minimum=0, default_min=0),
        }
    return {
        "size": _range(section.get("size"), problems, "constraints.size", minimum=1, default_min=1),
        "layout": {
            "mustcoexist": _group_list(layout.get("mustcoexist"), problems, "constraints.layout.mustcoexist"),
            "cantcoexist": _group_list(layout.get("cantcoexist"), problems, "constraints.layout.cantcoexist"),
        },
        "services": dict(sorted(services.items())),
    }


MAX_TASK_ATTEMPTS = 20


def _administration(raw: Any, problems: Problems) -> Doc:
    section = as_object(raw, problems, "administration")
    check_unknown_keys(section, {"leaseduration", *LOOM_ADMINISTRATION}, problems, "administration")
    lease = as_object(section.get("leaseduration"), problems, "administration.leaseduration")
    check_unknown_keys(lease, {"initial", "max", "step"}, problems, "administration.leaseduration")
    result = {
        key: parse_duration_ms(lease.get(key), problems, f"administration.leaseduration.{key}")
        for key in ("initial", "max", "step")
    }
    if result["initial"] and result["max"] and result["initial"] > result["max"]:
        problems.error(
            "administration.leaseduration.initial",
            f"initial lease ({result['initial']} ms) cannot be more than max lease ({result['max']} ms)",
        )
    if result["step"] and result["max"] and result["step"] > result["max"]:
        problems.error(
            "administration.leaseduration.step",
            f"lease step ({result['step']} ms) cannot be more than max lease ({result['max']} ms)",
        )
    administration: Doc = {"leaseduration": result}
    # Loom additions, kept out of the document when unset so canonical exports stay the original's shape:
    # attempts per task (loom-reference §5.6: 3 by default) and the per-task timeout (1800 s by default).
    if section.get("maxattempts") is not None:
        attempts = _count(section["maxattempts"], problems, "administration.maxattempts", minimum=1)
        if attempts is not None and attempts > MAX_TASK_ATTEMPTS:
            problems.error("administration.maxattempts", f"must be at most {MAX_TASK_ATTEMPTS}")
        elif attempts is not None:
            administration["maxattempts"] = attempts
    if section.get("tasktimeout") is not None:
        timeout = parse_duration_ms(section["tasktimeout"], problems, "administration.tasktimeout")
        if timeout < 1000:
            problems.error("administration.tasktimeout", 'must be at least 1 second (1000 ms or "1s")')
        else:
            administration["tasktimeout"] = timeout
    if section.get("healthcheck") is not None:
        administration["healthcheck"] = _healthcheck(section["healthcheck"], problems)
    if section.get("autorepair") is not None:
        administration["autorepair"] = _autorepair(section["autorepair"], problems)
    return administration


LOOM_ADMINISTRATION = ("maxattempts", "tasktimeout", "healthcheck", "autorepair")
"""Loom's settings in a template's administration section; a child template's own value of each wins."""
MIN_HEALTHCHECK_INTERVAL_MS = 10_000


def _healthcheck(raw: Any, problems: Problems) -> Doc:
    """``{"interval": "5m", "timeout": "30s"}``: how often the sweep checks the cluster, and how long one
    node's checks may take before the node counts as unreachable (durations as the lease's)."""
    path = "administration.healthcheck"
    section = as_object(raw, problems, path)
    check_unknown_keys(section, {"interval", "timeout"}, problems, path)
    result: Doc = {}
    for key, minimum in (("interval", MIN_HEALTHCHECK_INTERVAL_MS), ("timeout", 1000)):
        if section.get(key) is None:
            continue
        value = parse_duration_ms(section[key], problems, f"{path}.{key}")
        if value < minimum:
            problems.error(f"{path}.{key}", f"must be at least {minimum // 1000} seconds ({minimum} ms)")
        else:
            result[key] = value
    return result


def _autorepair(raw: Any, problems: Problems) -> Doc:
    """``{"after": 2, "maxperhour": 1}``: repair a node automatically once that many sweeps in a row found it
    unhealthy, at most that many repair jobs an hour per cluster."""
    path = "administration.autorepair"
    section = as_object(raw, problems, path)
    check_unknown_keys(section, {"after", "maxperhour"}, problems, path)
    after = _count(section.get("after", 2), problems, f"{path}.after", minimum=1)
    per_hour = _count(section.get("maxperhour", 1), problems, f"{path}.maxperhour", minimum=0)
    return {"after": after or 2, "maxperhour": 1 if per_hour is None else per_hour}


def _template_parts(raw: Doc, problems: Problems) -> Doc:
    return {
        "compatibility": _compatibility(raw.get("compatibility"), problems),
        "defaults": _defaults(raw.get("defaults"), problems),
        "constraints": _constraints(raw.get("constraints"), problems),
        "administration": _administration(raw.get("administration"), problems),
        "links": _links(raw.get("links"), problems),
    }


_TEMPLATE_KEYS = {
    "name", "label", "description", "icon", "version", "compatibility", "defaults",
    "constraints", "administration", "links",
}  # fmt: skip


def normalize_clustertemplate(raw: Doc) -> tuple[Doc, Problems]:
    problems = Problems("clustertemplate")
    doc = base_fields(raw, problems)
    check_unknown_keys(raw, _TEMPLATE_KEYS | {"extends", "includes"}, problems)
    parent = raw.get("extends")
    if isinstance(parent, str):
        parent = {"name": parent}
    if parent is not None:
        parent_obj = as_object(parent, problems, "extends")
        doc["extends"] = {"name": check_name(parent_obj.get("name"), problems, "extends.name")}
    else:
        doc["extends"] = None
    includes = raw.get("includes") or []
    if not isinstance(includes, list):
        problems.error("includes", "must be a list of {name}")
        includes = []
    doc["includes"] = []
    for index, item in enumerate(includes):
        name = item.get("name") if isinstance(item, dict) else item
        doc["includes"].append({"name": check_name(name, problems, f"includes[{index}].name")})
    doc.update(_template_parts(raw, problems))
    return doc, problems


def normalize_partialtemplate(raw: Doc) -> tuple[Doc, Problems]:
    problems = Problems("partialtemplate")
    doc = base_fields(raw, problems)
    check_unknown_keys(raw, _TEMPLATE_KEYS | {"immutable"}, problems)
    immutable = raw.get("immutable", False)
    if not isinstance(immutable, bool):
        problems.error("immutable", "must be true or false")
        immutable = False
    doc["immutable"] = immutable
    doc.update(_template_parts(raw, problems))
    return doc, problems


Normalizer = Callable[[Doc], tuple[Doc, Problems]]
