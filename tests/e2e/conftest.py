"""Fixtures of the end-to-end tests on lab hosts: the starter catalog imported into a tenant, and the
clean-up of every lab host the workers made.

Clusters here run on the ``local`` provider, whose machines are lab hosts (network namespaces with their own
sshd, ``providers/lab.py``) on this machine. The worker processes make them, so no test process owns them:
``lab_machines`` deletes every machine of the tenant's ``lab`` provider after the test, whatever happened,
once the workers are stopped (a worker still running could make one more meanwhile). Needs root, as CI runs.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from django.core.management import call_command

from providers.lab import Lab
from providers.models import Provider
from tenants.models import Tenant
from tests.clusters.workers import WorkerPool
from tests.factories import enable_operator_providers
from tests.lab.fixtures import require_lab

from .helpers import LAB_PROVIDER, STARTER, lab_driver, use_test_network


@pytest.fixture
def starter(tenant_a: Tenant) -> Tenant:
    """Tenant A with the starter catalog and its scripts imported as ``manage.py import_catalog --resources``
    does, its lab provider on the test network."""
    require_lab()
    Lab().reap_abandoned()  # what a killed earlier run left, once its data folder (and key) is gone
    output = io.StringIO()
    enable_operator_providers(tenant_a)
    call_command("import_catalog", str(STARTER), "--tenant", tenant_a.name, "--resources", stdout=output)
    assert f"imported {STARTER} into tenant {tenant_a.name}" in output.getvalue()
    use_test_network(tenant_a)
    return tenant_a


@pytest.fixture
def lab_machines(tenant_a: Tenant, workers: WorkerPool) -> Iterator[None]:
    """Deletes every lab host of tenant A's ``lab`` provider after the test (the workers stopped first)."""
    yield
    workers.close()
    if not Provider.objects.filter(tenant=tenant_a, name=LAB_PROVIDER).exists():
        return
    driver = lab_driver(tenant_a)
    for machine in driver.list_tagged():
        driver.delete(machine.machine_id)
    left = [machine.machine_id for machine in driver.list_tagged()]
    assert not left, f"lab hosts left after the test: {left}"
