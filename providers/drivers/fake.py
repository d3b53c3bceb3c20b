"""The ``fake`` provider: simulated machines with latency, failures and eventual consistency.

Used by tests, the demo and the benchmarks, so it has to behave like a cloud in the ways that break
engines, while staying cheap:

* **Shared state.** Machines are ``FakeMachine`` rows, not process memory (libcloud's DummyNodeDriver keeps
  them in one process and can reuse ids): every worker process sees the same machines and a ``kill -9``
  loses nothing. Rows are keyed by ``provider_key``, so providers and tenants are isolated.
* **Latency does not block.** A cloud answers "create" quickly and the machine then boots for minutes; the
  fake does the same. ``latency_ms`` (mean) and ``latency_jitter_ms`` (standard deviation) draw a *boot
  time* from a gamma distribution (positive, right-skewed like real boots, exact mean); ``create`` stores
  ``ready_at`` and ``confirm`` answers ``NotReady(retry_after=remaining)`` until then, so the engine
  re-enqueues the confirm instead of holding a worker. Only the API round trip itself is slept
  (``call_latency_ms``, default 0, capped at ``MAX_CALL_SLEEP_S``), because a real HTTP call does occupy
  the worker that makes it.
* **Failures.** Every call may fail transiently with ``failure_rate`` (a simulated 503/timeout). For
  ``create`` half of those failures happen *after* the machine was made (the reply was lost), which is how
  real clouds leak; the idempotent create finds that machine on the retry. ``delete`` likewise may fail
  after deleting. ``terminal_failure_rate`` applies to ``create`` only (a rejected request: quota, bad
  image), always before the side effect, since that is where clouds reject.
* **Eventual consistency.** For ``not_found_after_create`` ms after a create, lookups by id (``confirm``,
  ``delete``) raise ``TransientError("... not found ...")`` and ``list_tagged`` does not show the machine.
  The create itself is idempotent server-side by client token (as EC2's ``ClientToken``), so a retried
  create inside that window still finds its machine.
* **Seeded randomness.** With a ``seed`` every draw comes from a generator seeded by
  (seed, action, node name, n), where n counts that action's calls for that node in the database
  (``FakeCallCount``). Workers share no generator and the caller passes no attempt number, yet a run
  with the same seed and the same per-node call order repeats its failures and boot times exactly. Without
  a seed draws are fresh each call.

Side effects are written through the caller's database connection: call drivers outside a transaction
(as the engine must anyway, since a network call inside a transaction holds locks for its duration).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import random
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from providers.models import FakeCallCount, FakeMachine

from .base import TAG_CLUSTER, Machine, MachineSpec, NotReady, Reachable, TerminalError, TransientError

logger = logging.getLogger(__name__)

ACTIONS = ("create", "confirm", "delete", "list")
MAX_CALL_SLEEP_S = 5.0
MIN_RETRY_AFTER_S = 0.05
DEFAULT_BOOT_MS = 200.0
HOSTNAME_DOMAIN = "fake.loom.internal"

Fault = Literal["terminal", "before", "after"] | None


def _number(fields: Mapping[str, Any], name: str, default: float, *, maximum: float | None = None) -> float:
    """A non-negative number from a provider field; an unusable value is a TerminalError naming the field."""
    raw = fields.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise TerminalError(f"fake provider field {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (maximum is not None and value > maximum):
        bound = f"between 0 and {maximum:g}" if maximum is not None else "a finite number ≥ 0"
        raise TerminalError(f"fake provider field {name} must be {bound}, got {raw!r}")
    return value


def _call_latencies(fields: Mapping[str, Any]) -> Mapping[str, float]:
    """``call_latency_ms``: one number for every action, or ``create=300,confirm=20,delete=100,list=50``."""
    raw = fields.get("call_latency_ms")
    if not isinstance(raw, str) or "=" not in raw:
        value = _number(fields, "call_latency_ms", 0.0)
        return MappingProxyType(dict.fromkeys(ACTIONS, value))
    values = dict.fromkeys(ACTIONS, 0.0)
    for item in str(raw).split(","):
        action, _, number = item.partition("=")
        action = action.strip()
        if action not in values:
            raise TerminalError(
                f"fake provider field call_latency_ms names unknown action {action!r}; actions: {', '.join(ACTIONS)}"
            )
        values[action] = _number({"call_latency_ms": number.strip()}, "call_latency_ms", 0.0)
    return MappingProxyType(values)


@dataclass(frozen=True)
class FakeSettings:
    """The provider's fields, parsed once so a misconfigured provider fails at ``driver_for`` time."""

    boot_ms: float
    boot_jitter_ms: float
    call_ms: Mapping[str, float]
    failure_rate: float
    terminal_failure_rate: float
    not_found_ms: float
    seed: str | None

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> FakeSettings:
        boot_ms = _number(fields, "latency_ms", DEFAULT_BOOT_MS)
        seed = fields.get("seed")
        return cls(
            boot_ms=boot_ms,
            boot_jitter_ms=_number(fields, "latency_jitter_ms", boot_ms / 4),
            call_ms=_call_latencies(fields),
            failure_rate=_number(fields, "failure_rate", 0.0, maximum=1.0),
            terminal_failure_rate=_number(fields, "terminal_failure_rate", 0.0, maximum=1.0),
            not_found_ms=_number(fields, "not_found_after_create", 0.0),
            seed=None if seed is None or str(seed) == "" else str(seed),
        )


