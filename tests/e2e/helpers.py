"""Helpers of the end-to-end tests: the starter catalog on the test network, SSH to cluster nodes, and what
is left on this machine (namespaces, links) after a cluster is gone."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from clusters.models import Node
from loom_site.celery import app
from providers.drivers.local import LocalDriver
from providers.models import Provider
from providers.services import provider_driver
from providers.ssh import open_session
from templates_app.catalog_files import read_catalog_dir
from templates_app.services import catalog_import
from tenants.models import Tenant
from tests.lab.fixtures import private_network

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
