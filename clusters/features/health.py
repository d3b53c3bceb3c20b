"""Health of every live node and cluster, and drift from the provider: what the health sweep finds and records.

Beat runs the sweep every ``LOOM_HEALTH_SWEEP_SECONDS`` (``clusters/services/repair.py`` wraps it with the
auto-repair policy). A cluster is due when its ``health_due_at`` has passed (its template's
``administration.healthcheck.interval`` after its last check, ``LOOM_HEALTH_INTERVAL_SECONDS`` by default) and
no job runs on it: a cluster in the middle of a job is in flux, and its job reports on it already.

Three checks, cheapest first, each only for the nodes the one before passed:

1. **The provider** (one ``list_tagged`` per provider per sweep, never one call per node): a node whose machine
   is not listed, or listed as terminated, is ``missing``; a machine listed as stopped, or with an address
   other than the one Loom connects to, is ``unreachable``. All three are *drift* (the machine was changed out
   of band): the cluster becomes ``inconsistent`` with the reason, and ``active`` again once the provider
   reports every machine as Loom made it.
2. **Reachability**: for a node whose services use an SSH automator, an SSH session to it within the
   template's ``administration.healthcheck.timeout``, with the host key pinned at create. No answer, or a host
   key that changed (never trusted silently: the machine may have been replaced), is ``unreachable``.
3. **Services**: each service's optional ``check`` action, run by its automator over that session (exit 0
   healthy, anything else ``degraded`` with its output kept). A ``noop`` check is healthy.

Checks 2 and 3 run in a worker task per cluster (``cluster_health_check_task``), nodes in parallel, and only
when the tenant has worker budget to spare: nothing is sent while a task of the tenant waits for a slot, and
never more checks than free slots (``LOOM_HEALTH_CONCURRENCY`` per sweep for a tenant without a budget), so a
sweep never holds up a job.

Recording writes only what changed: a node's state, message, time and the count of unhealthy sweeps in a row
(the auto-repair policy reads it); one ``HealthEvent`` per change, the cluster's health (the worst of its
nodes'), and a ``cluster.health_changed`` event for webhooks when the cluster's health changes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from clusters.engine import automation
from clusters.engine.core import log_tail, tenant_budget
from clusters.engine.pins import pinned_service_documents
from clusters.engine.runner import expanded_inputs
from clusters.engine.signals import JobEvent, JobEventData, send_job_event
from clusters.engine.state import transition
from clusters.models import HEALTH_SEVERITY, UNFINISHED_JOB_STATUSES, Cluster, Health, HealthEvent, Job, Node, Task
from providers.drivers import DriverError
from providers.drivers.base import Machine
from providers.models import Provider
from providers.secrets import redact
from providers.services import provider_driver
from providers.ssh import HostKeyMismatch

logger = logging.getLogger(__name__)

MISSING_STATES = frozenset({"terminated", "deleted", "deleting", "lost", "shutting-down"})
"""Provider words for a machine that is gone or going (libcloud, EC2, the lab)."""
STOPPED_STATES = frozenset({"stopped", "stopping", "suspended", "paused", "shutoff", "error", "broken"})
"""Provider words for a machine that exists but does not run."""
DRIFT_PREFIX = "drift: "
"""How a status message the sweep wrote begins, so the sweep only ever clears its own."""
MESSAGE_LIMIT = 2048


@dataclass(frozen=True)
class Finding:
    """What one check found on one node. ``failed`` names the services whose check failed; ``drift`` is set
    when the provider disagrees with what Loom made (the cluster becomes inconsistent)."""

    state: str
    message: str = ""
    failed: tuple[str, ...] = ()
    drift: bool = False

    def as_list(self) -> list[Any]:
        return [self.state, self.message, list(self.failed), self.drift]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> Finding:
        return cls(state=values[0], message=values[1], failed=tuple(values[2]), drift=bool(values[3]))


HEALTHY = Finding(Health.HEALTHY)


@dataclass(frozen=True)
class HealthPolicy:
    interval: float
    timeout: float


def health_policy(template_document: Mapping[str, Any]) -> HealthPolicy:
    """The template's ``administration.healthcheck`` (milliseconds in the document), or the defaults."""
    section = (template_document.get("administration") or {}).get("healthcheck") or {}
    interval = section.get("interval")
    timeout = section.get("timeout")
    return HealthPolicy(
        interval=interval / 1000 if interval else settings.LOOM_HEALTH_INTERVAL_SECONDS,
        timeout=timeout / 1000 if timeout else settings.LOOM_HEALTH_TIMEOUT_SECONDS,
    )


