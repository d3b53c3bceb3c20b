"""The ``static`` provider: nodes borrow hosts from a pool an admin registered (bare metal, VMs made elsewhere).

Nothing is created or destroyed; hosts are lent and taken back (the pool's rows and services are in
``providers/pool.py``, its admin and API in ``pool_admin.py`` / ``pool_api.py``).

* **create** allocates a free host to the spec's node: concurrent creates never get the same host, and
  the same node gets the host it already holds. No free host is a ``TransientError`` "pool <name> has no
  free host (N allocated, M broken)": a pool is shared, hosts come back as other clusters are deleted or
  the admin adds and repairs hosts, so the engine's retries, or a retry of the job, can succeed; a terminal
  error would fail a cluster for a shortage that may last seconds. The machine id names the host and the
  allocation (``static-<host>-<n>``), so a late delete of an earlier allocation never touches a later one.
* **confirm** connects over SSH as the pool's user with the provider's ``ssh_private_key``, reads the
  hostname, pins the host key on first contact (or verifies the one the admin registered or that was
  pinned before: a replaced host is refused), and returns the address with a ``static:<provider>/<host>``
  credentials reference, resolved by ``providers.pool`` whenever a node connects.
* **delete** runs the admin's ``cleanup_script`` on the host (uploaded to a ``mktemp`` file, run through
  ``sudo -n`` unless the user is root, with ``LOOM_CLUSTER``, ``LOOM_NODE`` and ``LOOM_HOST`` set), then
  returns the host to the pool. **A failing cleanup marks the host ``broken`` with the error and the
  delete still succeeds**: the node is gone either way and the host is quarantined, never handed out
  again until an admin repairs it and sets it ``free``; failing the user's cluster delete would leave it
  stuck on a problem only the pool's admin can fix, and a retry would run the same script against the
  same host. An unexpected crash mid-cleanup leaves the host ``cleaning``; a later delete (a retried task,
  the reaper) takes over once the cleanup is older than ``STALE_CLEANUP_S``. Without a cleanup script the
  host goes straight back to the pool.
* **list_tagged** lists the hosts nodes hold, with their node's tags (the reaper's input).

The login user is the host's own ``ssh_user``, else the provider's ``ssh_user`` (default root); the image
type's SSH user does not apply, since the hosts are the admin's. ``access_v4`` and ``bind_v4`` are the
host's registered address (a DNS name is resolved to IPv4 at confirm).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import shlex
import socket
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from providers import pool
from providers.egress import EgressRefused, resolve_checked
from providers.models import PoolHost
from providers.secrets import register_secrets
from providers.ssh import DEFAULT_CONNECT_TIMEOUT_S, KILL_GRACE_S, LineCallback, Session

from .base import TAG_CLUSTER, DriverError, Machine, MachineSpec, Reachable, TerminalError, TransientError

logger = logging.getLogger(__name__)

CONFIRM_COMMAND_TIMEOUT_S = 30.0
CLEANUP_TIMEOUT_S = 600.0
"""How long a cleanup script may run; it is killed on the host after that and the host marked broken."""
STALE_CLEANUP_S = CLEANUP_TIMEOUT_S + KILL_GRACE_S + 2 * DEFAULT_CONNECT_TIMEOUT_S + 60
"""A cleanup older than this cannot still be running (the host's ``timeout`` killed it): take it over."""
_PROVIDER_KEY = re.compile(r"^tenant-(\d+)/provider-(\d+)$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def script_command(script_path: str, script: str) -> list[str]:
    """How to run an uploaded script: through its ``#!`` interpreter (one optional argument, as the kernel
    does), else ``/bin/sh``. Naming the interpreter, rather than executing the file, works when /tmp is
    mounted ``noexec``."""
    first = script.split("\n", 1)[0]
    if first.startswith("#!"):
        parts = first[2:].strip().split(None, 1)
        if parts:
            return [*parts, script_path]
    return ["/bin/sh", script_path]


class StaticDriver:
    """The ``static`` provider's driver. All state is in the database: safe to share between threads."""

    def __init__(
        self,
        fields: Mapping[str, Any],
        *,
        provider_key: str,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        cleanup_timeout: float = CLEANUP_TIMEOUT_S,
    ) -> None:
        match = _PROVIDER_KEY.fullmatch(provider_key or "")
        if match is None:
            raise TerminalError(
                f"static driver needs the key of a provider row (tenant-<id>/provider-<id>), got {provider_key!r}"
            )
        self.provider_key = provider_key
        self.provider_pk = int(match.group(2))
        ssh_user = fields.get("ssh_user")
        if ssh_user is not None and not isinstance(ssh_user, str):
            raise TerminalError(f"static provider field ssh_user must be a user name, got {ssh_user!r}")
        self.ssh_user = (ssh_user or "").strip() or pool.DEFAULT_SSH_USER
        script = fields.get("cleanup_script") or ""
        if not isinstance(script, str):
            raise TerminalError("static provider field cleanup_script must be a shell script (text)")
        # Browsers submit text areas with CRLF line ends, which a shell reads as part of every command.
        self.cleanup_script = script.replace("\r\n", "\n").strip()
        key = fields.get("ssh_private_key")
        self._private_key = key if isinstance(key, str) else ""
        register_secrets([self._private_key])
        self.connect_timeout = connect_timeout
        self.cleanup_timeout = cleanup_timeout

    def __repr__(self) -> str:
        return f"<StaticDriver {self.provider_key}>"

    # -- the contract ------------------------------------------------------------------------------

    def create(self, spec: MachineSpec) -> Machine:
        host = pool.pool_host_allocate(provider_pk=self.provider_pk, spec=spec)
        return self._machine(host)

    def confirm(self, spec: MachineSpec, machine_id: str) -> Reachable:
        host = pool.pool_host_of_machine(provider_pk=self.provider_pk, machine_id=machine_id)
        if host is None or host.state != PoolHost.State.ALLOCATED:
            raise TerminalError(f"machine {machine_id} is not allocated from this pool (any more)")
        if host.node_key != spec.node_key:
            raise TerminalError(f"machine {machine_id} belongs to node {host.node_key}, not {spec.node_key}")
        with self._session(host, command_timeout=CONFIRM_COMMAND_TIMEOUT_S) as session:
            result = session.run(["hostname"], timeout=CONFIRM_COMMAND_TIMEOUT_S)
            hostname = (result.stdout.strip().splitlines() or [""])[0].strip()
            pool.pool_host_pin(host=host, host_key=session.host_key or "", hostname=hostname)
            presented = session.host_key or host.host_key
        address = self._ipv4(host.address)
        return Reachable(
            machine_id=machine_id,
            hostname=hostname or host.address,
            ip_addresses={"access_v4": address, "bind_v4": address},
            ssh_user=pool.effective_user(host, self.ssh_user),
            ssh_port=host.ssh_port,
            host_key=presented or None,
            credentials_ref=pool.credentials_ref(host),
        )

    def delete(self, machine_id: str) -> None:
        host = pool.pool_host_of_machine(provider_pk=self.provider_pk, machine_id=machine_id)
        if host is None:
            return  # never allocated, already returned, or not this pool's: nothing of ours to give back
        if not pool.pool_host_start_cleaning(host=host, stale_after=timedelta(seconds=STALE_CLEANUP_S)):
            return
        error: str | None = None
        output: list[str] = []
        try:
            self._clean(host, output)
        except DriverError as failure:
            error = str(failure) or type(failure).__name__
            logger.warning(
                "cleanup of pool host %s failed, host marked broken: %s",
                host.endpoint,
                error,
                extra={"tenant": host.tenant_id, "provider": self.provider_pk, "host": host.pk},
            )
        pool.pool_host_finish_cleaning(host=host, error=error, output="\n".join(output))

    def list_tagged(self) -> list[Machine]:
        return [self._machine(host) for host in pool.pool_hosts_held(provider_pk=self.provider_pk)]

    # -- helpers -----------------------------------------------------------------------------------

    def _session(self, host: PoolHost, *, command_timeout: float, on_line: LineCallback | None = None) -> Session:
        if not self._private_key.strip():
            raise TerminalError("static provider field ssh_private_key is empty: pool hosts cannot be reached")
        try:  # checked again as it resolves now (a host saved before the policy, or a name that moved)
            address = resolve_checked(host.address, host.ssh_port, what=f"pool host {host.address}")
        except EgressRefused as error:
            raise TerminalError(error.message) from None
        return Session(
            address,
            user=pool.effective_user(host, self.ssh_user),
            private_key=self._private_key,
            port=host.ssh_port,
            host_key=host.host_key or None,
            connect_timeout=self.connect_timeout,
            command_timeout=command_timeout,
            on_line=on_line,
        )

    def _clean(self, host: PoolHost, output: list[str]) -> None:
        """Run the cleanup script on ``host`` (nothing to do without one). Raises ``DriverError`` on failure."""
        if not self.cleanup_script:
            return
        env = {
            "LOOM_CLUSTER": str((host.tags or {}).get(TAG_CLUSTER, "")),
            "LOOM_NODE": host.node_key,
            "LOOM_HOST": host.address,
        }
        with self._session(host, command_timeout=self.cleanup_timeout) as session:
            if session.first_contact and session.host_key:
                pool.pool_host_pin(host=host, host_key=session.host_key, hostname="")
            path = session.run(["mktemp", "/tmp/loom-cleanup.XXXXXXXXXX"], timeout=CONFIRM_COMMAND_TIMEOUT_S)
            script_path = path.stdout.strip()
            try:
                session.upload(self.cleanup_script.encode() + b"\n", script_path, mode=0o700)
                command = script_command(script_path, self.cleanup_script)
                session.run(command, sudo=True, env=env, timeout=self.cleanup_timeout, on_line=output.append)
            finally:
                with contextlib.suppress(DriverError):
                    session.run(f"rm -f -- {shlex.quote(script_path)}", timeout=CONFIRM_COMMAND_TIMEOUT_S, check=False)
        logger.info("pool host %s cleaned and back in the pool", host.endpoint,
                    extra={"tenant": host.tenant_id, "provider": self.provider_pk, "host": host.pk})  # fmt: skip

    def _ipv4(self, address: str) -> str:
        """The address as an IP: literal addresses as they are, DNS names resolved to their first IPv4."""
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(address))
        try:
            found = socket.getaddrinfo(address, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:
            raise TransientError(f"cannot resolve pool host {address}: {error}") from None
        return str(found[0][4][0]) if found else address

    def _machine(self, host: PoolHost) -> Machine:
        return Machine(
            machine_id=pool.machine_id_of(host),
            name=host.machine_name or host.address,
            tags=host.tags or {},
            state=host.state,
            created_at=host.allocated_at or host.created_at,
            # A name would have to be resolved per host per listing; the node records the address it resolved to.
            addresses={"access_v4": host.address, "bind_v4": host.address} if _is_ip(host.address) else {},
        )
