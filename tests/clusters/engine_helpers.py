"""Drive the engine by hand, exactly as workers will: a lamp create persisted as a job, and a ``Driver`` that
plays a pool of workers (claim a ready task, finish it) in a seeded random order."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from clusters.engine.core import Ready, job_persist_plan, task_claim, task_finish
from clusters.engine.runner import task_run
from clusters.models import Cluster, Job, Node, Task, TaskAttempt, TaskEdge
from clusters.planning.planner import Plan
from clusters.services.preview import PreviewRequest, cluster_preview
from templates_app.models import CatalogVersion
from tenants.models import Tenant

OK = TaskAttempt.Outcome.SUCCEEDED
FAILED = TaskAttempt.Outcome.FAILED


def make_cluster(tenant: Tenant, owner: Any, *, name: str = "shop", size: int = 3) -> Cluster:
    return Cluster.objects.create(
        tenant=tenant,
        owner=owner,
        name=name,
        template_name="lamp",
        template_version=CatalogVersion.objects.filter(tenant=tenant, kind="clustertemplates", name="lamp").first(),
        provider_name="rackspace",
        provider_version=CatalogVersion.objects.filter(tenant=tenant, kind="providers", name="rackspace").first(),
        size=size,
    )


def persist(cluster: Cluster, planned: Plan, node_specs: Any, *, max_attempts: int = 3) -> Job:
    nodes = Node.objects.bulk_create(
        Node(cluster=cluster, number=n.number, hostname=n.hostname or n.node_id, hardware=n.hardware,
             image=n.image, services=sorted(n.services))
        for n in node_specs
    )  # fmt: skip
    job = Job.objects.create(cluster=cluster, operation=planned.operation, max_attempts=max_attempts)
    job_persist_plan(
        job=job, plan=planned, nodes_by_key={spec.node_id: node for spec, node in zip(node_specs, nodes, strict=True)}
    )
    return job


def lamp_job(tenant: Tenant, owner: Any, *, name: str = "shop", size: int = 3) -> tuple[Cluster, Plan, Job]:
    """A lamp create, solved and planned by the preview machinery, persisted as a job (not started)."""
    preview = cluster_preview(user=owner, tenant=tenant, request=PreviewRequest(name=name, template="lamp", size=size))
    cluster = make_cluster(tenant, owner, name=name, size=size)
    return cluster, preview.plan, persist(cluster, preview.plan, preview.nodes)


def refresh(*objects: Any) -> None:
    for obj in objects:
        obj.refresh_from_db()


class Driver:
    """Plays a pool of workers: picks ready tasks in a seeded random order, claims and finishes them, and
    checks at every claim that all the task's predecessors had completed."""

    def __init__(self, *, seed: int = 0, fail: Callable[[Task], tuple[str, bool] | None] = lambda task: None):
        self.ready: list[Ready] = []
        self.rng = random.Random(seed)
        self.fail = fail
        self.claimed: list[int] = []

    def on_ready(self, ready: list[Ready]) -> None:
        self.ready.extend(ready)

    def run(self) -> None:
        while self.ready:
            item = self.ready.pop(self.rng.randrange(len(self.ready)))
            attempt = task_claim(task_pk=item.task_pk, worker=f"w{self.rng.randrange(4)}")
            if attempt is None:  # the job failed meanwhile and dropped it
                continue
            unfinished = TaskEdge.objects.filter(successor_id=item.task_pk).exclude(predecessor__status="completed")
            assert not unfinished.exists(), f"task {item.task_pk} started before its predecessors completed"
            self.claimed.append(item.task_pk)
            task = Task.objects.get(pk=item.task_pk)
            failure = self.fail(task)
            if failure is None:
                task_finish(attempt=attempt, outcome=OK, log="ok", on_ready=self.on_ready)
            else:
                error_class, retryable = failure
                task_finish(attempt=attempt, outcome=FAILED, error_class=error_class, retryable=retryable,
                            on_ready=self.on_ready)  # fmt: skip


def run_by_hand(job: Job, *, fail: Callable[[Task], bool] = lambda task: False) -> Job:
    """Play the workers: claim and finish every queued task (failing those ``fail`` picks, terminally) until
    none can be claimed (all done, the job failed, or it is paused)."""
    while True:
        claimed = False
        for pk in Task.objects.filter(job=job, status=Task.Status.QUEUED).order_by("key").values_list("pk", flat=True):
            attempt = task_claim(task_pk=pk, worker="test/1")
            if attempt is None:
                continue
            claimed = True
            task = Task.objects.get(pk=pk)
            if fail(task):
                task_finish(attempt=attempt, outcome=TaskAttempt.Outcome.FAILED, error_class="ScriptError",
                            retryable=False, log=f"{task.action} failed", on_ready=lambda _: None)  # fmt: skip
            else:
                task_finish(attempt=attempt, outcome=TaskAttempt.Outcome.SUCCEEDED, log=f"{task.action} ok",
                            on_ready=lambda _: None)  # fmt: skip
        if not claimed:
            job.refresh_from_db()
            return job


def drive(job: Job) -> None:
    """Run a job's tasks in this process, in the order the engine hands them out, sleeping out countdowns."""
    ready = [Ready(pk) for pk in Task.objects.filter(job=job, status=Task.Status.QUEUED).values_list("pk", flat=True)]
    while ready:
        ready.sort(key=lambda item: item.countdown)
        item = ready.pop(0)
        if item.countdown:
            time.sleep(item.countdown)
            ready = [Ready(r.task_pk, max(0.0, r.countdown - item.countdown)) for r in ready]
        ready += task_run(task_pk=item.task_pk, worker="test/1", on_ready=lambda _: None)
