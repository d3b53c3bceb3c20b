"""Plugin resources: upload, stage, recall, activate, delete, and what automators read at task time.

The original's life cycle (loom-reference §1.14, §2.4): an upload makes a new, inactive version; *stage*
slates a version to be used (unslating the name's other versions); *recall* unslates it; *activate* (the
original's "sync") makes every slated version live and every unslated one not, for the whole tenant at
once, so an admin can prepare several changes and switch them together. Automators use only live
versions, read when the task runs, so an activation affects the next task, never a running one.

Fixed from the original: an archive is checked when it is uploaded (a broken archive is refused then, not
discovered by a failing task), and it need not contain a top-level folder named like the resource —
automators unpack it into a folder of that name.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.db import transaction
from django.db.models import Max, QuerySet

from templates_app.codec import NAME_RE
from templates_app.plugin_types import ResourceType, registry
from tenants.errors import ApplicationError, Conflict, NotFound
from tenants.models import Tenant
from tenants.services import audit

from .archives import ArchiveError, inspect_archive
from .models import PluginResource
from .secrets import SecretsError, fernet

PLUGIN_KINDS = {"automatortypes": "automator", "providertypes": "provider"}


@dataclass(frozen=True)
class ResourceKey:
    """Which resource: plugin kind (``automatortypes``/``providertypes``), plugin, resource type, name."""

    plugin_kind: str
    plugin: str
    resource_type: str
    name: str = ""

    def filter(self, tenant: Tenant) -> QuerySet[PluginResource]:
        query = PluginResource.objects.filter(
            tenant=tenant, plugin_kind=self.plugin_kind, plugin=self.plugin, resource_type=self.resource_type
        )
        return query.filter(name=self.name) if self.name else query

    @property
    def label(self) -> str:
        return "/".join(part for part in (self.plugin, self.resource_type, self.name) if part)


def resource_type_of(key: ResourceKey) -> ResourceType:
    """The declared type of ``key``'s resource type; NotFound naming what does not exist."""
    kind = PLUGIN_KINDS.get(key.plugin_kind)
    if kind is None:
        raise NotFound(f"plugin kind {key.plugin_kind} not found; use automatortypes or providertypes")
    plugin = registry.get(kind, key.plugin)  # type: ignore[arg-type]
    if plugin is None:
        raise NotFound(f"{kind} plugin {key.plugin} not found")
    resource_type = plugin.resource_types.get(key.resource_type)
    if resource_type is None:
        known = ", ".join(sorted(plugin.resource_types)) or "none"
        raise NotFound(f"{key.resource_type} for {kind} plugin {key.plugin} not found; it has: {known}")
    return resource_type


def _check_archive(data: bytes) -> str:
    """``tar`` or ``zip`` within the archive limits (providers/archives.py); ApplicationError naming the rule
    broken, on the ``content`` field, otherwise."""
    try:
        return inspect_archive(data).form
    except ArchiveError as error:
        raise ApplicationError(str(error), fields={"content": [error.reason]}) from None


def _check_size(size: int) -> None:
    if size > settings.LOOM_IMPORT_MAX_BYTES:
        raise ApplicationError(
            f"the resource is {size} bytes; at most {settings.LOOM_IMPORT_MAX_BYTES} are allowed",
            fields={"content": ["too large"]},
        )


def read_upload(upload: Any) -> bytes:
    """The bytes of an uploaded file, refused by its size before they are read: a multipart file part is
    not bounded by DATA_UPLOAD_MAX_MEMORY_SIZE (Django spools it to disk), so without this a huge file would
    be read into the web process's memory only to be refused."""
    _check_size(upload.size)
    return bytes(upload.read())


