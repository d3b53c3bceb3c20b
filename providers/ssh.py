"""SSH to nodes on paramiko: one connection per node reused within a task, pinned host keys, timeouts
everywhere, output streamed line by line with secrets redacted, errors classified for the engine.

A ``Session`` is one authenticated connection to one node::

    with open_session(address, user=node.ssh_user, credentials_ref=node.credentials_ref,
                      host_key=node.host_key, on_line=log.append) as session:
        session.upload(script, "/var/lib/loom/install.sh", mode=0o755)
        session.run(["/var/lib/loom/install.sh", "--port", "80"], sudo=True, timeout=600)

* **Host keys.** With ``host_key`` (the OpenSSH ``type base64`` line recorded at confirm) the server must
  present exactly that key, or ``HostKeyMismatch`` (terminal) names both fingerprints; only that key type is
  negotiated, so a server offering several keys cannot dodge the check. Without one (first contact), the
  presented key is accepted and exposed as ``session.host_key`` for the caller to record. There is no
  silent auto-add later: pinning is the caller's explicit decision.
* **Timeouts.** ``connect_timeout`` bounds the TCP connect, the SSH banner, the key exchange, the
  authentication and opening a channel; ``command_timeout`` (or ``run(timeout=...)``) bounds each command.
  The command is also wrapped in coreutils ``timeout`` on the node, so it is killed there too instead of
  running on after the client gave up (a plain SSH exec has no way to signal it).
* **Errors.** ``ConnectFailed`` (refused, timed out, no banner, EOF: transient), ``ConnectionLost``
  (transient), ``CommandTimeout`` (transient), ``AuthenticationFailed`` and ``HostKeyMismatch``
  (terminal), ``CommandFailed`` (non-zero exit: terminal, or ``CommandFailedTransient`` for the exit
  statuses the caller lists), ``SudoPasswordRequired`` (terminal), ``UploadFailed`` (terminal). All are
  ``providers.drivers`` ``TransientError`` / ``TerminalError`` subclasses, which the runner already knows.
* **Sudo.** ``run(..., sudo=True)`` for a non-root user runs ``sudo -n``: it never waits for a password; if
  one would be needed, ``SudoPasswordRequired`` says so. For root, sudo is not used at all.
* **Threads.** A Session owns its own socket and paramiko transport (which runs its own thread): many
  Sessions may be used from many threads at once. One Session may also be shared between threads; its
  connect and file transfers are serialised by a lock, commands run on separate channels.

Commands given as a list are quoted with ``shlex``; a string is a shell script (``sh -c``). Environment
variables are passed on the command line (``env NAME=value``; sshd accepts no environment by default), so
they are visible to other users of the node in its process list: pass secrets in uploaded files (0600).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .credentials import ssh_credentials
from .drivers.base import TerminalError, TransientError
from .secrets import REDACTED, redact

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_COMMAND_TIMEOUT_S = 1800.0  # the default task timeout (Coopr's)
KILL_GRACE_S = 5  # after the node's ``timeout`` sends TERM, KILL follows this much later
CLIENT_SLACK_S = 5.0  # the client waits this much beyond that before giving up on the channel itself
MAX_OUTPUT_CHARS = 1_000_000  # per stream kept in the result; older output is dropped, the tail kept
READ_CHUNK = 32768
EXIT_DRAIN_S = 1.0  # after the exit status, output still in flight is read for this long at most (or to EOF)
KEEPALIVE_S = 30  # an idle connection (a long silent command) is probed, so a dead peer is noticed

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Host key algorithms to negotiate for a pinned key type (paramiko signs RSA with SHA-2 only).
_KEY_TYPES = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}

LineCallback = Callable[[str], None]


# -- errors ----------------------------------------------------------------------------------------------


class ConnectFailed(TransientError):
    """No SSH connection: refused, timed out, unreachable, no banner, closed during the handshake."""


class ConnectionLost(TransientError):
    """The connection broke while in use (a command's outcome is then unknown)."""


class AuthenticationFailed(TerminalError):
    """The server refused the key for the user. Retrying with the same key cannot help."""


class HostKeyMismatch(TerminalError):
    """The server presented another host key than the one pinned at first contact."""


class SudoPasswordRequired(TerminalError):
    """``sudo -n`` would need a password (or sudo is missing): the user needs passwordless sudo."""


class UploadFailed(TerminalError):
    """A file could not be written on the node (permission, missing folder, disk full)."""


@dataclass(frozen=True)
class CommandResult:
    """How a command ended. ``output`` interleaves stdout and stderr lines in the order they arrived.

    Everything is redacted; each stream keeps at most ``MAX_OUTPUT_CHARS`` (the tail: errors come last).
    """

    command: str
    exit_status: int
    stdout: str
    stderr: str
    output: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class _CommandError:
    """Mixin: an error about a command, carrying its ``result`` (redacted)."""

    result: CommandResult


class CommandFailed(TerminalError, _CommandError):
    """The command exited non-zero (terminal unless the caller listed the status as transient)."""

    def __init__(self, message: str, *, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


class CommandFailedTransient(TransientError, _CommandError):
    """The command exited with a status the caller declared retryable (``transient_exit_statuses``)."""

    def __init__(self, message: str, *, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


class CommandTimeout(TransientError, _CommandError):
    """The command outlived its timeout (it was killed on the node)."""

    def __init__(self, message: str, *, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


# -- keys ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def load_private_key(text: str) -> paramiko.PKey:
    """A paramiko key from private key text (OpenSSH, PKCS#8 or traditional PEM; Ed25519, ECDSA or RSA;
    unencrypted).

    Cached: parsing RSA keys costs milliseconds, and a fan-out to 50 nodes uses the same key 50 times.
    """
    data = text.encode()
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        # The message never includes the key; cryptography's own messages do not either.
        raise TerminalError(f"the SSH private key cannot be read: {error}") from None
    key_class: type[paramiko.PKey]
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    elif isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    else:
        raise TerminalError(f"SSH private keys of type {type(loaded).__name__} are not supported")
    # paramiko reads some formats only (no PKCS#8, say): hand it the OpenSSH form of whatever was given.
    normalized = loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    return key_class.from_private_key(io.StringIO(normalized))


def parse_host_key(line: str) -> tuple[str, bytes]:
    """``(type, blob)`` from an OpenSSH public key line ``type base64 [comment]``."""
    parts = (line or "").split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise TerminalError(f"pinned host key {line[:40]!r}... is not an OpenSSH public key line of a known type")
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise TerminalError("pinned host key is not valid base64") from None


def fingerprint(blob: bytes) -> str:
    """The OpenSSH SHA256 fingerprint (what ``ssh-keygen -lf`` and ssh's warnings show)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# -- output ----------------------------------------------------------------------------------------------


class _Output:
    """Collects one command's output: decodes UTF-8 across chunk borders, hands each completed line
    (redacted) to the callback as it arrives, and keeps bounded transcripts: each stream verbatim, and
    both streams' lines interleaved in arrival order."""

    def __init__(self, clean: Callable[[str], str], on_line: LineCallback | None) -> None:
        self._clean = clean
        self._on_line = on_line
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in ("out", "err")}
        self._partial = {"out": "", "err": ""}
        self._kept: dict[str, deque[str]] = {"out": deque(), "err": deque(), "all": deque()}
        self._sizes = {"out": 0, "err": 0, "all": 0}
        self._dropped = {"out": 0, "err": 0, "all": 0}

    def feed(self, stream: str, data: bytes, *, final: bool = False) -> None:
        chunk = self._decoders[stream].decode(data, final=final)
        self._keep(stream, chunk)
        *complete, rest = (self._partial[stream] + chunk).split("\n")
        if final and rest:
            complete.append(rest)
            rest = ""
        self._partial[stream] = rest
        for raw in complete:
            line = self._clean(raw.rstrip("\r"))
            self._keep("all", line + "\n")
            if self._on_line is not None:
                self._on_line(line)

    def _keep(self, key: str, text: str) -> None:
        if not text:
            return
        kept = self._kept[key]
        kept.append(text)
        self._sizes[key] += len(text)
        while self._sizes[key] > 2 * MAX_OUTPUT_CHARS and len(kept) > 1:
            dropped = kept.popleft()
            self._sizes[key] -= len(dropped)
            self._dropped[key] += len(dropped)

    def text(self, key: str) -> str:
        text = "".join(self._kept[key])
        dropped = self._dropped[key] + max(0, len(text) - MAX_OUTPUT_CHARS)
        text = self._clean(text[-MAX_OUTPUT_CHARS:]) if key != "all" else text[-MAX_OUTPUT_CHARS:]
        return f"[... {dropped} characters dropped ...]\n{text}" if dropped else text

    def close(self) -> None:
        for stream in ("out", "err"):
            self.feed(stream, b"", final=True)


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


# -- the session -----------------------------------------------------------------------------------------


class Session:
    """One SSH connection to one node, reused for every command and upload of a task (see module doc)."""

    def __init__(
        self,
        host: str,
        *,
        user: str,
        private_key: str,
        port: int = 22,
        host_key: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        on_line: LineCallback | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        if connect_timeout <= 0 or command_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.host = host
        self.port = port
        self.user = user
        self.where = f"{user}@{host}:{port}"
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.on_line = on_line
        self._private_key = private_key
        self._pinned = parse_host_key(host_key) if host_key else None
        self._secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        self.host_key: str | None = None
        """The key the server presented (``type base64``), known once connected: record it on first contact."""

    def __repr__(self) -> str:
        return f"<Session {self.where}{' connected' if self.connected else ''}>"

    @property
    def first_contact(self) -> bool:
        """True when no host key was pinned, so ``host_key`` is what the caller should now record."""
        return self._pinned is None

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    def __enter__(self) -> Session:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection --------------------------------------------------------------------------------------

    def connect(self) -> Session:
        """Connect and authenticate (again, if the connection was lost). Returns the session."""
        with self._lock:
            if self.connected:
                return self
            self._close_transport()
            key = load_private_key(self._private_key)
            sock = self._socket()
            transport = paramiko.Transport(sock)
            transport.banner_timeout = self.connect_timeout
            transport.handshake_timeout = self.connect_timeout
            transport.auth_timeout = self.connect_timeout
            transport.channel_timeout = self.connect_timeout
            if self._pinned is not None:
                transport.get_security_options().key_types = _KEY_TYPES[self._pinned[0]]
            try:
                try:
                    transport.start_client(timeout=self.connect_timeout)
                except (paramiko.SSHException, EOFError, OSError) as error:
                    if self._pinned is not None and "host key" in str(error).lower():
                        raise HostKeyMismatch(
                            f"{self.where} no longer offers a {self._pinned[0]} host key, the type pinned at "
                            f"first contact ({fingerprint(self._pinned[1])}): {error}"
                        ) from None
                    raise ConnectFailed(f"{self.where}: SSH handshake failed: {_describe(error)}") from None
                if not transport.is_active() or not transport.initial_kex_done:
                    # start_client returns quietly when its timeout passes before the key exchange ends.
                    raise ConnectFailed(
                        f"{self.where}: no SSH handshake within {_seconds(self.connect_timeout)} s (no banner?)"
                    )
                self._check_host_key(transport.get_remote_server_key())
                try:
                    transport.auth_publickey(self.user, key)
                except paramiko.AuthenticationException:
                    refused = f"{self.where}: the server refused the key for user {self.user}"
                    raise AuthenticationFailed(refused) from None
                except (paramiko.SSHException, EOFError, OSError) as error:
                    raise ConnectFailed(f"{self.where}: authentication did not complete: {_describe(error)}") from None
            except BaseException:
                transport.close()
                raise
            transport.set_keepalive(KEEPALIVE_S)
            self._transport = transport
            logger.debug("connected to %s", self.where)
            return self

    def _socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError:
            raise ConnectFailed(f"{self.where}: connect timed out after {_seconds(self.connect_timeout)} s") from None
        except ConnectionRefusedError:
            raise ConnectFailed(f"{self.where}: connection refused") from None
        except OSError as error:
            raise ConnectFailed(f"{self.where}: cannot connect: {_describe(error)}") from None
        sock.settimeout(self.connect_timeout)
        return sock

    def _check_host_key(self, key: paramiko.PKey) -> None:
        presented_blob = key.asbytes()
        presented = f"{key.get_name()} {key.get_base64()}"
        if self._pinned is not None and presented_blob != self._pinned[1]:
            raise HostKeyMismatch(
                f"host key of {self.host}:{self.port} changed: expected {self._pinned[0]} "
                f"{fingerprint(self._pinned[1])} (pinned at first contact), got {key.get_name()} "
                f"{fingerprint(presented_blob)}; if the machine was rebuilt on purpose, clear the node's host key"
            )
        self.host_key = presented

    def close(self) -> None:
        with self._lock:
            self._close_transport()

    def _close_transport(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None

    def _open_channel(self) -> paramiko.Channel:
        transport = self.connect()._transport
        assert transport is not None
        try:
            return transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as error:
            raise ConnectionLost(f"{self.where}: cannot open a channel: {_describe(error)}") from None

    # -- commands ----------------------------------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        transient_exit_statuses: Collection[int] = (),
        stdin: bytes | None = None,
        on_line: LineCallback | None = None,
    ) -> CommandResult:
        """Run ``command`` on the node and return how it ended, streaming each output line (redacted) to
        ``on_line`` (or the session's callback) as it arrives.

        ``sudo`` runs it as root through ``sudo -n`` (no-op for root); ``env`` sets environment variables;
        ``timeout`` (default: the session's ``command_timeout``) kills it on the node and raises
        ``CommandTimeout``. With ``check`` a non-zero exit raises ``CommandFailed``, or
        ``CommandFailedTransient`` for a status in ``transient_exit_statuses``.
        """
        script = command if isinstance(command, str) else shlex.join(command)
        limit = self.command_timeout if timeout is None else timeout
        if limit <= 0:
            raise ValueError("timeout must be positive")
        parts: list[str] = []
        use_sudo = sudo and self.user != "root"
        if use_sudo:
            parts += ["sudo", "-n", "--"]
        if env:
            for name in env:
                if not _ENV_NAME.fullmatch(name):
                    raise TerminalError(f"environment variable name {name!r} is not valid")
            parts += ["env", *(f"{name}={value}" for name, value in env.items())]
        parts += ["timeout", "-k", str(KILL_GRACE_S), _seconds(limit), "sh", "-c", script]
        remote = shlex.join(parts)
        shown = self._clean(script if len(script) <= 200 else script[:200] + "...")

        output = _Output(self._clean, on_line or self.on_line)
        started = time.monotonic()
        channel = self._open_channel()
        timed_out = False
        try:
            channel.settimeout(self.connect_timeout)
            channel.exec_command(remote)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            deadline = started + limit + KILL_GRACE_S + CLIENT_SLACK_S
            timed_out = self._pump(channel, output, deadline)
            exit_status = -1 if timed_out else channel.recv_exit_status()
            # No status and no orderly end of output: the connection died under the command (a command killed
            # by a signal also has no status, but its channel still ends with an EOF).
            if not timed_out and exit_status == -1 and not channel.eof_received:
                raise ConnectionLost(f"{self.where}: connection lost while running {shown!r}")
        except (paramiko.SSHException, EOFError, OSError) as error:
            raise ConnectionLost(f"{self.where}: connection lost while running {shown!r}: {_describe(error)}") from None
        finally:
            channel.close()
        output.close()
        duration = time.monotonic() - started
        result = CommandResult(
            command=shown,
            exit_status=exit_status,
            stdout=output.text("out"),
            stderr=output.text("err"),
            output=output.text("all"),
            duration_s=duration,
        )
        # coreutils timeout exits 124 after TERM, 137 (128 + KILL) when KILL was needed.
        if timed_out or (exit_status in (124, 137) and duration >= limit):
            raise CommandTimeout(f"{self.where}: {shown!r} did not finish within {_seconds(limit)} s", result=result)
        if use_sudo and exit_status != 0:
            self._check_sudo(result)
        if check and exit_status != 0:
            last = (result.stderr or result.stdout).strip().splitlines()
            detail = f": {last[-1][:300]}" if last else ""
            ended = f"exited with status {exit_status}" if exit_status >= 0 else "was killed by a signal"
            message = f"{self.where}: {shown!r} {ended}{detail}"
            if exit_status in transient_exit_statuses:
                raise CommandFailedTransient(message, result=result)
            raise CommandFailed(message, result=result)
        return result

    def _pump(self, channel: paramiko.Channel, output: _Output, deadline: float) -> bool:
        """Read the channel until the command ended and its output is drained; True when ``deadline`` passed.

        Once the exit status is in, output still in flight is read until EOF, but for ``EXIT_DRAIN_S`` at
        most: a background process the command left behind may hold the output open for ever (plain
        ``ssh host 'daemon &'`` hangs on that; a provisioning step must not).
        """
        drain_until: float | None = None
        while True:
            busy = False
            if channel.recv_ready():
                output.feed("out", channel.recv(READ_CHUNK))
                busy = True
            if channel.recv_stderr_ready():
                output.feed("err", channel.recv_stderr(READ_CHUNK))
                busy = True
            if busy:
                continue
            now = time.monotonic()
            if channel.exit_status_ready():
                if channel.eof_received or channel.closed:
                    return False
                drain_until = drain_until or now + EXIT_DRAIN_S
                if now >= drain_until:
                    return False
            if now >= deadline:
                return True
            if self._transport is None or not self._transport.is_active():
                raise ConnectionLost(f"{self.where}: connection closed while a command was running")
            # The channel's file descriptor becomes readable on stdout, stderr, EOF and close.
            wait = min(deadline, drain_until or deadline) - now
            select.select([channel], [], [], min(max(wait, 0.0), 0.5))

    def _check_sudo(self, result: CommandResult) -> None:
        message = result.stderr.lower()
        if "a password is required" in message or "a terminal is required" in message:
            raise SudoPasswordRequired(
                f"{self.where}: user {self.user} cannot use sudo without a password; give it passwordless sudo "
                "(NOPASSWD in sudoers) or connect as root"
            )
        if result.exit_status == 127 and "sudo" in message:
            raise SudoPasswordRequired(f"{self.where}: sudo is not installed, so user {self.user} cannot act as root")

    # -- files -------------------------------------------------------------------------------------------

    def upload(
        self, source: bytes | os.PathLike[str], remote_path: str, *, mode: int = 0o644, sudo: bool = False
    ) -> None:
        """Write ``source`` (bytes, or a local file's path) to ``remote_path`` with ``mode``, atomically (a
        temporary file renamed into place: a reader never sees half a file). With ``sudo`` a non-root user
        writes where only root may: the file is staged in /tmp and installed by ``sudo install``."""
        if isinstance(source, bytes | bytearray | memoryview):
            handle: IO[bytes] = io.BytesIO(bytes(source))
        elif isinstance(source, os.PathLike):
            try:
                handle = open(source, "rb")  # noqa: SIM115 - closed below, whichever branch ran
            except OSError as error:
                raise UploadFailed(f"cannot read {os.fspath(source)}: {error.strerror}") from None
        else:
            raise TypeError("upload() takes bytes or a path (pathlib.Path), not " + type(source).__name__)
        with handle:
            if sudo and self.user != "root":
                staged = f"/tmp/.loom-upload-{secrets.token_hex(8)}"
                try:
                    self._put(handle, staged, 0o600)
                    self.run(["install", "-m", f"{mode:o}", staged, remote_path], sudo=True)
                finally:
                    with contextlib.suppress(ConnectionLost, ConnectFailed, OSError, paramiko.SSHException):
                        self._sftp_client().remove(staged)
            else:
                self._put(handle, remote_path, mode)

    def upload_tree(self, local_dir: str | os.PathLike[str], remote_dir: str, *, sudo: bool = False) -> int:
        """Copy the folder ``local_dir`` into ``remote_dir`` (made if missing), keeping file modes and
        symbolic links; returns the number of files written. Existing files are replaced, others left."""
        root = Path(local_dir)
        if not root.is_dir():
            raise UploadFailed(f"{root} is not a folder")
        if sudo and self.user != "root":
            staged = f"/tmp/.loom-upload-{secrets.token_hex(8)}"
            try:
                count = self._put_tree(root, staged)
                self.run(
                    f"mkdir -p {shlex.quote(remote_dir)} && cp -R --preserve=mode,links -- "
                    f"{shlex.quote(staged)}/. {shlex.quote(remote_dir)}/",
                    sudo=True,
                )
            finally:
                with contextlib.suppress(ConnectionLost, ConnectFailed, CommandFailed):
                    self.run(["rm", "-rf", "--", staged])
            return count
        return self._put_tree(root, remote_dir)

    def _put_tree(self, root: Path, remote_dir: str) -> int:
        self._makedirs(remote_dir, stat.S_IMODE(root.stat().st_mode))
        count = 0
        for folder, folders, files in os.walk(root):
            base = PurePosixPath(remote_dir) / Path(folder).relative_to(root).as_posix()
            for name in sorted(folders) + sorted(files):
                local = Path(folder) / name
                remote = str(base / name)
                if local.is_symlink():
                    target = os.readlink(local)
                    self._sftp_call(remote, lambda sftp, t=target, r=remote: _replace_link(sftp, t, r))
                elif local.is_dir():
                    self._makedirs(remote, stat.S_IMODE(local.stat().st_mode))
                else:
                    with open(local, "rb") as handle:
                        self._put(handle, remote, stat.S_IMODE(local.stat().st_mode))
                    count += 1
        return count

    def _put(self, handle: IO[bytes], remote_path: str, mode: int) -> None:
        path = PurePosixPath(remote_path)
        temporary = str(path.with_name(f".{path.name}.loom-{secrets.token_hex(6)}"))

        def write(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.putfo(handle, temporary, confirm=False)
                sftp.chmod(temporary, mode)
                sftp.posix_rename(temporary, remote_path)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(temporary)
                raise

        self._sftp_call(remote_path, write)

    def _makedirs(self, remote_dir: str, mode: int) -> None:
        def make(sftp: paramiko.SFTPClient) -> None:
            missing = []
            current = PurePosixPath(remote_dir)
            while str(current) not in ("/", "."):
                try:
                    sftp.stat(str(current))
                    break
                except FileNotFoundError:
                    missing.append(current)
                    current = current.parent
            for folder in reversed(missing):
                try:
                    sftp.mkdir(str(folder), mode)
                except OSError:
                    sftp.stat(str(folder))  # made meanwhile by someone else is fine; anything else raises

        self._sftp_call(remote_dir, make)

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None or not self.connected:
                transport = self.connect()._transport
                assert transport is not None
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                except (paramiko.SSHException, EOFError, OSError) as error:
                    raise ConnectionLost(f"{self.where}: cannot start SFTP: {_describe(error)}") from None
                assert self._sftp is not None
                self._sftp.get_channel().settimeout(self.command_timeout)
            return self._sftp

    def _sftp_call(self, remote_path: str, operation: Callable[[paramiko.SFTPClient], Any]) -> Any:
        """Run an SFTP operation, translating failures: the node refusing (permission, missing folder, full
        disk) is terminal, a broken or stalled connection transient."""
        with self._lock:
            sftp = self._sftp_client()
            try:
                return operation(sftp)
            except (paramiko.SSHException, EOFError, TimeoutError, ConnectionError) as error:
                self._close_transport()
                lost = f"{self.where}: connection lost writing {remote_path}: {_describe(error)}"
                raise ConnectionLost(lost) from None
            except OSError as error:
                reason = os.strerror(error.errno) if error.errno else (str(error) or "failed")
                if error.errno == errno.EACCES:
                    reason += f" (user {self.user}; upload with sudo=True to write as root)"
                raise UploadFailed(f"{self.where}: cannot write {remote_path}: {reason}") from None

    # -- helpers -----------------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        text = redact(text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def _replace_link(sftp: paramiko.SFTPClient, target: str, remote: str) -> None:
    with contextlib.suppress(OSError):
        sftp.remove(remote)
    sftp.symlink(target, remote)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def open_session(
    host: str,
    *,
    user: str,
    credentials_ref: str,
    host_key: str | None = None,
    port: int = 22,
    **options: Any,
) -> Session:
    """A (not yet connected) Session to a node from what the node records: address, SSH user, credentials
    reference and pinned host key. Use it as a context manager; ``options`` are ``Session``'s timeouts,
    ``on_line`` and ``secrets``."""
    credentials = ssh_credentials(credentials_ref, user=user)
    return Session(
        host, user=credentials.user, private_key=credentials.private_key, port=port, host_key=host_key, **options
    )
