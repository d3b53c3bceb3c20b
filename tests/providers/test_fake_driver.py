"""The driver contract against the fake driver (PostgreSQL; the fake keeps its machines in the database)."""

from __future__ import annotations

import base64
import ipaddress
from collections import Counter

import paramiko
import pytest

from providers.drivers import Machine, MachineSpec, NotReady, TerminalError, TransientError
from providers.drivers.fake import MAX_CALL_SLEEP_S, FakeDriver
from providers.models import FakeMachine
from tests.providers.conftest import Clock, MakeDriver, Sleeps, spec


def rows(driver: FakeDriver) -> list[FakeMachine]:
    """Every machine the provider ever made, deleted ones included: how a leak shows."""
    return list(FakeMachine.objects.filter(provider_key=driver.provider_key))


def create_until_done(driver: FakeDriver, machine_spec: MachineSpec, limit: int = 60) -> tuple[Machine, list[str]]:
    """What the engine does: retry transient failures until the create succeeds."""
    outcomes: list[str] = []
    for _ in range(limit):
        try:
            machine = driver.create(machine_spec)
        except TransientError:
            outcomes.append("transient")
            continue
        outcomes.append("ok")
        return machine, outcomes
    raise AssertionError(f"create of {machine_spec.name} never succeeded: {outcomes}")