def resource_upload(*, tenant: Tenant, user: Any, key: ResourceKey, data: bytes) -> PluginResource:
    """Store ``data`` as the next version of ``key`` (inactive). Raises NotFound for an unknown plugin or
    resource type, ApplicationError for a bad name, an empty or oversized body, or a broken archive."""
    resource_type = resource_type_of(key)
    if not NAME_RE.fullmatch(key.name or ""):
        raise ApplicationError(
            "a resource name is 1-255 letters, digits, '_', '.' or '-'", fields={"name": ["invalid name"]}
        )
    if not data:
        raise ApplicationError(
            "the resource is empty: send its bytes as the request body", fields={"content": ["empty"]}
        )
    _check_size(len(data))
    if resource_type.format == "archive":
        _check_archive(data)
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).values_list("pk", flat=True).get()
        version = (key.filter(tenant).aggregate(n=Max("version"))["n"] or 0) + 1
        resource = PluginResource.objects.create(
            tenant=tenant,
            plugin_kind=key.plugin_kind,
            plugin=key.plugin,
            resource_type=key.resource_type,
            name=key.name,
            version=version,
            content=fernet().encrypt(data),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created_by=user if getattr(user, "pk", None) else None,
        )
        audit(tenant=tenant, actor=user, action="upload", kind="pluginresource", name=f"{key.label} v{version}",
              summary={"size": len(data), "sha256": resource.sha256})  # fmt: skip
    return resource


def _version(tenant: Tenant, key: ResourceKey, version: int) -> PluginResource:
    resource_type_of(key)
    resource = key.filter(tenant).filter(version=version).first()
    if resource is None:
        raise NotFound(f"resource {key.label} has no version {version}")
    return resource


@transaction.atomic
def resource_stage(*, tenant: Tenant, user: Any, key: ResourceKey, version: int) -> PluginResource:
    """Slate ``version`` to be used after the next activation; the name's other versions are unslated."""
    resource = _version(tenant, key, version)
    key.filter(tenant).exclude(pk=resource.pk).filter(slated=True).update(slated=False)
    PluginResource.objects.filter(pk=resource.pk).update(slated=True)
    audit(tenant=tenant, actor=user, action="stage", kind="pluginresource", name=f"{key.label} v{version}")
    resource.refresh_from_db()
    return resource


@transaction.atomic
def resource_recall(*, tenant: Tenant, user: Any, key: ResourceKey, version: int) -> PluginResource:
    """Unslate ``version``: after the next activation nothing of this name is used (unless another is staged)."""
    resource = _version(tenant, key, version)
    PluginResource.objects.filter(pk=resource.pk).update(slated=False)
    audit(tenant=tenant, actor=user, action="recall", kind="pluginresource", name=f"{key.label} v{version}")
    resource.refresh_from_db()
    return resource


@transaction.atomic
def resources_activate(*, tenant: Tenant, user: Any) -> dict[str, int]:
    """Make every slated version of the tenant live and every unslated one not (the original's "sync").

    Two UPDATEs, in the order that never has two live versions of one name: first retire live versions that
    are no longer slated, then bring slated ones live.
    """
    Tenant.objects.select_for_update().filter(pk=tenant.pk).values_list("pk", flat=True).get()
    retired = PluginResource.objects.filter(tenant=tenant, live=True, slated=False).update(live=False)
    activated = PluginResource.objects.filter(tenant=tenant, live=False, slated=True).update(live=True)
    counts = {"activated": activated, "retired": retired}
    audit(tenant=tenant, actor=user, action="activate", kind="pluginresource", name="*", summary=counts)
    return counts


@transaction.atomic
def resource_delete(*, tenant: Tenant, user: Any, key: ResourceKey, version: int | None = None) -> int:
    """Delete one version, or every version of the name; only inactive versions may go (Conflict otherwise)."""
    resource_type_of(key)
    versions = key.filter(tenant) if version is None else key.filter(tenant).filter(version=version)
    if not versions.exists():
        raise NotFound(f"resource {key.label} {'' if version is None else f'version {version} '}not found".strip())
    busy = versions.filter(live=True) | versions.filter(slated=True)
    if busy.exists():
        states = ", ".join(f"v{r.version} {r.status}" for r in busy.order_by("version"))
        raise Conflict(f"resource {key.label} is in use ({states}); recall and activate before deleting")
    deleted, _ = versions.delete()
    audit(tenant=tenant, actor=user, action="delete", kind="pluginresource",
          name=key.label if version is None else f"{key.label} v{version}")  # fmt: skip
    return deleted


