"""The egress policy: the one place that decides which addresses Loom may connect to on a tenant's behalf.

A tenant admin supplies addresses (webhook URLs, static pool hosts, provider endpoint and auth URLs) and
drivers report SSH targets; the worker then connects there. Without a policy that is a way into Loom's own
network: the worker's loopback (Redis, PostgreSQL, the metrics port), the cloud metadata service at
169.254.169.254, or other internal hosts. Every such address passes ``check_address`` twice:

* **when the entity is saved** (``check_url_field`` / ``check_host_field``): a literal address or a name that
  resolves to a refused address is a 400 naming the field and the rule; a name that does not resolve here
  is accepted (it may resolve where the worker runs) and is checked again at connect time;
* **at connect time** (``resolve_checked``): the name is resolved, every address it resolves to must pass,
  and the caller connects to the address that was checked (never resolving again), so a DNS answer that
  changes between check and connect (DNS rebinding) cannot slip through.

Refused always: loopback, link-local (169.254.0.0/16, fe80::/10, the metadata addresses included),
unspecified, multicast, reserved, and the addresses of Loom's own services (database, broker and
``LOOM_EGRESS_DENY``). Refused unless allow-listed (``LOOM_EGRESS_ALLOW_NETWORKS``, a comma list of CIDRs):
private and shared ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), where a real private cloud
lives. An allow-listed network opens every rule but the own-services one: tests and the lab allow-list
127.0.0.0/8 for their receivers, yet 127.0.0.1:5432 (the test database) stays refused. Own services on a
loopback address are refused by port (other loopback ports are separate listeners); elsewhere the whole
address is refused (a database host is not a place to SSH to either).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from tenants.errors import ApplicationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "198.18.0.0/15")
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgres": 5432, "postgresql": 5432, "redis": 6379, "rediss": 6379,
                  "amqp": 5672, "amqps": 5671, "pyamqp": 5672}  # fmt: skip


class EgressRefused(ApplicationError):
    """An address the policy refuses. At save time the API answers 400 with ``fields``; at connect time the
    caller turns it into its own terminal failure (the message says which rule)."""


@dataclass(frozen=True)
class Policy:
    allow: tuple[IPNetwork, ...]
    own_hosts: frozenset[IPAddress]
    own_endpoints: frozenset[tuple[IPAddress, int]]

    def refusal(self, ip: IPAddress, port: int | None = None) -> str | None:
        """Why ``ip`` (and ``port``) may not be reached, or None when it may."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip in self.own_hosts and not ip.is_loopback:
            return f"{ip} is an address of Loom's own services"
        if port is not None and (ip, port) in self.own_endpoints:
            return f"{ip}:{port} is one of Loom's own services"
        if any(ip in network for network in self.allow):
            return None
        if ip.is_loopback:
            return f"{ip} is a loopback address (Loom's own machine)"
        if ip.is_link_local:
            return f"{ip} is link-local (cloud metadata and host-internal services live there)"
        if ip.is_unspecified:
            return f"{ip} is the unspecified address"
        if ip.is_multicast:
            return f"{ip} is a multicast address"
        if any(ip in network for network in _PRIVATE if network.version == ip.version):
            return f"{ip} is in a private range; the operator may allow it with LOOM_EGRESS_ALLOW_NETWORKS"
        if ip.is_reserved or not ip.is_global:
            return f"{ip} is not a public address"
        return None


def _service_endpoints(urls: Iterable[str]) -> Iterable[tuple[str, int]]:
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        if parts.hostname:
            try:
                port = parts.port
            except ValueError:
                port = None
            yield parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme.split("+")[-1], 0)


def _own_services() -> list[tuple[str, int]]:
    """Loom's own service endpoints: every database, the broker, the result backend, the cache, and
    ``LOOM_EGRESS_DENY`` (``host`` or ``host:port`` entries for anything else of the operator's)."""
    endpoints: list[tuple[str, int]] = []
    for database in settings.DATABASES.values():
        host = str(database.get("HOST") or "")
        if host and not host.startswith("/"):
            endpoints.append((host, int(database.get("PORT") or 5432)))
    urls = [str(getattr(settings, name, "") or "") for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")]
    urls += [str(cache.get("LOCATION") or "") for cache in getattr(settings, "CACHES", {}).values()]
    endpoints += _service_endpoints(url.replace(";", " ").split()[0] for url in urls if "://" in url)
    for entry in getattr(settings, "LOOM_EGRESS_DENY", ()):
        host, _, port = str(entry).rpartition(":") if str(entry).count(":") == 1 else (str(entry), "", "")
        endpoints.append((host, int(port) if port.isdigit() else 0))
    return endpoints


def _addresses(host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


@functools.lru_cache(maxsize=8)
def _policy(allow: tuple[str, ...], own: tuple[tuple[str, int], ...]) -> Policy:
    hosts: set[IPAddress] = set()
    endpoints: set[tuple[IPAddress, int]] = set()
    for host, port in own:
        for ip in _addresses(host):
            ip = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
            if port:
                endpoints.add((ip, port))
            if not port or not ip.is_loopback:
                hosts.add(ip)
    return Policy(allow=tuple(ipaddress.ip_network(net, strict=False) for net in allow),
                  own_hosts=frozenset(hosts), own_endpoints=frozenset(endpoints))  # fmt: skip


def policy() -> Policy:
    """The policy as the settings say now (cached per settings value: tests override them)."""
    allow = tuple(str(net).strip() for net in getattr(settings, "LOOM_EGRESS_ALLOW_NETWORKS", ()) if str(net).strip())
    return _policy(allow, tuple(_own_services()))


def check_address(ip: str | IPAddress, port: int | None = None) -> str | None:
    """Why ``ip:port`` is refused, or None."""
    return policy().refusal(ipaddress.ip_address(ip) if isinstance(ip, str) else ip, port)


def resolve_checked(host: str, port: int, *, what: str = "address") -> str:
    """The address to connect to for ``host:port``: resolved once, every answer checked; EgressRefused
    when the name does not resolve or any answer is refused (a name with one bad answer is not used)."""
    addresses = _addresses(host)
    if not addresses:
        raise EgressRefused(f"{what} {host!r} does not resolve")
    for ip in addresses:
        reason = policy().refusal(ip, port)
        if reason:
            raise EgressRefused(f"{what} {host}:{port} is refused by the egress policy: {reason}")
    return str(addresses[0])


def _refused_at_save(host: str, port: int | None) -> str | None:
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return f"{host} is this machine"
    for ip in _addresses(host):
        reason = policy().refusal(ip, port)
        if reason:
            return reason
    return None


def check_host_field(field: str, host: str, port: int | None = None) -> None:
    """Save-time check of a host a tenant gives: EgressRefused (400) naming ``field`` and the rule."""
    reason = _refused_at_save(host, port)
    if reason:
        raise EgressRefused(f"{field}: {reason}", fields={field: [f"refused by the egress policy: {reason}"]})


def url_host_port(url: str) -> tuple[str, int] | None:
    """Host and port of an absolute URL, or None when it has no host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme.lower(), 443)


def check_url_field(field: str, url: Any) -> None:
    """Save-time check of a URL a tenant gives (webhook, provider endpoint): its host must pass."""
    if not isinstance(url, str) or "://" not in url:
        return
    target = url_host_port(url)
    if target is not None:
        check_host_field(field, *target)
