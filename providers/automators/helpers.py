"""What the configuration-management automators (``ansible``, ``puppet``, ``chef-solo``) share: the JSON
fields they accept, the deep merge the original did for chef-solo, and finding a file (a playbook, a
manifest) inside the plugin's live archive resources.

Archive resources hold *folders* (roles, modules, cookbooks, data bags, playbook trees) and each is
unpacked into a folder named like the resource, so ``playbooks/site/web.yml`` is member ``web.yml`` of the
``playbooks`` archive named ``site``. A field may name a file by its path inside the archive (``web.yml``)
when only one live archive has it, or with the archive's name in front (``site/web.yml``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

from providers.archives import ArchiveError, inspect_archive
from providers.drivers.base import TerminalError
from providers.resources import LiveResource

from .base import ActionRequest


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: objects merge key by key, recursively; anything else (lists,
    strings, numbers) in ``override`` replaces what ``base`` has. Neither argument is changed."""
    if not isinstance(base, Mapping) or not isinstance(override, Mapping):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if key in base else value
    return merged


def json_object_field(request: ActionRequest, name: str) -> dict[str, Any]:
    """The action field ``name`` as a JSON object: empty when unset, the object itself when the catalog
    holds one, parsed when it is text. Anything else is a terminal error naming the field."""
    value = request.fields.get(name)
    where = f"{request.service}.{request.action}: field {name}"
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise TerminalError(
                f"{request.service}.{request.action}: field {name} is not valid JSON: {error}"
            ) from None
    if not isinstance(value, dict):
        raise TerminalError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def task_document(request: ActionRequest) -> dict[str, Any]:
    """The task (``ActionRequest.task_json``) as a dictionary, for tools that take structured data."""
    document: dict[str, Any] = json.loads(request.task_json())
    return document


def archive_names(request: ActionRequest, resource_type: str) -> list[str]:
    """The names of the live archives of ``resource_type``, sorted (the folders they are unpacked into)."""
    return sorted(r.name for r in request.resources if r.resource_type == resource_type and r.format == "archive")


def safe_relative_path(value: str, *, what: str) -> str:
    """``value`` as a relative POSIX path that stays inside its folder, or a terminal error saying why."""
    path = PurePosixPath(value.strip().removeprefix("./"))
    if not value.strip() or path.is_absolute() or ".." in path.parts:
        raise TerminalError(f"{what} {value!r} must be a relative path inside its resource (no '/' in front, no '..')")
    return str(path)


@lru_cache(maxsize=64)
def archive_members(content: bytes) -> frozenset[str]:
    """The file paths inside a tar or zip archive (``./`` stripped), read within the same limits as at upload
    (providers/archives.py), so an archive stored before a limit existed cannot exhaust the worker. Cached by
    content: a resource's bytes do not change, and a node's actions ask about the same archives again and
    again."""
    try:
        return inspect_archive(content).files
    except ArchiveError as error:
        raise TerminalError(f"a live archive breaks the archive rules ({error.reason}): {error}") from None


def locate(resources: Sequence[LiveResource], resource_type: str, path: str, *, what: str) -> tuple[str, str]:
    """Which live archive of ``resource_type`` holds ``path``: ``(archive name, path inside it)``.

    ``path`` is looked up inside every archive, and also as ``<archive name>/<path inside>``. Finding it in
    no archive, or in several, is a terminal error that names the archives, so the catalog can be fixed."""
    path = safe_relative_path(path, what=what)
    archives = [r for r in resources if r.resource_type == resource_type and r.format == "archive"]
    found = [(r.name, path) for r in archives if path in archive_members(r.content)]
    head, _, rest = path.partition("/")
    found += [(r.name, rest) for r in archives if r.name == head and rest and rest in archive_members(r.content)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(sorted(r.name for r in archives)) or "none"
    if not found:
        raise TerminalError(f"{what} {path!r} is in no live {resource_type} archive (live {resource_type}: {names})")
    choices = ", ".join(f"{name}/{inside}" for name, inside in sorted(found))
    raise TerminalError(f"{what} {path!r} is in several live {resource_type} archives: name one of {choices}")