# --- 1. the provider ----------------------------------------------------------------------------------------


def provider_finding(node: Node, machine: Machine | None, provider: str) -> Finding | None:
    """What the provider's listing says about ``node``; None when it shows the machine as Loom made it."""
    what = f"machine {node.machine_id or '(none recorded)'} of node {node.number} ({node.hostname})"
    if machine is None or machine.state.lower() in MISSING_STATES:
        gone = "no longer exists" if machine is None else f"is {machine.state}"
        return Finding(Health.MISSING, f"{what} {gone} on provider {provider} (deleted out of band?)", drift=True)
    if machine.state.lower() in STOPPED_STATES:
        return Finding(Health.UNREACHABLE, f"{what} is {machine.state} on provider {provider} (stopped out of band?)",
                       drift=True)  # fmt: skip
    reported = machine.addresses.get("access_v4")
    known = (node.ip_addresses or {}).get("access_v4")
    if reported and known and reported != known:
        return Finding(Health.UNREACHABLE, f"{what} now has address {reported} on provider {provider}; Loom "
                       f"connects to {known}", drift=True)  # fmt: skip
    return None


def _machines_by_node(machines: Iterable[Machine]) -> dict[str, Machine]:
    """The machine per node key; where a node somehow has several, the one that runs."""
    found: dict[str, Machine] = {}
    for machine in machines:
        if machine.node_key and (machine.node_key not in found or machine.state.lower() == "running"):
            found[machine.node_key] = machine
    return found


# --- 2 and 3. reachability and services ---------------------------------------------------------------------


def _check_actions(documents: Mapping[str, Mapping[str, Any]], node: Node) -> list[tuple[str, Mapping[str, Any]]]:
    checks = []
    for service in sorted(node.services):
        definition = ((documents.get(service) or {}).get("provisioner") or {}).get("actions", {}).get("check")
        if definition:
            checks.append((service, definition))
    return checks


def needs_session(cluster: Cluster, node: Node) -> bool:
    """A node is reached over SSH when any of its services uses an SSH automator (as its bootstrap does)."""
    return bool(automation.automator_types(cluster, node) & automation.AUTOMATORS.keys())


def node_finding(cluster: Cluster, node: Node, peers: list[Node], timeout: float) -> Finding:
    """Reach ``node`` over SSH and run its services' checks; the worst of what they say."""
    documents = pinned_service_documents(cluster, node.services)
    lines: list[str] = []
    try:
        with automation.node_session(cluster, node, lines.append, timeout=timeout) as session:
            failed: list[str] = []
            outputs: list[str] = []
            for service, definition in _check_actions(documents, node):
                automator = str(definition.get("type", ""))
                if automator == "noop":
                    continue
                try:
                    config, fields = expanded_inputs(cluster, node, cluster.config or {}, definition.get("fields"))
                    request = automation.action_request(cluster, node, service=service, action="check",
                                                        automator=automator, config=config, fields=fields,
                                                        log=lines.append, peers=peers)  # fmt: skip
                    automation.action_on_session(session, request, automator)
                except DriverError as error:
                    failed.append(service)
                    outputs.append(f"check of {service} failed: {error.message}")
    except HostKeyMismatch as error:
        return Finding(Health.UNREACHABLE, f"node {node.number} ({node.hostname}): its SSH host key changed, so it "
                       f"is not trusted (the machine may have been replaced): {error.message}")  # fmt: skip
    except DriverError as error:
        return Finding(Health.UNREACHABLE, f"node {node.number} ({node.hostname}) does not answer over SSH: "
                       f"{error.message}")  # fmt: skip
    if failed:
        return Finding(Health.DEGRADED, _clip("\n".join(outputs)), failed=tuple(failed))
    return HEALTHY


