"""The orphan reaper: report tagged machines with no live node, delete them only after the grace period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from providers.drivers import DriverError, TransientError
from providers.drivers.fake import FakeDriver
from providers.models import FakeMachine, OrphanSighting, Provider
from providers.secrets import encrypt_json
from providers.services import provider_driver, provider_fields, provider_key, reaper_scan
from tenants.models import AuditEvent, Tenant
from tests.factories import TenantFactory
from tests.providers.conftest import T0, spec

GRACE = 60


def fake_provider(tenant: Tenant, name: str = "fake-a", **fields: str) -> Provider:
    provisioner = {"latency_ms": "0", "seed": "reaper", **fields}
    return Provider.objects.create(
        tenant=tenant,
        name=name,
        provider_type="fake",
        document={"name": name, "providertype": "fake", "provisioner": provisioner},
    )


@pytest.fixture
def tenant(db: None) -> Tenant:
    return TenantFactory(name="reaper-tenant")


@pytest.fixture
def provider(tenant: Tenant) -> Provider:
    return fake_provider(tenant)


@pytest.fixture
def machines(provider: Provider) -> dict[int, str]:
    """Nodes 1..3 of cluster c1, each with a machine."""
    driver = provider_driver(provider=provider)
    return {node: driver.create(spec(node)).machine_id for node in (1, 2, 3)}


def listed(provider: Provider) -> set[str]:
    return {m.machine_id for m in provider_driver(provider=provider).list_tagged()}


def test_orphans_are_reported_first_and_deleted_after_the_grace_period(
    provider: Provider, machines: dict[int, str]
) -> None:
    live = {"c1-node-1"}
    first = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0)
    assert first.scanned == 3
    assert {o.node_key for o in first.orphans} == {"c1-node-2", "c1-node-3"}
    assert set(first.waiting) == {machines[2], machines[3]}
    assert first.deleted == () and first.failed == ()
    assert listed(provider) == set(machines.values())  # reported, untouched

    later = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0 + timedelta(seconds=30))
    assert set(later.waiting) == {machines[2], machines[3]}
    assert {o.first_seen for o in later.orphans} == {T0}  # the first sighting does not move

    # Node 3 turns out to be live after all (say its row was committed late): its sighting is dropped.
    live.add("c1-node-3")
    cleared = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0 + timedelta(seconds=45))
    assert cleared.cleared == (machines[3],)

    due = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0 + timedelta(seconds=61))
    assert due.deleted == (machines[2],) and due.waiting == ()
    assert [o.deleted for o in due.orphans] == [True]
    assert listed(provider) == {machines[1], machines[3]}
    sighting = OrphanSighting.objects.get(machine_id=machines[2])
    assert sighting.deleted_at == T0 + timedelta(seconds=61) and sighting.tenant_id == provider.tenant_id
    event = AuditEvent.objects.get(action="reap")
    assert event.entity_name == machines[2] and event.summary["node"] == "c1-node-2"
    assert event.tenant_id == provider.tenant_id

    quiet = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0 + timedelta(seconds=120))
    assert quiet.orphans == () and quiet.deleted == ()
    assert OrphanSighting.objects.filter(machine_id=machines[2]).exists()  # the record of what was reaped stays


def test_a_machine_orphaned_again_gets_a_fresh_grace_period(provider: Provider, machines: dict[int, str]) -> None:
    everyone = {"c1-node-1", "c1-node-2", "c1-node-3"}
    reaper_scan(provider=provider, live_node_keys=everyone - {"c1-node-2"}, grace_seconds=GRACE, now=T0)
    reaper_scan(provider=provider, live_node_keys=everyone, grace_seconds=GRACE, now=T0 + timedelta(seconds=50))
    again = T0 + timedelta(seconds=100)
    report = reaper_scan(provider=provider, live_node_keys=everyone - {"c1-node-2"}, grace_seconds=GRACE, now=again)
    assert report.waiting == (machines[2],) and report.orphans[0].first_seen == again


def test_grace_zero_deletes_on_the_first_scan(provider: Provider, machines: dict[int, str]) -> None:
    report = reaper_scan(provider=provider, live_node_keys=set(), grace_seconds=0, now=T0)
    assert set(report.deleted) == set(machines.values())
    assert listed(provider) == set()


def test_a_failing_delete_is_reported_and_retried_next_scan(
    provider: Provider, machines: dict[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_delete = FakeDriver.delete

    def failing_delete(self: FakeDriver, machine_id: str) -> None:
        raise TransientError("simulated 503")

    monkeypatch.setattr(FakeDriver, "delete", failing_delete)
    live = {"c1-node-1", "c1-node-3"}
    reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0)
    failed = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0 + timedelta(seconds=90))
    assert failed.failed == (machines[2],) and failed.deleted == ()
    assert failed.orphans[0].error == "simulated 503"
    assert OrphanSighting.objects.get(machine_id=machines[2]).last_error == "simulated 503"

    monkeypatch.setattr(FakeDriver, "delete", real_delete)
    retried = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=T0 + timedelta(seconds=95))
    assert retried.deleted == (machines[2],)
    assert OrphanSighting.objects.get(machine_id=machines[2]).last_error == ""


def test_a_failing_listing_changes_nothing(provider: Provider, machines: dict[int, str]) -> None:
    broken = fake_provider(provider.tenant, name="fake-broken", failure_rate="1")
    with pytest.raises(DriverError):
        reaper_scan(provider=broken, live_node_keys=set(), grace_seconds=0, now=T0)
    assert not OrphanSighting.objects.exists()


def test_providers_and_tenants_do_not_see_each_others_machines(provider: Provider, machines: dict[int, str]) -> None:
    neighbour = fake_provider(provider.tenant, name="fake-b")
    stranger = fake_provider(TenantFactory(name="other-tenant"), name="fake-a")
    for other in (neighbour, stranger):
        report = reaper_scan(provider=other, live_node_keys=set(), grace_seconds=0, now=T0)
        assert report.scanned == 0 and report.deleted == ()
    assert listed(provider) == set(machines.values())


def test_a_tagged_machine_without_a_node_tag_is_an_orphan(provider: Provider, machines: dict[int, str]) -> None:
    FakeMachine.objects.create(  # half-tagged, e.g. by an older Loom or by hand
        provider_key=provider_key(provider=provider),
        machine_id="fake-half-tagged",
        name="loom-c1-9",
        client_token="manual",
        node_key="",
        tags={"loom-cluster": "c1"},
        created_at=timezone.now() - timedelta(hours=1),
        ready_at=timezone.now() - timedelta(hours=1),
    )
    everyone = {"c1-node-1", "c1-node-2", "c1-node-3"}
    report = reaper_scan(provider=provider, live_node_keys=everyone, grace_seconds=GRACE, now=T0)
    assert [(o.machine_id, o.cluster_key, o.node_key) for o in report.orphans] == [("fake-half-tagged", "c1", "")]


class TestProviderDriver:
    def test_fields_merge_admin_secrets_and_user_fields(self, tenant: Tenant) -> None:
        provider = fake_provider(tenant, name="with-secret")
        provider.secret_data = encrypt_json({"api_password": "s3cret-value"})
        provider.save()
        fields = provider_fields(provider=provider, user_fields={"seed": "from-user"})
        assert fields["api_password"] == "s3cret-value"
        assert fields["seed"] == "from-user" and fields["latency_ms"] == "0"

    def test_provider_key_is_per_provider_and_tenant(self, provider: Provider) -> None:
        assert provider_key(provider=provider) == f"tenant-{provider.tenant_id}/provider-{provider.pk}"
        assert provider_driver(provider=provider).provider_key == provider_key(provider=provider)


def test_a_new_machine_reusing_a_reaped_id_gets_its_own_grace_period(
    provider: Provider, machines: dict[int, str]
) -> None:
    start = timezone.now() - timedelta(hours=1)  # listings hide machines "created" in the future
    live = {"c1-node-1", "c1-node-3"}
    reaper_scan(provider=provider, live_node_keys=live, grace_seconds=0, now=start)
    # A cloud that reuses ids hands machines[2] to a brand-new machine, made after the reap.
    FakeMachine.objects.filter(machine_id=machines[2]).update(
        deleted_at=None, created_at=start + timedelta(seconds=10), ready_at=start + timedelta(seconds=10)
    )
    later = start + timedelta(seconds=20)
    report = reaper_scan(provider=provider, live_node_keys=live, grace_seconds=GRACE, now=later)
    assert report.waiting == (machines[2],) and report.deleted == ()
    assert report.orphans[0].first_seen == later
