"""Lab hosts on this machine: one network namespace per host, each with its own sshd (needs root).

The recipe is the lab notes' ("Real SSH hosts"): a Linux bridge in the root namespace holds the subnet's
first address; each host is a network namespace whose ``eth0`` (one end of a veth pair, the other end on
the bridge) has one address of the subnet, and runs its own sshd listening on that address, started under
``unshare --uts`` with a private hostname and a private ``/root`` and ``/etc/hosts`` (bind mounts that only
that host's processes see). There is no default route and no forwarding: nothing leaves the subnet, and
nothing outside what the lab made is touched. Everything else (binaries, /etc, /tmp, users) is the
machine's, so software installed here is available on every host.

**State is machine-wide, not per installation.** Bridges, namespaces and addresses are kernel objects
shared by everything on the machine (several Loom installations, test sessions running side by side), so
the lab keeps one state file for the machine (``LOOM_LAB_DIR``, default ``/var/lib/loom-lab``), changed only
under an exclusive ``flock``: addresses never collide, a bridge is removed only when no host of any owner
is left on it, and two bridges with overlapping subnets are refused. A record is written *before* its
kernel objects are made and removed *after* they are gone, so under the lock a lab-named namespace, veth or
host folder without a record is garbage (``reap_abandoned`` removes it).

**Per host**, a lock file serialises building and tearing down that host (a second create of the same
host waits for the first and then finds it built; a create after a builder died rebuilds from scratch).
Hosts are named from a hash of (scope, node key), so the same node always maps to the same namespace.

Callers: the ``local`` provider driver (``providers/drivers/local.py``) and the test suite's lab fixture.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .credentials import generate_ed25519
from .drivers.base import TerminalError, TransientError

LAB_DIR_ENV = "LOOM_LAB_DIR"
DEFAULT_LAB_DIR = "/var/lib/loom-lab"
DEFAULT_SSHD = "/usr/sbin/sshd"
NAMESPACE_PREFIX = "loomlab-"
VETH_PREFIX = "llab"  # + 10 hex digits = 14 characters, inside the kernel's 15-character limit
SSH_PORT = 22
FIRST_HOST_OFFSET = 10  # .1 is the bridge; hosts start at .10 as in the lab notes (room for fixed helpers)
COMMAND_TIMEOUT_S = 30.0
KILL_WAIT_S = 10.0
PROBE_TIMEOUT_S = 1.0

CREATING, READY, DELETING = "creating", "ready", "deleting"
Probe = Literal["ready", "starting", "down", "missing"]

_HASH_CHARS = 10
_NAMESPACE = re.compile(rf"^{NAMESPACE_PREFIX}[0-9a-f]{{{_HASH_CHARS}}}$")
_VETH = re.compile(rf"^{VETH_PREFIX}[0-9a-f]{{{_HASH_CHARS}}}$")
_BRIDGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( [^\n]*)?$")
# Lab paths end up in sshd_config and a shell command line: no spaces, quotes or sshd '%' tokens.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")
_TOOL_PACKAGES = {"ip": "iproute2", "unshare": "util-linux", "mount": "mount", "hostname": "hostname"}
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def lab_dir() -> Path:
    """The machine-wide lab folder (``LOOM_LAB_DIR`` or ``/var/lib/loom-lab``)."""
    return Path(os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR)


def host_name(scope: str, node_key: str) -> str:
    """The namespace name (and machine id) of a node: the same node always gets the same one."""
    digest = hashlib.sha256(f"{scope}\x00{node_key}".encode()).hexdigest()[:_HASH_CHARS]
    return f"{NAMESPACE_PREFIX}{digest}"


def veth_name(name: str) -> str:
    return VETH_PREFIX + name.removeprefix(NAMESPACE_PREFIX)


def host_mac(address: str) -> str:
    """The MAC of a host's ``eth0``, derived from its address (locally administered, unicast).

    Addresses are reused as soon as a host is deleted, and this machine keeps a neighbour (ARP) entry for
    each address it talked to, REACHABLE for up to ~45 s and then probed before it is dropped. A random MAC
    per host made every packet to a new host at a reused address go to the old host's MAC for that long
    (a 4-node create took 20-30 s instead of 2 whenever addresses had just been freed); a MAC that follows
    the address keeps every such entry right."""
    return "02:4c:" + ":".join(f"{int(octet):02x}" for octet in address.split("."))


def parse_subnet(value: str, *, field_name: str = "subnet") -> ipaddress.IPv4Network:
    """A private IPv4 network between /16 and /28 with no host bits, or a ``TerminalError`` saying why."""
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as error:
        raise TerminalError(f"field {field_name} must be an IPv4 network like 10.200.0.0/24: {error}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise TerminalError(f"field {field_name} must be an IPv4 network, got {value!r}")
    if not network.is_private or network.is_loopback or network.is_link_local:
        raise TerminalError(f"field {field_name} must be a private network (10/8, 172.16/12, 192.168/16), got {value}")
    if not 16 <= network.prefixlen <= 28:
        raise TerminalError(f"field {field_name} must have a prefix between /16 and /28, got /{network.prefixlen}")
    return network


def check_bridge_name(value: str, *, field_name: str = "bridge") -> str:
    if not isinstance(value, str) or not _BRIDGE.fullmatch(value):
        raise TerminalError(
            f"field {field_name} must be 1-15 letters, digits, '_' or '-' (a Linux interface name), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Owner:
    """A process that owns hosts for its lifetime (a test session): when it is gone, so should they be.

    ``started`` is the process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), so a
    recycled pid does not pass for the owner.
    """

    pid: int
    started: int

    @classmethod
    def current(cls) -> Owner:
        owner = cls.of(os.getpid())
        if owner is None:  # pragma: no cover - our own /proc entry always exists
            raise RuntimeError("cannot read this process's start time")
        return owner

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        return cls(pid=pid, started=int(fields[19]))

    def alive(self) -> bool:
        return Owner.of(self.pid) == self


@dataclass(frozen=True)
class HostRequest:
    """What to build. ``authorized_keys`` maps a login user to the public key line allowed to log in."""

    scope: str
    node_key: str
    hostname: str
    bridge: str
    subnet: str
    authorized_keys: Mapping[str, str]
    tags: Mapping[str, str] = field(default_factory=dict)
    owner: Owner | None = None
    key_path: str | None = None


@dataclass(frozen=True)
class LabHost:
    """One host as recorded in the lab state. ``name`` is the namespace name and the machine id."""

    name: str
    scope: str
    node_key: str
    hostname: str
    bridge: str
    subnet: str
    address: str
    state: str
    created_at: str
    tags: Mapping[str, str] = field(default_factory=dict)
    owner: Owner | None = None
    key_path: str | None = None

    @property
    def veth(self) -> str:
        return veth_name(self.name)

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["tags"] = dict(self.tags)
        return values

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> LabHost:
        owner = values.get("owner")
        return cls(**{**values, "tags": dict(values.get("tags") or {}), "owner": Owner(**owner) if owner else None})


class _State:
    """The lab state file's content while the lock is held; ``save`` writes it (atomically, by rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            self.data = {}
        self.data.setdefault("version", 1)
        self.hosts: dict[str, dict[str, Any]] = self.data.setdefault("hosts", {})
        self.bridges: dict[str, dict[str, Any]] = self.data.setdefault("bridges", {})
        self._saved = json.dumps(self.data, sort_keys=True)

    def save(self) -> None:
        text = json.dumps(self.data, sort_keys=True, indent=1)
        if json.dumps(self.data, sort_keys=True) == self._saved:
            return
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}")
        temporary.write_text(text)
        os.replace(temporary, self.path)
        self._saved = json.dumps(self.data, sort_keys=True)