class TestCreate:
    def test_same_spec_twice_is_one_machine(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        first = driver.create(spec(1))
        second = driver.create(spec(1))
        assert first.machine_id == second.machine_id
        assert len(rows(driver)) == 1
        assert dict(first.tags) == {"loom-cluster": "c1", "loom-node": "c1-node-1"}
        assert first.name == "loom-c1-1"

    def test_create_that_failed_after_the_side_effect_is_found_by_the_retry(self, make_driver: MakeDriver) -> None:
        always_failing = make_driver(failure_rate="1", seed="after")
        healthy = make_driver(provider_key=always_failing.provider_key)
        # Every call fails; about half after making the machine. Find such a node (deterministic: seeded).
        for node in range(1, 50):
            with pytest.raises(TransientError):
                always_failing.create(spec(node))
            made = FakeMachine.objects.filter(provider_key=healthy.provider_key, node_key=f"c1-node-{node}")
            if made.exists():
                break
        else:
            pytest.fail("no create failed after its side effect")
        leaked = made.get()
        retried = healthy.create(spec(node))
        assert retried.machine_id == leaked.machine_id
        assert made.count() == 1

    def test_failures_before_the_side_effect_make_nothing(self, make_driver: MakeDriver) -> None:
        driver = make_driver(failure_rate="1", seed="before")
        results = Counter()
        for node in range(1, 41):
            with pytest.raises(TransientError):
                driver.create(spec(node))
            results[
                FakeMachine.objects.filter(provider_key=driver.provider_key, node_key=f"c1-node-{node}").exists()
            ] += 1
        assert results[True] > 5 and results[False] > 5  # both placements happen

    def test_terminal_failure_makes_nothing(self, make_driver: MakeDriver) -> None:
        driver = make_driver(terminal_failure_rate="1")
        with pytest.raises(TerminalError) as raised:
            driver.create(spec(1))
        assert raised.value.retryable is False
        assert rows(driver) == []

    def test_a_name_held_by_another_node_is_a_conflict(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        driver.create(spec(1))
        impostor = MachineSpec(
            cluster_key="c1", node_key="other", name="loom-c1-1", client_token="t-other", flavor="s", image="i"
        )
        with pytest.raises(TerminalError, match="already used"):
            driver.create(impostor)
        assert len(rows(driver)) == 1

    def test_a_deleted_node_can_be_created_again_as_a_new_machine(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        first = driver.create(spec(1))
        driver.delete(first.machine_id)
        second = driver.create(spec(1))
        assert second.machine_id != first.machine_id
        assert [row.deleted_at is None for row in rows(driver)] == [False, True]


class TestConfirm:
    def test_not_ready_while_booting_then_reachable(self, make_driver: MakeDriver, clock: Clock) -> None:
        driver = make_driver(latency_ms="1000", latency_jitter_ms="0")
        node = spec(1, fields={"ssh_key_resource": "lab-key"})
        machine = driver.create(node)
        assert machine.state == "pending"
        with pytest.raises(NotReady) as first:
            driver.confirm(spec(1), machine.machine_id)
        assert first.value.retry_after == pytest.approx(1.0)
        clock.advance(0.6)
        with pytest.raises(NotReady) as second:
            driver.confirm(spec(1), machine.machine_id)
        assert second.value.retry_after == pytest.approx(0.4)
        clock.advance(0.5)
        reachable = driver.confirm(node, machine.machine_id)
        assert reachable.machine_id == machine.machine_id
        assert reachable.hostname == "loom-c1-1.fake.loom.internal"
        assert reachable.ssh_user == "loom" and reachable.ssh_port == 22
        assert reachable.credentials_ref == "lab-key"
        assert ipaddress.ip_address(reachable.ip_addresses["bind_v4"]) in ipaddress.ip_network("10.0.0.0/8")
        assert ipaddress.ip_address(reachable.ip_addresses["access_v4"]) in ipaddress.ip_network("100.64.0.0/10")
        # A well-formed OpenSSH host key, stable per machine.
        kind, blob = reachable.host_key.split()
        assert kind == "ssh-ed25519"
        assert paramiko.Ed25519Key(data=base64.b64decode(blob)).get_name() == "ssh-ed25519"
        assert driver.confirm(node, machine.machine_id) == reachable
        assert driver.list_tagged()[0].state == "running"

    def test_boot_times_follow_the_configured_mean(self, make_driver: MakeDriver) -> None:
        driver = make_driver(latency_ms="2000", latency_jitter_ms="500", seed="boot")
        for node in range(1, 201):
            driver.create(spec(node))
        boots = [(row.ready_at - row.created_at).total_seconds() for row in rows(driver)]
        mean = sum(boots) / len(boots)
        assert 1.85 < mean < 2.15  # standard error 0.035 s: ±4 of them
        assert min(boots) > 0 and len(set(boots)) == len(boots)

    def test_addresses_are_unique_per_provider(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        addresses = []
        for node in range(1, 301):
            machine = driver.create(spec(node))
            addresses.append(driver.confirm(spec(node), machine.machine_id).ip_addresses)
        assert len({a["bind_v4"] for a in addresses}) == 300
        assert len({a["access_v4"] for a in addresses}) == 300
        assert not any(a["bind_v4"].endswith((".0", ".255")) for a in addresses)

    def test_unknown_or_foreign_machine_is_terminal(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        machine = driver.create(spec(1))
        with pytest.raises(TerminalError, match="does not exist"):
            driver.confirm(spec(1), "fake-nope")
        with pytest.raises(TerminalError, match="belongs to node"):
            driver.confirm(spec(2), machine.machine_id)
        with pytest.raises(TerminalError, match="does not exist"):
            make_driver().confirm(spec(1), machine.machine_id)  # another provider cannot see it


class TestDelete:
    def test_delete_is_idempotent(self, make_driver: MakeDriver) -> None:
        driver = make_driver()
        machine = driver.create(spec(1))
        driver.delete(machine.machine_id)
        driver.delete(machine.machine_id)
        driver.delete("fake-never-existed")
        assert driver.list_tagged() == []
        with pytest.raises(TerminalError):
            driver.confirm(spec(1), machine.machine_id)

    def test_delete_retried_after_failures_deletes_exactly_once(self, make_driver: MakeDriver) -> None:
        flaky = make_driver(failure_rate="0.5", seed="delete")
        healthy = make_driver(provider_key=flaky.provider_key)
        machines = [healthy.create(spec(node)) for node in range(1, 41)]
        failures = 0
        for machine in machines:
            while True:
                try:
                    flaky.delete(machine.machine_id)
                    break
                except TransientError:
                    failures += 1
        assert failures > 5
        assert healthy.list_tagged() == []
        assert all(row.deleted_at is not None for row in rows(healthy))

    def test_another_provider_cannot_delete_my_machine(self, make_driver: MakeDriver) -> None:
        mine = make_driver()
        machine = mine.create(spec(1))
        make_driver().delete(machine.machine_id)
        assert [m.machine_id for m in mine.list_tagged()] == [machine.machine_id]


class TestListTagged:
    def test_lists_this_providers_tagged_live_machines(self, make_driver: MakeDriver, clock: Clock) -> None:
        driver = make_driver()
        other = make_driver()
        kept = [driver.create(spec(node, cluster="a")) for node in (1, 2)]
        gone = driver.create(spec(3, cluster="b"))
        driver.delete(gone.machine_id)
        other.create(spec(1, cluster="a"))
        FakeMachine.objects.create(  # made outside Loom: no loom-cluster tag
            provider_key=driver.provider_key,
            machine_id="fake-manual",
            name="by-hand",
            client_token="manual",
            node_key="",
            tags={"owner": "ops"},
            created_at=clock(),
            ready_at=clock(),
        )
        listed = driver.list_tagged()
        assert [m.machine_id for m in listed] == [m.machine_id for m in kept]
        assert {m.node_key for m in listed} == {"a-node-1", "a-node-2"}
        assert all(m.cluster_key == "a" for m in listed)


class TestEventualConsistency:
    def test_fresh_machines_are_not_found_until_the_window_passes(self, make_driver: MakeDriver, clock: Clock) -> None:
        driver = make_driver(not_found_after_create="500")
        machine = driver.create(spec(1))
        clock.advance(0.2)
        with pytest.raises(TransientError, match="not found") as raised:
            driver.confirm(spec(1), machine.machine_id)
        assert raised.value.retryable is True
        assert raised.value.retry_after == pytest.approx(0.3)
        assert driver.list_tagged() == []
        with pytest.raises(TransientError, match="not found"):
            driver.delete(machine.machine_id)  # not "missing is success": the machine exists
        # The retried create is idempotent by client token even while listings cannot see the machine.
        assert driver.create(spec(1)).machine_id == machine.machine_id
        clock.advance(0.31)
        assert [m.machine_id for m in driver.list_tagged()] == [machine.machine_id]
        assert driver.confirm(spec(1), machine.machine_id).machine_id == machine.machine_id
        assert len(rows(driver)) == 1


class TestRandomness:
    @staticmethod
    def run(driver: FakeDriver) -> list[tuple[str, ...]]:
        """Outcomes and boot times of a fixed sequence of calls, for comparing runs."""
        trace: list[tuple[str, ...]] = []
        for node in range(1, 31):
            for _ in range(20):
                try:
                    machine = driver.create(spec(node))
                except (TransientError, TerminalError) as error:
                    trace.append((f"create {node}", type(error).__name__))
                    if isinstance(error, TerminalError):
                        break
                    continue
                row = FakeMachine.objects.get(machine_id=machine.machine_id)
                trace.append((f"create {node}", "ok", str(row.ready_at - row.created_at)))
                break
        return trace

    def test_same_seed_same_run(self, make_driver: MakeDriver) -> None:
        fields = {"failure_rate": "0.3", "terminal_failure_rate": "0.05", "latency_ms": "800", "seed": "s-1"}
        first = self.run(make_driver(**fields))
        assert first == self.run(make_driver(**fields))
        assert first != self.run(make_driver(**{**fields, "seed": "s-2"}))
        kinds = Counter(step[1] for step in first)
        assert kinds["TransientError"] > 0 and kinds["ok"] > 0

    def test_failure_rates_are_honoured(self, make_driver: MakeDriver) -> None:
        driver = make_driver(failure_rate="0.3", terminal_failure_rate="0.1", seed="rates")
        outcomes: Counter[str] = Counter()
        calls = 1000
        for node in range(1, calls + 1):
            try:
                driver.create(spec(node))
                outcomes["ok"] += 1
            except TransientError:
                outcomes["transient"] += 1
            except TerminalError:
                outcomes["terminal"] += 1
        # Seeded, so the counts are fixed; the bounds are ±5 standard deviations so any seed would pass.
        assert abs(outcomes["transient"] / calls - 0.3) < 0.073
        assert abs(outcomes["terminal"] / calls - 0.1) < 0.048
        made_despite_failure = len(rows(driver)) - outcomes["ok"]
        assert abs(made_despite_failure / outcomes["transient"] - 0.5) < 0.15  # half fail after the side effect

    def test_unseeded_driver_still_works(self, make_driver: MakeDriver) -> None:
        driver = make_driver(seed="")
        assert driver.create(spec(1)).name == "loom-c1-1"


class TestCallLatency:
    def test_only_the_api_round_trip_is_slept(self, make_driver: MakeDriver, sleeps: Sleeps) -> None:
        driver = make_driver(latency_ms="60000", call_latency_ms="create=200,confirm=0", seed="calls")
        machine = driver.create(spec(1))
        assert len(sleeps) == 1 and 0.05 < sleeps[0] < 0.5  # the 60 s boot is not slept
        with pytest.raises(NotReady):
            driver.confirm(spec(1), machine.machine_id)
        assert len(sleeps) == 1

    def test_in_call_sleep_is_capped(self, make_driver: MakeDriver, sleeps: Sleeps) -> None:
        make_driver(call_latency_ms="600000").list_tagged()
        assert sleeps == [MAX_CALL_SLEEP_S]


def test_no_leak_with_200_creates_at_30_percent_transient_failures(make_driver: MakeDriver) -> None:
    flaky = make_driver(failure_rate="0.3", seed="leak-proof")
    failures = 0
    machines = {}
    for node in range(1, 201):
        machine, outcomes = create_until_done(flaky, spec(node))
        failures += outcomes.count("transient")
        machines[node] = machine.machine_id
    observer = make_driver(provider_key=flaky.provider_key)
    made = rows(observer)
    assert failures > 40  # the scenario really exercised failures
    assert len(made) == 200  # every machine ever made, deleted or not: no second machine for any node
    assert Counter(row.node_key for row in made) == Counter(f"c1-node-{n}" for n in range(1, 201))
    assert {m.machine_id for m in observer.list_tagged()} == set(machines.values())
