"""Helpers of the end-to-end tests: the starter catalog on the test network, SSH to cluster nodes, and what
is left on this machine (namespaces, links) after a cluster is gone."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from clusters.engine import automation
from clusters.engine.pins import pinned_service_documents
from clusters.engine.runner import expanded_inputs
from clusters.models import Cluster, Job, Node
from clusters.services.lifecycle import cluster_delete
from loom_site.celery import app
from providers.drivers.local import LocalDriver
from providers.lab import veth_name
from providers.models import Provider
from providers.services import provider_driver
from providers.ssh import open_session
from templates_app.catalog_files import read_catalog_dir
from templates_app.services import catalog_import
from tenants.models import Tenant
from tests.lab.fixtures import private_network, processes_mentioning

STARTER = Path(__file__).resolve().parents[2] / "catalogs" / "starter"
LAB_PROVIDER = "lab"


def lab_driver(tenant: Tenant) -> LocalDriver:
    driver = provider_driver(provider=Provider.objects.get(tenant=tenant, name=LAB_PROVIDER))
    assert isinstance(driver, LocalDriver)
    return driver


def use_test_network(tenant: Tenant) -> None:
    """Point the tenant's ``lab`` provider at a bridge and subnet of this test process only (``tests/lab``).

    Not the starter catalog's ``loombr0``, which an installation on this machine may use; and not the shared
    test bridge: there, addresses freed by other test sessions are soon reused, and this machine's neighbour
    (ARP) entries for them still name the old hosts' MACs for up to a minute, so new hosts would answer only
    after that. A private bridge goes away with its last host, and its neighbour entries with it."""
    bridge, subnet = private_network()
    provider = next(p for p in read_catalog_dir(STARTER)["providers"] if p["name"] == LAB_PROVIDER)
    provider["provisioner"] = {**provider["provisioner"], "bridge": bridge, "subnet": subnet}
    catalog_import(tenant=tenant, user=None, data={"providers": [provider]})


def node_shell(node: Node, command: str) -> str:
    """Run ``command`` on a cluster node over SSH as the engine would (its pinned host key); its output."""
    with open_session(
        node.ip_addresses["access_v4"],
        user=node.ssh_user,
        credentials_ref=node.credentials_ref,
        host_key=node.host_key,
        command_timeout=30,
    ) as session:
        return session.run(command).stdout


def wait_for_worker(limit: float = 60.0) -> None:
    """Until a worker on this test's broker answers a ping: create and delete times are then measured
    without the worker's start-up. Bounded, so a worker that never comes up fails the test saying so."""
    deadline = time.monotonic() + limit
    while not app.control.ping(timeout=0.5):
        if time.monotonic() > deadline:
            raise AssertionError(f"no worker answered a ping within {limit:.0f} s")


def namespaces() -> set[str]:
    return set(_lines("ip", "netns", "list"))


def links() -> set[str]:
    return {line.split("@")[0] for line in _lines("ip", "-br", "link")}


def _lines(*command: str) -> list[str]:
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in output.splitlines() if line.strip()]


REQUESTS = 20


def fetch_bodies(address: str, port: int, count: int = REQUESTS) -> set[str]:
    """What the balancer answers to ``count`` requests (one connection each, so round robin spreads them)."""
    bodies = set()
    for _ in range(count):
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=5) as response:
            assert response.status == 200
            bodies.add(response.read().decode().strip())
    return bodies


def nodes_with(cluster: Cluster, service: str) -> list[Node]:
    return [node for node in Node.objects.filter(cluster=cluster).order_by("number") if service in node.services]


def service_action(cluster: Cluster, node: Node, service: str, action: str) -> str:
    """Run ``action`` of ``service`` on ``node`` the way the runner does for a task: the pinned service's action,
    the cluster config and the action's fields expanded for the node, through the automator over SSH."""
    definition = pinned_service_documents(cluster, [service])[service]["provisioner"]["actions"][action]
    config, fields = expanded_inputs(cluster, node, cluster.config, definition.get("fields") or {})
    return automation.service_action_over_ssh(
        cluster, node, task_pk=None, service=service, action=action, automator=definition["type"],
        config=config, fields=fields,
    )  # fmt: skip


def reconfigure_service(cluster: Cluster, node: Node, service: str) -> str:
    return service_action(cluster, node, service, "configure")


def service_pids(node: Node) -> dict[int, str]:
    """The node's running services (nginx master, haproxy, redis) by pid, from their pid files."""
    listing = node_shell(
        node, 'cd "$HOME/.loom/services" && for f in */*.pid; do [ -e "$f" ] && echo "$(cat "$f") $f"; done; true'
    )
    return {int(pid): path.split("/")[0] for pid, path in (line.split() for line in listing.splitlines())}


def delete_leaving_nothing(
    *, cluster: Cluster, user: object, wait: Callable[[Job], object], running: list[str]
) -> float:
    """Check that the active nodes run exactly the services ``running``, delete ``cluster`` (waiting for the
    job with ``wait``), then check that nothing of any node it ever had is left on this machine: every node
    deleted, no namespace, veth link or sshd of its machines, no process of those services. Returns the
    delete's duration in seconds."""
    every = list(Node.objects.filter(cluster=cluster))
    services = {pid: name for node in every if node.status == Node.Status.ACTIVE
                for pid, name in service_pids(node).items()}  # fmt: skip
    assert sorted(services.values()) == sorted(running)
    machines = {node.machine_id for node in every}
    started = time.monotonic()
    wait(cluster_delete(user=user, cluster=cluster))
    seconds = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED
    assert set(Node.objects.filter(cluster=cluster).values_list("status", flat=True)) == {Node.Status.DELETED}
    assert not namespaces() & machines, "namespaces left"
    assert not links() & {veth_name(name) for name in machines}, "veth links left"
    assert not [pid for name in machines for pid in processes_mentioning(name)], "sshd processes left"
    left = [name for pid, name in services.items() if pid in processes_mentioning(f".loom/services/{name}")]
    assert not left, f"services left running: {left}"
    return seconds


SERVE_TIMEOUT_S = 30.0
"""How long the balancer may take to serve what a finished job set up (health checks run every second)."""


def answers(address: str, port: int, count: int) -> set[str] | None:
    """The bodies of ``count`` requests to the balancer (one connection each, so round robin spreads them),
    or None when it fails from outside: an HTTP error (503: no backend up) or no connection at all."""
    bodies = set()
    try:
        for _ in range(count):
            with urllib.request.urlopen(f"http://{address}:{port}/", timeout=5) as response:
                bodies.add(response.read().decode().strip())
    except (urllib.error.URLError, ConnectionError, TimeoutError):  # HTTPError is a URLError
        return None
    return bodies


def until(what: str, probe: Callable[[], object], done: Callable[[object], bool]) -> object:
    """``probe`` again until ``done`` holds for its result, within ``SERVE_TIMEOUT_S``; the last result."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        seen = probe()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {SERVE_TIMEOUT_S:.0f} s; last seen: {seen!r}")
        time.sleep(0.2)
