"""The ``local`` provider's driver against the real kernel: namespaces, veths, a bridge, sshd (needs root)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from providers.drivers import NotReady, TerminalError, driver_for
from providers.drivers.local import LocalDriver
from providers.lab import Lab, Owner
from providers.ssh import HostKeyMismatch, open_session
from tests.lab.fixtures import (
    LAB_BRIDGE,
    LAB_SUBNET,
    LabHosts,
    LabNode,
    confirm,
    lab_spec,
    private_network,
    processes_mentioning,
    wait_until,
)

MakeDriver = Callable[..., LocalDriver]


def run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


def links() -> set[str]:
    return {line.split()[0].split("@")[0] for line in run("ip", "-br", "link").splitlines() if line.strip()}


@pytest.fixture
def make_driver(lab: LabHosts) -> Iterator[MakeDriver]:
    """``make_driver(**fields)``: a local driver for a fresh provider, owned by this test process; every
    machine its drivers made is deleted after the test (the lab fixture already checked the prerequisites).
    The default network is one only this process uses, so a test can watch its bridge come and go."""
    bridge, subnet = private_network()
    made: list[LocalDriver] = []

    def make(provider_key: str | None = None, **fields: str) -> LocalDriver:
        driver = LocalDriver(
            {"bridge": bridge, "subnet": subnet, **fields},
            provider_key=provider_key or f"test-local-{uuid.uuid4().hex[:10]}",
            owner=Owner.current(),
        )
        made.append(driver)
        return driver

    yield make
    for driver in made:
        for machine in driver.list_tagged():
            driver.delete(machine.machine_id)


def reach(driver: LocalDriver, number: int, cluster: str = "c1") -> LabNode:
    spec = lab_spec(cluster, number)
    machine = driver.create(spec)
    return LabNode.of(spec, confirm(driver, spec, machine.machine_id))


class TestCreateAndConfirm:
    def test_a_created_machine_is_reachable_over_ssh_with_its_own_root_and_hostname(
        self, make_driver: MakeDriver
    ) -> None:
        driver = make_driver()
        spec = lab_spec("c1", 1)
        machine = driver.create(spec)
        assert machine.state == "running" and machine.name == spec.name == "loom-c1-1"
        assert dict(machine.tags) == {"loom-cluster": "c1", "loom-node": "c1-node-1"}
        reachable = confirm(driver, spec, machine.machine_id)
        address = reachable.ip_addresses["access_v4"]
        assert reachable.ip_addresses["bind_v4"] == address
        assert ipaddress.ip_address(address) in ipaddress.ip_network(driver.subnet)
        assert reachable.hostname == spec.name and reachable.ssh_user == "root"
        assert reachable.credentials_ref == driver.keypair.ref
        other = reach(driver, 2)
        marker = f"only-here-{uuid.uuid4().hex[:8]}"
        with open_session(address, user="root", credentials_ref=reachable.credentials_ref) as session:
            assert session.host_key == reachable.host_key  # what sshd presents is what confirm reported
            output = session.run(f"hostname; touch /root/{marker}; grep -c {spec.name} /etc/hosts; ip -4 -br a").stdout
        assert output.splitlines()[:2] == [spec.name, "1"]
        assert f"{address}/" in output and "default" not in run("ip", "-n", machine.machine_id, "route")
        with other.session() as session:
            assert session.run(f"hostname; ls /root/{marker} 2>&1 || true").stdout.startswith(f"{other.hostname}\n")
            assert "No such file" in session.run(f"ls /root/{marker} 2>&1 || true").stdout
        assert not Path(f"/root/{marker}").exists()  # the machine's own /root is untouched

    def test_same_spec_twice_is_one_namespace(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        first, second = driver.create(lab_spec("c1", 1)), driver.create(lab_spec("c1", 1))
        assert first.machine_id == second.machine_id
        assert [m.machine_id for m in driver.list_tagged()] == [first.machine_id]
        assert first.machine_id in namespaces()

    def test_concurrent_creates_get_distinct_addresses_and_one_machine_per_node(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        specs = [lab_spec("c1", number) for number in range(1, 7)] * 2  # every node created twice at once
        with ThreadPoolExecutor(max_workers=len(specs)) as pool:
            machines = list(pool.map(driver.create, specs))
        by_node = {spec.node_key: set() for spec in specs}
        for spec, machine in zip(specs, machines, strict=True):
            by_node[spec.node_key].add(machine.machine_id)
        assert all(len(ids) == 1 for ids in by_node.values())
        ids = {machine.machine_id for machine in machines}
        assert len(ids) == 6 and ids <= namespaces()
        addresses = [driver.lab.get(machine_id).address for machine_id in ids]
        assert len(set(addresses)) == 6

    def test_confirm_checks_the_machine_and_node(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        machine = driver.create(lab_spec("c1", 1))
        with pytest.raises(TerminalError, match="belongs to node c1-node-1"):
            driver.confirm(lab_spec("c1", 2), machine.machine_id)
        with pytest.raises(TerminalError, match="does not exist"):
            driver.confirm(lab_spec("c1", 1), "loomlab-0000000000")
        with pytest.raises(TerminalError, match="does not exist"):  # another provider's machine is not ours
            make_driver().confirm(lab_spec("c1", 1), machine.machine_id)

    def test_confirm_waits_while_sshd_does_not_answer(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        spec = lab_spec("c1", 1)
        machine = driver.create(spec)
        host = driver.lab.get(machine.machine_id)
        # Stop the listener without killing it (SIGSTOP): connections queue unanswered, as while booting.
        pid = driver.lab.sshd_pid(host)
        subprocess.run(["kill", "-STOP", str(pid)], check=True)
        try:
            with pytest.raises(NotReady) as raised:
                driver.confirm(spec, machine.machine_id)
            assert raised.value.retry_after > 0
        finally:
            subprocess.run(["kill", "-CONT", str(pid)], check=True)
        assert confirm(driver, spec, machine.machine_id).machine_id == machine.machine_id

    def test_broken_machine_is_terminal(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        spec = lab_spec("c1", 1)
        machine = driver.create(spec)
        host = driver.lab.get(machine.machine_id)
        subprocess.run(["kill", "-KILL", str(driver.lab.sshd_pid(host))], check=True)
        wait_until("the killed sshd to be gone", lambda: driver.lab.sshd_pid(host) is None)
        with pytest.raises(TerminalError, match="sshd is not running"):
            driver.confirm(spec, machine.machine_id)

    def test_a_rebuilt_machine_has_a_new_host_key_which_a_pinned_session_refuses(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        before = reach(driver, 1)
        driver.delete(before.machine_id)
        after = reach(driver, 1)
        assert after.machine_id == before.machine_id and after.host_key != before.host_key
        with pytest.raises(HostKeyMismatch, match="changed"):
            after.session(host_key=before.host_key).connect()


class TestDelete:
    def test_delete_leaves_no_namespace_veth_process_or_bridge(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        nodes = [reach(driver, number) for number in (1, 2)]
        marker = f"{uuid.uuid4().int % 10**6 + 1000}.75"
        with nodes[0].session() as session:  # a service left running, and a session still open
            session.run(f"nohup sleep {marker} >/dev/null 2>&1 &")
            assert processes_mentioning(f"sleep {marker}")
            for node in nodes:
                driver.delete(node.machine_id)
        host_folders = [str(driver.lab.host_dir(node.machine_id)) for node in nodes]
        assert not {node.machine_id for node in nodes} & namespaces()
        assert all(driver.lab.get(node.machine_id) is None for node in nodes)
        assert not any(link.startswith("llab" + node.machine_id[-10:]) for node in nodes for link in links())
        assert not any(processes_mentioning(folder) for folder in host_folders)  # no sshd of theirs
        assert processes_mentioning(f"sleep {marker}") == []
        assert driver.bridge not in links()  # no host of any owner is left on this bridge
        assert not any(Path(folder).exists() for folder in host_folders)
        assert driver.list_tagged() == []

    def test_deleting_a_missing_machine_is_success(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        node = reach(driver, 1)
        driver.delete(node.machine_id)
        driver.delete(node.machine_id)
        driver.delete("loomlab-0000000000")

    def test_concurrent_deletes_of_one_machine_all_succeed(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        node = reach(driver, 1)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(driver.delete, [node.machine_id] * 4))
        assert node.machine_id not in namespaces() and driver.lab.get(node.machine_id) is None

    def test_another_providers_machine_is_not_deleted(self, make_driver: MakeDriver) -> None:
        owner, stranger = make_driver(), make_driver()
        node = reach(owner, 1)
        stranger.delete(node.machine_id)
        assert node.machine_id in namespaces()


class TestListTagged:
    def test_lists_only_this_providers_machines(self, make_driver: MakeDriver) -> None:
        first, second = make_driver(), make_driver()
        mine = {first.create(lab_spec("c1", n)).machine_id for n in (1, 2)}
        theirs = second.create(lab_spec("c1", 1)).machine_id
        assert {m.machine_id for m in first.list_tagged()} == mine
        assert [m.machine_id for m in second.list_tagged()] == [theirs]
        assert all(m.cluster_key == "c1" and m.state == "running" for m in first.list_tagged())


class TestConfiguration:
    def test_registered_as_provider_type_local(self) -> None:
        driver = driver_for("local", {"bridge": LAB_BRIDGE, "subnet": LAB_SUBNET}, provider_key="p1")
        assert isinstance(driver, LocalDriver)
        assert (driver.bridge, driver.subnet) == (LAB_BRIDGE, LAB_SUBNET)
        defaults = driver_for("local", {}, provider_key="p1")
        assert (defaults.bridge, defaults.subnet) == ("loombr0", "10.200.0.0/24")

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"bridge": "a bridge"}, "field bridge must be 1-15 letters"),
            ({"bridge": "x" * 16}, "field bridge must be 1-15 letters"),
            ({"subnet": "10.200.0.5/24"}, "field subnet must be an IPv4 network"),
            ({"subnet": "8.8.8.0/24"}, "field subnet must be a private network"),
            ({"subnet": "fd00::/64"}, "field subnet must be an IPv4 network"),
            ({"subnet": "10.0.0.0/8"}, "field subnet must have a prefix between /16 and /28"),
            ({"subnet": 24}, "field subnet must be a string"),
        ],
    )
    def test_bad_fields_are_terminal_and_named(self, fields: dict[str, object], message: str) -> None:
        with pytest.raises(TerminalError, match=message):
            LocalDriver(fields, provider_key="p1")

    def test_subnet_overlapping_another_lab_bridge_is_refused(self, lab: LabHosts, make_driver: MakeDriver) -> None:
        overlapping = make_driver(subnet=LAB_SUBNET.replace("/24", "/25"))
        with pytest.raises(TerminalError, match=f"overlaps {LAB_SUBNET} of lab bridge {LAB_BRIDGE}"):
            overlapping.create(lab_spec("c1", 1))

    def test_interface_not_made_by_the_lab_is_refused(self, make_driver: MakeDriver) -> None:
        with pytest.raises(TerminalError, match="interface lo exists but was not made by the lab"):
            make_driver(bridge="lo").create(lab_spec("c1", 1))

    def test_unknown_ssh_user_is_terminal(self, make_driver: MakeDriver) -> None:
        with pytest.raises(TerminalError, match="SSH user 'no-such-user' does not exist on this machine"):
            make_driver().create(lab_spec("c1", 1, ssh_user="no-such-user"))

    def test_without_openssh_server_says_what_to_install(self, make_driver: MakeDriver) -> None:
        driver = LocalDriver({}, provider_key="p1", lab=Lab(sshd="/nonexistent/sbin/sshd"))
        with pytest.raises(TerminalError, match=r"needs openssh-server .*apt-get install openssh-server"):
            driver.create(lab_spec("c1", 1))

    def test_without_root_says_so(self, tmp_path: Path) -> None:
        # A real unprivileged process: modules are imported as root (the interpreter lives under /root),
        # then the process drops to nobody and asks for a machine.
        script = (
            "import os\n"
            "from providers.drivers.local import LocalDriver\n"
            "from providers.drivers import TerminalError\n"
            "from tests.lab.fixtures import lab_spec\n"
            "driver = LocalDriver({}, provider_key='p1')\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    driver.create(lab_spec('c1', 1))\n"
            "except TerminalError as error:\n"
            "    print(error)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
            env={"LOOM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        assert "the local provider needs root" in result.stdout
        assert "runs as uid 65534" in result.stdout
