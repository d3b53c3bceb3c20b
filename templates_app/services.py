"""Catalog write services: save, delete, import and export, with versions and an audit trail.

Every write validates the whole affected catalog first (the entity itself, the entities it refers to and
the templates that use it) and then applies in one transaction. Writes that change nothing make no new
version. Raises ``CatalogValidationError`` (400), ``Conflict`` (409) or ``NotFound`` (404).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from tenants.errors import Conflict, NotFound, PermissionDenied
from tenants.models import AuditEvent, Membership, Role, Tenant

from .codec import NAME_RE
from .kinds import CatalogKind, all_kinds, get_kind
from .models import CatalogEntity, CatalogVersion
from .problems import CatalogValidationError, Problem
from .validation import (
    CatalogView,
    dependents,
    provider_launch_reasons,
    template_launch_reasons,
    validate_catalog,
)

Doc = dict[str, Any]
SUMMARY_LIMIT = 2000


def user_is_tenant_admin(user: Any, tenant: Tenant) -> bool:
    if user is None or not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return Membership.objects.filter(user=user, tenant=tenant, role=Role.ADMIN).exists()


def _require_change(
    user: Any, tenant: Tenant, obj: CatalogEntity | None, kind: CatalogKind, action: str = "change"
) -> None:
    """Tenant admins change the catalog; a user may change or delete one entity granted to them."""
    if user is None:  # internal callers (management commands) act as the system
        return
    if user_is_tenant_admin(user, tenant):
        return
    if obj is not None and user.has_perm(f"{obj._meta.app_label}.{action}_{obj._meta.model_name}", obj):
        return
    raise PermissionDenied(f"only tenant admins may {action} {kind.label}s")


def catalog_view(tenant: Tenant) -> CatalogView:
    """The tenant's current catalog as canonical documents, in one query per kind."""
    return {kind.key: kind.view_documents(tenant) for kind in all_kinds()}


def _summary(before: Doc | None, after: Doc | None) -> Doc:
    """Changed top-level keys with their old and new values, trimmed to keep audit rows small."""
    keys = sorted(set(before or {}) | set(after or {}))
    changed = [k for k in keys if (before or {}).get(k) != (after or {}).get(k) and k != "version"]

    def trim(doc: Doc | None) -> Doc | None:
        if doc is None:
            return None
        part = {k: doc.get(k) for k in changed}
        text = json.dumps(part, sort_keys=True, default=str)
        return part if len(text) <= SUMMARY_LIMIT else {"truncated": text[:SUMMARY_LIMIT]}

    return {"changed": changed, "before": trim(before), "after": trim(after)}


def _next_version(tenant: Tenant, kind: CatalogKind, name: str) -> int:
    latest = CatalogVersion.objects.filter(tenant=tenant, kind=kind.key, name=name).aggregate(v=Max("version"))["v"]
    return (latest or 0) + 1


def _write(
    *, tenant: Tenant, user: Any, kind: CatalogKind, obj: CatalogEntity | None, doc: Doc, action: str
) -> CatalogEntity:
    before = kind.export(obj) if obj is not None else None
    if obj is None:
        obj = kind.model(tenant=tenant)
    kind.apply(obj, doc)
    obj.version = _next_version(tenant, kind, doc["name"])
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError as error:
        raise Conflict(f"{kind.label} {doc['name']} already exists") from error
    CatalogVersion.objects.create(
        tenant=tenant,
        kind=kind.key,
        name=obj.name,
        version=obj.version,
        document=obj.document,
        secret_data=kind.version_secret_data(obj),
        created_by=user if getattr(user, "pk", None) else None,
    )
    AuditEvent.objects.create(
        tenant=tenant,
        actor=user if getattr(user, "pk", None) else None,
        action=action,
        entity_kind=kind.singular,
        entity_name=obj.name,
        version=obj.version,
        summary=_summary(before, kind.export(obj)),
    )
    return obj


