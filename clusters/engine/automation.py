"""Service actions over SSH: the bridge between a task and an automator (shell, ansible, puppet, chef-solo).

For one task the runner calls ``service_action_over_ssh``: it opens one SSH session to the node (address,
user, credentials reference and pinned host key as the node records them), builds the automator's
``ActionRequest`` (expanded config and fields, the node and its peers, the plugin's live resources) and
runs the automator. Output lines are collected for the task attempt's log as they arrive (redacted by the
SSH layer). The first successful connection records the node's host key; every later one must match it,
or the action fails with ``HostKeyMismatch`` (terminal: a changed key is never trusted silently).

Every command of the action is bounded by the task's own timeout (``administration.tasktimeout``) and
killed on the node when it passes, so a task the janitor times out does not keep running there while its
retry starts a second copy.

``bootstrap`` is the BOOTSTRAP action: for a node whose services use an SSH automator it connects once
(pinning the host key) and prepares ``~/.loom``, and installs ansible-core on nodes whose services use the
ansible automator (it runs there); nodes running only ``noop`` services need nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from clusters.engine.core import log_tail
from clusters.engine.pins import pinned_service_documents
from clusters.models import Cluster, Node, Task, TaskAttempt
from providers.automators.ansible import AnsibleAutomator, ensure_ansible
from providers.automators.base import ActionRequest, Automator, NodeInfo
from providers.automators.chef_solo import ChefSoloAutomator
from providers.automators.puppet import PuppetAutomator
from providers.automators.shell import ShellAutomator
from providers.catalog_kind import OPERATOR_ONLY_TYPES
from providers.drivers.base import TerminalError
from providers.egress import EgressRefused, resolve_checked
from providers.resources import live_resources
from providers.ssh import Session, open_session

LIVE_LOG_SECONDS = 1.0
"""How often the output of a running action is copied to its attempt's ``log_tail`` for watchers."""


class LiveLog:
    """Collects an action's output lines and, at most every ``LIVE_LOG_SECONDS``, copies the tail to the
    running attempt of task ``task_pk`` (if any), so a page or an API client sees a long install progress
    instead of silence. The engine writes the full (redacted) log when the task finishes; this only shows
    it early."""

    def __init__(self, task_pk: int | None) -> None:
        self.task_pk = task_pk
        self.lines: list[str] = []
        self._flushed = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            if self.task_pk is None or time.monotonic() - self._flushed < LIVE_LOG_SECONDS:
                return
            self._flushed = time.monotonic()
            text = "\n".join(self.lines)
        TaskAttempt.objects.filter(task_id=self.task_pk, finished_at__isnull=True).update(log_tail=log_tail(text))


AUTOMATORS: Mapping[str, Automator] = {
    "shell": ShellAutomator(),
    "ansible": AnsibleAutomator(),
    "puppet": PuppetAutomator(),
    "chef-solo": ChefSoloAutomator(),
}
"""Automator type → implementation; ``noop`` is handled by the runner itself (no SSH)."""


def automator_types(cluster: Cluster, node: Node) -> set[str]:
    """Every automator type the node's services use for any action."""
    types: set[str] = set()
    for document in pinned_service_documents(cluster, node.services).values():
        for definition in ((document.get("provisioner") or {}).get("actions") or {}).values():
            types.add(str(definition.get("type", "")))
    return types


@contextmanager
def node_session(
    cluster: Cluster, node: Node, log: Callable[[str], None], *, timeout: float | None = None
) -> Iterator[Session]:
    """A connected session to ``node``; records the host key the first time the node is reached.
    ``timeout`` bounds each command (default: the SSH layer's, the default task timeout).

    The address the driver reported passes the egress policy (resolved once; the session connects to the
    address checked), unless the cluster's provider type is an operator-only one (lab hosts are the
    operator's own machines, and only tenants the operator enabled can have such nodes)."""
    address = (node.ip_addresses or {}).get("access_v4")
    if not address:
        raise TerminalError(f"node {node.number} has no access_v4 address to connect to")
    provider_type = (cluster.provider_version.document or {}).get("providertype")
    if provider_type not in OPERATOR_ONLY_TYPES:
        try:
            address = resolve_checked(str(address), node.ssh_port or 22, what=f"node {node.number} address")
        except EgressRefused as error:
            raise TerminalError(error.message) from None
    if not node.credentials_ref:
        raise TerminalError(f"node {node.number} has no SSH credentials (its provider reported none)")
    options = {"command_timeout": float(timeout)} if timeout else {}
    session = open_session(address, user=node.ssh_user or "root", port=node.ssh_port or 22,
                           credentials_ref=node.credentials_ref,
                           host_key=node.host_key or None, on_line=log, **options)  # fmt: skip
    with session:
        if session.first_contact and session.host_key:
            Node.objects.filter(pk=node.pk, host_key="").update(host_key=session.host_key)
            node.host_key = session.host_key
        yield session