def _clip(text: str) -> str:
    return log_tail(redact(text), MESSAGE_LIMIT)


# --- recording ----------------------------------------------------------------------------------------------


@dataclass
class ClusterOutcome:
    cluster: int
    health: str
    changed_nodes: int
    drift: bool


def record(cluster: Cluster, findings: Mapping[int, Finding], *, now: datetime | None = None) -> ClusterOutcome:
    """Store ``findings`` (node pk → finding) for ``cluster``: what changed, its history, the cluster's health
    and drift status, and when it is due again. Queries do not grow with the nodes that did not change."""
    now = now or timezone.now()
    nodes = list(Node.objects.filter(cluster_id=cluster.pk, status=Node.Status.ACTIVE).only(
        "pk", "number", "hostname", "health", "health_message", "health_failing"))  # fmt: skip
    changed: list[Node] = []
    events: list[HealthEvent] = []
    counted: dict[bool, list[int]] = {True: [], False: []}
    for node in nodes:
        finding = findings.get(node.pk)
        if finding is None:
            continue
        unhealthy = finding.state not in (Health.HEALTHY, Health.UNKNOWN)
        if finding.state != Health.UNKNOWN:
            counted[unhealthy].append(node.pk)
        message = _clip(finding.message)
        if (node.health, node.health_message, list(node.health_failing)) == (
            finding.state,
            message,
            list(finding.failed),
        ):
            continue
        if node.health != finding.state:
            events.append(HealthEvent(cluster_id=cluster.pk, node_id=node.pk, previous=node.health,
                                      state=finding.state, message=message, created_at=now))  # fmt: skip
        node.health, node.health_message, node.health_failing = finding.state, message, list(finding.failed)
        changed.append(node)
    worst = max((findings.get(n.pk, Finding(n.health)).state for n in nodes), key=HEALTH_SEVERITY.__getitem__,
                default=Health.UNKNOWN)  # fmt: skip
    summary = _summary(nodes, findings)
    drift = [f.message for f in findings.values() if f.drift]
    policy = health_policy(cluster.template_version.document or {})
    with transaction.atomic():
        if changed:
            Node.objects.bulk_update(changed, ["health", "health_message", "health_failing"])
        Node.objects.filter(pk__in=[n.pk for n in nodes if n.pk in findings]).update(health_checked_at=now)
        Node.objects.filter(pk__in=counted[True]).update(health_failures=F("health_failures") + 1)
        Node.objects.filter(pk__in=counted[False], health_failures__gt=0).update(health_failures=0)
        if cluster.health != worst:
            events.append(HealthEvent(cluster_id=cluster.pk, previous=cluster.health, state=worst, message=summary,
                                      created_at=now))  # fmt: skip
            send_job_event(JobEventData(JobEvent.HEALTH_CHANGED, tenant_id=cluster.tenant_id, cluster_id=cluster.pk,
                                        message=f"{cluster.health} -> {worst}: {summary}".rstrip(": ")))  # fmt: skip
        HealthEvent.objects.bulk_create(events)
        due = now + timedelta(seconds=policy.interval)
        Cluster.objects.filter(pk=cluster.pk).update(health=worst, health_message=summary, health_checked_at=now,
                                                     health_due_at=due)  # fmt: skip
        _drift(cluster, drift)
    cluster.health = worst
    return ClusterOutcome(cluster=cluster.pk, health=worst, changed_nodes=len(changed), drift=bool(drift))


def _summary(nodes: Sequence[Node], findings: Mapping[int, Finding]) -> str:
    """The cluster's health in words: the nodes that are not healthy, worst first."""
    bad = [(n, findings.get(n.pk) or Finding(n.health, n.health_message)) for n in nodes]
    bad = [(n, f) for n, f in bad if f.state != Health.HEALTHY]
    if not bad:
        return ""
    bad.sort(key=lambda pair: (-HEALTH_SEVERITY[pair[1].state], pair[0].number))
    counts: dict[str, int] = defaultdict(int)
    for _, finding in bad:
        counts[finding.state] += 1
    head = ", ".join(f"{count} node{'s' if count > 1 else ''} {state}" for state, count in counts.items())
    node, finding = bad[0]
    first = finding.message.splitlines()[0] if finding.message else f"node {node.number} is {finding.state}"
    return _clip(f"{head}: {first}")