def _raise_errors(problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CatalogValidationError(errors)


@dataclass
class SaveResult:
    entity: CatalogEntity
    created: bool
    changed: bool
    warnings: list[Problem] = field(default_factory=list)


@transaction.atomic
def catalog_entity_save(
    *, tenant: Tenant, user: Any, kind_key: str, data: Any, name: str | None = None, create: bool = False
) -> SaveResult:
    """Create (``create=True``) or create-or-update (PUT semantics) one entity.

    Preconditions: ``name``, when given, is the name in the URL and must match the body.
    Side effects: a new version row and an audit event when anything changed.
    """
    kind = get_kind(kind_key)
    if name is not None and isinstance(data, dict):
        body_name = data.get("name", name)
        if body_name != name:
            raise CatalogValidationError(
                [Problem(kind.singular, name, "name", f"mismatch between name in body ({body_name!r}) and in path")]
            )
        data = {**data, "name": name}
    lookup = name or (data.get("name") if isinstance(data, dict) else None)
    existing = (
        kind.model.objects.select_for_update().filter(tenant=tenant, name=lookup).first()
        if isinstance(lookup, str) and NAME_RE.fullmatch(lookup)  # an invalid name cannot exist
        else None
    )
    if create and existing is not None:
        raise Conflict(f"{kind.label} {lookup} already exists")
    _require_change(user, tenant, existing, kind)
    doc, problems = kind.normalize(data, existing)
    if not problems.errors:
        problems.items += kind.tenant_problems(tenant, doc)
    _raise_errors(problems.items)
    view = catalog_view(tenant)
    view[kind.key][doc["name"]] = doc
    cross = validate_catalog(view, changed={kind.key: {doc["name"]}})
    _raise_errors(cross)
    warnings = problems.warnings + [p for p in cross if p.severity == "warning"]
    if existing is not None and kind.public_equal(existing, doc):
        return SaveResult(existing, created=False, changed=False, warnings=warnings)
    obj = _write(tenant=tenant, user=user, kind=kind, obj=existing, doc=doc, action="update" if existing else "create")
    return SaveResult(obj, created=existing is None, changed=True, warnings=warnings)


@transaction.atomic
def catalog_entity_delete(*, tenant: Tenant, user: Any, kind_key: str, name: str) -> None:
    """Delete an entity unless others depend on it (409 listing them). Its versions stay readable."""
    kind = get_kind(kind_key)
    obj = kind.model.objects.select_for_update().filter(tenant=tenant, name=name).first()
    if obj is None:
        raise NotFound(f"{kind.label} {name} not found")
    _require_change(user, tenant, obj, kind, action="delete")
    users = dependents(catalog_view(tenant), kind.key, name)
    if users:
        raise Conflict(
            f"{kind.label} {name} is used by {', '.join(users)}",
            fields={"dependents": users},
        )
    before = kind.export(obj)
    obj.delete()
    AuditEvent.objects.create(
        tenant=tenant,
        actor=user if getattr(user, "pk", None) else None,
        action="delete",
        entity_kind=kind.singular,
        entity_name=name,
        version=before.get("version"),
        summary=_summary(before, None),
    )


def catalog_export(*, tenant: Tenant) -> Doc:
    """The whole catalog in the Loom JSON format (latest versions; secrets masked)."""
    result: Doc = {}
    for kind in sorted(all_kinds(), key=lambda k: k.key):
        result[kind.key] = [kind.export(obj) for obj in kind.model.objects.filter(tenant=tenant).order_by("name")]
    return result


@dataclass
class ImportResult:
    created: dict[str, list[str]] = field(default_factory=dict)
    updated: dict[str, list[str]] = field(default_factory=dict)
    unchanged: dict[str, list[str]] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    def to_json(self) -> Doc:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "warnings": [w.to_json() for w in self.warnings],
        }


