"""A create may set the provider's user fields and its admin fields marked override (the original's
``providerFields``): they are checked against the provider type, stored on the cluster, and reach the driver.
Anything else, secrets included, is refused naming the field."""

from __future__ import annotations

import pytest

from clusters.engine.runner import cluster_driver
from clusters.models import Cluster
from providers.models import Provider
from templates_app.services import catalog_entity_save

pytestmark = pytest.mark.django_db

URL = "/api/v2/clusters"


def body(**provider_fields: object) -> dict[str, object]:
    return {"name": "zoned", "clusterTemplate": "lamp", "numMachines": 3, "provider": "aws-us-east-1",
            "providerFields": provider_fields}  # fmt: skip


@pytest.fixture
def aws(admin_a: object, tenant_a: object, catalog_a: object) -> Provider:
    """The sample aws-us-east-1 with what it needs to launch (the sample ships it empty)."""
    provider = Provider.objects.get(tenant=tenant_a, name="aws-us-east-1")
    ready = {"api_user": "AKIA4LOOMTESTS7QRST2", "api_password": "not-a-real-secret-key", "ssh_keypair": "loom",
             "ssh_key_resource": "loom.pem", "security_groups": "default"}  # fmt: skip
    document = {**provider.document, "provisioner": {**provider.document["provisioner"], **ready}}
    catalog_entity_save(tenant=tenant_a, user=admin_a, kind_key="providers", name=provider.name, data=document)
    return provider


def test_allowed_provider_fields_are_stored_and_reach_the_driver(admin_a, aws, client_for):
    response = client_for(admin_a).post(URL, body(availability_zone="us-east-1b"), format="json")
    assert response.status_code == 202, response.content
    cluster = Cluster.objects.get(name="zoned")
    assert cluster.provider_fields == {"availability_zone": "us-east-1b"}
    assert response.json()["cluster"]["id"] == cluster.pk
    detail = client_for(admin_a).get(f"{URL}/{cluster.pk}").json()
    assert detail["provider_fields"] == {"availability_zone": "us-east-1b"}
    assert cluster_driver(cluster).fields["availability_zone"] == "us-east-1b"


@pytest.mark.parametrize(
    ("fields", "key", "message"),
    [({"api_password": "x"}, "providerFields.api_password", "not a field a cluster request may set"),
     ({"bogus": "1"}, "providerFields.bogus", "it may set: "),
     ({"associate_public_ip": "maybe"}, "providerFields.associate_public_ip", "")],
)  # fmt: skip
def test_other_provider_fields_are_refused_naming_them(admin_a, aws, client_for, fields, key, message):
    response = client_for(admin_a).post(URL, body(**fields), format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert key in error["fields"] and message in error["fields"][key][0]
    assert not Cluster.objects.exists()
