"""The ``digitalocean`` driver: fields to libcloud arguments, tag encoding, and the requests it sends.

DigitalOcean is unreachable from here, so libcloud's connection is mocked at the HTTP edge with libcloud's
own ``DigitalOceanComputeMockHttp`` and its recorded v2 API responses, behind a recorder that keeps what
the driver sent; the create is answered with libcloud's recorded droplet document (``list_node.json``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libcloud.compute.drivers.digitalocean import DigitalOcean_v2_NodeDriver, DigitalOceanNodeDriver

from providers.drivers.base import MachineSpec, TerminalError, TransientError, driver_for
from providers.drivers.cloud import TAG_PROVIDER
from providers.drivers.digitalocean import DigitalOceanDriver, decode_tag, encode_tag

from .cloud_helpers import libcloud_test_module, recording

PROVIDER = "tenant-2/provider-5"
TOKEN = "dop_v1_0123456789abcdef0123456789abcdef"
SPEC = MachineSpec.for_node(cluster_key="c9-My.Shop_1", node_key="a1b2" * 8, node_number=4, flavor="s-1vcpu-1gb",
                            image="ubuntu-24-04-x64", ssh_user="root")  # fmt: skip


def make(**fields: Any) -> DigitalOceanDriver:
    values = {"api_user": "", "api_password": TOKEN, "digitalocean_region": "sfo3", "ssh_keypair": "test1",
              "ssh_key_resource": "loom-ssh", **fields}  # fmt: skip
    return DigitalOceanDriver(values, provider_key=PROVIDER)


@pytest.fixture
def digitalocean(monkeypatch: pytest.MonkeyPatch) -> type:
    module = libcloud_test_module("libcloud.test.compute.test_digitalocean_v2")
    mock = recording(module.DigitalOceanComputeMockHttp)
    monkeypatch.setattr(mock, "type", None)
    monkeypatch.setattr(DigitalOcean_v2_NodeDriver.connectionCls, "conn_class", mock)
    mock.recorded = module.ComputeFileFixtures("digitalocean_v2")
    return mock


@given(st.text(max_size=40), st.text(max_size=40))
def test_tags_encode_into_digitaloceans_alphabet_and_back(key, value):
    tag = encode_tag(key, value)
    assert all(c.isascii() and (c.isalnum() or c in ":-_") for c in tag)
    if len(tag) < 255:
        assert decode_tag(tag) == (key, value)


def test_fields_become_libcloud_arguments(digitalocean):
    assert make().libcloud_driver() == (DigitalOceanNodeDriver, {"key": TOKEN, "api_version": "v2"})
    client = make().client
    assert isinstance(client, DigitalOcean_v2_NodeDriver)
    # The constructor cannot take a timeout; the connection has it all the same.
    assert client.connection.timeout == 30 and client.connection.connection.session.timeout == 30
    with pytest.raises(TerminalError, match="field api_password is required"):
        make(api_password="")
    assert isinstance(driver_for("digitalocean", {"api_password": TOKEN, "digitalocean_region": "ams3"},
                                 provider_key=PROVIDER), DigitalOceanDriver)  # fmt: skip


def test_create_sends_the_droplet_with_encoded_tags_and_the_key_id(digitalocean):
    digitalocean.once[("POST", "/v2/droplets")] = (202, digitalocean.recorded.load("list_node.json"))
    machine = make().create(SPEC)
    assert [(s.method, s.path) for s in digitalocean.sent] == [
        ("GET", "/v2/droplets"),  # is there a droplet for this node already? (no)
        ("GET", "/v2/account/keys"),  # the key pair's id
        ("POST", "/v2/droplets"),
    ]
    droplet = digitalocean.sent[-1].json()
    assert (droplet["name"], droplet["size"], droplet["image"], droplet["region"]) == (
        "loom-c9-my-shop-1-4", "s-1vcpu-1gb", "ubuntu-24-04-x64", "sfo3"
    )  # fmt: skip
    assert droplet["ssh_keys"] == [7717]
    tags = dict(decode_tag(tag) for tag in droplet["tags"])
    assert tags == {"loom-cluster": "c9-My.Shop_1", "loom-node": SPEC.node_key, TAG_PROVIDER: PROVIDER}
    assert machine.machine_id == "3164444"


def test_an_unknown_key_pair_is_terminal(digitalocean):
    with pytest.raises(TerminalError, match="no SSH key named 'nope'"):
        make(ssh_keypair="nope").create(SPEC)


def test_a_retried_create_finds_its_droplet_by_tag(digitalocean):
    def ours(document: Any) -> None:
        document["droplets"][0]["tags"] = [encode_tag("loom-node", SPEC.node_key), encode_tag("loom-cluster", "c9"),
                                           encode_tag(TAG_PROVIDER, PROVIDER)]  # fmt: skip

    digitalocean.edits["/v2/droplets"] = ours
    machine = make().create(SPEC)
    assert (machine.machine_id, machine.node_key) == ("3164444", SPEC.node_key)
    assert [m.machine_id for m in make().list_tagged()] == ["3164444"]
    assert not [s for s in digitalocean.sent if s.method == "POST"]


def test_delete_and_errors(digitalocean):
    digitalocean.once[("DELETE", "/v2/droplets/3164444")] = (204, "")
    make().delete("3164444")
    digitalocean.always["/v2/droplets/404"] = (404, '{"id": "not_found", "message": "not found"}')
    make().delete("404")
    digitalocean.always["/v2/droplets"] = (401, '{"id": "unauthorized", "message": "Unable to authenticate you."}')
    with pytest.raises(TerminalError, match="credentials") as caught:
        make().list_tagged()
    assert TOKEN not in str(caught.value)
    digitalocean.always["/v2/droplets"] = (429, '{"id": "too_many_requests", "message": "API Rate limit exceeded."}')
    with pytest.raises(TransientError, match="throttled"):
        make().list_tagged()
    digitalocean.always["/v2/droplets"] = (
        500,
        '{"id": "server_error", "message": "Server was unable to give you a response."}',
    )
    with pytest.raises(TransientError, match="500"):
        make().list_tagged()
