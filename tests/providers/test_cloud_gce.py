"""The ``google`` driver: fields to libcloud arguments, and the requests it sends, on recorded GCE answers.

Compute Engine is unreachable from here, so libcloud's connection is mocked at the HTTP edge with
libcloud's own ``GCEMockHttp`` (recorded API responses shipped with libcloud) and its OAuth mock, behind a
recorder that keeps what the driver sent. The service-account and SSH keys are generated per run.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from libcloud.common.google import GoogleBaseAuthConnection
from libcloud.compute.drivers.gce import GCENodeDriver

from providers.drivers.base import MachineSpec, TerminalError, TransientError, driver_for
from providers.drivers.cloud import TAG_PROVIDER
from providers.drivers.gce import GoogleDriver, public_key_line

from .cloud_helpers import libcloud_test_module, recording

PROVIDER = "tenant-4/provider-11"
SERVICE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
SSH_KEY = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
RESOURCES = {("api_keys", "loom-sa"): SERVICE_KEY, ("ssh_keys", "loom-ssh"): SSH_KEY}
# The recordings know one instance name for creates; the spec uses it.
SPEC = MachineSpec(cluster_key="c5-search", node_key="5e0c" * 8, name="node-name", client_token="t",
                   flavor="n1-standard-1", image="debian-7", ssh_user="debian")  # fmt: skip
NOT_FOUND = '{"error": {"code": 404, "errors": [{"reason": "notFound", "message": "was not found"}]}}'


def google_fields(**overrides: Any) -> dict[str, Any]:
    fields = {"google_project": "project_name", "google_client_email": "loom@project_name.iam.gserviceaccount.com",
              "api_key_resource": "loom-sa", "ssh_key_resource": "loom-ssh", "ssh_user": "loom",
              "zone_name": "us-central1-a", "google_root_disk_size_gb": "10", "google_root_disk_type": "standard",
              "google_data_disk_size_gb": "", "google_data_disk_type": "standard"}  # fmt: skip
    return {**fields, **overrides}


def make(**overrides: Any) -> GoogleDriver:
    return GoogleDriver(google_fields(**overrides), provider_key=PROVIDER, resources=lambda t, n: RESOURCES[(t, n)])


@pytest.fixture
def gce(monkeypatch: pytest.MonkeyPatch) -> type:
    mock = recording(libcloud_test_module("libcloud.test.compute.test_gce").GCEMockHttp)
    auth = libcloud_test_module("libcloud.test.common.test_google").GoogleAuthMockHttp
    monkeypatch.setattr(mock, "type", None)
    monkeypatch.setattr(GCENodeDriver.connectionCls, "conn_class", mock)
    monkeypatch.setattr(GoogleBaseAuthConnection, "conn_class", auth)
    return mock


def test_fields_become_libcloud_arguments():
    driver_class, arguments = make().libcloud_driver()
    assert driver_class is GCENodeDriver
    assert arguments["user_id"] == "loom@project_name.iam.gserviceaccount.com"
    assert arguments["key"] == SERVICE_KEY.decode()  # the key resource's content, never a path
    assert (arguments["project"], arguments["datacenter"], arguments["auth_type"]) == (
        "project_name", "us-central1-a", "SA"
    )  # fmt: skip
    assert "loom-gce-" in arguments["credential_file"]
    assert isinstance(driver_for("google", google_fields(), provider_key=PROVIDER), GoogleDriver)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"zone_name": ""}, "field zone_name is required"),
        ({"google_root_disk_type": "nvme"}, "google_root_disk_type must be standard or ssd"),
        ({"google_data_disk_size_gb": "lots"}, "google_data_disk_size_gb: 'lots' is not a size"),
        ({"google_root_disk_size_gb": "-1"}, "google_root_disk_size_gb must be positive"),
    ],
)
def test_unusable_fields_are_terminal_errors_naming_the_field(fields, message):
    with pytest.raises(TerminalError, match=message):
        make(**fields)


def test_create_looks_up_by_name_then_inserts_the_instance(gce):
    gce.once[("GET", "/instances/node-name")] = (404, NOT_FOUND)
    machine = make().create(SPEC)
    assert machine.machine_id == "node-name"
    [insert] = [s for s in gce.sent if s.method == "POST" and s.path.endswith("/instances")]
    assert insert.path == "/compute/v1/projects/project_name/zones/us-central1-a/instances"
    body = insert.json()
    assert body["name"] == "node-name" and body["machineType"].endswith(
        "/zones/us-central1-a/machineTypes/n1-standard-1"
    )
    metadata = {item["key"]: item["value"] for item in body["metadata"]["items"]}
    assert metadata["loom-cluster"] == "c5-search" and metadata["loom-node"] == SPEC.node_key
    assert metadata[TAG_PROVIDER] == PROVIDER
    assert metadata["ssh-keys"] == "loom:" + public_key_line(SSH_KEY, comment="node-name")
    [boot] = body["disks"]
    assert boot["boot"] and boot["autoDelete"] and boot["initializeParams"]["diskSizeGb"] == 10
    assert boot["initializeParams"]["diskType"].endswith("/diskTypes/pd-standard")
    assert body["networkInterfaces"][0]["network"].endswith("/global/networks/default")


def test_data_disks_are_created_with_the_machine_and_deleted_with_it(gce):
    gce.once[("GET", "/instances/node-name")] = (404, NOT_FOUND)
    make(google_data_disk_size_gb="200,50", google_data_disk_type="ssd").create(SPEC)
    [insert] = [s for s in gce.sent if s.method == "POST" and s.path.endswith("/instances")]
    boot, first, second = insert.json()["disks"]
    assert boot["boot"] and boot["initializeParams"]["sourceImage"].endswith("/images/debian-7-wheezy-v20131120")
    assert [(d["initializeParams"]["diskName"], d["initializeParams"]["diskSizeGb"]) for d in (first, second)] == [
        ("node-name-data-1", 200), ("node-name-data-2", 50)
    ]  # fmt: skip
    assert all(d["autoDelete"] and d["initializeParams"]["diskType"].endswith("/pd-ssd") for d in (first, second))


def test_a_name_held_by_another_node_is_terminal(gce):
    """The recorded instance ``node-name`` carries no Loom metadata: it is not this node's machine."""
    with pytest.raises(TerminalError, match="already used by another machine"):
        make().create(SPEC)
    assert not [s for s in gce.sent if s.method == "POST" and s.path.endswith("/instances")]