def resource_content(resource: PluginResource) -> bytes:
    """The decrypted bytes. For workers and downloads of non-secret types only."""
    try:
        return fernet().decrypt(bytes(resource.content))
    except InvalidToken as error:
        raise SecretsError("a plugin resource cannot be decrypted with LOOM_FIELD_ENCRYPTION_KEYS") from error


def is_secret(key: ResourceKey) -> bool:
    """Key material (permissions 0400, or ``*_keys`` types) is never sent back, even to admins."""
    resource_type = resource_type_of(key)
    return resource_type.permissions == "0400" or key.resource_type.endswith("keys")


@dataclass(frozen=True)
class LiveResource:
    resource_type: str
    name: str
    version: int
    format: str
    permissions: str | None
    content: bytes


def live_resources(*, tenant_id: int, plugin_kind: str, plugin: str) -> list[LiveResource]:
    """Every live resource of one plugin, decrypted, for the automator running a task right now."""
    kind = PLUGIN_KINDS[plugin_kind]
    plugin_type = registry.get(kind, plugin)  # type: ignore[arg-type]
    types = plugin_type.resource_types if plugin_type else {}
    rows = PluginResource.objects.filter(tenant_id=tenant_id, plugin_kind=plugin_kind, plugin=plugin, live=True)
    return [
        LiveResource(
            resource_type=row.resource_type,
            name=row.name,
            version=row.version,
            format=types[row.resource_type].format if row.resource_type in types else "file",
            permissions=types[row.resource_type].permissions if row.resource_type in types else None,
            content=resource_content(row),
        )
        for row in rows.order_by("resource_type", "name")
    ]


def resource_meta(resource: PluginResource) -> dict[str, Any]:
    """The original's meta JSON plus what Loom adds (size, checksum, when, by whom)."""
    return {
        "name": resource.name,
        "version": resource.version,
        "status": resource.status,
        "size": resource.size,
        "sha256": resource.sha256,
        "createdAt": resource.created_at.isoformat() if resource.created_at else None,
    }


def _folder_bytes(folder: Path) -> bytes:
    """A folder as a reproducible tar.gz (sorted members, zeroed times and owners): the same folder
    always gives the same bytes, so re-importing an unchanged folder uploads nothing."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(folder)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as handle:
                archive.addfile(info, handle)
    data = buffer.getvalue()
    # gzip writes the time into its header; zero it (bytes 4-7) for reproducible output.
    return data[:4] + b"\x00\x00\x00\x00" + data[8:]


def resources_import_dir(*, tenant: Tenant, user: Any, directory: Path) -> dict[str, list[str]]:
    """Upload ``directory/<pt>/<plugin>/<rt>/<name>`` (a file, or a folder for archive types), stage each
    and activate, skipping names whose live version already has the same bytes. Returns what was uploaded
    and what was unchanged, by ``plugin/rt/name``."""
    report: dict[str, list[str]] = {"uploaded": [], "unchanged": []}
    for entry in sorted(directory.glob("*/*/*/*")):
        plugin_kind, plugin, resource_type, name = entry.relative_to(directory).parts
        key = ResourceKey(plugin_kind, plugin, resource_type, name)
        data = _folder_bytes(entry) if entry.is_dir() else entry.read_bytes()
        current = key.filter(tenant).filter(live=True).first()
        if current is not None and current.sha256 == hashlib.sha256(data).hexdigest():
            report["unchanged"].append(key.label)
            continue
        resource = resource_upload(tenant=tenant, user=user, key=key, data=data)
        resource_stage(tenant=tenant, user=user, key=key, version=resource.version)
        report["uploaded"].append(key.label)
    if report["uploaded"]:
        resources_activate(tenant=tenant, user=user)
    return report