class Lab:
    """The lab on this machine. Cheap to construct; holds no state in memory (all of it is on disk).

    Thread- and process-safe: every change goes through the state file's lock, every build or teardown
    of a host through that host's lock (``flock`` locks open file descriptions, so threads of one process
    exclude each other as processes do).
    """

    def __init__(self, root: str | Path | None = None, *, sshd: str = DEFAULT_SSHD) -> None:
        self.root = Path(root) if root is not None else lab_dir()
        self.sshd = sshd
        self._checked = False

    # -- prerequisites ---------------------------------------------------------------------------------

    def require(self) -> None:
        """Raise a ``TerminalError`` saying what is missing unless this process can run lab hosts."""
        if self._checked:
            return
        if os.geteuid() != 0:
            raise TerminalError(
                "the local provider needs root: it makes network namespaces, a bridge and veth links and starts "
                f"sshd (this process runs as uid {os.geteuid()}); run the worker as root"
            )
        if not (os.path.isfile(self.sshd) and os.access(self.sshd, os.X_OK)):
            raise TerminalError(
                f"the local provider needs openssh-server ({self.sshd} not found): apt-get install openssh-server"
            )
        for tool, package in _TOOL_PACKAGES.items():
            if shutil.which(tool, path=_ENV["PATH"]) is None:
                raise TerminalError(f"the local provider needs {tool!r}: apt-get install {package}")
        if not _SAFE_PATH.fullmatch(str(self.root)) or not _SAFE_PATH.fullmatch(self.sshd):
            raise TerminalError(
                f"lab folder {str(self.root)!r} ({LAB_DIR_ENV}) and sshd path must be absolute paths of letters, "
                "digits, '.', '_', '-' and '/'"
            )
        self._checked = True

    # -- reading -----------------------------------------------------------------------------------------

    def get(self, name: str) -> LabHost | None:
        """The host ``name`` as recorded, or None. Reads need no lock: the file is replaced atomically."""
        record = self._read().get("hosts", {}).get(name)
        return LabHost.from_json(record) if record else None

    def hosts(self, scope: str | None = None) -> list[LabHost]:
        hosts = [LabHost.from_json(record) for record in self._read().get("hosts", {}).values()]
        return sorted((h for h in hosts if scope is None or h.scope == scope), key=lambda h: (h.created_at, h.name))

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def host_key(self, host: LabHost) -> str:
        """The host's public host key as ``ssh-ed25519 AAAA...`` (no comment), what a client gets shown."""
        line = (self.host_dir(host.name) / "ssh_host_ed25519_key.pub").read_text().split()
        return " ".join(line[:2])

    def namespace_exists(self, name: str) -> bool:
        return Path("/run/netns", name).exists()

    def pids(self, name: str) -> list[int]:
        """Every process inside the host's network namespace (what ``ip netns pids`` reports)."""
        target = Path("/run/netns", name)
        if not target.exists():
            return []
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if _same_file(f"/proc/{entry.name}/ns/net", target):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, a zombie without namespaces, or the namespace went
                continue
        return found

    def sshd_pid(self, host: LabHost) -> int | None:
        """The host's listening sshd, if it runs (the pid file is trusted only if that pid is in the host)."""
        try:
            pid = int((self.host_dir(host.name) / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            inside = _same_file(f"/proc/{pid}/ns/net", Path("/run/netns", host.name))
        except OSError:  # no such process, a zombie (it has no namespaces), or no namespace
            return None
        return pid if inside else None

    def probe(self, host: LabHost) -> Probe:
        """``ready`` when sshd answers with its banner; ``starting`` while its pid runs but it does not answer
        yet; ``down`` when sshd is not running; ``missing`` when the namespace is gone (e.g. after a reboot)."""
        if not self.namespace_exists(host.name):
            return "missing"
        if self.sshd_pid(host) is None:
            return "down"
        try:
            with socket.create_connection((host.address, SSH_PORT), timeout=PROBE_TIMEOUT_S) as connection:
                connection.settimeout(PROBE_TIMEOUT_S)
                banner = connection.recv(64)
        except OSError:
            return "starting"
        return "ready" if banner.startswith(b"SSH-") else "starting"

    # -- changing ------------------------------------------------------------------------------------------

    def create(self, request: HostRequest) -> LabHost:
        """Build the host for ``request`` (scope + node key), or return the one already built for it.

        Idempotent and safe under concurrency: the same request from many threads or processes yields one
        namespace. A host whose build was interrupted (its builder died) is rebuilt from scratch. Raises
        ``TerminalError`` for bad input or a conflict with the machine's networks, ``TransientError`` when
        the host is being deleted or a kernel command failed in a way a retry can fix.
        """
        self.require()
        network = parse_subnet(request.subnet)
        check_bridge_name(request.bridge)
        if not _HOSTNAME.fullmatch(request.hostname):
            raise TerminalError(f"hostname {request.hostname!r} is not a valid host name (letters, digits, '-')")
        for user in request.authorized_keys:
            if not _USER.fullmatch(user):
                raise TerminalError(f"login user {user!r} is not a valid user name")
        name = host_name(request.scope, request.node_key)
        with self._locked() as state:
            record = state.hosts.get(name)
            if record is not None:
                host = LabHost.from_json(record)
                if (host.scope, host.node_key) != (request.scope, request.node_key):
                    raise TerminalError(f"lab host name {name} is already used by node {host.node_key}")
                if host.state == DELETING:
                    raise TransientError(f"lab host {name} of node {request.node_key} is being deleted", retry_after=1)
            else:
                self._ensure_bridge(state, request.bridge, network)
                host = LabHost(
                    name=name,
                    scope=request.scope,
                    node_key=request.node_key,
                    hostname=request.hostname,
                    bridge=request.bridge,
                    subnet=str(network),
                    address=self._allocate(state, request.bridge, network),
                    state=CREATING,
                    created_at=datetime.now(UTC).isoformat(),
                    tags=dict(request.tags),
                    owner=request.owner,
                    key_path=request.key_path,
                )
                state.hosts[name] = host.to_json()
        if host.state == READY and self.namespace_exists(name):
            return host
        with self._host_lock(name):
            current = self.get(name)
            if current is None or current.state == DELETING:
                raise TransientError(f"lab host {name} was deleted while being created", retry_after=1)
            if current.state == READY and self.namespace_exists(name):
                return current  # a concurrent create of the same node built it while we waited
            with self._locked() as state:  # the bridge may be gone (a reboot) when an old host is rebuilt
                self._ensure_bridge(state, current.bridge, ipaddress.IPv4Network(current.subnet))
            self._build(current, request.authorized_keys)
            with self._locked() as state:
                if name in state.hosts:
                    state.hosts[name]["state"] = READY
            return replace(current, state=READY)

    def authorize(self, name: str, user: str, public_key: str) -> None:
        """Let ``user`` (an existing user of this machine) log in to host ``name`` with ``public_key`` (one
        OpenSSH public key line, or several separated by newlines), replacing the keys it had.

        sshd reads ``AuthorizedKeysFile`` as the user logging in, so the file belongs to that user; the
        folders above it are traverse-only (0711) for the same reason.
        """
        if not _USER.fullmatch(user):
            raise TerminalError(f"login user {user!r} is not a valid user name")
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            raise TerminalError(f"user {user!r} does not exist on this machine (lab hosts share its users)") from None
        lines = [line.strip() for line in public_key.splitlines() if line.strip()]
        if not lines or not all(_PUBLIC_KEY.fullmatch(line) for line in lines):
            raise TerminalError(f"the key for {user} must be OpenSSH public key lines (type base64 [comment])")
        folder = self.host_dir(name) / "authorized_keys"
        folder.mkdir(mode=0o711, parents=True, exist_ok=True)
        path = folder / user
        temporary = folder / f".{user}.{secrets.token_hex(6)}"
        temporary.write_text("\n".join(lines) + "\n")
        os.chmod(temporary, 0o600)
        os.chown(temporary, account.pw_uid, account.pw_gid)
        os.replace(temporary, path)

    def delete(self, name: str) -> bool:
        """Tear down host ``name``: its sshd, every process left in it, its veth, its namespace, its files; and
        the bridge once no host is left on it. Returns False when there was no such host (which is success)."""
        self.require()
        with self._locked() as state:
            record = state.hosts.get(name)
            if record is None:
                return False
            record["state"] = DELETING
        with self._host_lock(name, remove=True):
            host = self.get(name)
            if host is None or host.state != DELETING:
                return False  # a concurrent delete finished first (and the node may have been made again since)
            self._teardown(host.name, host.veth)
            self._remove_files(host.name)
            with self._locked() as state:
                state.hosts.pop(name, None)
                if not any(h["bridge"] == host.bridge for h in state.hosts.values()):
                    self._remove_bridge(state, host.bridge)
        return True

    def reap_abandoned(self) -> list[str]:
        """Remove what nobody will use again, and return the names of the hosts removed.

        That is: hosts whose owner process has exited (a test session that crashed) or whose installation's
        key file is gone; then, under the state lock, lab-named namespaces, veths and host folders without a
        record, and bridges without hosts (left by a crash between two steps).
        """
        self.require()
        removed = []
        for host in self.hosts():
            owner_gone = host.owner is not None and not host.owner.alive()
            key_gone = host.key_path is not None and not Path(host.key_path).exists()
            if (owner_gone or key_gone) and self.delete(host.name):
                removed.append(host.name)
        with self._locked() as state:
            names = set(state.hosts)
            for path in sorted(Path("/run/netns").glob(f"{NAMESPACE_PREFIX}*")):
                if _NAMESPACE.fullmatch(path.name) and path.name not in names:
                    self._teardown(path.name, veth_name(path.name))
                    removed.append(path.name)
            for path in sorted(Path("/sys/class/net").glob(f"{VETH_PREFIX}*")):
                if _VETH.fullmatch(path.name) and NAMESPACE_PREFIX + path.name[len(VETH_PREFIX) :] not in names:
                    self._ip("link", "del", path.name, missing_ok=True)
            hosts_folder = self.root / "hosts"
            if hosts_folder.is_dir():
                for path in sorted(hosts_folder.iterdir()):
                    if path.name not in names:
                        self._remove_files(path.name)
            for bridge in list(state.bridges):
                if not any(h["bridge"] == bridge for h in state.hosts.values()):
                    self._remove_bridge(state, bridge)
        return removed

    # -- internals ------------------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "state.json").read_text())
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_State]:
        """The state under the machine-wide lock; saved on a normal exit. Never nested (it would deadlock)."""
        self._make_folders()
        with open(self.root / "state.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = _State(self.root / "state.json")
            yield state
            state.save()

    @contextlib.contextmanager
    def _host_lock(self, name: str, *, remove: bool = False) -> Iterator[None]:
        """Exclusive use of one host. With ``remove`` the lock file is deleted while still held; a waiter
        that then gets the lock on the deleted file notices (inode changed) and locks the new file."""
        path = self.root / "locks" / f"{name}.lock"
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(descriptor)
        try:
            yield
            if remove:
                path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)

    def _make_folders(self) -> None:
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        (self.root / "hosts").mkdir(mode=0o711, exist_ok=True)
        (self.root / "locks").mkdir(mode=0o700, exist_ok=True)

    def _ensure_bridge(self, state: _State, bridge: str, network: ipaddress.IPv4Network) -> None:
        """Make sure the bridge exists with ``network``; refuse interfaces and subnets that are not the lab's."""
        known = state.bridges.get(bridge)
        if known is not None and known["subnet"] != str(network):
            raise TerminalError(
                f"bridge {bridge} already carries subnet {known['subnet']}; field subnet {network} must match it "
                "or use another bridge"
            )
        for other, info in state.bridges.items():
            if other != bridge and ipaddress.IPv4Network(info["subnet"]).overlaps(network):
                raise TerminalError(f"subnet {network} overlaps {info['subnet']} of lab bridge {other}")
        exists = Path("/sys/class/net", bridge).exists()
        if exists and known is None:
            raise TerminalError(
                f"network interface {bridge} exists but was not made by the lab; choose another bridge name"
            )
        if exists:
            return
        if known is None:
            self._check_free(network)
            state.bridges[bridge] = {"subnet": str(network)}
            state.save()  # recorded before the kernel object exists, so a crash leaves nothing unowned
        gateway = f"{network.network_address + 1}/{network.prefixlen}"
        try:
            self._ip("link", "add", bridge, "type", "bridge")
            self._ip("addr", "add", gateway, "dev", bridge)
            self._ip("link", "set", bridge, "up")
        except (TerminalError, TransientError):
            self._ip("link", "del", bridge, missing_ok=True)
            raise

    def _check_free(self, network: ipaddress.IPv4Network) -> None:
        """Refuse a subnet that overlaps any route or address this machine already has (the default route
        aside): the lab must not shadow a real network."""
        output = self._run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"
        for route in json.loads(output):
            destination = route.get("dst", "")
            if destination in ("", "default") or route.get("type") in ("broadcast",):
                continue
            try:
                existing = ipaddress.ip_network(destination, strict=False)
            except ValueError:
                continue
            if isinstance(existing, ipaddress.IPv4Network) and existing.overlaps(network):
                device = route.get("dev", "?")
                raise TerminalError(f"subnet {network} overlaps this machine's route {destination} on {device}")

    def _allocate(self, state: _State, bridge: str, network: ipaddress.IPv4Network) -> str:
        used = {h["address"] for h in state.hosts.values() if h["bridge"] == bridge}
        first = FIRST_HOST_OFFSET if network.num_addresses > 4 * FIRST_HOST_OFFSET else 2
        for offset in range(first, network.num_addresses - 1):
            address = str(network.network_address + offset)
            if address not in used:
                return address
        raise TerminalError(f"subnet {network} of bridge {bridge} is full ({len(used)} hosts)")

    def _remove_bridge(self, state: _State, bridge: str) -> None:
        if bridge in state.bridges:
            self._ip("link", "del", bridge, missing_ok=True)
            del state.bridges[bridge]

    def _build(self, host: LabHost, authorized_keys: Mapping[str, str]) -> None:
        """Make the namespace, its veth and address, its files and its sshd. Starts by clearing whatever an
        interrupted earlier build left; on failure clears what this one made (the record stays ``creating``,
        so a retried create builds again and a delete finds nothing half-made)."""
        self._teardown(host.name, host.veth)
        try:
            self._write_files(host, authorized_keys)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
            # One ``ip`` process for the root namespace's part (batch mode returns to the root namespace
            # after ``netns add``), one process chain for the host's part: bring-up is process-bound.
            self._run(
                ["ip", "-batch", "-"],
                stdin=f"netns add {host.name}\n"
                f"link add {host.veth} type veth peer name eth0 address {host_mac(host.address)} netns {host.name}\n"
                f"link set {host.veth} master {host.bridge} up\n",
            )
            self._start_sshd(host)
        except BaseException:
            with contextlib.suppress(Exception):
                self._teardown(host.name, host.veth)
            raise

    def _write_files(self, host: LabHost, authorized_keys: Mapping[str, str]) -> None:
        folder = self.host_dir(host.name)
        folder.mkdir(mode=0o711, parents=True, exist_ok=True)
        (folder / "root").mkdir(mode=0o700, exist_ok=True)
        key = folder / "ssh_host_ed25519_key"
        if not key.exists():  # kept across rebuilds, so a pinned host key stays valid
            private, public = generate_ed25519(comment=f"root@{host.hostname}")
            descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(private)
            (folder / "ssh_host_ed25519_key.pub").write_text(public + "\n")
        (folder / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{host.address}\t{host.hostname}\n"
        )
        (folder / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}:{SSH_PORT}",
                    f"HostKey {key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}/%u",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 200:30:400",
                    "MaxSessions 64",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "X11Forwarding no",
                    *_optional_sshd_options(self.sshd),
                    "",
                ]
            )
        )
        for user, public_key in authorized_keys.items():
            self.authorize(host.name, user, public_key)

    def _start_sshd(self, host: LabHost) -> None:
        """Inside the host's namespace: give ``eth0`` its address and bring it and ``lo`` up, then start the
        host's sshd with its own hostname, /root and /etc/hosts.

        ``ip netns exec`` gives the command a mount namespace that is a slave of the machine's, so the bind
        mounts are seen only by this sshd and the sessions it forks; ``unshare --uts`` does the same for the
        hostname. sshd binds its address before daemonising, so when this returns the host is reachable.
        """
        folder = self.host_dir(host.name)
        script = (
            'ip -batch - && hostname "$1" && mount --bind "$2" /root && mount --bind "$3" /etc/hosts && '
            'exec "$4" -f "$5" -E "$6"'
        )
        prefix = ipaddress.IPv4Network(host.subnet).prefixlen
        result = self._run(
            ["ip", "netns", "exec", host.name, "unshare", "--uts", "sh", "-c", script, "lab-host", host.hostname,
             str(folder / "root"), str(folder / "hosts"), self.sshd, str(folder / "sshd_config"),
             str(folder / "sshd.log")],
            stdin=f"addr add {host.address}/{prefix} dev eth0\nlink set eth0 up\nlink set lo up\n",
            check=False,
        )  # fmt: skip
        log = folder / "sshd.log"
        if result.returncode != 0:
            output = result.stderr + (log.read_text()[-500:] if log.exists() else "")
            raise TerminalError(f"sshd of lab host {host.name} did not start: {output.strip()}")
        # The daemon writes its pid file just after the parent returned; wait for it (milliseconds), so that
        # a host reported built always has a known listener to probe and to kill.
        deadline = time.monotonic() + KILL_WAIT_S
        while not (folder / "sshd.pid").exists() or self.sshd_pid(host) is None:
            if time.monotonic() > deadline:
                output = log.read_text()[-500:] if log.exists() else ""
                raise TransientError(f"sshd of lab host {host.name} started but wrote no pid file: {output.strip()}")
            time.sleep(0.005)

    def _teardown(self, name: str, veth: str) -> None:
        """Kill the listening sshd, then every process in the namespace until none is left, then remove the
        veth and the namespace. In this order, or orphaned sessions keep the namespace alive and the next
        bring-up fails with ``RTNETLINK answers: File exists``. Whatever is already gone is skipped."""
        if self.namespace_exists(name):
            pids = self.pids(name)
            try:
                listener = int((self.host_dir(name) / "sshd.pid").read_text().strip())
            except (OSError, ValueError):
                listener = None
            if listener in pids:
                _kill(listener)
            deadline = time.monotonic() + KILL_WAIT_S
            while pids := self.pids(name):
                if time.monotonic() > deadline:
                    raise TransientError(f"processes {pids} in lab host {name} did not exit after SIGKILL")
                for pid in pids:
                    _kill(pid)
                time.sleep(0.02)
        commands = [f"link del {veth}"] if Path("/sys/class/net", veth).exists() else []
        if self.namespace_exists(name):
            commands.append(f"netns del {name}")
        if commands:
            self._run(["ip", "-batch", "-"], stdin="\n".join(commands) + "\n")

    def _remove_files(self, name: str) -> None:
        folder = self.host_dir(name)
        if folder.is_dir() and folder.parent == self.root / "hosts":
            shutil.rmtree(folder)

    def _ip(self, *args: str, missing_ok: bool = False) -> None:
        result = self._run(["ip", *args], check=False)
        if result.returncode == 0:
            return
        message = result.stderr.strip()
        if missing_ok and any(
            text in message for text in ("Cannot find device", "No such file", "does not exist", "not found")
        ):
            return
        command = " ".join(["ip", *args])
        if "Operation not permitted" in message or "Permission denied" in message:
            raise TerminalError(f"{command}: {message}")
        raise TransientError(f"{command}: {message}")

    def _run(
        self, args: list[str], *, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a lab command with a clean environment (no worker secrets reach lab processes) and a timeout."""
        try:
            result = subprocess.run(
                args, input=stdin, capture_output=True, text=True, env=_ENV, timeout=COMMAND_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise TransientError(f"{' '.join(args[:4])} did not finish within {COMMAND_TIMEOUT_S:g} s") from None
        if check and result.returncode != 0:
            message = f"{' '.join(args[:6])}: {result.stderr.strip()}"
            if "Operation not permitted" in message or "Permission denied" in message:
                raise TerminalError(message)
            raise TransientError(message)
        return result


# Options of newer OpenSSH releases, written only when this sshd knows them. OpenSSH 9.8 penalises a source
# address for connections that never authenticate (the readiness probe) and for failed logins, and every
# lab connection comes from the bridge's one address: the penalties would soon lock the whole lab out.
_NEWER_SSHD_OPTIONS = ("PerSourcePenalties no",)


@functools.lru_cache(maxsize=8)
def _optional_sshd_options(sshd: str) -> tuple[str, ...]:
    supported = []
    for option in _NEWER_SSHD_OPTIONS:
        with tempfile.NamedTemporaryFile("w", suffix=".sshd_config") as config:
            config.write(option + "\n")
            config.flush()
            result = subprocess.run(
                [sshd, "-t", "-f", config.name], capture_output=True, text=True, env=_ENV, timeout=COMMAND_TIMEOUT_S
            )
        if "Bad configuration option" not in result.stderr and "Unsupported option" not in result.stderr:
            supported.append(option)
    return tuple(supported)


def _same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths are the same inode: how a process's /proc/<pid>/ns/net is matched with the
    namespace's /run/netns/<name> bind mount (the comparison ``ip netns pids`` and ``identify`` make)."""
    one, other = os.stat(first), os.stat(second)
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