def test_a_retried_create_finds_its_instance_by_name(gce):
    def ours(document: Any) -> None:
        document["metadata"]["items"] = [{"key": "loom-cluster", "value": "c5-search"},
                                         {"key": "loom-node", "value": SPEC.node_key},
                                         {"key": TAG_PROVIDER, "value": PROVIDER}]  # fmt: skip

    gce.edits["/instances/node-name"] = ours
    machine = make().create(SPEC)
    assert (machine.machine_id, machine.node_key) == ("node-name", SPEC.node_key)
    assert not [s for s in gce.sent if s.method == "POST" and s.path.endswith("/instances")]


def test_delete_does_not_wait_and_a_missing_instance_is_deleted_already(gce):
    make().delete("node-name")
    assert [s.path for s in gce.sent if s.method == "DELETE"] == [
        "/compute/v1/projects/project_name/zones/us-central1-a/instances/node-name"
    ]
    assert not [s for s in gce.sent if "/operations/" in s.path and "delete" in s.path]
    gce.always["/instances/gone"] = (404, NOT_FOUND)
    make().delete("gone")


def test_errors_are_classified(gce):
    gce.always["/instances/node-name"] = (403, '{"error": {"code": 403, "errors": [{"reason": "forbidden"}]}}')
    with pytest.raises(TerminalError, match="credentials"):
        make().create(SPEC)
    gce.always["/instances/node-name"] = (503, '{"error": {"code": 503, "errors": [{"reason": "backendError"}]}}')
    with pytest.raises(TransientError, match="503"):
        make().create(SPEC)
    gce.always["/instances/node-name"] = (404, NOT_FOUND)
    with pytest.raises(TransientError, match="not found yet"):
        make().confirm(SPEC, "node-name")
