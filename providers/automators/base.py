"""The automator contract: what an automator is given for one service action, and how it reaches the node.

Automators push over SSH from the worker (nothing is pre-installed on nodes). Each gets an ``ActionRequest``
(plain, frozen values: the service, the action, the action's fields and the cluster config with macros
already expanded for this node, the node and its peers, the plugin's live resources) and a ``Remote``, the
open SSH session to the node, and returns the action's output. Failures are ``DriverError`` subclasses:
``TransientError`` when a retry may help (the connection dropped, a script exited with EX_TEMPFAIL 75),
``TerminalError`` otherwise (a script failed), so the engine's retry rules apply to automators unchanged.

Everything an automator leaves on a node lives under ``~/.loom`` of the SSH user (private to each lab host,
whose /root is its own), so two nodes on one machine never share files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from providers.resources import LiveResource

REMOTE_ROOT = ".loom"
"""Relative to the SSH user's home on the node."""

EX_TEMPFAIL = 75
"""A script's way of saying "try me again later" (sysexits.h); any other non-zero exit is terminal."""


class CommandResult(Protocol):
    """What a command run on the node reports (``providers.ssh.CommandResult`` has more)."""

    exit_status: int
    output: str


class Remote(Protocol):
    """The part of an SSH session automators use (``providers.ssh.Session`` implements it)."""

    user: str

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult: ...

    def upload(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None: ...


@dataclass(frozen=True)
class NodeInfo:
    number: int
    hostname: str
    ip_addresses: Mapping[str, str]
    services: Sequence[str]


@dataclass(frozen=True)
class ActionRequest:
    cluster: str
    cluster_id: int
    service: str
    action: str
    fields: Mapping[str, Any]
    config: Mapping[str, Any]
    node: NodeInfo
    nodes: Sequence[NodeInfo]
    resources: Sequence[LiveResource] = field(default_factory=tuple)
    log: Callable[[str], None] = field(default=lambda line: None, repr=False, compare=False)

    def task_json(self) -> str:
        """The task as the node sees it (``LOOM_TASK``): everything but the resources' bytes and the log."""
        return json.dumps(
            {
                "cluster": {"name": self.cluster, "id": self.cluster_id},
                "service": self.service,
                "action": self.action,
                "fields": dict(self.fields),
                "config": dict(self.config),
                "node": _node(self.node),
                "nodes": [_node(node) for node in self.nodes],
            },
            sort_keys=True,
        )

    @property
    def environment(self) -> dict[str, str]:
        """Variables every script sees, so simple scripts need no JSON parsing at all."""
        addresses = self.node.ip_addresses
        return {
            "LOOM_CLUSTER": self.cluster,
            "LOOM_SERVICE": self.service,
            "LOOM_ACTION": self.action,
            "LOOM_HOSTNAME": self.node.hostname,
            "LOOM_NODE_NUMBER": str(self.node.number),
            "LOOM_ACCESS_V4": addresses.get("access_v4", ""),
            "LOOM_BIND_V4": addresses.get("bind_v4", addresses.get("access_v4", "")),
        }


def _node(node: NodeInfo) -> dict[str, Any]:
    data = asdict(node)
    data["ip_addresses"] = dict(node.ip_addresses)
    data["services"] = list(node.services)
    return data


class Automator(Protocol):
    def run(self, remote: Remote, request: ActionRequest) -> str: ...
