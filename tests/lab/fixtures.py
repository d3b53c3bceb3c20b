"""The real-host lab for tests: lab hosts (network namespaces with their own sshd) made by the ``local``
provider's driver, for SSH, driver and end-to-end tests.

Registered for the whole suite by ``pytest_plugins`` in ``tests/conftest.py``, so any test folder may ask
for ``lab``. It needs root and openssh-server; without them the tests that use it fail (never skip) with a
message saying what is missing, because a suite that skips its real-host tests proves nothing.

* ``lab`` (session): ``LAB_SIZE`` hosts on the shared test bridge, brought up in parallel once per test
  process (each pytest-xdist worker has its own) and torn down at the end, checking that nothing is left.
  Before that it removes what a crashed earlier run left (``Lab.reap_abandoned``): every host records its
  owner process, and a host whose owner is gone is garbage.
* ``sudo_users`` (session): two users of this machine that may log in to the lab's first host with the lab
  key, one with passwordless sudo and one without. Users are machine-wide (lab hosts share /etc/passwd),
  so they are created once, with no password and no home, and left in place: they can log in only through
  lab sshds, with keys the lab writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from providers.drivers import MachineSpec, NotReady, Reachable, TerminalError
from providers.drivers.local import LocalDriver
from providers.lab import Lab, Owner
from providers.ssh import Session, open_session

LAB_SIZE = 4
LAB_BRIDGE = "loomtest0"
LAB_SUBNET = "10.201.0.0/24"
SUDO_USER = "loomlab-sudo"
NO_SUDO_USER = "loomlab-nopw"
SUDOERS_FILE = Path("/etc/sudoers.d/loomlab-sudo")


def require_lab() -> None:
    """Fail the test (in CI and everywhere else) unless this process can run lab hosts: root,
    openssh-server, iproute2, util-linux; the message is the lab's own, naming what is missing."""
    try:
        Lab().require()
    except TerminalError as error:
        pytest.fail(f"the lab tests cannot run: {error} (run the suite as root, as CI does)")


def processes_mentioning(text: str) -> list[int]:
    """Live processes on this machine (lab hosts share its process table) whose command line contains
    ``text``; a zombie has an empty command line, so it does not count."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in command:
                found.append(int(entry.name))
    return found


def wait_until(description: str, condition: Callable[[], object], limit: float = 20.0) -> None:
    """Wait (bounded) for something another process or the kernel does asynchronously. Not a timing
    assertion: the limit only turns a hang into a failure that says what never happened."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {description}")
        time.sleep(0.02)


def private_network() -> tuple[str, str]:
    """A bridge name and /24 that only this test process uses, for tests that watch a bridge come and go
    (the shared test bridge may have other sessions' hosts on it). Derived from the pid, so processes
    running side by side get different ones."""
    pid = os.getpid() % 10240
    return f"loomt{pid:x}", f"10.{210 + pid // 256 % 40}.{pid % 256}.0/24"


def confirm(driver: LocalDriver, spec: MachineSpec, machine_id: str) -> Reachable:
    """What the engine does with a booting machine: ask again after ``retry_after`` until it is reachable."""
    for _ in range(200):
        try:
            return driver.confirm(spec, machine_id)
        except NotReady as not_ready:
            time.sleep(not_ready.retry_after)
    raise AssertionError(f"machine {machine_id} never became reachable")


@dataclass(frozen=True)
class LabNode:
    """A reachable lab host, as a confirmed node records it."""

    spec: MachineSpec
    machine_id: str
    hostname: str
    address: str
    user: str
    host_key: str
    credentials_ref: str

    @classmethod
    def of(cls, spec: MachineSpec, reachable: Reachable) -> LabNode:
        assert reachable.host_key and reachable.credentials_ref
        return cls(
            spec=spec,
            machine_id=reachable.machine_id,
            hostname=reachable.hostname,
            address=reachable.ip_addresses["access_v4"],
            user=reachable.ssh_user,
            host_key=reachable.host_key,
            credentials_ref=reachable.credentials_ref,
        )

    def session(self, *, user: str | None = None, **options: Any) -> Session:
        """A Session to this host with the pinned host key and the provider's key (as ``user``)."""
        return open_session(
            self.address,
            user=user or self.user,
            credentials_ref=self.credentials_ref,
            host_key=options.pop("host_key", self.host_key),
            **options,
        )


