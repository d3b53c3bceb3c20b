"""providers/lab.py itself: the fixture's hosts, crash recovery, and removal of what crashed runs left."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from providers.credentials import generate_ed25519
from providers.lab import CREATING, NAMESPACE_PREFIX, READY, HostRequest, Owner, host_name, veth_name
from tests.lab.fixtures import LAB_BRIDGE, LAB_SUBNET, LabHosts, wait_until

REPOSITORY = Path(__file__).resolve().parents[2]


def request(owner: Owner | None, key_path: str | None = None, **changes: object) -> HostRequest:
    """A request for a lab host on the shared test bridge, in a scope of its own."""
    values: dict[str, object] = {
        "scope": f"test-lab-{uuid.uuid4().hex}",
        "node_key": "node-1",
        "hostname": "lab-test-1",
        "bridge": LAB_BRIDGE,
        "subnet": LAB_SUBNET,
        "authorized_keys": {"root": generate_ed25519()[1]},
        "owner": owner,
        "key_path": key_path,
    }
    values.update(changes)
    return HostRequest(**values)  # type: ignore[arg-type]


def exited_owner() -> Owner:
    """The owner record of a process that has exited."""
    process = subprocess.Popen(["sleep", "30"])
    owner = Owner.of(process.pid)
    process.kill()
    process.wait()
    assert owner is not None and not owner.alive()
    return owner


class TestFixture:
    def test_hosts_are_distinct_and_each_sshd_runs_in_its_own_namespace(self, lab: LabHosts) -> None:
        nodes = lab.nodes
        assert len({n.address for n in nodes}) == len({n.hostname for n in nodes}) == len(nodes)
        for node in nodes:
            host = lab.lab.get(node.machine_id)
            assert host is not None and host.state == READY
            pid = lab.lab.sshd_pid(host)
            identified = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
            assert identified.stdout.split() == [node.machine_id]

    def test_hosts_belong_to_this_test_process(self, lab: LabHosts) -> None:
        assert all(lab.lab.get(n.machine_id).owner == Owner.current() for n in lab.nodes)


class TestReapAbandoned:
    def test_removes_the_hosts_of_an_owner_that_exited(self, lab: LabHosts) -> None:
        host = lab.lab.create(request(exited_owner()))
        assert lab.lab.namespace_exists(host.name)
        lab.lab.reap_abandoned()  # (another test process's reap may get there first: the outcome is the same)
        assert not lab.lab.namespace_exists(host.name) and lab.lab.get(host.name) is None
        assert all(lab.lab.get(n.machine_id) for n in lab.nodes)  # live owners' hosts stay

    def test_removes_hosts_whose_installation_key_is_gone(self, lab: LabHosts, tmp_path: Path) -> None:
        key = tmp_path / "key"
        key.write_text("gone soon")
        host = lab.lab.create(request(None, key_path=str(key)))
        assert host.name not in lab.lab.reap_abandoned()
        key.unlink()
        lab.lab.reap_abandoned()
        assert lab.lab.get(host.name) is None and not lab.lab.namespace_exists(host.name)

    def test_removes_kernel_objects_and_folders_without_a_record(self, lab: LabHosts) -> None:
        # What a crash between two steps, or a lost state file, leaves: lab-named objects nobody records.
        name = host_name(f"orphan-{uuid.uuid4().hex}", "node")
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(
            ["ip", "link", "add", veth_name(name), "type", "veth", "peer", "name", "eth0", "netns", name], check=True
        )
        inside = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"])
        folder = lab.lab.host_dir(name)
        folder.mkdir(parents=True)
        (folder / "leftover").write_text("x")
        lab.lab.reap_abandoned()
        assert inside.wait() == -9  # the process left inside was killed before its namespace went
        assert not lab.lab.namespace_exists(name)
        assert not Path("/sys/class/net", veth_name(name)).exists()
        assert not folder.exists()


class TestInterruptedBuild:
    def test_a_create_whose_builder_was_killed_is_rebuilt_by_the_next_create(
        self, lab: LabHosts, tmp_path: Path
    ) -> None:
        # A builder process that is killed -9 while its host's sshd starts: this "sshd" never returns.
        fake_sshd = tmp_path / "hanging-sshd"
        fake_sshd.write_text('#!/bin/sh\n[ "$1" = -t ] && exit 0\necho started > "$4"\nexec sleep 300\n')
        fake_sshd.chmod(0o755)
        host_request = request(Owner.current())
        name = host_name(host_request.scope, host_request.node_key)
        script = (
            "import sys\n"
            "from providers.lab import HostRequest, Lab, Owner\n"
            "from providers.credentials import generate_ed25519\n"
            "scope, pid, started, sshd = sys.argv[1:]\n"
            f"Lab(sshd=sshd).create(HostRequest(scope=scope, node_key='node-1', hostname='lab-test-1',"
            f" bridge='{LAB_BRIDGE}', subnet='{LAB_SUBNET}', authorized_keys={{'root': generate_ed25519()[1]}},"
            " owner=Owner(int(pid), int(started))))\n"
        )
        owner = Owner.current()
        builder = subprocess.Popen(
            [sys.executable, "-c", script, host_request.scope, str(owner.pid), str(owner.started), str(fake_sshd)],
            cwd=REPOSITORY,
            env={"PATH": os.environ["PATH"]},
        )
        log = lab.lab.host_dir(name) / "sshd.log"
        try:
            wait_until("the builder to start its sshd", lambda: log.exists() and "started" in log.read_text())
        finally:
            builder.kill()
            builder.wait()
        stuck = lab.lab.get(name)
        assert stuck is not None and stuck.state == CREATING and lab.lab.namespace_exists(name)
        left_inside = lab.lab.pids(name)
        assert left_inside  # the half-built host still has processes in it (the hanging "sshd")

        host = lab.lab.create(host_request)
        try:
            assert host.name == name and host.state == READY and host.address == stuck.address
            assert lab.lab.probe(host) == "ready"
            assert not set(left_inside) & set(lab.lab.pids(name))  # the rebuild killed what was left
        finally:
            lab.lab.delete(name)
        assert not lab.lab.namespace_exists(name)


class TestNames:
    def test_the_same_node_maps_to_the_same_namespace(self) -> None:
        assert host_name("scope", "node-1") == host_name("scope", "node-1")
        assert host_name("scope", "node-1") != host_name("other", "node-1")
        assert host_name("scope", "node-1").startswith(NAMESPACE_PREFIX)
        assert len(veth_name(host_name("scope", "node-1"))) <= 15  # the kernel's interface name limit

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"hostname": "not a host"}, "is not a valid host name"),
            ({"authorized_keys": {"Bad User": "ssh-ed25519 AAAA"}}, "is not a valid user name"),
        ],
    )
    def test_bad_requests_are_terminal(self, lab: LabHosts, changes: dict[str, object], message: str) -> None:
        from providers.drivers import TerminalError

        with pytest.raises(TerminalError, match=message):
            lab.lab.create(request(None, **changes))