def _gamma_ms(rng: random.Random, mean: float, deviation: float) -> float:
    """A positive duration with the given mean and standard deviation (exactly ``mean`` without jitter)."""
    if mean <= 0:
        return 0.0
    if deviation <= 0:
        return mean
    shape = (mean / deviation) ** 2
    return rng.gammavariate(shape, mean / shape)


def _addresses(ordinal: int) -> dict[str, str]:
    """Unique fake addresses from the row's sequence number: 10.x.y.z private, 100.64/10 "public".

    254 hosts per /24 so no address ends in .0 or .255; unique for the first 16.6 million machines.
    """
    host = ordinal % 254 + 1
    rest = ordinal // 254
    middle, high = rest % 256, (rest // 256) % 256
    return {
        "access_v4": f"100.{64 + high % 64}.{middle}.{host}",
        "bind_v4": f"10.{high}.{middle}.{host}",
    }


def _row_addresses(row: FakeMachine) -> dict[str, str]:
    """The machine's addresses: made up from its row, unless it was given another out of band."""
    addresses = _addresses(row.pk)
    if row.access_v4:
        addresses["access_v4"] = row.access_v4
    return addresses


def _host_key(machine_id: str) -> str:
    """A well-formed OpenSSH ed25519 public key line, stable per machine (there is no real host)."""
    key = hashlib.sha256(f"fake-host-key\x00{machine_id}".encode()).digest()
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + key
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


class FakeDriver:
    """The fake provider's driver. Stateless apart from its settings: safe to share between threads."""

    def __init__(
        self,
        fields: Mapping[str, Any],
        *,
        provider_key: str,
        clock: Callable[[], datetime] = timezone.now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not provider_key:
            raise TerminalError("fake driver needs a provider_key")
        self.provider_key = provider_key
        self.settings = FakeSettings.from_fields(fields)
        self._clock = clock
        self._sleep = sleep

    # -- the contract ------------------------------------------------------------------------------

    def create(self, spec: MachineSpec) -> Machine:
        rng = self._rng("create", spec.name)
        # Draw everything up front, in a fixed order, so the stream does not depend on the outcome.
        fault = self._fault(rng, terminal=True)
        call_seconds = self._call_seconds(rng, "create")
        boot_ms = _gamma_ms(rng, self.settings.boot_ms, self.settings.boot_jitter_ms)
        id_bits = rng.getrandbits(64)

        self._pause(call_seconds)
        if fault == "terminal":
            raise TerminalError(f"fake provider rejected the create of {spec.name} (simulated 400)")
        if fault == "before":
            raise TransientError(f"fake provider unavailable creating {spec.name} (simulated 503)")
        now = self._clock()
        row = self._find_or_make(spec, now=now, boot_ms=boot_ms, id_bits=id_bits)
        if fault == "after":
            raise TransientError(f"timed out waiting for the reply to the create of {spec.name} (it was accepted)")
        return self._machine(row, now)

    def confirm(self, spec: MachineSpec, machine_id: str) -> Reachable:
        rng = self._rng("confirm", spec.name)
        fault = self._fault(rng, terminal=False)
        call_seconds = self._call_seconds(rng, "confirm")

        self._pause(call_seconds)
        if fault:
            raise TransientError(f"fake provider unavailable describing {machine_id} (simulated 503)")
        now = self._clock()
        row = self._live_row(machine_id, now=now, action="confirm")
        if row is None:
            raise TerminalError(f"machine {machine_id} does not exist on this provider")
        if row.node_key != spec.node_key:
            raise TerminalError(f"machine {machine_id} belongs to node {row.node_key}, not {spec.node_key}")
        if now < row.ready_at:
            remaining = (row.ready_at - now).total_seconds()
            raise NotReady(f"machine {machine_id} is booting", retry_after=max(remaining, MIN_RETRY_AFTER_S))
        addresses = _row_addresses(row)
        return Reachable(
            machine_id=row.machine_id,
            hostname=f"{row.name}.{HOSTNAME_DOMAIN}",
            ip_addresses=addresses,
            ssh_user=row.ssh_user or spec.ssh_user,
            ssh_port=22,
            host_key=_host_key(row.machine_id),
            credentials_ref=spec.fields.get("ssh_key_resource") or None,
        )

    def delete(self, machine_id: str) -> None:
        row = FakeMachine.objects.filter(provider_key=self.provider_key, machine_id=machine_id).first()
        rng = self._rng("delete", row.name if row is not None else machine_id)
        fault = self._fault(rng, terminal=False)
        call_seconds = self._call_seconds(rng, "delete")

        self._pause(call_seconds)
        if fault == "before":
            raise TransientError(f"fake provider unavailable deleting {machine_id} (simulated 503)")
        now = self._clock()
        if row is None or row.deleted_at is not None:
            return
        self._check_visible(row, now=now, action="delete")
        FakeMachine.objects.filter(pk=row.pk, deleted_at__isnull=True).update(deleted_at=now)
        if fault == "after":
            raise TransientError(f"timed out waiting for the reply to the delete of {machine_id} (it was accepted)")

    def list_tagged(self) -> list[Machine]:
        rng = self._rng("list", "*")
        fault = self._fault(rng, terminal=False)
        call_seconds = self._call_seconds(rng, "list")

        self._pause(call_seconds)
        if fault:
            raise TransientError("fake provider unavailable listing machines (simulated 503)")
        now = self._clock()
        rows = FakeMachine.objects.filter(
            provider_key=self.provider_key,
            deleted_at__isnull=True,
            tags__has_key=TAG_CLUSTER,
            # Eventual consistency: a machine made a moment ago is not in listings yet.
            created_at__lte=now - timedelta(milliseconds=self.settings.not_found_ms),
        ).order_by("pk")
        return [self._machine(row, now) for row in rows]

    # -- helpers -----------------------------------------------------------------------------------

    def _find_or_make(self, spec: MachineSpec, *, now: datetime, boot_ms: float, id_bits: int) -> FakeMachine:
        """The live machine already made for this node, or a new one (race-safe via the token constraint)."""
        live = FakeMachine.objects.filter(provider_key=self.provider_key, deleted_at__isnull=True)
        same = Q(client_token=spec.client_token) | Q(node_key=spec.node_key) | Q(name=spec.name)
        rows = list(live.filter(same).order_by("pk"))
        for row in rows:
            if row.client_token == spec.client_token or row.node_key == spec.node_key:
                return row
        if rows:
            # Names are unique per provider (as on GCE); another node's machine holds this one.
            raise TerminalError(
                f"name {spec.name} is already used by machine {rows[0].machine_id} of node {rows[0].node_key} "
                "(simulated 409)"
            )
        digest = hashlib.sha256(f"{self.provider_key}\x00{spec.client_token}\x00{id_bits}".encode()).hexdigest()
        try:
            with transaction.atomic():
                return FakeMachine.objects.create(
                    provider_key=self.provider_key,
                    machine_id=f"fake-{digest[:20]}",
                    name=spec.name,
                    client_token=spec.client_token,
                    node_key=spec.node_key,
                    tags=dict(spec.tags),
                    flavor=spec.flavor,
                    image=spec.image,
                    ssh_user=spec.ssh_user,
                    created_at=now,
                    ready_at=now + timedelta(milliseconds=boot_ms),
                )
        except IntegrityError:
            # A concurrent create of the same node (a duplicate delivery) made it first: that one is ours.
            logger.debug("concurrent create of %s: returning the machine the other call made", spec.name)
            return live.get(client_token=spec.client_token)

    def _live_row(self, machine_id: str, *, now: datetime, action: str) -> FakeMachine | None:
        row = FakeMachine.objects.filter(provider_key=self.provider_key, machine_id=machine_id).first()
        if row is None or row.deleted_at is not None:
            return None
        self._check_visible(row, now=now, action=action)
        return row

    def _check_visible(self, row: FakeMachine, *, now: datetime, action: str) -> None:
        """Eventual consistency: a lookup by id right after the create answers 404, which is transient."""
        visible_at = row.created_at + timedelta(milliseconds=self.settings.not_found_ms)
        if now < visible_at:
            raise TransientError(
                f"machine {row.machine_id} not found ({action} right after create; eventual consistency)",
                retry_after=max((visible_at - now).total_seconds(), MIN_RETRY_AFTER_S),
            )

    def _machine(self, row: FakeMachine, now: datetime) -> Machine:
        state = "running" if now >= row.ready_at else "pending"
        if row.stopped_at is not None:
            state = "stopped"
        if row.deleted_at is not None:
            state = "terminated"
        return Machine(machine_id=row.machine_id, name=row.name, tags=row.tags, state=state, created_at=row.created_at,
                       addresses=_row_addresses(row))  # fmt: skip

    def _rng(self, action: str, subject: str) -> random.Random:
        """A generator for one call: seeded by (seed, action, subject, n-th call) or fresh when unseeded."""
        if self.settings.seed is None:
            return random.Random()
        count = self._next_count(action, subject)
        material = f"{self.settings.seed}\x00{action}\x00{subject}\x00{count}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:16], "big"))

    def _next_count(self, action: str, subject: str) -> int:
        """Atomically count this call. One upsert statement, so concurrent workers get distinct numbers."""
        table = connection.ops.quote_name(FakeCallCount._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (provider_key, subject, action, count) VALUES (%s, %s, %s, 1) "
                f"ON CONFLICT (provider_key, subject, action) DO UPDATE SET count = {table}.count + 1 "
                "RETURNING count",
                [self.provider_key, subject[:255], action],
            )
            return int(cursor.fetchone()[0])

    def _fault(self, rng: random.Random, *, terminal: bool) -> Fault:
        """Whether this call fails, and how. Two draws are always taken so the stream stays aligned."""
        outcome, placement = rng.random(), rng.random()
        terminal_rate = self.settings.terminal_failure_rate if terminal else 0.0
        if outcome < terminal_rate:
            return "terminal"
        if outcome < terminal_rate + self.settings.failure_rate:
            return "before" if placement < 0.5 else "after"
        return None

    def _call_seconds(self, rng: random.Random, action: str) -> float:
        mean = self.settings.call_ms[action]
        return min(_gamma_ms(rng, mean, mean / 4) / 1000, MAX_CALL_SLEEP_S)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)