def _drift(cluster: Cluster, drift: list[str]) -> None:
    """Inconsistent while the provider disagrees; active again once it agrees, if the sweep made it so."""
    ours = Cluster.objects.filter(status=Cluster.Status.INCONSISTENT, status_message__startswith=DRIFT_PREFIX)
    if drift:
        message = DRIFT_PREFIX + "; ".join(drift[:3]) + (f"; and {len(drift) - 3} more" if len(drift) > 3 else "")
        # Only from active: a cluster a job has just taken (pending) is the job's, and one a failed job left
        # inconsistent keeps that job's message (the cluster's health says what drifted).
        active = Cluster.objects.filter(status=Cluster.Status.ACTIVE)
        if not transition(
            active, cluster.pk, to=Cluster.Status.INCONSISTENT, extra_updates={"status_message": message}
        ):
            ours.filter(pk=cluster.pk).update(status_message=message)
    else:
        transition(ours, cluster.pk, to=Cluster.Status.ACTIVE, extra_updates={"status_message": ""})


# --- the sweep ----------------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    clusters: int = 0
    nodes: int = 0
    providers: int = 0
    dispatched: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    outcomes: list[ClusterOutcome] = field(default_factory=list)


def due_clusters(now: datetime) -> list[Cluster]:
    busy = Job.objects.filter(cluster_id=OuterRef("pk"), status__in=UNFINISHED_JOB_STATUSES)
    return list(
        Cluster.objects.filter(status__in=(Cluster.Status.ACTIVE, Cluster.Status.INCONSISTENT))
        .filter(Q(health_due_at__isnull=True) | Q(health_due_at__lte=now))
        .exclude(Exists(busy))
        .select_related("template_version", "provider_version")
        .order_by(F("health_due_at").asc(nulls_first=True), "pk")[: settings.LOOM_HEALTH_SWEEP_BATCH]
    )


def spare_slots(tenant_id: int) -> int:
    """Checks the tenant may run now without holding up a job: none while a task waits for a slot."""
    waiting = Task.objects.filter(tenant_id=tenant_id, status=Task.Status.QUEUED, dispatched_at__isnull=True,
                                  waiting_reason__startswith="tenant budget").exists()  # fmt: skip
    if waiting:
        return 0
    budget = tenant_budget(tenant_id)
    if budget == 0:
        return settings.LOOM_HEALTH_CONCURRENCY
    in_flight = Task.objects.filter(
        Q(status=Task.Status.RUNNING) | Q(status=Task.Status.QUEUED, dispatched_at__isnull=False), tenant_id=tenant_id
    ).count()
    return max(0, budget - in_flight)


def health_sweep(*, now: datetime | None = None) -> SweepReport:
    """Check every due cluster (see the module docstring); returns what it did."""
    now = now or timezone.now()
    report = SweepReport()
    groups: dict[tuple[int, str], list[Cluster]] = defaultdict(list)
    for cluster in due_clusters(now):
        groups[(cluster.tenant_id, cluster.provider_name)].append(cluster)
    slots: dict[int, int] = {}
    for (tenant_id, provider_name), clusters in groups.items():
        report.providers += 1
        nodes_of: dict[int, list[Node]] = defaultdict(list)
        for node in Node.objects.filter(cluster__in=clusters, status=Node.Status.ACTIVE).order_by("cluster", "number"):
            nodes_of[node.cluster_id].append(node)
        machines = _listing(tenant_id, provider_name)
        for cluster in clusters:
            nodes = nodes_of[cluster.pk]
            report.clusters += 1
            report.nodes += len(nodes)
            findings = _provider_findings(nodes, machines, provider_name)
            remote = [n.pk for n in nodes if findings.get(n.pk) is None and needs_session(cluster, n)]
            for node in nodes:
                if findings.get(node.pk) is None and node.pk not in remote:
                    findings[node.pk] = HEALTHY
            if not remote:
                report.outcomes.append(record(cluster, findings, now=now))
                continue
            if tenant_id not in slots:
                slots[tenant_id] = spare_slots(tenant_id)
            if slots[tenant_id] <= 0:
                report.deferred.append(cluster.pk)
                continue
            slots[tenant_id] -= 1
            _dispatch(cluster, findings, remote, now)
            report.dispatched.append(cluster.pk)
    return report


