"""Run one task of a job: claim it, do its work against the provider or an automator, record how it ended.

``task_run`` is what a worker calls for "run task N" (``clusters.tasks.task_run_task``):

1. ``engine.task_claim``: a duplicate delivery, a task someone else holds, or a job that is no longer
   running gets None and the call returns at once.
2. ``task_execute`` does the work, outside any database transaction: drivers and automators make network
   calls, which must not hold row locks (and the fake driver writes through the caller's connection).
3. The outcome goes back to the engine:

   * success → ``task_finish(succeeded)``; the successors that became ready reach ``on_ready`` on commit;
   * ``NotReady(retry_after)`` (the machine is still booting) → ``engine.task_release``: the claim is given
     back, the poll's attempt row is removed and the attempt not counted, and the task is queued again with
     ``retry_after`` as countdown. A boot that takes ten polls therefore never exhausts the retry budget, and
     no worker thread is held while a machine boots (architecture.md §3, "waiting is not working");
   * ``TransientError`` → a retryable failure (the engine backs off, up to the task's ``max_attempts``);
   * ``TerminalError`` or any other exception → a terminal failure, failing the job;
   * the database gone during the work (``DATABASE_ERRORS``) → a retryable failure: an outage of Loom's own
     database says nothing about the task.

   Every failure records the error class and a log (redacted by the engine, tail kept on the attempt).

A database restart must not cost a job (issue 16). The claim, the finish and the release are retried with
backoff until the database answers again (``until_the_database_answers``, at most
``LOOM_DATABASE_OUTAGE_SECONDS``) on a fresh connection: each is one transaction, and a finish is idempotent
per attempt, so one whose commit did go through before the connection broke changes nothing the second
time. Without this, the work done (a machine created) would be lost with the finish, and the task would wait
for the janitor's dead-worker pass (``LOOM_HEARTBEAT_TIMEOUT``) to be run again.

Which machine to talk to is derived from the database only (the node's ``node_key`` and ``machine_id``),
never from the message, so a retried or duplicated task does the same thing again: creates are idempotent
by client token and node tag, deletes of a missing machine succeed.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from clusters.engine import automation
from clusters.engine.core import Claimed, OnReady, Ready, task_claim_for_run, task_finish, task_release
from clusters.engine.heartbeat import heartbeat
from clusters.engine.pins import pinned_service_documents
from clusters.engine.rows import node_read
from clusters.models import Cluster, Node, TaskAttempt
from clusters.planning.macros import MacroContext, MacroError, expand_config
from clusters.planning.planner import Action
from clusters.planning.specs import NodeSpec
from providers.automators import noop
from providers.drivers.base import Driver, MachineSpec, NotReady, TerminalError, TransientError
from providers.models import Provider
from providers.services import provider_driver
from templates_app.macro_syntax import json_strings

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
"""What a database that cannot be reached raises (a lost connection, a server shutting down or starting)."""

T = TypeVar("T")

MACRO_WAIT_SECONDS = 2.0
"""How long a task whose config needs a peer's address waits before trying again."""

# Service actions: ``noop`` ones run here, every other automator type over SSH (``clusters/engine/automation.py``).
SERVICE_ACTIONS = frozenset(
    {Action.INSTALL, Action.CONFIGURE, Action.INITIALIZE, Action.START, Action.STOP, Action.REMOVE}
)


