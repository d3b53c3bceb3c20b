"""The ``static`` driver against real lab hosts (network namespaces with their own sshd; needs root): three
lab hosts are registered as a pool, nodes borrow them, the admin's cleanup script runs over SSH when they
are given back, and a failing cleanup quarantines the host."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from providers.credentials import ssh_credentials
from providers.drivers import DriverError, Machine, TerminalError, TransientError
from providers.drivers.static import StaticDriver, script_command
from providers.models import PoolHost, Provider
from providers.pool import pool_host_register, pool_host_update
from providers.services import provider_driver, reaper_scan
from providers.ssh import HostKeyMismatch, open_session
from tenants.models import AuditEvent, Tenant
from tests.lab.fixtures import LabHosts, LabNode
from tests.providers.test_static_pool_api import node_spec, static_provider

pytestmark = pytest.mark.django_db(transaction=True)

POOL_SIZE = 3


class Pool:
    """A static provider whose pool is the first three lab hosts, with a marker file on each host that the
    provider's cleanup script removes, so a test can see on which host the script ran."""

    def __init__(self, lab: LabHosts, tenant: Tenant, admin: Any, cleanup: str, **fields: str) -> None:
        self.lab = lab
        self.admin = admin
        self.marker = f"/root/loom-pool-marker-{uuid.uuid4().hex[:10]}"
        self.provider = static_provider(
            tenant,
            ssh_private_key=lab.driver.keypair.path.read_text(),
            cleanup_script=cleanup.replace("MARKER", self.marker),
            **fields,
        )
        self.nodes = lab.nodes[:POOL_SIZE]
        self.hosts = [
            pool_host_register(actor=admin, provider=self.provider, address=node.address) for node in self.nodes
        ]

    @property
    def driver(self) -> StaticDriver:
        driver = provider_driver(provider=self.provider)
        assert isinstance(driver, StaticDriver)
        return driver

    def node_of(self, host: PoolHost) -> LabNode:
        return next(node for node in self.nodes if node.address == host.address)

    def host(self, machine: Machine) -> PoolHost:
        return PoolHost.objects.get(pk=int(machine.machine_id.split("-")[1]))

    def place_markers(self) -> None:
        for node in self.nodes:
            with node.session() as session:
                session.run(["touch", self.marker])

    def markers(self) -> dict[str, bool]:
        found = {}
        for node in self.nodes:
            with node.session() as session:
                found[node.address] = session.run(["test", "-e", self.marker], check=False).exit_status == 0
        return found

    def remove_markers(self) -> None:
        for node in self.nodes:
            with node.session() as session:
                session.run(["rm", "-f", self.marker])


CLEANUP = """#!/bin/sh
set -e
# run as root (through sudo for other users), with the node's identity in the environment
test "$(id -u)" = 0
rm -f MARKER
echo "cleaned $LOOM_NODE of $LOOM_CLUSTER on $(hostname)"
"""
FAILING_CLEANUP = """echo "wiping the data disk" ; echo "mkfs: /dev/sdz: no such device" >&2 ; exit 3"""


@pytest.fixture
def make_pool(lab: LabHosts, tenant_a: Tenant, admin_a: Any) -> Any:
    made: list[Pool] = []

    def make(cleanup: str = CLEANUP, **fields: str) -> Pool:
        made.append(Pool(lab, tenant_a, admin_a, cleanup, **fields))
        return made[-1]

    yield make
    for pool in made:
        pool.remove_markers()