@transaction.atomic
def catalog_import(*, tenant: Tenant, user: Any, data: Any, replace: bool = False) -> ImportResult:
    """Validate a whole Loom-format catalog, then apply it in one transaction: all or nothing.

    Entities are created or updated by name; with ``replace`` those absent from ``data`` are deleted
    (the original always did that, destructively and half-applied on error). Raises
    ``CatalogValidationError`` listing every problem of every entity; nothing is written then.
    """
    if user is not None and not user_is_tenant_admin(user, tenant):
        raise PermissionDenied("only tenant admins may import a catalog")
    kinds = {kind.key: kind for kind in all_kinds()}
    if not isinstance(data, dict):
        raise CatalogValidationError([Problem("catalog", "", "", "must be a JSON object keyed by entity kind")])
    problems: list[Problem] = []
    for key in data:
        if key not in kinds:
            problems.append(Problem("catalog", "", key, f"unknown section; expected {', '.join(sorted(kinds))}"))
    existing = {
        key: {obj.name: obj for obj in kind.model.objects.select_for_update().filter(tenant=tenant)}
        for key, kind in kinds.items()
    }
    incoming: dict[str, dict[str, Doc]] = {}
    for key, kind in kinds.items():
        items = data.get(key) or []
        if not isinstance(items, list):
            problems.append(Problem("catalog", "", key, "must be a list of entities"))
            continue
        incoming[key] = {}
        for index, raw in enumerate(items):
            name = raw.get("name") if isinstance(raw, dict) else None
            doc, found = kind.normalize(raw, existing[key].get(name) if isinstance(name, str) else None)
            if not found.errors:
                found.items += kind.tenant_problems(tenant, doc)
            for problem in found.items:
                if not problem.name:  # unnamed entity: point at its position in the section
                    problem = Problem(
                        kind.singular, f"{key}[{index}]", problem.field, problem.message, problem.severity
                    )
                problems.append(problem)
            if not found.errors:
                if doc["name"] in incoming[key]:
                    problems.append(Problem(kind.singular, doc["name"], "name", "appears twice in this import"))
                incoming[key][doc["name"]] = doc
    kept = catalog_view(tenant)
    for key, docs in incoming.items():
        kept[key].update(docs)
    view = {key: dict(incoming.get(key, {})) for key in kept} if replace else kept
    found = validate_catalog(view)
    if replace:
        # A reference the catalog cannot satisfy is only a warning, but one this very import breaks by
        # deleting what it names is an error: what the delete causes is what the same import without
        # the deletes does not warn about.
        before = {(p.kind, p.name, p.field, p.message) for p in validate_catalog(kept)}
        soft = ("compatibility.hardwaretypes", "compatibility.imagetypes")  # never blocked a delete either
        caused = [p.severity != "error" and not p.field.startswith(soft)
                  and (p.kind, p.name, p.field, p.message) not in before for p in found]  # fmt: skip
        found = [Problem(p.kind, p.name, p.field, f"{p.message}: this import would delete it") if by_delete else p
                 for p, by_delete in zip(found, caused, strict=True)]  # fmt: skip
    problems += found
    _raise_errors(problems)
    result = ImportResult(warnings=[p for p in problems if p.severity == "warning"])
    for key, kind in sorted(kinds.items(), key=lambda item: item[1].order):
        for name, doc in incoming.get(key, {}).items():
            obj = existing[key].get(name)
            if obj is not None and kind.public_equal(obj, doc):
                result.unchanged.setdefault(key, []).append(name)
                continue
            _write(tenant=tenant, user=user, kind=kind, obj=obj, doc=doc, action="import")
            (result.updated if obj else result.created).setdefault(key, []).append(name)
    if replace:
        for key, kind in sorted(kinds.items(), key=lambda item: -item[1].order):
            for name in sorted(set(existing[key]) - set(incoming.get(key, {}))):
                obj = existing[key][name]
                before = kind.export(obj)
                obj.delete()
                AuditEvent.objects.create(
                    tenant=tenant, actor=user if getattr(user, "pk", None) else None, action="import-delete",
                    entity_kind=kind.singular, entity_name=name, version=before.get("version"),
                    summary=_summary(before, None),
                )  # fmt: skip
                result.deleted.setdefault(key, []).append(name)
    return result


def catalog_version_get(*, tenant: Tenant, kind_key: str, name: str, version: int) -> CatalogVersion:
    found = CatalogVersion.objects.filter(tenant=tenant, kind=kind_key, name=name, version=version).first()
    if found is None:
        raise NotFound(f"{get_kind(kind_key).label} {name} version {version} not found")
    return found


LAUNCHABLE_KINDS = ("clustertemplates", "providers")


def launch_reasons(*, tenant: Tenant, kind_key: str, names: list[str]) -> dict[str, list[str]]:
    """Why each of ``names`` (templates or providers) cannot launch now, from the catalog as it is now (one
    read of it for all names); an empty list means it can."""
    if kind_key not in LAUNCHABLE_KINDS:
        return {}
    view = catalog_view(tenant)
    if kind_key == "providers":
        return {name: provider_launch_reasons(view["providers"][name]) for name in names if name in view["providers"]}
    return {name: template_launch_reasons(name, view) for name in names}