class Waiting(Exception):
    """Raised inside ``task_execute`` when the work is not ready yet (wraps a driver's ``NotReady``).

    A plain exception, not a frozen dataclass: context managers on the way out set ``__traceback__``."""

    def __init__(self, *, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


def task_run(
    *, task_pk: int, worker: str, on_ready: OnReady, claimed: Claimed | None = None, claim_next: bool = False
) -> list[Ready]:
    """Claim task ``task_pk`` for ``worker``, execute it and finish (or release) it; returns what became ready
    (already handed to ``on_ready`` on commit). Returns [] when there was nothing to claim.

    ``claimed``: the task was already claimed for ``worker`` (by the finish of its predecessor, see
    ``claim_next``); it is run without claiming again. ``claim_next``: a successful finish also claims the
    next task that may run at once for ``worker`` (``engine.task_finish(claim_next_for=...)``); it comes back
    with ``Ready.claimed`` set, and the caller must run it."""
    if claimed is None:
        claimed = until_the_database_answers(partial(task_claim_for_run, task_pk=task_pk, worker=worker), task_pk)
    if claimed is None:
        logger.info("nothing to claim", extra={"task": task_pk, "worker": worker})
        return []
    attempt = claimed.attempt
    try:
        with heartbeat.beating(task_pk, worker):
            log = task_execute(claimed)
    except Waiting as waiting:
        release = partial(
            task_release, attempt=attempt, countdown=waiting.countdown, reason=waiting.reason, on_ready=on_ready
        )
        return until_the_database_answers(release, task_pk)
    except (TransientError, *DATABASE_ERRORS) as error:
        return _fail(attempt, error, retryable=True, on_ready=on_ready)
    except TerminalError as error:
        return _fail(attempt, error, retryable=False, on_ready=on_ready)
    except Exception as error:  # anything unexpected is a bug or an unclassified failure: do not retry it
        logger.exception("task %s failed unexpectedly", task_pk, extra={"task": task_pk})
        return _fail(attempt, error, retryable=False, on_ready=on_ready, trace=True)
    succeeded = partial(
        task_finish,
        attempt=attempt,
        outcome=TaskAttempt.Outcome.SUCCEEDED,
        log=log,
        on_ready=on_ready,
        claim_next_for=worker if claim_next else None,
    )
    return until_the_database_answers(succeeded, task_pk)


def until_the_database_answers(call: Callable[[], T], task_pk: int) -> T:
    """``call()``, again on a fresh connection while the database cannot be reached, with backoff (0.25 s
    doubling to 5 s) for up to ``LOOM_DATABASE_OUTAGE_SECONDS``; then the error goes up (the task is left
    to the janitor). ``call`` must be one transaction that is safe to repeat: a claim, a finish, a release."""
    deadline = time.monotonic() + settings.LOOM_DATABASE_OUTAGE_SECONDS
    delay = 0.25
    while True:
        try:
            return call()
        except DATABASE_ERRORS as error:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "database unavailable; retrying", extra={"task": task_pk, "error": f"{type(error).__name__}: {error}"}
            )
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _fail(
    attempt: TaskAttempt, error: Exception, *, retryable: bool, on_ready: OnReady, trace: bool = False
) -> list[Ready]:
    # A failed script's whole output belongs in the attempt's log; the error message quotes only its tail.
    output = getattr(error, "output", None)
    log = output.rstrip("\n") + "\n" if isinstance(output, str) and output else ""
    log += f"{type(error).__name__}: {error}\n"
    if trace:
        log += "".join(traceback.format_exception(error))
    failed = partial(
        task_finish,
        attempt=attempt,
        outcome=TaskAttempt.Outcome.FAILED,
        error_class=type(error).__name__,
        retryable=retryable,
        log=log,
        on_ready=on_ready,
    )
    return until_the_database_answers(failed, attempt.task_id)


def task_execute(claimed: Claimed) -> str:
    """Do the work of one claimed task; returns its output. Raises ``Waiting``, ``DriverError`` subclasses or
    anything else (see ``task_run`` for how each is classified). Must be called outside a transaction."""
    action = Action(claimed.action)
    if action is Action.JOIN or claimed.node_id is None:
        return "join point: nothing to do\n"
    cluster = job_cluster(claimed.job_id)
    # Fresh: create and confirm write to it during the job. The claim returned it on PostgreSQL.
    node = claimed.node if claimed.node is not None else node_read(claimed.node_id)
    task_pk = claimed.attempt.task_id
    if action is Action.CREATE:
        return _create(cluster, node)
    if action is Action.CONFIRM:
        return _confirm(cluster, node, task_pk=task_pk)
    if action is Action.BOOTSTRAP:
        return automation.bootstrap(cluster, node)
    if action is Action.DELETE:
        return _delete(cluster, node)
    if action in SERVICE_ACTIONS:
        return _service_action(cluster, node, service=claimed.service, action=action, task_pk=task_pk)
    raise TerminalError(f"no executor for action {action}")