@dataclass(frozen=True)
class LabHosts:
    driver: LocalDriver
    nodes: tuple[LabNode, ...]

    @property
    def lab(self) -> Lab:
        return self.driver.lab


def lab_spec(cluster: str, number: int, **kwargs: Any) -> MachineSpec:
    return MachineSpec.for_node(
        cluster_key=cluster,
        node_key=f"{cluster}-node-{number}",
        node_number=number,
        flavor="lab",
        image="debian-12",
        **kwargs,
    )


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHosts]:
    """``LAB_SIZE`` reachable lab hosts for this test process (see the module docstring)."""
    require_lab()
    Lab().reap_abandoned()
    driver = LocalDriver(
        {"bridge": LAB_BRIDGE, "subnet": LAB_SUBNET},
        provider_key=f"tests-lab-{uuid.uuid4().hex[:12]}",
        owner=Owner.current(),
    )
    cluster = f"lab{os.getpid()}"
    specs = [lab_spec(cluster, number) for number in range(1, LAB_SIZE + 1)]

    def bring_up(spec: MachineSpec) -> LabNode:
        machine = driver.create(spec)
        return LabNode.of(spec, confirm(driver, spec, machine.machine_id))

    try:
        with ThreadPoolExecutor(max_workers=LAB_SIZE) as pool:
            nodes = tuple(pool.map(bring_up, specs))
        yield LabHosts(driver=driver, nodes=nodes)
    finally:
        made = [machine.machine_id for machine in driver.list_tagged()]
        with ThreadPoolExecutor(max_workers=LAB_SIZE) as pool:
            list(pool.map(driver.delete, made))
        left = [name for name in made if driver.lab.namespace_exists(name) or driver.lab.get(name)]
        assert not left, f"lab hosts left after teardown: {left}"


def user_home(name: str) -> Path:
    """A sudo test user's own home. Not /tmp (as it once was): the two users then shared ``~/.loom``, and a
    command run through sudo left root-owned folders there that the other user could neither use nor remove."""
    return Path("/home") / name


def _ensure_user(name: str) -> None:
    home = user_home(name)
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 9):  # 9: the user exists already (an earlier run, another worker)
        pytest.fail(f"useradd {name} failed: {result.stderr.strip()}")
    # '*' = no password, yet not "locked" ('!'): sshd without PAM refuses even key logins to locked accounts.
    subprocess.run(["usermod", "-p", "*", "-d", str(home), name], check=True, capture_output=True)
    home.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(home, name, name)


@pytest.fixture(scope="session")
def sudo_users(lab: LabHosts) -> dict[str, str]:
    """``{"sudo": user with passwordless sudo, "nopw": user without}``, both allowed on ``lab.nodes[0]``."""
    if not os.access("/usr/bin/sudo", os.X_OK):
        pytest.fail("the sudo tests need sudo: apt-get install sudo")
    for name in (SUDO_USER, NO_SUDO_USER):
        _ensure_user(name)
    rule = f"{SUDO_USER} ALL=(ALL) NOPASSWD: ALL\n"
    if not SUDOERS_FILE.exists() or SUDOERS_FILE.read_text() != rule:
        temporary = SUDOERS_FILE.with_name(f".loomlab-{os.getpid()}")  # a name with '.' sudo ignores
        temporary.write_text(rule)
        temporary.chmod(0o440)
        temporary.replace(SUDOERS_FILE)
    public_key = lab.driver.keypair.public_key
    for name in (SUDO_USER, NO_SUDO_USER):
        lab.lab.authorize(lab.nodes[0].machine_id, name, public_key)
    return {"sudo": SUDO_USER, "nopw": NO_SUDO_USER}