def _listing(tenant_id: int, provider_name: str) -> dict[str, Machine] | str:
    """The provider's machines by node key, or why they could not be listed."""
    provider = Provider.objects.filter(tenant_id=tenant_id, name=provider_name).first()
    if provider is None:
        return f"provider {provider_name} no longer exists"
    try:
        return _machines_by_node(provider_driver(provider=provider).list_tagged())
    except DriverError as error:
        logger.warning("health sweep could not list provider %s: %s", provider.pk, error,
                       extra={"provider": provider.pk})  # fmt: skip
        return f"provider {provider_name} could not be listed: {error.message}"


def _provider_findings(nodes: Sequence[Node], machines: dict[str, Machine] | str, provider: str) -> dict[int, Finding]:
    """Findings for the nodes the provider side decides (None-free); an unlisted provider leaves them unknown."""
    if isinstance(machines, str):
        return {node.pk: Finding(Health.UNKNOWN, machines) for node in nodes}
    findings = {}
    for node in nodes:
        finding = provider_finding(node, machines.get(node.node_key), provider)
        if finding is not None:
            findings[node.pk] = finding
    return findings


def _dispatch(cluster: Cluster, findings: Mapping[int, Finding], remote: list[int], now: datetime) -> None:
    """Send the SSH checks of ``remote`` to a worker; the cluster is not due again until they are recorded
    (or, if the message is lost, one timeout past the interval)."""
    policy = health_policy(cluster.template_version.document or {})
    Cluster.objects.filter(pk=cluster.pk).update(
        health_due_at=now + timedelta(seconds=policy.interval + policy.timeout * len(remote))
    )
    payload = {str(pk): finding.as_list() for pk, finding in findings.items()}
    try:
        cluster_health_check_task.apply_async((cluster.pk, payload, remote), expires=policy.interval)
    except Exception:  # the broker is down: the cluster is due again after the interval
        logger.exception("could not send health checks", extra={"cluster": cluster.pk})


def cluster_health_check(cluster_id: int, findings: Mapping[str, Sequence[Any]], remote: Sequence[int]) -> str:
    """Run the SSH checks of the ``remote`` nodes in parallel and record them with the sweep's ``findings``."""
    cluster = Cluster.objects.select_related("template_version", "provider_version", "owner").filter(
        pk=cluster_id).first()  # fmt: skip
    if cluster is None or cluster.status not in (Cluster.Status.ACTIVE, Cluster.Status.INCONSISTENT):
        return "cluster gone or not live: nothing checked"
    result = {int(pk): Finding.from_list(values) for pk, values in findings.items()}
    peers = list(Node.objects.filter(cluster_id=cluster.pk).exclude(status=Node.Status.DELETED).order_by("number"))
    targets = [node for node in peers if node.pk in set(remote)]
    timeout = health_policy(cluster.template_version.document or {}).timeout

    def check(node: Node) -> Finding:
        try:
            return node_finding(cluster, node, peers, timeout)
        except Exception as error:  # a bug or an unexpected failure: say so on the node, check the others
            logger.exception("health check of node %s failed to run", node.pk, extra={"cluster": cluster.pk})
            return Finding(Health.UNKNOWN, f"the checks of node {node.number} could not run: {error}")
        finally:
            close_old_connections()

    if targets:
        with ThreadPoolExecutor(max_workers=min(settings.LOOM_HEALTH_NODE_THREADS, len(targets))) as pool:
            for node, finding in zip(targets, pool.map(check, targets), strict=True):
                result[node.pk] = finding
    outcome = record(cluster, result)
    return f"cluster {cluster.pk}: {outcome.health}"


@shared_task(name="clusters.tasks.cluster_health_check_task", ignore_result=True)
def cluster_health_check_task(cluster_id: int, findings: dict[str, list[Any]], remote: list[int]) -> str:
    return cluster_health_check(cluster_id, findings, remote)