_CLUSTER_CACHE_SIZE = 512
_clusters: OrderedDict[int, Cluster] = OrderedDict()
_clusters_lock = threading.Lock()


def job_cluster(job_pk: int) -> Cluster:
    """The cluster a job works on, with its pinned provider version and owner, kept per worker process.

    What a task reads of its cluster (name, provider and its pinned version, provider fields, config, service
    pins, owner) is written when the job is made, in the same transaction, and not again while the job runs:
    a day-2 change or a retry of a failed job starts from a cluster that is not busy. So every task of a job
    may share one read, instead of a three-table join per task. Bounded (least recently used out); callers
    must not modify the instance, which threads share.
    """
    with _clusters_lock:
        cluster = _clusters.get(job_pk)
        if cluster is not None:
            _clusters.move_to_end(job_pk)
            return cluster
    cluster = Cluster.objects.select_related("provider_version", "owner").get(jobs__pk=job_pk)
    with _clusters_lock:
        _clusters[job_pk] = cluster
        while len(_clusters) > _CLUSTER_CACHE_SIZE:
            _clusters.popitem(last=False)
    return cluster


# --- hardware actions ----------------------------------------------------------------------------------------


def cluster_key(cluster: Cluster) -> str:
    """The ``loom-cluster`` tag and machine name stem of a cluster's machines."""
    return f"c{cluster.pk}-{cluster.name}"


def cluster_driver(cluster: Cluster) -> Driver:
    """The driver for the cluster's provider, configured from the provider version the cluster pinned.

    Identity (``provider_key``, hence which machines the driver sees) is the live provider row's, so the
    reaper and the cluster talk about the same machines; fields come from the pinned version, overlaid with
    the provider fields the create request set.
    """
    provider = Provider.objects.filter(tenant_id=cluster.tenant_id, name=cluster.provider_name).first()
    if provider is None:
        raise TerminalError(f"provider {cluster.provider_name} no longer exists")
    pinned = cluster.provider_version
    document = pinned.document or {}
    provider.provider_type = document.get("providertype", provider.provider_type)
    provider.document = document
    provider.secret_data = pinned.secret_data
    return provider_driver(provider=provider, user_fields=cluster.provider_fields or None)


def machine_spec(cluster: Cluster, node: Node) -> MachineSpec:
    return MachineSpec.for_node(
        cluster_key=cluster_key(cluster),
        node_key=node.node_key,
        node_number=node.number,
        flavor=node.flavor,
        image=node.image_id,
        ssh_user=node.ssh_user or "root",
    )


def _create(cluster: Cluster, node: Node) -> str:
    machine = cluster_driver(cluster).create(machine_spec(cluster, node))
    Node.objects.filter(pk=node.pk).update(machine_id=machine.machine_id)
    return f"machine {machine.machine_id} ({machine.name}) created, state {machine.state}\n"


def _confirm(cluster: Cluster, node: Node, *, task_pk: int) -> str:
    if not node.machine_id:
        raise TerminalError(f"node {node.number} has no machine to confirm")
    driver, spec = cluster_driver(cluster), machine_spec(cluster, node)
    deadline = time.monotonic() + settings.LOOM_INLINE_WAIT_SECONDS
    while True:
        try:
            reachable = driver.confirm(spec, node.machine_id)
            break
        except NotReady as not_ready:
            # Ready within LOOM_INLINE_WAIT_SECONDS: sleep here (no CPU, no broker round trip, no new claim);
            # otherwise give the claim back and come again after the countdown, holding no thread.
            if time.monotonic() + not_ready.retry_after > deadline:
                raise Waiting(countdown=not_ready.retry_after, reason=str(not_ready)[:255]) from not_ready
            time.sleep(not_ready.retry_after)
    updates: dict[str, Any] = {
        "ip_addresses": dict(reachable.ip_addresses),
        "ssh_user": reachable.ssh_user,
        "ssh_port": reachable.ssh_port,
        "status": Node.Status.ACTIVE,
    }
    if reachable.host_key:
        updates["host_key"] = reachable.host_key
    if reachable.credentials_ref:
        updates["credentials_ref"] = reachable.credentials_ref
    if not node.hostname:
        updates["hostname"] = reachable.hostname
    Node.objects.filter(pk=node.pk).update(**updates)
    addresses = ", ".join(f"{k}={v}" for k, v in sorted(reachable.ip_addresses.items()))
    return f"machine {node.machine_id} reachable as {reachable.hostname} ({addresses})\n"


