"""The shared apache-libcloud adapter: one implementation of the driver contract for every real cloud.

Each cloud module (``aws``, ``openstack``, ``gce``, ``digitalocean``, ``rackspace``) only says how the
provider's fields become libcloud arguments, where a machine keeps its tags and how to find one; the
contract itself lives here, once:

* **create** first looks for the machine already made for this spec, by its ``loom-node`` tag (and by name
  where names are unique), then creates it with the deterministic name, the client token where the cloud
  has one, and the tags ``loom-cluster``, ``loom-node``, ``loom-provider`` plus the provider's extra tags.
  A create whose reply was lost is therefore found again by the retry, never made twice. The tag lookup is
  the one that matters: EC2 honours ``ClientToken``, but emulators (moto) and most other clouds have none.
* **confirm** never waits: ``NotReady`` while the machine boots (the engine re-enqueues the confirm), then
  ``Reachable`` with ``access_v4`` (the public address, else the private one) and ``bind_v4`` (private).
* **delete** of a missing machine is success, so deletes can be retried.
* **list_tagged** returns only this provider's machines (``loom-provider`` tag): two Loom providers may
  share one cloud account, and the reaper of one must never see, let alone delete, the other's machines.

Errors are classified in one place (``classify``): authentication failures terminal; 5xx, 429 and
throttling, timeouts and connection errors transient; other 4xx terminal; "not found" for a machine right
after its create transient. Every libcloud call has connect/read timeouts (``API_TIMEOUT_SECONDS``), and no
exception leaves this module unclassified: libcloud's own messages can carry request URLs with signed
query strings, so messages are rebuilt from the status and the cloud's error text, with every credential
value and every query string removed, and the original exception is not chained.

``LOOM_TEST_CLOUD_HOOK`` (tests only) names a ``tests.…:callable`` that may adjust the libcloud driver
class and arguments, e.g. to point EC2 at a local moto server. It is refused unless the Django settings
module is one of the test suite's (``tests.…``), so it cannot take effect in production by accident.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import requests
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError, ProviderError
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeSize
from libcloud.compute.types import NodeState

import providers.plugin_specs  # noqa: F401  (registers the provider types whose defaults apply here)
from templates_app.plugin_types import PluginType, registry

from .base import (
    TAG_CLUSTER,
    TAG_NODE,
    DriverError,
    Machine,
    MachineSpec,
    NotReady,
    Reachable,
    TerminalError,
    TransientError,
)

logger = logging.getLogger(__name__)

TAG_PROVIDER = "loom-provider"
"""Which Loom provider made a machine: ``list_tagged`` and the create lookup only see their own."""

API_TIMEOUT_SECONDS = 30.0
"""Connect and read timeout of every HTTP request to a cloud API (and the limit of libcloud's own
operation polling, e.g. GCE's insert operations)."""

CONFIRM_POLL_SECONDS = 5.0
"""How long a confirm that found the machine booting asks the engine to wait before asking again."""

TEST_HOOK_ENV = "LOOM_TEST_CLOUD_HOOK"

MESSAGE_LIMIT = 400

# Machines in these states are gone or going: not found again by a create, not listed for the reaper.
GONE_STATES = frozenset({NodeState.TERMINATED})
# A machine in one of these will not become reachable by waiting.
DEAD_STATES = frozenset({NodeState.TERMINATED, NodeState.STOPPED, NodeState.STOPPING, NodeState.ERROR,
                         NodeState.SUSPENDED, NodeState.PAUSED})  # fmt: skip

# Error codes some clouds put in the body of an otherwise ordinary 4xx (EC2 and friends).
AUTH_CODES = ("AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnauthorizedOperation",
              "OptInRequired", "Unauthorized", "Forbidden", "InvalidAccessKeyId", "ExpiredToken")  # fmt: skip
THROTTLE_CODES = ("RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequests",
                  "RateLimitExceeded")  # fmt: skip
SERVER_CODES = ("InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
                "InsufficientInstanceCapacity")  # fmt: skip

Result = TypeVar("Result")


def truthy(value: Any) -> bool:
    """A checkbox field's value: stored as a JSON boolean, or as "true"/"false" from forms and imports."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "on"}
    return bool(value)


def parse_tags(raw: Any, *, field: str, provider_type: str) -> dict[str, str]:
    """Extra tags from a ``key=value,key=value`` field. Loom's own tags cannot be set or overridden."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, Mapping):
        items = [(str(key), str(value)) for key, value in raw.items()]
    else:
        items = []
        for item in str(raw).split(","):
            if not item.strip():
                continue
            key, separator, value = item.partition("=")
            if not separator or not key.strip():
                raise TerminalError(f"{provider_type} provider field {field}: {item.strip()!r} is not key=value")
            items.append((key.strip(), value.strip()))
    tags = dict(items)
    reserved = sorted(key for key in tags if key.startswith("loom-"))
    if reserved:
        raise TerminalError(f"{provider_type} provider field {field}: {', '.join(reserved)} is reserved for Loom")
    return tags


def csv(raw: Any) -> list[str]:
    """A comma-separated field (or a JSON list) as a list of non-empty, stripped strings."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def tenant_of(provider_key: str) -> int:
    """The tenant id in a provider key (``tenant-<id>/provider-<id>``, see ``providers.services``)."""
    match = re.match(r"tenant-(\d+)/", provider_key)
    if match is None:
        raise TerminalError(f"provider key {provider_key!r} names no tenant: cannot read its plugin resources")
    return int(match.group(1))


def _query_free(text: str) -> str:
    """URLs without their query strings: SigV2 requests carry the access key and signature there."""
    return re.sub(r"\?[^\s'\"<>)]*", "?…", text)


def _status(error: BaseException) -> int | None:
    code = getattr(error, "code", None)
    if isinstance(error, ProviderError):
        code = error.http_code
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


def _text(error: BaseException) -> str:
    """What the cloud said, without libcloud's reprs (they include the driver and response bodies)."""
    if isinstance(error, BaseHTTPError):
        return str(error.message or "")
    if isinstance(error, MalformedResponseError):
        return f"malformed response: {error.value}"
    if isinstance(error, LibcloudError):
        return str(error.value)
    return f"{type(error).__name__}: {error}"


def _retry_after(error: BaseException) -> float | None:
    if isinstance(error, RateLimitReachedError) and error.retry_after:
        return float(error.retry_after)
    return _retry_after_header(getattr(error, "headers", None))


def _retry_after_header(headers: Mapping[str, str] | None) -> float | None:
    """A ``Retry-After`` given in seconds (the form clouds use for throttling)."""
    headers = {str(k).lower(): v for k, v in (headers or {}).items()}
    try:
        value = float(headers.get("retry-after", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value > 0 else None


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, requests.Timeout | socket.timeout | TimeoutError) or (
        isinstance(error, LibcloudError) and "did not complete in" in str(error.value)
    )


def _is_connection_error(error: BaseException) -> bool:
    return isinstance(error, requests.ConnectionError | ConnectionError | socket.gaierror | ssl.SSLError) or (
        isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError)
    )


def classify(
    error: BaseException,
    *,
    doing: str,
    redact: Callable[[str], str],
    status: int | None = None,
    retry_after: float | None = None,
    missing: bool = False,
    timeout: float = API_TIMEOUT_SECONDS,
) -> DriverError:
    """The ``DriverError`` for an exception raised by a libcloud call (see the module docstring).

    ``doing`` says what was attempted ("create loom-c1-web-3 on aws"); ``status`` and ``retry_after`` come
    from the last response when the exception does not carry them (libcloud loses both when it cannot parse
    an error body); ``missing`` tells that the cloud reported the machine itself as not found.
    """
    code = _status(error) or status
    retry_after = _retry_after(error) or retry_after
    text = redact(_text(error))
    said = f" (HTTP {code}: {text})" if code else f" ({text})" if text else ""
    server_side = code is not None and code >= 500
    if (
        isinstance(error, InvalidCredsError)
        or code in (401, 403)
        or (not server_side and any(c in text for c in AUTH_CODES))
    ):
        return TerminalError(f"{doing}: the cloud refused the credentials or the permission{said}")
    if isinstance(error, RateLimitReachedError) or code == 429 or any(c in text for c in THROTTLE_CODES):
        return TransientError(f"{doing}: throttled by the cloud{said}", retry_after=retry_after)
    if _is_timeout(error):
        return TransientError(f"{doing}: no answer within {timeout:g} s{said}")
    if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return TerminalError(f"{doing}: the cloud API's TLS certificate is not trusted{said}")
    if code is None and _is_connection_error(error):
        return TransientError(f"{doing}: cannot reach the cloud API{said}")
    if server_side or any(c in text for c in SERVER_CODES):
        return TransientError(f"{doing}: the cloud failed{said}", retry_after=retry_after)
    if missing:
        return TransientError(
            f"{doing}: the machine is not found yet (eventual consistency right after a create){said}"
        )
    if isinstance(error, MalformedResponseError):
        return TransientError(f"{doing}: the cloud answered something that is not its API{said}")
    if code is not None and 400 <= code < 500:
        return TerminalError(f"{doing}: the cloud rejected the request{said}")
    return TerminalError(f"{doing}: unexpected failure{said}")


def _test_hook() -> Callable[[str, type[NodeDriver], dict[str, Any]], tuple[type[NodeDriver], dict[str, Any]]] | None:
    """The test suite's hook named by ``LOOM_TEST_CLOUD_HOOK``, refused outside the test settings."""
    target = os.environ.get(TEST_HOOK_ENV, "").strip()
    if not target:
        return None
    from django.conf import settings

    settings_module = str(getattr(settings, "SETTINGS_MODULE", "") or "")
    if not settings_module.startswith("tests.") or not target.startswith("tests."):
        raise TerminalError(
            f"{TEST_HOOK_ENV} is set ({target!r}) but only the test suite may use it (settings {settings_module!r},"
            " hook must live under tests.): unset it"
        )
    module_name, _, name = target.partition(":")
    hook: Any = getattr(importlib.import_module(module_name), name)
    return hook  # type: ignore[no-any-return]


class CloudDriver:
    """The driver contract on top of a libcloud ``NodeDriver``; one subclass per cloud.

    Subclasses set ``provider_type`` and implement ``libcloud_driver`` (class and constructor arguments
    from the fields) and ``create_arguments`` (``create_node`` arguments for a spec), and override the
    lookups where the cloud can do better than listing every machine. An instance serves one provider and
    is used by one thread (the engine builds a driver per task); all state that matters is in the cloud.
    """

    provider_type: ClassVar[str]
    secret_fields: ClassVar[tuple[str, ...]] = ("api_user", "api_password")
    tag_value_limit: ClassVar[int] = 255
    timeout_argument: ClassVar[bool] = True
    """Whether the libcloud constructor takes ``timeout`` (it must for drivers whose constructor calls
    the API, as GCE's does); the connection gets it afterwards in any case."""

    def __init__(
        self,
        fields: Mapping[str, Any],
        *,
        provider_key: str,
        timeout: float = API_TIMEOUT_SECONDS,
        resources: Callable[[str, str], bytes] | None = None,
    ) -> None:
        if not provider_key:
            raise TerminalError(f"{self.provider_type} driver needs a provider_key")
        self.provider_key = provider_key
        plugin = registry.get("provider", self.provider_type)
        # The provider type's defaults (e.g. aws_region us-east-1) apply to fields the admin left out, as the
        # forms show them; the schema's sensitive fields are the values no message may contain.
        self.fields: Mapping[str, Any] = {**_defaults(plugin), **fields}
        self.timeout = timeout
        self._resources = resources
        sensitive = set(self.secret_fields) | set(plugin.sensitive_fields if plugin else ())
        self._secrets: list[str] = [str(self.fields[name]) for name in sorted(sensitive) if self.fields.get(name)]
        self.extra_tags = parse_tags(self.fields.get("tags"), field="tags", provider_type=self.provider_type)
        self._client: NodeDriver | None = None
        self.check_fields()

    # -- what a cloud module provides --------------------------------------------------------------------

    def check_fields(self) -> None:
        """Reject unusable fields before any call, naming the field (a ``TerminalError``)."""

    def libcloud_driver(self) -> tuple[type[NodeDriver], dict[str, Any]]:
        """The libcloud driver class and its constructor arguments (without ``timeout``)."""
        raise NotImplementedError

    def create_arguments(self, spec: MachineSpec) -> dict[str, Any]:
        """Keyword arguments of ``create_node`` for ``spec`` (may look things up through ``self.call``)."""
        raise NotImplementedError

    def node_tags(self, node: Node) -> dict[str, str]:
        """The tags (or metadata) a machine carries, as a plain mapping."""
        metadata = node.extra.get("metadata") or {}
        return {str(key): str(value) for key, value in metadata.items()}

    def encode_tags(self, tags: Mapping[str, str]) -> Any:
        """Tags as the cloud stores them; values cut to the cloud's limit (only ``loom-node`` must be exact)."""
        return {key: value[: self.tag_value_limit] for key, value in tags.items()}

    def list_nodes(self) -> list[Node]:
        """Every machine this provider may have made (a cloud may filter server-side by ``loom-provider``)."""
        return list(self.client.list_nodes())

    def find_nodes(self, spec: MachineSpec) -> list[Node]:
        """Machines already made for ``spec``'s node (the create's idempotency lookup)."""
        return [node for node in self.list_nodes() if self.node_tags(node).get(TAG_NODE) == spec.node_key]

    def get_node(self, machine_id: str) -> Node | None:
        """The machine, or None when the cloud does not know it."""
        for node in self.list_nodes():
            if self.machine_id(node) == machine_id:
                return node
        return None

    def destroy(self, machine_id: str) -> bool:
        """Delete the machine; a missing machine may raise (``is_missing`` decides) or return True."""
        return bool(self.client.destroy_node(Node(machine_id, None, None, [], [], self.client)))

    def is_missing(self, error: BaseException) -> bool:
        """Whether ``error`` says that the machine asked about does not exist."""
        return _status(error) == 404

    def machine_id(self, node: Node) -> str:
        return str(node.id)

    def hostname(self, node: Node, spec: MachineSpec) -> str:
        return spec.name

    def ssh_user(self, spec: MachineSpec) -> str:
        return spec.ssh_user

    def ready_problem(self, node: Node, spec: MachineSpec) -> str | None:
        """Why a running machine is not usable yet (e.g. RackConnect still automating), or None."""
        return None

    # -- the contract ---------------------------------------------------------------------------------

    def create(self, spec: MachineSpec) -> Machine:
        doing = f"create {spec.name} on {self.provider_type}"
        found = [
            node for node in self.call(f"look up {spec.name}", lambda: self.find_nodes(spec)) if not self.gone(node)
        ]
        if found:
            if len(found) > 1:
                logger.warning("%d machines carry node %s; using the first", len(found), spec.node_key)
            return self.machine(found[0])
        arguments = self.create_arguments(spec)
        # A 404 here is the read-back after a create that worked (OpenStack, GCE): transient, and the retry
        # finds the machine by its tag.
        node = self.call(doing, lambda: self.client.create_node(**arguments), missing=self.is_missing)
        if self.gone(node):
            raise TerminalError(f"{doing}: the cloud returned machine {self.machine_id(node)} already {node.state}")
        return self.machine(node)

    def confirm(self, spec: MachineSpec, machine_id: str) -> Reachable:
        doing = f"describe machine {machine_id} on {self.provider_type}"
        node = self.call(doing, lambda: self.get_node(machine_id), missing=self.is_missing)
        if node is None:
            raise TransientError(f"{doing}: not found (not visible yet right after its create, or deleted)")
        owner = self.node_tags(node).get(TAG_NODE)
        if owner != spec.node_key:
            raise TerminalError(f"machine {machine_id} belongs to node {owner or '(untagged)'}, not {spec.node_key}")
        if node.state in DEAD_STATES:
            raise TerminalError(f"machine {machine_id} is {node.state} and will not become reachable")
        if node.state != NodeState.RUNNING:
            raise NotReady(f"machine {machine_id} is {node.state}", retry_after=CONFIRM_POLL_SECONDS)
        problem = self.ready_problem(node, spec)
        if problem:
            raise NotReady(f"machine {machine_id} {problem}", retry_after=CONFIRM_POLL_SECONDS)
        public = _ipv4(node.public_ips)
        private = _ipv4(node.private_ips)
        if not public and not private:
            raise NotReady(f"machine {machine_id} has no IPv4 address yet", retry_after=CONFIRM_POLL_SECONDS)
        return Reachable(
            machine_id=machine_id,
            hostname=self.hostname(node, spec),
            ip_addresses={"access_v4": public or private, "bind_v4": private or public},
            ssh_user=self.ssh_user(spec),
            credentials_ref=str(self.fields.get("ssh_key_resource") or "") or None,
        )

    def delete(self, machine_id: str) -> None:
        doing = f"delete machine {machine_id} on {self.provider_type}"

        def destroy() -> bool:
            try:
                return self.destroy(machine_id)
            except Exception as error:
                if self.is_missing(error):
                    return True  # the machine is gone: that is what a delete wants
                raise

        if not self.call(doing, destroy):
            raise TransientError(f"{doing}: the cloud did not confirm the deletion")

    def list_tagged(self) -> list[Machine]:
        nodes = self.call(f"list machines on {self.provider_type}", self.list_nodes)
        machines = []
        for node in nodes:
            tags = self.node_tags(node)
            if not self.gone(node) and TAG_CLUSTER in tags and tags.get(TAG_PROVIDER) == self.provider_key:
                machines.append(self.machine(node))
        return machines

    # -- helpers ------------------------------------------------------------------------------------------

    @property
    def client(self) -> NodeDriver:
        """The libcloud driver, built on first use (some constructors already call the API)."""
        if self._client is None:
            self._client = self.call(f"connect to {self.provider_type}", self._build)
        return self._client

    def _build(self) -> NodeDriver:
        driver_class, arguments = self.libcloud_driver()
        if self.timeout_argument:
            arguments = {**arguments, "timeout": self.timeout}
        hook = _test_hook()
        if hook is not None:
            driver_class, arguments = hook(self.provider_type, driver_class, arguments)
        client = driver_class(**arguments)
        # Also on the connection itself, which libcloud re-creates from it whenever it reconnects (OpenStack
        # does after authenticating): every request then has the timeout, whatever the constructor took.
        client.connection.timeout = self.timeout
        client.connection.connect()
        return client

    def call(
        self, doing: str, action: Callable[[], Result], *, missing: Callable[[BaseException], bool] | None = None
    ) -> Result:
        """Run one libcloud call; any exception comes out as a classified ``DriverError``, unchained.

        ``missing`` tells whether an error says "this machine does not exist" (transient right after a
        create). The classified error is raised outside the ``except`` block so that the original, whose
        text may hold a signed URL, is neither chained nor kept as context.
        """
        try:
            return action()
        except (DriverError, NotReady):
            raise
        except Exception as error:
            status, retry_after = self._last_failure()
            classified = classify(
                error,
                doing=doing,
                redact=self.redact,
                status=status,
                retry_after=retry_after,
                missing=bool(missing and missing(error)),
                timeout=self.timeout,
            )
        raise classified

    def _last_failure(self) -> tuple[int | None, float | None]:
        """Status and Retry-After of the last response if it failed, for errors whose body libcloud could
        not parse (it then raises without either)."""
        connection = getattr(getattr(self._client, "connection", None), "connection", None)
        response = getattr(connection, "response", None)
        status = getattr(response, "status_code", None)
        if not isinstance(status, int) or status < 400:
            return None, None
        return status, _retry_after_header(getattr(response, "headers", None))

    def redact(self, text: str) -> str:
        """``text`` without credential values or query strings, cut to a readable length."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        text = " ".join(_query_free(text).split())
        return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"

    def add_secret(self, value: str) -> None:
        """Redact ``value`` from every message too (e.g. a key read from a plugin resource)."""
        if value:
            self._secrets.append(value)
            self._secrets.extend(line.strip() for line in value.splitlines() if len(line.strip()) >= 16)

    def gone(self, node: Node) -> bool:
        return node.state in GONE_STATES

    def named_size_and_image(self, spec: MachineSpec) -> dict[str, Any]:
        """``name``, ``size`` and ``image`` for ``create_node``, from the spec's flavor and image ids (no
        listing of the cloud's sizes and images: a retried create must not cost extra round trips)."""
        client = self.client
        return {
            "name": spec.name,
            "size": NodeSize(spec.flavor, spec.flavor, 0, 0, 0, 0, client),
            "image": NodeImage(spec.image, None, client),
        }

    def machine_tags(self, spec: MachineSpec) -> dict[str, str]:
        """Every tag a new machine gets: the provider's extra tags, the spec's tags and ``loom-provider``."""
        return {**self.extra_tags, **spec.tags, TAG_PROVIDER: self.provider_key}

    def machine(self, node: Node) -> Machine:
        created = node.created_at if isinstance(node.created_at, datetime) else None
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        public, private = _ipv4(node.public_ips), _ipv4(node.private_ips)
        return Machine(
            machine_id=self.machine_id(node),
            name=str(node.name or ""),
            tags=self.node_tags(node),
            state=str(node.state),
            created_at=created or datetime.now(UTC),
            addresses={"access_v4": public or private, "bind_v4": private or public} if public or private else {},
        )

    def required(self, *names: str) -> None:
        """A ``TerminalError`` naming the first of ``names`` that is missing or empty."""
        for name in names:
            value = self.fields.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise TerminalError(f"{self.provider_type} provider field {name} is required")

    def text(self, name: str, spec: MachineSpec | None = None) -> str:
        """A field's value, stripped ("" when unset); with ``spec``, the request's user fields win."""
        value = spec.fields.get(name) if spec is not None and name in spec.fields else self.fields.get(name)
        return "" if value is None else str(value).strip()

    def flag(self, name: str, default: bool = False, spec: MachineSpec | None = None) -> bool:
        value = spec.fields.get(name) if spec is not None and name in spec.fields else self.fields.get(name)
        return default if value is None or value == "" else truthy(value)

    def positive_int(self, name: str) -> int | None:
        raw = self.text(name)
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise TerminalError(
                f"{self.provider_type} provider field {name} must be a whole number, got {raw!r}"
            ) from None
        if value <= 0:
            raise TerminalError(f"{self.provider_type} provider field {name} must be positive, got {raw!r}")
        return value

    def resource(self, field: str, resource_type: str, name: str) -> bytes:
        """The active version of the plugin resource ``name`` (given by ``field``), read at call time."""
        if self._resources is not None:
            return self._resources(resource_type, name)
        from providers.resources import live_resources

        try:
            live = live_resources(
                tenant_id=tenant_of(self.provider_key), plugin_kind="providertypes", plugin=self.provider_type
            )
        except Exception as error:  # undecryptable content, a database hiccup: say which field, not the bytes
            problem = (
                f"{self.provider_type} provider field {field}: cannot read resource {name!r} ({type(error).__name__})"
            )
        else:
            for resource in live:
                if resource.resource_type == resource_type and resource.name == name:
                    return resource.content
            problem = ""
        if problem:
            raise TerminalError(problem)
        raise TerminalError(
            f"{self.provider_type} provider field {field}: no active {resource_type} resource named {name!r}"
            " (upload it, stage it and activate)"
        )


def _defaults(plugin: PluginType | None) -> dict[str, Any]:
    if plugin is None:
        return {}
    return {
        name: schema.default
        for spec in (plugin.admin, plugin.user)
        for name, schema in spec.fields.items()
        if schema.default is not None
    }


def _ipv4(addresses: Iterable[str] | None) -> str:
    """The first IPv4 address (clouds list IPv6 addresses beside them; Loom's fields are ``*_v4``)."""
    for address in addresses or ():
        if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", str(address)):
            return str(address)
    return ""