def in_threads(function: Callable[[int], Any], count: int) -> list[Any]:
    """Call ``function(0..count-1)`` from ``count`` threads released at once; each result or exception."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        try:
            barrier.wait()
            return function(index)
        except DriverError as error:
            return error
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as executor:
        return list(executor.map(run, range(count)))


class TestCreate:
    def test_concurrent_creates_get_distinct_hosts_and_the_rest_a_clear_error(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        results = in_threads(lambda n: driver.create(node_spec(n + 1)), 8)
        machines = [result for result in results if isinstance(result, Machine)]
        errors = [result for result in results if not isinstance(result, Machine)]
        assert len(machines) == POOL_SIZE and len(errors) == 8 - POOL_SIZE
        assert {pool.host(m).pk for m in machines} == {host.pk for host in pool.hosts}
        for error in errors:
            assert isinstance(error, TransientError)
            assert str(error) == "pool pool has no free host (3 allocated, 0 broken)"
        held = PoolHost.objects.filter(state="allocated")
        assert sorted(held.values_list("node_key", flat=True)) == sorted(m.node_key for m in machines)
        assert AuditEvent.objects.filter(entity_kind="pool host", action="allocate").count() == POOL_SIZE

    def test_a_fourth_create_is_a_transient_no_free_host_error_naming_the_counts(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        for number in (1, 2, 3):
            driver.create(node_spec(number))
        with pytest.raises(TransientError, match=r"^pool pool has no free host \(3 allocated, 0 broken\)$"):
            driver.create(node_spec(4))

    def test_the_same_node_gets_the_host_it_has_even_when_its_creates_race(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        first = driver.create(node_spec(1))
        assert driver.create(node_spec(1)) == first
        assert first.machine_id == f"static-{pool.host(first).pk}-1" and first.state == "allocated"
        assert dict(first.tags) == {"loom-cluster": "c1", "loom-node": "c1-node-1"}
        twins = in_threads(lambda n: driver.create(node_spec(2)), 6)
        assert all(isinstance(twin, Machine) for twin in twins), twins
        assert len({twin.machine_id for twin in twins}) == 1
        assert PoolHost.objects.filter(state="allocated").count() == 2
        assert PoolHost.objects.filter(state="free").count() == 1


class TestConfirm:
    def test_confirm_reads_the_hostname_pins_the_host_key_and_hands_out_a_working_reference(
        self, make_pool: Any
    ) -> None:
        pool = make_pool()
        driver = pool.driver
        spec = node_spec(1)
        machine = driver.create(spec)
        node = pool.node_of(pool.host(machine))
        reachable = driver.confirm(spec, machine.machine_id)
        assert reachable.machine_id == machine.machine_id
        assert reachable.hostname == node.hostname
        assert dict(reachable.ip_addresses) == {"access_v4": node.address, "bind_v4": node.address}
        assert (reachable.ssh_user, reachable.ssh_port) == ("root", 22)
        assert reachable.host_key == node.host_key == pool.host(machine).host_key  # pinned on first contact
        assert reachable.credentials_ref == f"static:{pool.provider.pk}/{pool.host(machine).pk}"
        credentials = ssh_credentials(reachable.credentials_ref, user="somebody")
        assert credentials.user == "root" and "PRIVATE KEY" in credentials.private_key
        with open_session(node.address, user="root", credentials_ref=reachable.credentials_ref,
                          host_key=reachable.host_key) as session:  # fmt: skip
            assert session.run(["hostname"]).stdout.strip() == node.hostname
        assert driver.confirm(spec, machine.machine_id) == reachable  # the pinned key is verified, and matches

    def test_a_host_presenting_another_key_than_registered_is_refused(self, make_pool: Any) -> None:
        pool = make_pool()
        impostor_key = pool.lab.nodes[3].host_key  # the fourth lab host's key: not this host's
        PoolHost.objects.update(host_key=impostor_key)
        machine = pool.driver.create(node_spec(1))
        with pytest.raises(HostKeyMismatch, match="changed"):
            pool.driver.confirm(node_spec(1), machine.machine_id)

    def test_confirm_checks_the_allocation(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        machine = driver.create(node_spec(1))
        with pytest.raises(TerminalError, match="belongs to node c1-node-1"):
            driver.confirm(node_spec(2), machine.machine_id)
        driver.delete(machine.machine_id)
        with pytest.raises(TerminalError, match="not allocated from this pool"):
            driver.confirm(node_spec(1), machine.machine_id)


class TestDelete:
    def test_delete_runs_the_cleanup_script_on_that_host_and_returns_it_to_the_pool(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        machine = driver.create(node_spec(1))
        address = pool.host(machine).address
        pool.place_markers()
        driver.delete(machine.machine_id)
        assert pool.markers() == {node.address: node.address != address for node in pool.nodes}
        host = pool.host(machine)
        assert (host.state, host.node_key, host.tags, host.last_error) == ("free", "", {}, "")
        assert driver.list_tagged() == []
        actions = list(
            AuditEvent.objects.filter(entity_kind="pool host").order_by("pk").values_list("action", flat=True)
        )
        assert actions[-2:] == ["allocate", "release"]
        # The returned host is handed out again, as a new machine; a late delete of the old one is a no-op.
        pool.place_markers()
        again = [driver.create(node_spec(n)) for n in (2, 3, 4)]
        assert machine.machine_id not in {m.machine_id for m in again}
        driver.delete(machine.machine_id)
        assert all(pool.markers().values())
        assert PoolHost.objects.filter(state="allocated").count() == 3

    def test_cleanup_as_another_user_goes_through_sudo(self, make_pool: Any, sudo_users: dict[str, str]) -> None:
        pool = make_pool()
        first = pool.nodes[0]  # the lab authorizes its sudo users on its first host only
        PoolHost.objects.exclude(address=first.address).update(state="broken")
        PoolHost.objects.filter(address=first.address).update(ssh_user=sudo_users["sudo"])
        driver = pool.driver
        machine = driver.create(node_spec(1))
        reachable = driver.confirm(node_spec(1), machine.machine_id)
        assert reachable.ssh_user == sudo_users["sudo"]
        assert ssh_credentials(reachable.credentials_ref, user="root").user == sudo_users["sudo"]
        pool.place_markers()
        driver.delete(machine.machine_id)
        assert pool.markers()[first.address] is False  # removed from /root by the script, which checks it is root
        assert pool.host(machine).state == "free"

    def test_a_failing_cleanup_marks_the_host_broken_and_it_is_never_handed_out(self, make_pool: Any) -> None:
        pool = make_pool(cleanup=FAILING_CLEANUP)
        driver = pool.driver
        machines = [driver.create(node_spec(n)) for n in (1, 2, 3)]
        driver.delete(machines[0].machine_id)  # succeeds: the node is gone, the host quarantined
        host = pool.host(machines[0])
        assert host.state == "broken" and host.node_key == ""
        assert "cleanup after node c1-node-1 failed" in host.last_error
        assert "exited with status 3" in host.last_error and "mkfs: /dev/sdz: no such device" in host.last_error
        assert "wiping the data disk" in host.last_error  # the output's tail is kept for the admin
        assert AuditEvent.objects.filter(entity_kind="pool host", action="broken").count() == 1
        with pytest.raises(TransientError, match=r"no free host \(2 allocated, 1 broken\)"):
            driver.create(node_spec(4))
        assert [m.machine_id for m in driver.list_tagged()] == [m.machine_id for m in machines[1:]]
        pool_host_update(actor=pool.admin, host=host, changes={"state": "free"})  # the admin repaired it
        assert pool.host(driver.create(node_spec(4))).pk == host.pk

    def test_a_user_without_sudo_breaks_the_host_with_a_clear_error(
        self, make_pool: Any, sudo_users: dict[str, str]
    ) -> None:
        pool = make_pool()
        first = pool.nodes[0]
        PoolHost.objects.exclude(address=first.address).update(state="broken")
        PoolHost.objects.filter(address=first.address).update(ssh_user=sudo_users["nopw"])
        driver = pool.driver
        machine = driver.create(node_spec(1))
        driver.delete(machine.machine_id)
        host = pool.host(machine)
        assert host.state == "broken" and "without a password" in host.last_error

    def test_an_unreachable_host_is_broken_too(self, make_pool: Any) -> None:
        pool = make_pool()
        PoolHost.objects.exclude(pk=pool.hosts[0].pk).update(state="broken")
        PoolHost.objects.filter(pk=pool.hosts[0].pk).update(ssh_port=1)  # nothing listens there
        driver = pool.driver
        machine = driver.create(node_spec(1))
        driver.delete(machine.machine_id)
        host = pool.host(machine)
        assert host.state == "broken" and "connection refused" in host.last_error

    def test_a_cleanup_in_progress_is_not_run_twice_but_an_abandoned_one_is_taken_over(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        machine = driver.create(node_spec(1))
        host = pool.host(machine)
        started = timezone.now()
        PoolHost.objects.filter(pk=host.pk).update(state="cleaning", cleaning_since=started)  # a delete is running
        pool.place_markers()
        with pytest.raises(TransientError, match="is being cleaned since"):
            driver.delete(machine.machine_id)
        assert pool.markers()[host.address] is True
        # That delete's worker died long ago (its script was killed on the host by now): take over.
        PoolHost.objects.filter(pk=host.pk).update(cleaning_since=started - timedelta(hours=1))
        driver.delete(machine.machine_id)
        assert pool.markers()[host.address] is False and pool.host(machine).state == "free"

    def test_the_reaper_gives_back_hosts_whose_node_is_gone(self, make_pool: Any) -> None:
        pool = make_pool()
        driver = pool.driver
        kept, orphan = driver.create(node_spec(1)), driver.create(node_spec(2))
        report = reaper_scan(provider=pool.provider, live_node_keys={"c1-node-1"}, grace_seconds=0,
                             now=timezone.now())  # fmt: skip
        assert report.deleted == (orphan.machine_id,)
        assert pool.host(orphan).state == "free" and pool.host(kept).state == "allocated"


def test_script_command_honours_the_interpreter_line() -> None:
    assert script_command("/tmp/s", "#!/bin/bash -e\necho") == ["/bin/bash", "-e", "/tmp/s"]
    assert script_command("/tmp/s", "#!/usr/bin/env python3\nprint()") == ["/usr/bin/env", "python3", "/tmp/s"]
    assert script_command("/tmp/s", "rm -rf /srv/data") == ["/bin/sh", "/tmp/s"]


def test_the_driver_needs_a_provider_row_key(db: None) -> None:
    with pytest.raises(TerminalError, match="key of a provider row"):
        StaticDriver({}, provider_key="somewhere-else")


def test_a_provider_without_a_key_fails_clearly_when_it_must_connect(tenant_a: Tenant, admin_a: Any) -> None:
    provider = static_provider(tenant_a)
    Provider.objects.filter(pk=provider.pk).update(secret_data="")
    provider.refresh_from_db()
    pool_host_register(actor=admin_a, provider=provider, address="10.0.0.1")
    driver = provider_driver(provider=provider)
    machine = driver.create(node_spec(1))
    with pytest.raises(TerminalError, match="ssh_private_key is empty"):
        driver.confirm(node_spec(1), machine.machine_id)
