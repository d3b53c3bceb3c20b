"""Where ``loom login`` keeps the server URL and token: ``~/.config/loom/config.json`` (mode 0600).

``$LOOM_CONFIG`` names another file and ``$XDG_CONFIG_HOME`` moves the folder; ``$LOOM_URL``, ``$LOOM_TOKEN``
and ``$LOOM_TENANT`` override what the file holds, for scripts and CI that should not write a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


class ConfigError(Exception):
    """The configuration is missing or unreadable: a usage problem (exit 2), not an API error."""


@dataclass(frozen=True)
class Config:
    url: str
    token: str
    tenant: str = ""


def config_path() -> Path:
    if os.environ.get("LOOM_CONFIG"):
        return Path(os.environ["LOOM_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "loom" / "config.json"


def load() -> Config:
    """The saved configuration with the environment's overrides; ConfigError when there is no URL or token."""
    path = config_path()
    saved: dict[str, str] = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read {path}: {error}; run 'loom login' again") from error
    url = os.environ.get("LOOM_URL") or saved.get("url", "")
    token = os.environ.get("LOOM_TOKEN") or saved.get("token", "")
    if not url or not token:
        raise ConfigError("not logged in: run 'loom login --url URL --token TOKEN' (or set LOOM_URL and LOOM_TOKEN)")
    return Config(url=url.rstrip("/"), token=token, tenant=os.environ.get("LOOM_TENANT") or saved.get("tenant", ""))


def save(config: Config) -> Path:
    """Write ``config`` readable by its owner only: the file holds a token that acts as the user.

    The file is created with mode 0600 (never briefly wider) and replaced atomically, so a reader never sees
    half of it."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(asdict(config), handle, indent=2)
        handle.write("\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return path
