"""The ``local`` provider: lab hosts on this machine, one network namespace with its own sshd per node.

Real machines for end-to-end runs without a cloud (the test suite, the embedded demo as root): each node
is a ``providers.lab`` host on the provider's ``bridge`` and ``subnet``, reachable over real SSH.

* **Identity.** Machines belong to (installation data folder, ``provider_key``): another installation on
  the same machine, or another provider, never sees or deletes them. The machine id is the namespace
  name, derived from that scope and the node tag, so the same node always maps to the same namespace and a
  retried or duplicated create finds the machine instead of making a second one.
* **State** lives in the lab's machine-wide state file (``providers/lab.py``), under a file lock, so every
  worker process sees the same machines and addresses never collide.
* **Credentials.** The provider gets one Ed25519 key pair, generated on first use in the installation's
  data folder (``providers.credentials`` keystore, 0600); nodes carry only its ``credentials_ref``. Lab
  hosts share the machine's users, so the spec's SSH user must exist here (root by default).
* **Confirm** answers ``NotReady`` until sshd answers, then returns the address (as ``access_v4`` and
  ``bind_v4``), the hostname and the host key read from the host's key file, to be pinned on the node.

Needs root and openssh-server: without them every call raises a ``TerminalError`` that says so.
"""

from __future__ import annotations

import hashlib
import pwd
from collections.abc import Mapping
from typing import Any

from providers.credentials import KeyPair, data_dir, keystore_keypair
from providers.lab import READY, HostRequest, Lab, LabHost, Owner, check_bridge_name, parse_subnet

from .base import TAG_CLUSTER, Machine, MachineSpec, NotReady, Reachable, TerminalError

DEFAULT_BRIDGE = "loombr0"
DEFAULT_SUBNET = "10.200.0.0/24"
RETRY_AFTER_S = 0.2


def _field(fields: Mapping[str, Any], name: str, default: str) -> str:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str):
        raise TerminalError(f"local provider field {name} must be a string, got {value!r}")
    return value.strip()


class LocalDriver:
    """The ``local`` provider's driver. Keeps nothing in memory that matters: safe to share between threads.

    ``owner`` ties the machines to a process's lifetime (the test suite's lab): ``Lab.reap_abandoned``
    removes them once that process is gone. Loom's workers leave it unset; their machines live until deleted.
    """

    def __init__(
        self,
        fields: Mapping[str, Any],
        *,
        provider_key: str,
        lab: Lab | None = None,
        owner: Owner | None = None,
    ) -> None:
        if not provider_key:
            raise TerminalError("local driver needs a provider_key")
        self.provider_key = provider_key
        self.bridge = check_bridge_name(_field(fields, "bridge", DEFAULT_BRIDGE), field_name="bridge")
        self.subnet = str(parse_subnet(_field(fields, "subnet", DEFAULT_SUBNET), field_name="subnet"))
        self.lab = lab or Lab()
        self.owner = owner
        self._folder = data_dir()
        self.scope = f"{self._folder.resolve()}\x00{provider_key}"

    @property
    def keypair(self) -> KeyPair:
        """The provider's SSH key pair (made on first use; every worker of the installation shares it)."""
        digest = hashlib.sha256(self.provider_key.encode()).hexdigest()[:16]
        return keystore_keypair(f"local-{digest}", folder=self._folder)

    # -- the contract ------------------------------------------------------------------------------

    def create(self, spec: MachineSpec) -> Machine:
        self.lab.require()
        user = spec.ssh_user or "root"
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise TerminalError(
                f"SSH user {user!r} does not exist on this machine; lab hosts share the machine's users "
                "(set the image type's SSH user to root or to an existing user)"
            ) from None
        keypair = self.keypair
        host = self.lab.create(
            HostRequest(
                scope=self.scope,
                node_key=spec.node_key,
                hostname=spec.name,
                bridge=self.bridge,
                subnet=self.subnet,
                authorized_keys={user: keypair.public_key},
                tags=dict(spec.tags),
                owner=self.owner,
                key_path=str(keypair.path),
            )
        )
        return self._machine(host)

    def confirm(self, spec: MachineSpec, machine_id: str) -> Reachable:
        host = self._host(machine_id)
        if host is None:
            raise TerminalError(f"machine {machine_id} does not exist on this provider")
        if host.node_key != spec.node_key:
            raise TerminalError(f"machine {machine_id} belongs to node {host.node_key}, not {spec.node_key}")
        if host.state != READY:
            # Being built by another worker (this waits for it), or a build whose worker died (this resumes it).
            self.create(spec)
            host = self._host(machine_id) or host
        status = self.lab.probe(host)
        if status == "missing":
            raise TerminalError(f"machine {machine_id} is gone: its namespace no longer exists (was this rebooted?)")
        if status == "down":
            raise TerminalError(f"machine {machine_id} is broken: its sshd is not running")
        if status == "starting":
            raise NotReady(f"sshd of machine {machine_id} does not answer yet", retry_after=RETRY_AFTER_S)
        return Reachable(
            machine_id=host.name,
            hostname=host.hostname,
            ip_addresses={"access_v4": host.address, "bind_v4": host.address},
            ssh_user=spec.ssh_user or "root",
            ssh_port=22,
            host_key=self.lab.host_key(host),
            credentials_ref=self.keypair.ref,
        )

    def delete(self, machine_id: str) -> None:
        if self._host(machine_id) is None:
            return  # never made, already deleted, or not this provider's: nothing of ours to delete
        self.lab.delete(machine_id)

    def list_tagged(self) -> list[Machine]:
        return [self._machine(host) for host in self.lab.hosts(self.scope) if TAG_CLUSTER in host.tags]

    # -- helpers -----------------------------------------------------------------------------------

    def _host(self, machine_id: str) -> LabHost | None:
        self.lab.require()
        host = self.lab.get(machine_id)
        return host if host is not None and host.scope == self.scope else None

    def _machine(self, host: LabHost) -> Machine:
        if host.state == READY:
            state = "running" if self.lab.namespace_exists(host.name) else "lost"
        else:
            state = "pending" if host.state != "deleting" else "deleting"
        return Machine(machine_id=host.name, name=host.hostname, tags=host.tags, state=state, created_at=host.created,
                       addresses={"access_v4": host.address, "bind_v4": host.address})  # fmt: skip
