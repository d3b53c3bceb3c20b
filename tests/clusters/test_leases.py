"""Leases: the policy arithmetic, the first lease at create, extensions within step and max, the policy a
cluster keeps from its creation, and the lease janitor (warning once per expiry, deleting expired clusters,
skipping busy ones) run with a fixed ``now``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from clusters.engine.signals import JobEvent, JobEventData, job_event
from clusters.features.hooks import JobRequest, JobVetoed, _hooks
from clusters.features.leases import LeasePolicy, lease_end, lease_policy
from clusters.models import Cluster, Job
from clusters.services.lease_expiry import lease_janitor, lease_janitor_run
from clusters.services.lifecycle import cluster_delete
from clusters.services.operations import cluster_lease_extend
from templates_app.services import catalog_entity_save, catalog_import
from tenants.errors import ApplicationError, Conflict
from tenants.models import AuditEvent, Tenant

from .engine_helpers import run_by_hand
from .test_operations import create, fleet_catalog

HOUR = 3_600_000
DAY = 24 * HOUR
LEASE = {"initial": "1d", "max": "3d", "step": "1d"}
T0 = datetime(2030, 1, 1, tzinfo=UTC)


# --- the policy ----------------------------------------------------------------------------------------------


def test_the_first_lease_is_the_templates_or_a_shorter_one_asked_for():
    policy = LeasePolicy(initial_ms=DAY, max_ms=3 * DAY, step_ms=DAY)
    assert policy.initial_lease_ms(None) == DAY
    assert policy.initial_lease_ms(2 * HOUR) == 2 * HOUR
    with pytest.raises(ApplicationError) as caught:
        policy.initial_lease_ms(2 * DAY)
    assert caught.value.fields == {
        "initialLeaseDuration": ["172800000 ms (2d) is longer than the template's initial lease of 86400000 ms (1d)"]
    }
    with pytest.raises(ApplicationError, match="longer than the template's max lease"):
        LeasePolicy(max_ms=3 * DAY).initial_lease_ms(4 * DAY)
    assert LeasePolicy(max_ms=3 * DAY).initial_lease_ms(None) == 0  # no initial lease: never expires
    assert LeasePolicy().initial_lease_ms(400 * DAY) == 400 * DAY


@pytest.mark.parametrize(
    ("new", "problem"),
    [
        (T0 + timedelta(days=2), None),  # one step
        (T0 + timedelta(hours=1), None),  # shorter is fine
        (T0 + timedelta(days=2, seconds=1), "one extension may add at most 86400000 ms (1d)"),
        (T0 - timedelta(hours=1), "is not in the future"),
    ],
)
def test_an_extension_adds_at_most_one_step(new, problem):
    policy = LeasePolicy(initial_ms=DAY, max_ms=10 * DAY, step_ms=DAY)
    check = {"created_at": T0, "expires_at": T0 + timedelta(days=1), "new": new, "now": T0, "field_name": "f"}
    if problem is None:
        policy.check_extension(**check)
    else:
        with pytest.raises(ApplicationError, match=re.escape(problem)) as caught:
            policy.check_extension(**check)
        assert list(caught.value.fields) == ["f"]


def test_an_extension_never_goes_beyond_max_from_creation():
    policy = LeasePolicy(initial_ms=DAY, max_ms=3 * DAY, step_ms=0)
    expires = T0 + timedelta(days=2)
    policy.check_extension(created_at=T0, expires_at=expires, new=T0 + timedelta(days=3), now=T0, field_name="f")
    with pytest.raises(ApplicationError, match=r"at most 259200000 ms \(3d\) from the cluster's creation"):
        policy.check_extension(created_at=T0, expires_at=expires, new=T0 + timedelta(days=3, seconds=1), now=T0,
                               field_name="f")  # fmt: skip
    assert policy.next_limit(created_at=T0, expires_at=expires) == T0 + timedelta(days=3)
    stepped = LeasePolicy(initial_ms=DAY, max_ms=3 * DAY, step_ms=HOUR)
    assert stepped.next_limit(created_at=T0, expires_at=expires) == expires + timedelta(hours=1)
    assert LeasePolicy().next_limit(created_at=T0, expires_at=expires) is None
    # Unlimited max, but a step: each extension is still bounded.
    with pytest.raises(ApplicationError, match="at most 3600000 ms"):
        LeasePolicy(step_ms=HOUR).check_extension(
            created_at=T0, expires_at=expires, new=expires + timedelta(hours=2), now=T0, field_name="f"
        )


def test_lease_arithmetic_never_overflows():
    assert lease_end(T0, 10**17).year == 9999
    assert LeasePolicy(max_ms=10**17).latest_expiry(T0).year == 9999


# --- create and extend ---------------------------------------------------------------------------------------


@pytest.fixture
def leased(tenant_a: Tenant) -> None:
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog(lease=LEASE))


@pytest.mark.django_db
def test_create_gives_the_templates_first_lease(leased, tenant_a, admin_a):
    before = timezone.now()
    cluster, _ = create(admin_a, tenant_a, "a", template="leased")
    assert before <= cluster.expires_at - timedelta(days=1) <= cluster.created_at
    short, _ = create(admin_a, tenant_a, "b", template="leased", lease_ms=2 * HOUR)
    assert short.expires_at - timedelta(hours=2) <= short.created_at
    forever, _ = create(admin_a, tenant_a, "c", template="fleet")
    assert forever.expires_at is None
    with pytest.raises(ApplicationError, match="initialLeaseDuration"):
        create(admin_a, tenant_a, "d", template="leased", lease_ms=2 * DAY)
    assert not Cluster.objects.filter(name="d").exists()


@pytest.mark.django_db
def test_extensions_follow_step_and_max_and_reset_the_warning(leased, tenant_a, user_a):
    cluster, _ = create(user_a, tenant_a, template="leased")
    created, first = cluster.created_at, cluster.expires_at
    Cluster.objects.filter(pk=cluster.pk).update(lease_warned_at=timezone.now())
    with pytest.raises(ApplicationError, match="one extension may add at most") as caught:
        cluster_lease_extend(user=user_a, cluster=cluster, extend_by_ms=DAY + 1)
    assert list(caught.value.fields) == ["extend_by"]
    extended = cluster_lease_extend(user=user_a, cluster=cluster, extend_by_ms=DAY)
    assert extended.expires_at == first + timedelta(days=1) and extended.lease_warned_at is None
    cluster.refresh_from_db()
    assert cluster.expires_at == first + timedelta(days=1) and cluster.lease_warned_at is None
    Cluster.objects.filter(pk=cluster.pk).update(expires_at=created + timedelta(days=3, hours=-1))
    with pytest.raises(ApplicationError) as caught:
        cluster_lease_extend(user=user_a, cluster=cluster, extend_by_ms=2 * HOUR)
    (problem,) = caught.value.fields["extend_by"]
    assert "at most 259200000 ms (3d) from the cluster's creation" in problem
    cluster_lease_extend(user=user_a, cluster=cluster, expires_at=created + timedelta(days=3))
    with pytest.raises(ApplicationError) as caught:
        cluster_lease_extend(user=user_a, cluster=cluster, expires_at=created + timedelta(days=4, seconds=1))
    step, total = caught.value.fields["expires_at"]  # both rules broken, both named
    assert "one extension may add at most" in step and "from the cluster's creation" in total
    event = AuditEvent.objects.filter(tenant=tenant_a, action="extend-lease").order_by("-pk").first()
    assert event.actor == user_a and event.summary["after"] == (created + timedelta(days=3)).isoformat()


@pytest.mark.django_db
def test_leases_that_cannot_be_extended(leased, tenant_a, admin_a):
    forever, _ = create(admin_a, tenant_a, "forever", template="fleet")
    with pytest.raises(Conflict, match="never expires"):
        cluster_lease_extend(user=admin_a, cluster=forever, extend_by_ms=HOUR)
    cluster, job = create(admin_a, tenant_a, "busy", template="leased")
    run_by_hand(job)
    delete = cluster_delete(user=admin_a, cluster=cluster)
    with pytest.raises(Conflict, match=f"being deleted by job {delete.pk}"):
        cluster_lease_extend(user=admin_a, cluster=cluster, extend_by_ms=HOUR)
    run_by_hand(delete)
    with pytest.raises(Conflict, match="is terminated"):
        cluster_lease_extend(user=admin_a, cluster=cluster, extend_by_ms=HOUR)


@pytest.mark.django_db
def test_a_cluster_keeps_the_lease_policy_it_was_created_under(tenant_a, admin_a):
    data = fleet_catalog(lease=LEASE)
    data["clustertemplates"].append({"name": "child", "extends": {"name": "leased"}})
    catalog_import(tenant=tenant_a, user=None, data=data)
    cluster, _ = create(admin_a, tenant_a, "inherits", template="child")
    assert lease_policy(cluster) == LeasePolicy(initial_ms=DAY, max_ms=3 * DAY, step_ms=DAY)
    assert cluster.expires_at is not None
    parent = next(t for t in data["clustertemplates"] if t["name"] == "leased")
    catalog_entity_save(tenant=tenant_a, user=admin_a, kind_key="clustertemplates", name="leased",
                        data={**parent, "administration": {"leaseduration": {"initial": "2h", "max": "4h"}}})  # fmt: skip
    assert lease_policy(cluster) == LeasePolicy(initial_ms=DAY, max_ms=3 * DAY, step_ms=DAY)
    later, _ = create(admin_a, tenant_a, "later", template="child")
    assert lease_policy(later) == LeasePolicy(initial_ms=2 * HOUR, max_ms=4 * HOUR, step_ms=0)


# --- the janitor ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_janitor_warns_once_per_expiry(leased, tenant_a, admin_a):
    cluster, _ = create(admin_a, tenant_a, template="leased")
    expires = cluster.expires_at
    warning = timedelta(seconds=settings.LOOM_LEASE_WARNING_SECONDS)
    assert lease_janitor_run(now=expires - warning - timedelta(seconds=1)).warned == []  # not yet
    now = expires - timedelta(hours=2)
    assert lease_janitor_run(now=now).warned == [cluster.pk]
    assert lease_janitor_run(now=now + timedelta(minutes=1)).warned == []
    cluster.refresh_from_db()
    assert cluster.lease_warned_at == now
    # An extension is a new expiry, warned about in its turn.
    cluster_lease_extend(user=admin_a, cluster=cluster, extend_by_ms=2 * HOUR, now=now)
    assert lease_janitor_run(now=now + timedelta(hours=1)).warned == [cluster.pk]


@pytest.mark.django_db
def test_the_janitor_deletes_expired_clusters_and_skips_busy_ones(leased, tenant_a, admin_a):
    idle, job = create(admin_a, tenant_a, "idle", template="leased")
    run_by_hand(job)
    busy, busy_job = create(admin_a, tenant_a, "busy", template="leased")
    forever, _ = create(admin_a, tenant_a, "forever", template="fleet")
    now = max(idle.expires_at, busy.expires_at) + timedelta(seconds=1)

    report = lease_janitor_run(now=now)
    assert (report.expired, report.skipped) == ([idle.pk], [busy.pk])
    delete = Job.objects.filter(cluster=idle).latest("pk")
    assert (delete.operation, delete.status, delete.requested_by) == ("delete", Job.Status.RUNNING, None)
    event = AuditEvent.objects.get(tenant=tenant_a, action="delete")
    assert event.actor is None and event.summary["reason"] == "lease expired"

    # Next run: the delete is under way, and the busy cluster's create has not ended yet.
    report = lease_janitor_run(now=now)
    assert (report.expired, sorted(report.skipped)) == ([], sorted([idle.pk, busy.pk]))
    run_by_hand(delete)
    run_by_hand(busy_job)
    report = lease_janitor_run(now=now)
    assert (report.expired, report.skipped) == ([busy.pk], [])
    idle.refresh_from_db()
    assert idle.status == Cluster.Status.TERMINATED
    assert not Job.objects.filter(cluster=forever, operation="delete").exists()  # no lease, never expires


@pytest.mark.django_db
def test_a_failed_expiry_delete_is_retried_not_repeated(leased, tenant_a, admin_a):
    cluster, job = create(admin_a, tenant_a, template="leased")
    run_by_hand(job)
    now = cluster.expires_at + timedelta(seconds=1)
    assert lease_janitor_run(now=now).expired == [cluster.pk]
    delete = Job.objects.get(cluster=cluster, operation="delete")
    run_by_hand(delete, fail=lambda task: task.node.number == 1001)
    cluster.refresh_from_db()
    assert (delete.status, cluster.status) == (Job.Status.FAILED, Cluster.Status.INCOMPLETE)
    report = lease_janitor_run(now=now)
    assert (report.expired, report.retried) == ([], [cluster.pk])
    delete.refresh_from_db()
    assert delete.status == Job.Status.RUNNING and Job.objects.filter(cluster=cluster).count() == 2
    retry = AuditEvent.objects.get(tenant=tenant_a, action="retry")
    assert retry.actor is None and retry.summary["reason"] == "lease expired"
    run_by_hand(delete)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED


def refuse_deletes(request: JobRequest) -> None:
    if request.operation == "delete":
        raise JobVetoed("change freeze")


@pytest.mark.django_db
def test_a_vetoed_expiry_is_tried_again_next_run(leased, tenant_a, admin_a, settings):
    cluster, job = create(admin_a, tenant_a, template="leased")
    run_by_hand(job)
    now = cluster.expires_at + timedelta(seconds=1)
    settings.LOOM_JOB_HOOKS = [f"{__name__}.refuse_deletes"]
    _hooks.cache_clear()
    try:
        assert lease_janitor_run(now=now).skipped == [cluster.pk]
    finally:
        settings.LOOM_JOB_HOOKS = []
        _hooks.cache_clear()
    assert lease_janitor_run(now=now).expired == [cluster.pk]


def test_the_janitor_sends_lease_events_after_commit(workers, tenant_a, admin_a):
    """Transactional, with a broker (``workers``; no worker started): events go out only once committed."""
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog(lease=LEASE))
    received: list[JobEventData] = []

    def receiver(sender: Any, data: JobEventData, **kwargs: Any) -> None:
        received.append(data)

    cluster, job = create(admin_a, tenant_a, template="leased")
    run_by_hand(job)
    job_event.connect(receiver)
    try:
        lease_janitor_run(now=cluster.expires_at - timedelta(hours=1))
        lease_janitor_run(now=cluster.expires_at + timedelta(seconds=1))
    finally:
        job_event.disconnect(receiver)
    delete = Job.objects.filter(cluster=cluster, operation="delete").get()
    lease_events = [(d.event, d.cluster_id, d.job_id) for d in received if d.event.startswith("cluster.")]
    assert lease_events == [
        (JobEvent.LEASE_WARNING, cluster.pk, None),
        (JobEvent.LEASE_EXPIRED, cluster.pk, delete.pk),
    ]
    assert f"lease of cluster {cluster.name} ended" in received[-1].message


def test_beat_runs_the_lease_janitor(db):
    entry = settings.CELERY_BEAT_SCHEDULE["lease-janitor"]
    assert entry == {"task": "clusters.tasks.lease_janitor", "schedule": settings.LOOM_LEASE_JANITOR_SECONDS}
    assert lease_janitor() == {"warned": 0, "expired": 0, "retried": 0, "skipped": 0}