def _delete(cluster: Cluster, node: Node) -> str:
    """Delete the node's machine. A node without a recorded machine may still have one (a create whose reply
    was lost before the job failed): look it up by its ``loom-node`` tag, so a delete never leaks."""
    driver = cluster_driver(cluster)
    machine_ids = [node.machine_id] if node.machine_id else []
    if not machine_ids:
        machine_ids = [m.machine_id for m in driver.list_tagged() if m.node_key == node.node_key]
    for machine_id in machine_ids:
        driver.delete(machine_id)
    Node.objects.filter(pk=node.pk).update(status=Node.Status.DELETED)
    if not machine_ids:
        return f"node {node.number} has no machine; nothing to delete\n"
    return f"machine(s) {', '.join(machine_ids)} deleted\n"


# --- service actions -----------------------------------------------------------------------------------------


def _service_action(cluster: Cluster, node: Node, *, service: str, action: Action, task_pk: int) -> str:
    """Run ``action`` of ``service`` on the node with the automator the service names for it, given the
    cluster config and the action's fields with every macro expanded for this node."""
    document = pinned_service_documents(cluster, [service]).get(service)
    if document is None:
        raise TerminalError(f"service {service} no longer exists")
    definition = (document.get("provisioner") or {}).get("actions", {}).get(str(action))
    if not definition:
        raise TerminalError(f"service {service} defines no {action} action")
    automator = definition.get("type", "")
    config, fields = expanded_inputs(cluster, node, cluster.config or {}, definition.get("fields") or {})
    if automator == "noop":
        result = noop.run(
            f"{service}.{action}",
            latency_ms=fields.get("latency_ms", 100) or 100,
            jitter_ms=fields.get("jitter_ms") or None,
            seed=node.node_key,
        )
        keys = ", ".join(sorted(config)) if isinstance(config, dict) else type(config).__name__
        return f"{result.output}config keys: {keys or 'none'}\n"
    return automation.service_action_over_ssh(
        cluster,
        node,
        task_pk=task_pk,
        service=service,
        action=str(action),
        automator=automator,
        config=config,
        fields=fields,
    )


def expanded_inputs(cluster: Cluster, node: Node, config: Any, fields: Any) -> tuple[Any, Any]:
    """The cluster config and the action's fields with macros expanded for ``node``.

    The cluster's nodes are read only when a macro is present (most configs of a 1,000-node cluster have
    none, and reading every node for every task would cost a million rows). A macro that lacks a node's
    address while some node is still being confirmed (an INSTALL runs as soon as its own node is up) makes
    the task wait and try again; any other macro error fails the task, naming the macro and where it is.
    """
    if not any("%" in text for _, text in json_strings([config, fields])):
        return config, fields
    nodes = list(Node.objects.filter(cluster_id=cluster.pk).exclude(status=Node.Status.DELETED))
    specs = {n.pk: NodeSpec(node_id=n.node_key, number=n.number, hardware=n.hardware, image=n.image,
                            services=frozenset(n.services), hostname=n.hostname, ip_addresses=n.ip_addresses)
             for n in nodes}  # fmt: skip
    context = MacroContext(nodes=list(specs.values()), owner=cluster.owner.get_username())
    me = specs.get(node.pk)
    if me is None:
        raise TerminalError(f"node {node.number} is no longer part of cluster {cluster.name}")
    try:
        return (
            expand_config(config, context=context, node=me, path="/config"),
            expand_config(fields, context=context, node=me, path="/fields"),
        )
    except MacroError as error:
        if error.pending and any(n.status == Node.Status.PLANNED for n in nodes):
            raise Waiting(countdown=MACRO_WAIT_SECONDS, reason=f"waits for node addresses: {error}"[:255]) from error
        raise TerminalError(f"macro {error}") from error
