"""SSH credentials by reference: nodes store a ``credentials_ref``, never a key; this module resolves it.

A provider's ``Reachable.credentials_ref`` (kept on ``Node.credentials_ref``) names where the private key
lives, as ``<scheme>:<rest>``. ``ssh_credentials(ref, user=...)`` turns it into an ``SshCredentials`` for
``providers.ssh`` at the moment of connecting, so a key never travels in a task payload, a job record or a
log line, and every key source plugs in the same way: a resolver per scheme (``register_resolver``).

Shipped scheme:

* ``keystore:<name>``: a private key file generated on this installation under ``<data folder>/ssh-keys/``
  (folder 0700, file 0600), e.g. the ``local`` provider's per-provider key pair. Every worker of the
  installation shares the data folder, so each resolves the same key.

Static host pools and cloud key resources (issue 5, later parts) register their own schemes (say
``static:<pool>/<host>`` or ``resource:<tenant>/<name>``) without changing callers.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .drivers.base import TerminalError
from .secrets import register_secrets

KEYSTORE_SCHEME = "keystore"
KEYSTORE_FOLDER = "ssh-keys"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class SshCredentials:
    """Who to log in as and with which private key (OpenSSH or PEM text). The key stays out of ``repr``."""

    user: str
    private_key: str = field(repr=False)


@dataclass(frozen=True)
class KeyPair:
    """A stored key pair: the reference to put on nodes, where the private key is, and its public line."""

    ref: str
    path: Path
    public_key: str


Resolver = Callable[[str, str], SshCredentials]
"""``resolver(rest_of_ref, user)``: the credentials, or ``TerminalError`` when they cannot be found."""

_resolvers: dict[str, Resolver] = {}
_resolvers_lock = threading.Lock()


def register_resolver(scheme: str, resolver: Resolver) -> None:
    """Make ``<scheme>:...`` references resolvable. Registering a scheme again replaces its resolver."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", scheme):
        raise ValueError(f"credentials scheme {scheme!r} must be lower-case letters, digits and '-'")
    with _resolvers_lock:
        _resolvers[scheme] = resolver


def ssh_credentials(ref: str, *, user: str) -> SshCredentials:
    """Resolve ``ref`` for logging in as ``user`` (a resolver may substitute the user its source names).

    The key is registered with the log redactor before it is returned, so it is masked should it ever
    reach a log line. Raises ``TerminalError`` (retrying cannot make a missing key appear) naming the
    reference, never the key.
    """
    scheme, separator, rest = (ref or "").partition(":")
    with _resolvers_lock:
        resolver = _resolvers.get(scheme)
    if not separator or not rest or resolver is None:
        known = ", ".join(sorted(_resolvers)) or "none"
        raise TerminalError(f"credentials reference {ref!r} is not <scheme>:<name> with a known scheme ({known})")
    credentials = resolver(rest, user)
    register_secrets([credentials.private_key])
    return credentials


def data_dir() -> Path:
    """The installation's data folder: Django's ``DATA_DIR`` when settings are loaded, else ``LOOM_DATA_DIR``."""
    from django.conf import settings

    if settings.configured:
        return Path(settings.DATA_DIR)
    if os.environ.get("LOOM_DATA_DIR"):
        return Path(os.environ["LOOM_DATA_DIR"]).resolve()
    raise TerminalError("no data folder for SSH keys: configure Django settings or set LOOM_DATA_DIR")


def generate_ed25519(comment: str = "") -> tuple[str, str]:
    """A new Ed25519 key pair as (private key in OpenSSH format, public ``ssh-ed25519 AAAA... comment`` line).

    Made in-process with ``cryptography`` rather than by ``ssh-keygen``: no subprocess, nothing on disk
    until the caller writes it where it belongs (with the right mode from the start).
    """
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode()
    return private, f"{line} {comment}".strip()


def public_key_of(private_key: str) -> str:
    """The OpenSSH public key line (``type base64``) of an OpenSSH or PEM private key."""
    data = private_key.encode()
    try:
        loaded = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        loaded = serialization.load_pem_private_key(data, password=None)
    public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def keystore_path(name: str, *, folder: Path | None = None) -> Path:
    """Where the keystore key ``name`` lives (``<data folder>/ssh-keys/<name>``); the name is validated."""
    if not _NAME.fullmatch(name):
        raise TerminalError(f"keystore key name {name!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    return (folder or data_dir()) / KEYSTORE_FOLDER / name


def keystore_keypair(name: str, *, folder: Path | None = None) -> KeyPair:
    """The keystore key pair ``name``, generated on first use (0600 in a 0700 folder).

    Race-safe across processes: the key is written to a private temporary file and hard-linked into place,
    so when two workers generate at once exactly one key wins and both use it.
    """
    path = keystore_path(name, folder=folder)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        private, _ = generate_ed25519(comment=f"loom-{name}")
        temporary = path.with_name(f".{name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(private)
            with contextlib.suppress(FileExistsError):  # another process stored its key first: that one wins
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return KeyPair(ref=f"{KEYSTORE_SCHEME}:{name}", path=path, public_key=public_key_of(path.read_text()))


def _keystore_resolver(name: str, user: str) -> SshCredentials:
    path = keystore_path(name)
    try:
        private_key = path.read_text()
    except FileNotFoundError:
        raise TerminalError(
            f"SSH key {KEYSTORE_SCHEME}:{name} is not in this installation's data folder ({path.parent})"
        ) from None
    except OSError as error:
        raise TerminalError(f"SSH key {KEYSTORE_SCHEME}:{name} cannot be read: {error.strerror}") from None
    return SshCredentials(user=user, private_key=private_key)


register_resolver(KEYSTORE_SCHEME, _keystore_resolver)