def bootstrap(cluster: Cluster, node: Node) -> str:
    over_ssh = sorted(automator_types(cluster, node) & set(AUTOMATORS))
    if not over_ssh:
        return "bootstrap: this node's services need nothing on the node\n"
    lines: list[str] = []
    with node_session(cluster, node, lines.append) as session:
        ready = session.run('mkdir -p "$HOME/.loom" && chmod 700 "$HOME/.loom" && uname -sr && printf %s "$HOME"',
                            timeout=60)  # fmt: skip
        if "ansible" in over_ssh:  # ansible-playbook runs on the node: the tool must be there
            ensure_ansible(session, ready.stdout.splitlines()[-1].strip())
    return f"bootstrap for {', '.join(over_ssh)}: host key pinned, ~/.loom ready\n" + "\n".join(lines) + "\n"


def _node_info(node: Node) -> NodeInfo:
    return NodeInfo(number=node.number, hostname=node.hostname, ip_addresses=dict(node.ip_addresses or {}),
                    services=tuple(sorted(node.services)))  # fmt: skip


def service_action_over_ssh(
    cluster: Cluster,
    node: Node,
    *,
    task_pk: int | None,
    service: str,
    action: str,
    automator: str,
    config: Any,
    fields: Any,
) -> str:
    """Run ``action`` of ``service`` on ``node`` with ``automator``, given the config and fields already
    expanded for the node; returns the output. ``task_pk`` is the task this runs for: its running attempt
    shows the output as it comes, and its timeout bounds every command (None: no task, e.g. a test or a
    tool acting directly). Raises the automator's and the SSH layer's ``DriverError`` subclasses."""
    implementation = _automator(automator, service, action)
    timeout = Task.objects.filter(pk=task_pk).values_list("timeout_seconds", flat=True).first() if task_pk else None
    live = LiveLog(task_pk)
    request = action_request(cluster, node, service=service, action=action, automator=automator, config=config,
                             fields=fields, log=live)  # fmt: skip
    with node_session(cluster, node, live, timeout=timeout) as session:
        return implementation.run(session, request)


def _automator(automator: str, service: str, action: str) -> Automator:
    implementation = AUTOMATORS.get(automator)
    if implementation is None:
        raise TerminalError(f"automator {automator!r} of {service}.{action} is not available on this worker")
    return implementation


def action_request(
    cluster: Cluster,
    node: Node,
    *,
    service: str,
    action: str,
    automator: str,
    config: Any,
    fields: Any,
    log: Callable[[str], None],
    peers: list[Node] | None = None,
) -> ActionRequest:
    """The automator's view of one action on ``node``: ``peers`` are the cluster's live nodes (read when not
    given), the plugin's resources are the tenant's live ones."""
    if peers is None:
        peers = list(Node.objects.filter(cluster_id=cluster.pk).exclude(status=Node.Status.DELETED).order_by("number"))
    return ActionRequest(
        cluster=cluster.name,
        cluster_id=cluster.pk,
        service=service,
        action=action,
        fields=fields if isinstance(fields, dict) else {},
        config=config if isinstance(config, dict) else {},
        node=_node_info(node),
        nodes=[_node_info(peer) for peer in peers],
        resources=live_resources(tenant_id=cluster.tenant_id, plugin_kind="automatortypes", plugin=automator),
        log=log,
    )


def action_on_session(session: Session, request: ActionRequest, automator: str) -> str:
    """Run ``request`` with ``automator`` over an open session (the health checks run several on one)."""
    return _automator(automator, request.service, request.action).run(session, request)
