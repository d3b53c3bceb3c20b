"""The engine's control plane on PostgreSQL: worker budgets and fair share, pause/abort/resume, the janitor,
heartbeats, staged mode, job events, veto hooks, per-template limits and pinned services.

Jobs are driven by hand (``Driver`` plays the workers); ``transactional_db`` where ``on_commit`` must fire.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Q
from django.utils import timezone

from clusters.engine.broker_watch import worker_restarted
from clusters.engine.core import (
    Ready,
    job_abort,
    job_pause,
    job_retry,
    job_start,
    task_claim,
    task_finish,
    tenant_dispatch,
)
from clusters.engine.heartbeat import Heartbeat
from clusters.engine.janitor import janitor_run
from clusters.engine.pins import pinned_service_documents
from clusters.engine.signals import JobEvent, JobEventData, job_event
from clusters.features.hooks import JobRequest, JobVetoed, _hooks
from clusters.features.leases import lease_policy
from clusters.models import Cluster, IdempotencyRecord, Job, Task
from clusters.planning.planner import Action, staged
from clusters.services.lifecycle import cluster_create, job_limits
from clusters.services.preview import PreviewRequest
from templates_app.models import Service
from templates_app.problems import CatalogValidationError
from templates_app.services import catalog_entity_save, catalog_import
from tenants.errors import Conflict
from tenants.models import Tenant

from .engine_helpers import OK, Driver, lamp_job, refresh
from .workers import catalog

pytestmark = pytest.mark.django_db


def in_flight(tenant: Tenant) -> int:
    """What the budget counts: running tasks, and queued ones already handed to the broker."""
    return Task.objects.filter(
        Q(status="running") | Q(status="queued", dispatched_at__isnull=False), tenant=tenant
    ).count()


def set_budget(tenant: Tenant, workers: int) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(workers=workers)


class BudgetWatchingDriver(Driver):
    """A driver that checks, whenever tasks are handed out, that the tenant stays within its budget."""

    def __init__(self, tenant: Tenant, budget: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tenant, self.budget, self.peak = tenant, budget, 0

    def on_ready(self, ready: list[Ready]) -> None:
        self.peak = max(self.peak, in_flight(self.tenant))
        assert in_flight(self.tenant) <= self.budget
        super().on_ready(ready)


# --- worker budget and fair share ------------------------------------------------------------------------------


def test_a_job_never_has_more_tasks_in_flight_than_the_tenant_budget(transactional_db, tenant_a, admin_a, catalog_a):
    set_budget(tenant_a, 2)
    cluster, planned, job = lamp_job(tenant_a, admin_a, size=6)
    driver = BudgetWatchingDriver(tenant_a, 2, seed=3)
    ready = job_start(job=job, on_ready=driver.on_ready)
    assert len(ready) == 2, "only the budget's worth is handed out at start"
    held_back = Task.objects.filter(job=job, status="queued", dispatched_at__isnull=True)
    assert held_back.exists() and set(held_back.values_list("waiting_reason", flat=True)) == {"tenant budget 2/2 busy"}
    driver.run()
    refresh(cluster, job)
    assert job.status == "completed" and cluster.status == "active"
    assert driver.peak == 2 and len(driver.claimed) == planned.real_task_count


def test_one_tenants_big_job_does_not_hold_back_another_tenants_small_job(
    transactional_db, tenant_a, tenant_b, admin_a, admin_b, samples
):
    catalog_import(tenant=tenant_a, user=None, data=samples)
    catalog_import(tenant=tenant_b, user=None, data=samples)
    set_budget(tenant_a, 2)
    set_budget(tenant_b, 2)
    _, _, big = lamp_job(tenant_a, admin_a, name="big", size=20)
    _, _, small = lamp_job(tenant_b, admin_b, name="small", size=1)
    sent: list[Ready] = []
    job_start(job=big, on_ready=sent.extend)
    assert Task.objects.filter(job=big, status="queued", dispatched_at__isnull=True).count() >= 18
    job_start(job=small, on_ready=sent.extend)
    # B's first tasks go out at once, though A has a long queue of its own waiting for its budget.
    small_sent = [r for r in sent if Task.objects.filter(pk=r.task_pk, job=small).exists()]
    assert len(small_sent) == min(2, Task.objects.filter(job=small, pending_deps=0).exclude(action="join").count())
    assert in_flight(tenant_a) == 2 and in_flight(tenant_b) == len(small_sent)


def test_an_unlimited_budget_hands_out_every_ready_task(transactional_db, tenant_a, admin_a, catalog_a):
    set_budget(tenant_a, 0)
    _, _, job = lamp_job(tenant_a, admin_a, size=6)
    ready = job_start(job=job, on_ready=lambda _: None)
    assert len(ready) == Task.objects.filter(job=job, status="queued").count() == 6


def test_a_raised_budget_is_picked_up_by_the_janitors_dispatch(transactional_db, tenant_a, admin_a, catalog_a):
    set_budget(tenant_a, 1)
    _, _, job = lamp_job(tenant_a, admin_a, size=4)
    assert len(job_start(job=job, on_ready=lambda _: None)) == 1
    set_budget(tenant_a, 3)
    assert len(tenant_dispatch(tenant_id=tenant_a.pk, on_ready=lambda _: None)) == 2
    set_budget(tenant_a, 0)
    assert len(janitor_run(on_ready=lambda _: None).dispatched) == 1


# --- pause, resume, abort --------------------------------------------------------------------------------------


def test_pause_stops_handing_out_tasks_and_resume_continues(transactional_db, tenant_a, admin_a, catalog_a):
    cluster, _, job = lamp_job(tenant_a, admin_a, size=2)
    driver = Driver(seed=1)
    job_start(job=job, on_ready=driver.on_ready)
    item = driver.ready.pop()
    attempt = task_claim(task_pk=item.task_pk, worker="w1")
    job_pause(job=job)
    refresh(job)
    assert job.status == "paused"
    # Messages already sent claim nothing, and the paused job's tasks stop counting against the budget.
    assert all(task_claim(task_pk=r.task_pk, worker="w2") is None for r in driver.ready)
    assert set(Task.objects.filter(job=job, status="queued").values_list("waiting_reason", flat=True)) == {"job paused"}
    assert in_flight(tenant_a) == 1
    # The running task may finish; its successors are queued but not handed out while paused.
    assert task_finish(attempt=attempt, outcome=OK, on_ready=driver.on_ready) == []
    with pytest.raises(Conflict, match="only a running job can be paused"):
        job_pause(job=job)
    driver.ready = []
    job_start(job=job, on_ready=driver.on_ready)
    assert driver.ready and not Task.objects.filter(job=job, waiting_reason="job paused").exists()
    driver.run()
    refresh(job, cluster)
    assert job.status == "completed" and cluster.status == "active"


def test_abort_drops_what_has_not_started_and_settles_when_the_running_task_ends(
    transactional_db, tenant_a, admin_a, catalog_a
):
    received: list[JobEventData] = []

    def receiver(sender: object, data: JobEventData, **kwargs: object) -> None:
        received.append(data)

    job_event.connect(receiver)
    try:
        cluster, _, job = lamp_job(tenant_a, admin_a, size=2)
        driver = Driver(seed=1)
        job_start(job=job, on_ready=driver.on_ready)
        first = task_claim(task_pk=driver.ready[0].task_pk, worker="w1")
        done = task_claim(task_pk=driver.ready[1].task_pk, worker="w1")
        task_finish(attempt=done, outcome=OK, on_ready=lambda _: None)
        job_abort(job=job, message="Aborted by alice", on_ready=lambda _: None)
        refresh(job, cluster)
        assert (job.status, job.message, cluster.status) == ("aborted", "Aborted by alice", "pending")
        assert not Task.objects.filter(job=job, status__in=("waiting", "queued")).exists()
        with pytest.raises(Conflict, match="already ended"):
            job_abort(job=job, message="again", on_ready=lambda _: None)
        # The running task ends; only then does the cluster take the create's failure status.
        task_finish(attempt=first, outcome=OK, on_ready=lambda _: None)
        refresh(cluster)
        assert cluster.status == "incomplete" and cluster.status_message == "Aborted by alice"
        # An aborted job can be retried: only what did not complete runs again.
        driver = Driver(seed=2)
        job_retry(job=job, on_ready=driver.on_ready)
        driver.run()
        refresh(job, cluster)
        assert job.status == "completed" and cluster.status == "active"
    finally:
        job_event.disconnect(receiver)
    events = [(d.event, d.job_id) for d in received]
    assert events == [
        (JobEvent.STARTED, job.pk),
        (JobEvent.ABORTED, job.pk),
        (JobEvent.STARTED, job.pk),
        (JobEvent.SUCCEEDED, job.pk),
    ]


def test_a_failed_job_sends_one_failed_event(transactional_db, tenant_a, admin_a, catalog_a):
    received: list[JobEventData] = []
    job_event.connect(lambda sender, data, **kw: received.append(data), weak=False, dispatch_uid="t-failed")
    try:
        _, _, job = lamp_job(tenant_a, admin_a, size=1)
        driver = Driver(seed=1, fail=lambda task: ("AuthError", False))
        job_start(job=job, on_ready=driver.on_ready)
        driver.run()
    finally:
        job_event.disconnect(dispatch_uid="t-failed")
    assert [d.event for d in received] == [JobEvent.STARTED, JobEvent.FAILED]
    assert "AuthError" in received[-1].message


# --- janitor and heartbeats ------------------------------------------------------------------------------------


def test_the_janitor_requeues_the_task_of_a_worker_whose_heartbeat_stopped(
    transactional_db, tenant_a, admin_a, catalog_a, settings
):
    settings.LOOM_HEARTBEAT_TIMEOUT = 30
    _, _, job = lamp_job(tenant_a, admin_a, size=1)
    ready = job_start(job=job, on_ready=lambda _: None)
    attempt = task_claim(task_pk=ready[0].task_pk, worker="dead/1")
    now = timezone.now()
    assert janitor_run(on_ready=lambda _: None, now=now + timedelta(seconds=20)).lost == []
    resent: list[Ready] = []
    report = janitor_run(on_ready=resent.extend, now=now + timedelta(seconds=31))
    assert report.lost == [attempt.task_id]
    attempt.refresh_from_db()
    assert (attempt.outcome, attempt.error_class) == ("lost", "WorkerLost") and "dead/1" in attempt.log
    task = Task.objects.get(pk=attempt.task_id)
    assert task.status == "queued" and task.attempts == 1 and "WorkerLost" in task.waiting_reason
    assert [r.task_pk for r in resent] == [task.pk] and resent[0].countdown > 0
    # The dead worker's late finish (it was only partitioned, say) changes nothing.
    assert task_finish(attempt=attempt, outcome=OK, on_ready=lambda _: None) == []
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_a_lost_task_with_no_attempts_left_fails_the_job(transactional_db, tenant_a, admin_a, catalog_a, settings):
    settings.LOOM_HEARTBEAT_TIMEOUT = 30
    _, _, job = lamp_job(tenant_a, admin_a, size=1)
    Task.objects.filter(job=job).update(max_attempts=1)
    ready = job_start(job=job, on_ready=lambda _: None)
    task_claim(task_pk=ready[0].task_pk, worker="dead/1")
    janitor_run(on_ready=lambda _: None, now=timezone.now() + timedelta(minutes=5))
    refresh(job)
    assert job.status == "failed" and "WorkerLost" in job.message


def test_the_janitor_times_out_an_attempt_that_runs_too_long(transactional_db, tenant_a, admin_a, catalog_a, settings):
    settings.LOOM_HEARTBEAT_TIMEOUT = 10_000
    _, _, job = lamp_job(tenant_a, admin_a, size=1)
    Task.objects.filter(job=job).update(timeout_seconds=60)
    ready = job_start(job=job, on_ready=lambda _: None)
    attempt = task_claim(task_pk=ready[0].task_pk, worker="slow/1")
    assert janitor_run(on_ready=lambda _: None, now=timezone.now() + timedelta(seconds=30)).timed_out == []
    report = janitor_run(on_ready=lambda _: None, now=timezone.now() + timedelta(seconds=61))
    assert report.timed_out == [attempt.task_id] and report.lost == []
    attempt.refresh_from_db()
    assert attempt.outcome == "timed_out" and "60 s" in attempt.log


def test_the_janitor_sends_again_a_task_whose_message_was_lost(
    transactional_db, tenant_a, admin_a, catalog_a, settings
):
    settings.LOOM_REDISPATCH_SECONDS = 120
    _, _, job = lamp_job(tenant_a, admin_a, size=1)
    ready = job_start(job=job, on_ready=lambda _: None)
    now = timezone.now()
    assert janitor_run(on_ready=lambda _: None, now=now + timedelta(seconds=60)).redispatched == []
    resent: list[Ready] = []
    report = janitor_run(on_ready=resent.extend, now=now + timedelta(seconds=121))
    assert sorted(report.redispatched) == sorted(r.task_pk for r in ready) == sorted(r.task_pk for r in resent)
    # A task that waits out a backoff is not lost before its time has come.
    Task.objects.filter(pk=ready[0].task_pk).update(not_before=now + timedelta(seconds=500))
    assert ready[0].task_pk not in janitor_run(on_ready=lambda _: None, now=now + timedelta(seconds=300)).redispatched


def test_heartbeats_stamp_only_the_tasks_this_worker_still_holds(transactional_db, tenant_a, admin_a, catalog_a):
    set_budget(tenant_a, 0)
    _, _, job = lamp_job(tenant_a, admin_a, size=2)
    ready = job_start(job=job, on_ready=lambda _: None)
    mine = task_claim(task_pk=ready[0].task_pk, worker="w/1")
    theirs = task_claim(task_pk=ready[1].task_pk, worker="w/2")
    old = timezone.now() - timedelta(hours=1)
    Task.objects.filter(pk__in=[mine.task_id, theirs.task_id]).update(heartbeat_at=old)
    beat = Heartbeat()
    with beat.beating(mine.task_id, "w/1"), beat.beating(theirs.task_id, "w/9"):  # w/9 lost it to w/2
        assert beat.beat() == 1
    assert Task.objects.get(pk=mine.task_id).heartbeat_at > old
    assert Task.objects.get(pk=theirs.task_id).heartbeat_at == old
    assert beat.running() == {}


# --- staged mode -------------------------------------------------------------------------------------------------


def test_staged_plans_put_a_barrier_between_stages(transactional_db, tenant_a, admin_a, catalog_a):
    _, planned, _ = lamp_job(tenant_a, admin_a, name="dag", size=4)
    barriered = staged(planned)
    assert barriered.real_task_count == planned.real_task_count
    assert barriered.join_count == planned.join_count + planned.stages - 1
    assert len(barriered.edges) <= len(planned.edges) + 2 * len(planned.tasks)
    assert all(a < b for a, b in barriered.edges), "keys stay topological"
    successors = barriered.successors()

    def reachable(start: int) -> set[int]:
        seen, stack = set(), [start]
        while stack:
            for nxt in successors[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    real = [t for t in barriered.tasks if t.action is not Action.JOIN]
    for task in real:
        later = {t.key for t in real if t.stage > task.stage}
        assert later <= reachable(task.key), f"stage {task.stage} task {task.key} does not gate every later stage"


def test_job_limits_come_from_the_templates_administration_section():
    assert job_limits({}) == {"max_attempts": 3, "task_timeout_seconds": 1800}
    limits = job_limits({"administration": {"maxattempts": 7, "tasktimeout": 90_000}})
    assert limits == {"max_attempts": 7, "task_timeout_seconds": 90}


@pytest.mark.parametrize(
    ("value", "message"),
    [({"maxattempts": 0}, "at least 1"), ({"maxattempts": 21}, "at most 20"), ({"maxattempts": "x"}, "whole number"),
     ({"tasktimeout": "0s"}, "at least 1 second")],
)  # fmt: skip
def test_bad_attempt_limits_and_timeouts_are_refused_naming_the_field(tenant_a, value, message):
    data = catalog()
    data["clustertemplates"][0]["administration"] = value
    with pytest.raises(CatalogValidationError) as caught:
        catalog_import(tenant=tenant_a, user=None, data=data)
    text = str(caught.value.problems) if hasattr(caught.value, "problems") else str(caught.value)
    assert f"administration.{next(iter(value))}" in text and message in text


def test_a_create_copies_the_templates_limits_onto_every_task_and_pins_its_services(tenant_a, admin_a):
    data = catalog()
    data["clustertemplates"][0]["administration"] = {"maxattempts": "5", "tasktimeout": "2m"}
    catalog_import(tenant=tenant_a, user=None, data=data)
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("pinned", "fleet", 2))
    assert (job.max_attempts, job.task_timeout_seconds, job.requested_by) == (5, 120, admin_a)
    assert set(Task.objects.filter(job=job).values_list("max_attempts", "timeout_seconds")) == {(5, 120)}
    assert cluster.service_versions == {"app": 1, "base": 1}
    # The catalog moves on; the cluster keeps running the definitions it was created with.
    service = Service.objects.get(tenant=tenant_a, name="app")
    changed = {**service.document, "description": "edited after the cluster was made"}
    catalog_entity_save(tenant=tenant_a, user=admin_a, kind_key="services", name="app", data=changed)
    assert Service.objects.get(tenant=tenant_a, name="app").version == 2
    assert pinned_service_documents(cluster, ["app"])["app"]["description"] == ""
    cluster.service_versions = {}
    assert pinned_service_documents(cluster, ["app"])["app"]["description"] == "edited after the cluster was made"


# --- veto hooks --------------------------------------------------------------------------------------------------


def freeze(request: JobRequest) -> None:
    if request.operation == "create" and request.size and request.size > 2:
        raise JobVetoed("change freeze: no clusters over 2 nodes this week")


def broken(request: JobRequest) -> None:
    raise RuntimeError("policy service down")


@pytest.mark.parametrize(
    ("hook", "size", "message"),
    [("freeze", 3, "change freeze: no clusters over 2 nodes"), ("broken", 1, "policy hook broken failed")],
)
def test_a_hook_can_veto_a_job_before_anything_is_stored(tenant_a, admin_a, settings, hook, size, message):
    catalog_import(tenant=tenant_a, user=None, data=catalog())
    settings.LOOM_JOB_HOOKS = [f"{__name__}.{hook}"]
    _hooks.cache_clear()
    try:
        with pytest.raises(Conflict, match=message):
            cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("big", "fleet", size))
        assert not Cluster.objects.exists() and not Job.objects.exists()
        if hook == "freeze":
            cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("ok", "fleet", 2))
    finally:
        settings.LOOM_JOB_HOOKS = []
        _hooks.cache_clear()


def test_the_janitor_forgets_idempotency_records_after_their_ttl(tenant_a, admin_a, settings):
    settings.LOOM_IDEMPOTENCY_TTL_SECONDS = 3600
    old = IdempotencyRecord.objects.create(tenant=tenant_a, user=admin_a, key="old", fingerprint="x")
    fresh = IdempotencyRecord.objects.create(tenant=tenant_a, user=admin_a, key="fresh", fingerprint="y")
    IdempotencyRecord.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert janitor_run(on_ready=lambda _: None).idempotency_records_deleted == 1
    assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [fresh.pk]


def test_a_child_template_that_sets_only_attempts_keeps_its_parents_lease(tenant_a, admin_a):
    data = catalog()
    parent = data["clustertemplates"][0]
    parent["administration"] = {"leaseduration": {"initial": "1d", "max": "7d", "step": "1d"}}
    child = {**parent, "name": "child", "extends": {"name": "fleet"}, "administration": {"maxattempts": 5}}
    data["clustertemplates"].append(child)
    catalog_import(tenant=tenant_a, user=None, data=data)
    cluster, job = cluster_create(user=admin_a, tenant=tenant_a, request=PreviewRequest("heir", "child", 1))
    assert job.max_attempts == 5
    assert cluster.expires_at is not None and cluster.expires_at - cluster.created_at >= timedelta(hours=23)
    assert lease_policy(cluster).max_ms == 7 * 86_400_000


def test_a_job_with_nothing_to_run_completes_at_start_with_its_events(transactional_db, tenant_a, admin_a, catalog_a):
    received: list[JobEventData] = []
    job_event.connect(lambda sender, data, **kw: received.append(data), weak=False, dispatch_uid="t-empty")
    try:
        cluster, _, _ = lamp_job(tenant_a, admin_a, name="empty", size=1)
        empty = Job.objects.create(cluster=cluster, operation="stop_services")
        assert job_start(job=empty, on_ready=lambda _: None) == []
    finally:
        job_event.disconnect(dispatch_uid="t-empty")
    refresh(empty, cluster)
    assert empty.status == "completed" and cluster.status == "active"
    assert [(d.event, d.job_id) for d in received] == [(JobEvent.STARTED, empty.pk), (JobEvent.SUCCEEDED, empty.pk)]


@pytest.mark.parametrize("filesystem_broker", [False, True])
def test_a_restarted_worker_takes_back_what_its_previous_life_left(
    transactional_db, tenant_a, admin_a, catalog_a, filesystem_broker
):
    set_budget(tenant_a, 0)
    _, _, job = lamp_job(tenant_a, admin_a, size=3)
    ready = job_start(job=job, on_ready=lambda _: None)
    mine = task_claim(task_pk=ready[0].task_pk, worker="loom@host/ThreadPoolExecutor-0_1")
    theirs = task_claim(task_pk=ready[1].task_pk, worker="loom@host2/ThreadPoolExecutor-0_1")  # another worker
    unclaimed = {r.task_pk for r in ready[2:]}
    resent: list[Ready] = []
    lost, redispatched = worker_restarted(hostname="loom@host", on_ready=resent.extend,
                                          filesystem_broker=filesystem_broker)  # fmt: skip
    assert lost == [mine.task_id], "only the tasks of the worker of that very name, not of loom@host2"
    mine.refresh_from_db()
    assert mine.outcome == "lost" and "was restarted" in mine.log
    assert Task.objects.get(pk=theirs.task_id).status == Task.Status.RUNNING
    # Queued and sent: gone with the filesystem broker's messages, so sent again there; elsewhere the broker
    # still holds them (a Redis or RabbitMQ message survives a worker's restart).
    expected = unclaimed if filesystem_broker else set()
    assert set(redispatched) == expected and {r.task_pk for r in resent} >= expected
