"""Node names, as the original made them, but always valid DNS labels. Pure Python."""

from __future__ import annotations

import re

FIRST_NODE_NUMBER = 1000
DEFAULT_DNS_SUFFIX = "local"
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def node_hostname(
    cluster_name: str, node_number: int, *, cluster_id: int | None = None, dns_suffix: str | None = None
) -> str:
    """``<name><cluster id>-<node number>.<suffix>``: the cluster name lower-cased, leading digits dropped,
    other characters turned into ``-``, cut so the first label stays within 63 characters."""
    prefix = _NOT_LABEL.sub("-", cluster_name.lower().lstrip("0123456789")).strip("-") or "node"
    tail = f"{cluster_id if cluster_id is not None else ''}-{node_number}"
    label = (prefix[: 63 - len(tail)].rstrip("-") or "node") + tail
    suffix = (dns_suffix or DEFAULT_DNS_SUFFIX).strip(".")
    return f"{label}.{suffix}"
