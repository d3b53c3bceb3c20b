"""Macro expansion over the cluster config, per node. Pure Python, no Django.

The grammar is parsed by ``templates_app.macro_syntax`` (the same parser checks templates when they are
saved); this module evaluates parsed macros against a cluster's nodes. Unlike the original, nothing is
ever left behind silently: a macro that cannot be evaluated (a service no node hosts, an index out of
range, a node without a hostname or the requested IP yet) raises ``MacroError`` naming the macro and the
JSON path where it sits, and ``%%`` becomes a literal ``%``.

``MacroContext`` indexes the cluster once (service → nodes in node-number order, the node's position per
service), so expanding the config for each of 10,000 nodes costs the size of the config, not of the
cluster; the comma-joined lists are built once per (service, kind) and shared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from clusters.planning.specs import NodeSpec
from templates_app.macro_syntax import MacroRef, MacroSyntaxError, iter_macros, json_strings

DEFAULT_IP_TYPE = "bind_v4"


class MacroError(ValueError):
    """A macro that cannot be expanded; ``path`` is the JSON pointer of the string it sits in.

    ``pending`` is True when the macro only lacks a fact a node has not reported yet (its hostname or an
    address, known once its machine is confirmed): the same expansion may succeed later, so the engine
    waits rather than failing the task.
    """

    def __init__(self, message: str, *, macro: str, path: str, pending: bool = False) -> None:
        where = f" at {path}" if path else ""
        super().__init__(f"{macro}{where}: {message}")
        self.message = message
        self.macro = macro
        self.path = path
        self.pending = pending


class NotKnownYet(LookupError):
    """A node's hostname or address, asked for before its machine was confirmed."""


@dataclass(frozen=True, eq=False)
class MacroContext:
    """One cluster, indexed for expansion. ``nodes`` may come in any order; ``number`` orders them."""

    nodes: Sequence[NodeSpec]
    owner: str = ""

    @cached_property
    def by_service(self) -> Mapping[str, tuple[NodeSpec, ...]]:
        index: dict[str, list[NodeSpec]] = {}
        for node in sorted(self.nodes, key=lambda n: n.number):
            for service in node.services:
                index.setdefault(service, []).append(node)
        return {service: tuple(nodes) for service, nodes in index.items()}

    @cached_property
    def _positions(self) -> Mapping[tuple[str, str], int]:
        return {
            (service, node.node_id): position
            for service, nodes in self.by_service.items()
            for position, node in enumerate(nodes, start=1)
        }

    @cached_property
    def joined_lists(self) -> dict[tuple[str, str, str | None], str]:
        """Comma-joined host/IP lists per (kind, service, ip type): the same for every node, so built once."""
        return {}

    def hosts_of(self, service: str) -> tuple[NodeSpec, ...]:
        return self.by_service.get(service, ())

    def position(self, service: str, node: NodeSpec) -> int | None:
        return self._positions.get((service, node.node_id))


def _hostname(node: NodeSpec) -> str:
    if not node.hostname:
        raise NotKnownYet(f"node {node.number} has no hostname yet")
    return node.hostname


def _ip(node: NodeSpec, ip_type: str | None) -> str:
    kind = ip_type or DEFAULT_IP_TYPE
    address = node.ip_addresses.get(kind)
    if not address:
        raise NotKnownYet(f"node {node.number} has no {kind} address yet")
    return address


def _values(macro: MacroRef, context: MacroContext, node: NodeSpec) -> list[str]:
    """The list of values a basic macro stands for (one element for scalars)."""
    if macro.kind == "cluster.owner":
        return [context.owner]
    if macro.kind == "num":
        return [str(len(context.hosts_of(macro.service or "")))]
    if macro.kind == "instance":
        position = context.position(macro.service or "", node)
        if position is None:
            raise LookupError(f"this node (number {node.number}) does not host {macro.service}")
        return [str(position)]
    if macro.service is None:  # host.self, ip.self, ip.T.self
        return [_hostname(node) if macro.kind == "host" else _ip(node, macro.ip_type)]
    hosts = context.hosts_of(macro.service)
    if not hosts:
        raise LookupError(f"no node of this cluster hosts service {macro.service}")
    if macro.index is not None:
        if macro.index >= len(hosts):
            raise LookupError(f"index {macro.index} is out of range: {len(hosts)} node(s) host {macro.service}")
        hosts = (hosts[macro.index],)
    if macro.kind == "host":
        return [_hostname(host) for host in hosts]
    return [_ip(host, macro.ip_type) for host in hosts]


def _format(template: str, value: str) -> str:
    """``map()``'s format: ``$`` is the value, ``$$`` a literal dollar."""
    return "$".join(part.replace("$", value) for part in template.split("$$"))


def _evaluate(macro: MacroRef, context: MacroContext, node: NodeSpec) -> str:
    plain_list = macro.map_format is None and macro.join_separator is None
    if plain_list and macro.service is not None and macro.index is None and macro.kind in {"host", "ip"}:
        key = (macro.kind, macro.service, macro.ip_type)
        cached = context.joined_lists.get(key)
        if cached is None:
            cached = context.joined_lists[key] = ",".join(_values(macro, context, node))
        return cached
    values = _values(macro, context, node)
    if macro.map_format is not None:
        values = [_format(macro.map_format, value) for value in values]
    return (macro.join_separator if macro.join_separator is not None else ",").join(values)


def expand_string(text: str, *, context: MacroContext, node: NodeSpec, path: str = "") -> str:
    """``text`` with every macro evaluated for ``node``."""
    if "%" not in text:
        return text
    parts: list[str] = []
    try:
        for item in iter_macros(text):
            if isinstance(item, str):
                parts.append(item)
                continue
            try:
                parts.append(_evaluate(item, context, node))
            except LookupError as error:
                pending = isinstance(error, NotKnownYet)
                raise MacroError(str(error.args[0]), macro=item.text, path=path, pending=pending) from None
    except MacroSyntaxError as error:
        raise MacroError(error.message, macro=text, path=path) from None
    return "".join(parts)


def expand_config(config: Any, *, context: MacroContext, node: NodeSpec, path: str = "") -> Any:
    """A copy of a JSON value with every string expanded for ``node`` (keys are left as they are)."""
    if isinstance(config, str):
        return expand_string(config, context=context, node=node, path=path or "/")
    if isinstance(config, dict):
        return {
            key: expand_config(value, context=context, node=node, path=f"{path}/{_escape(key)}")
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [expand_config(item, context=context, node=node, path=f"{path}/{i}") for i, item in enumerate(config)]
    return config


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def config_problems(config: Any, *, context: MacroContext, nodes: Sequence[NodeSpec]) -> Iterator[MacroError]:
    """Every macro of ``config`` that fails on any of ``nodes``: each (path, macro) once, with the message of
    the first node it fails on."""
    seen: set[tuple[str, str]] = set()
    for node in nodes:
        for path, text in json_strings(config):
            if "%" not in text:
                continue
            try:
                expand_string(text, context=context, node=node, path=path)
            except MacroError as error:
                key = (error.path, error.macro)
                if key not in seen:
                    seen.add(key)
                    yield error
