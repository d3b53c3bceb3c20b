"""The ``openstack`` and ``rackspace`` drivers against libcloud's recorded OpenStack API responses.

No OpenStack cloud is reachable from here. libcloud ships the responses its own tests were recorded with
(``libcloud/test/compute/fixtures/openstack*``) and the ``MockHttp`` classes that serve them by request
path; the driver runs unchanged on top, through the full libcloud stack (Keystone authentication, service
catalog, Nova requests). The recorder around libcloud's MockHttp keeps every request the driver sent, so
the tests check what would go to Nova, and it adds Loom's metadata to recorded servers where a test needs
a machine of its own, since the recordings predate Loom.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver
from libcloud.compute.drivers.rackspace import RackspaceNodeDriver

from providers.drivers.base import MachineSpec, NotReady, TerminalError, TransientError, driver_for
from providers.drivers.cloud import TAG_PROVIDER
from providers.drivers.openstack import OpenStackDriver, keystone
from providers.drivers.rackspace import RackspaceDriver

from .cloud_helpers import libcloud_test_module, recording

PROVIDER = "tenant-7/provider-3"
PASSWORD = "os-password-do-not-show"
NODE = "9f1c2e7a0b3d4c5e8f9a0b1c2d3e4f50"
SPEC = MachineSpec.for_node(cluster_key="c12-analytics", node_key=NODE, node_number=2, flavor="1", image="13",
                            ssh_user="ubuntu")  # fmt: skip
USER_DATA = b"#cloud-config\npackages: [nginx]\n"


def openstack_fields(**overrides: Any) -> dict[str, Any]:
    fields = {"api_user": "loom", "api_password": PASSWORD, "openstack_tenant": "analytics",
              "openstack_auth_url": "https://auth.api.example.com/v2.0", "ssh_keypair": "loom-key",
              "ssh_key_resource": "loom-ssh", "network_ids": "net-a, net-b", "security_groups": "web,ssh",
              "availability_zone": "nova-2", "user_data_resource": "boot"}  # fmt: skip
    return {**fields, **overrides}


def resources(resource_type: str, name: str) -> bytes:
    assert (resource_type, name) == ("user_data", "boot")
    return USER_DATA


@pytest.fixture
def nova(monkeypatch: pytest.MonkeyPatch) -> type:
    """libcloud's recorded OpenStack responses (Keystone v2.0 auth, Nova under /v2/1337) behind a recorder."""
    module = libcloud_test_module("libcloud.test.compute.test_openstack")
    mock = recording(module.OpenStack_2_0_MockHttp)
    monkeypatch.setattr(mock, "type", None)
    monkeypatch.setattr(OpenStack_2_NodeDriver.connectionCls, "conn_class", mock)
    return mock


def tag(server_id: str, node: str = NODE, provider: str = PROVIDER) -> Callable[[Any], None]:
    """An edit giving recorded server ``server_id`` Loom's metadata, wherever it appears in a document."""

    def edit(document: Any) -> None:
        servers = document.get("servers") or [document.get("server") or {}]
        for server in servers:
            if str(server.get("id")) == server_id:
                server["metadata"] = {"loom-cluster": "c12-analytics", "loom-node": node, TAG_PROVIDER: provider}

    return edit


def make(**overrides: Any) -> OpenStackDriver:
    return OpenStackDriver(openstack_fields(**overrides), provider_key=PROVIDER, resources=resources)


# --- construction: fields -> libcloud arguments ------------------------------------------------------------------


def test_fields_become_libcloud_arguments():
    driver_class, arguments = make(openstack_region="RegionTwo").libcloud_driver()
    assert driver_class is OpenStack_2_NodeDriver
    assert arguments == {"key": "loom", "secret": PASSWORD, "ex_tenant_name": "analytics",
                         "ex_force_auth_url": "https://auth.api.example.com", "ex_force_auth_version": "2.0_password",
                         "ex_force_service_region": "RegionTwo"}  # fmt: skip
    assert isinstance(driver_for("openstack", openstack_fields(), provider_key=PROVIDER), OpenStackDriver)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://keystone.example.com:5000/v3", ("https://keystone.example.com:5000", "3.x_password")),
        ("https://keystone.example.com:5000/v3/", ("https://keystone.example.com:5000", "3.x_password")),
        ("https://cloud.example.com/identity/v2.0", ("https://cloud.example.com/identity", "2.0_password")),
        ("http://10.0.0.5:5000", ("http://10.0.0.5:5000", "3.x_password")),
    ],
)
def test_keystone_urls(url, expected):
    assert keystone(url) == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"openstack_auth_url": "keystone:5000"}, "openstack_auth_url: 'keystone:5000' is not an http"),
        ({"openstack_auth_url": "https://k/v1.1"}, "openstack_auth_url: .* unsupported Keystone version"),
        ({"openstack_tenant": ""}, "field openstack_tenant is required"),
        ({"openstack_ssl_verify_peer": "false"}, "openstack_ssl_verify_peer"),
        ({"floating_ip": True}, "floating_ip"),
    ],
)
def test_unusable_fields_are_terminal_errors_naming_the_field(fields, message):
    with pytest.raises(TerminalError, match=message):
        make(**fields)


# --- the contract on recorded responses --------------------------------------------------------------------------


def test_create_authenticates_looks_up_then_posts_the_server(nova):
    machine = make().create(SPEC)
    assert machine.machine_id == "26f7fbee-8ce1-4c28-887a-bfe8e4bb10fe"  # the recorded create's answer
    requests = [(sent.method, sent.path) for sent in nova.sent]
    assert requests == [
        ("POST", "/v2.0/tokens"),
        ("GET", "/v2/1337/servers/detail"),  # is there a server for this node already? (no)
        ("POST", "/v2/1337/servers"),
        ("GET", "/v2/1337/servers/26f7fbee-8ce1-4c28-887a-bfe8e4bb10fe"),  # libcloud reads the new server back
    ]
    auth = nova.sent[0].json()["auth"]
    assert auth["tenantName"] == "analytics" and auth["passwordCredentials"]["username"] == "loom"
    server = nova.sent[2].json()["server"]
    assert server["name"] == SPEC.name == "loom-c12-analytics-2"
    assert (server["flavorRef"], server["imageRef"], server["key_name"]) == ("1", "13", "loom-key")
    assert server["metadata"] == {"loom-cluster": "c12-analytics", "loom-node": NODE, TAG_PROVIDER: PROVIDER}
    assert server["networks"] == [{"uuid": "net-a"}, {"uuid": "net-b"}]
    assert server["security_groups"] == [{"name": "web"}, {"name": "ssh"}]
    assert server["availability_zone"] == "nova-2"
    assert base64.b64decode(server["user_data"]) == USER_DATA


def test_a_retried_create_finds_the_server_it_made(nova):
    nova.edits["/servers/detail"] = tag("12064")
    machine = make().create(SPEC)
    assert machine.machine_id == "12064" and machine.node_key == NODE
    assert not [sent for sent in nova.sent if sent.method == "POST" and sent.path.endswith("/servers")]


def test_a_create_whose_read_back_is_not_found_is_transient(nova):
    """Nova accepted the server, then answered 404 for it (eventual consistency): retry, and the lookup by
    metadata finds it."""
    nova.once[("GET", "/servers/26f7fbee-8ce1-4c28-887a-bfe8e4bb10fe")] = (404, '{"itemNotFound": {"code": 404}}')
    with pytest.raises(TransientError, match="not found yet"):
        make().create(SPEC)


def test_confirm_reports_public_and_private_ipv4(nova):
    nova.edits["/servers/12064"] = tag("12064")
    reachable = make().confirm(SPEC, "12064")
    assert reachable.ip_addresses == {"access_v4": "50.57.94.30", "bind_v4": "10.182.64.29"}
    assert (reachable.hostname, reachable.ssh_user, reachable.credentials_ref) == (SPEC.name, "ubuntu", "loom-ssh")


def test_confirm_of_a_building_server_is_not_ready(nova):
    nova.always["/servers/12065"] = (200, '{"server": ' + _recorded_server(nova, "12065") + "}")
    with pytest.raises(NotReady, match="pending") as caught:
        make().confirm(SPEC, "12065")
    assert caught.value.retry_after > 0


def _recorded_server(nova: type, server_id: str) -> str:
    """One server of the recorded ``servers/detail`` answer, tagged as ours."""
    import json

    document = json.loads(nova.fixtures.load("_servers_detail.json"))
    [server] = [s for s in document["servers"] if str(s["id"]) == server_id]
    server["metadata"] = {"loom-cluster": "c12-analytics", "loom-node": NODE, TAG_PROVIDER: PROVIDER}
    return json.dumps(server)


def test_confirm_of_someone_elses_server_is_terminal(nova):
    with pytest.raises(TerminalError, match="belongs to node"):
        make().confirm(SPEC, "12064")  # the recorded server carries no Loom metadata


def test_delete_and_delete_of_a_missing_server(nova):
    driver = make()
    driver.delete("12065")
    driver.delete("does_not_exist")  # the recording answers 404 for it
    assert [(s.method, s.path) for s in nova.sent if s.method == "DELETE"] == [
        ("DELETE", "/v2/1337/servers/12065"),
        ("DELETE", "/v2/1337/servers/does_not_exist"),
    ]


def test_list_tagged_returns_only_this_providers_servers(nova):
    def both(document: Any) -> None:
        tag("12064")(document)
        tag("12065", node="other", provider="tenant-8/provider-1")(document)

    nova.edits["/servers/detail"] = both
    assert [(m.machine_id, m.node_key) for m in make().list_tagged()] == [("12064", NODE)]


def test_refused_credentials_are_terminal_and_server_errors_transient(nova):
    nova.always["/servers/detail"] = (401, '{"unauthorized": {"code": 401, "message": "bad token"}}')
    with pytest.raises(TerminalError, match="credentials") as caught:
        make().list_tagged()
    assert PASSWORD not in str(caught.value)
    nova.always["/servers/detail"] = (503, '{"computeFault": {"code": 503, "message": "try later"}}')
    with pytest.raises(TransientError, match="HTTP 503"):
        make().list_tagged()
    nova.always["/servers/detail"] = (429, '{"overLimit": {"code": 429, "message": "slow down"}}')
    with pytest.raises(TransientError, match="throttled"):
        make().list_tagged()


def test_a_keystone_that_refuses_the_password_is_terminal(nova):
    nova.always["/v2.0/tokens"] = (
        401,
        '{"error": {"code": 401, "message": "The request you have made requires auth"}}',
    )
    with pytest.raises(TerminalError, match="credentials") as caught:
        make().create(SPEC)
    assert PASSWORD not in str(caught.value)


# --- rackspace: OpenStack with Rackspace's endpoints -------------------------------------------------------------


@pytest.fixture
def rackspace_nova(monkeypatch: pytest.MonkeyPatch) -> type:
    module = libcloud_test_module("libcloud.test.compute.test_rackspace")
    mock = recording(module.RackspaceNovaMockHttp)
    monkeypatch.setattr(mock, "type", None)
    monkeypatch.setattr(RackspaceNodeDriver.connectionCls, "conn_class", mock)
    monkeypatch.setattr(RackspaceNodeDriver.connectionCls, "auth_url", "https://auth.api.example.com")
    return mock


def rackspace(**fields: Any) -> RackspaceDriver:
    return RackspaceDriver({"api_user": "loom", "api_password": PASSWORD, "rackspace_region": "dfw", **fields},
                           provider_key=PROVIDER)  # fmt: skip


def test_rackspace_fields_become_libcloud_arguments():
    assert rackspace().libcloud_driver() == (RackspaceNodeDriver, {"key": "loom", "secret": PASSWORD, "region": "dfw"})
    with pytest.raises(TerminalError, match="rackspace_region must be one of"):
        rackspace(rackspace_region="mars")
    assert isinstance(driver_for("rackspace", {"api_user": "u", "api_password": "p", "rackspace_region": "ord"},
                                 provider_key=PROVIDER), RackspaceDriver)  # fmt: skip


def test_rackspace_create_posts_the_server_with_loom_metadata(rackspace_nova):
    machine = rackspace(ssh_keypair="loom-key").create(SPEC)
    assert machine.machine_id == "26f7fbee-8ce1-4c28-887a-bfe8e4bb10fe"
    [post] = [s for s in rackspace_nova.sent if s.method == "POST" and s.path.endswith("/servers")]
    assert post.path == "/v2/1337/servers"
    server = post.json()["server"]
    assert (server["name"], server["flavorRef"], server["imageRef"], server["key_name"]) == (
        SPEC.name, "1", "13", "loom-key"
    )  # fmt: skip
    assert server["metadata"]["loom-node"] == NODE


def test_rackconnect_wait_holds_the_confirm_until_deployed(rackspace_nova):
    status = {"value": "UNPROCESSED"}

    def rackconnect(document: Any) -> None:
        tag("12064")(document)
        document["server"]["metadata"]["rackconnect_automation_status"] = status["value"]

    rackspace_nova.edits["/servers/12064"] = rackconnect
    waiting = MachineSpec(**{**SPEC.__dict__, "fields": {"rackconnect_wait": "true"}})
    with pytest.raises(NotReady, match="RackConnect"):
        rackspace().confirm(waiting, "12064")
    status["value"] = "DEPLOYED"
    assert rackspace().confirm(waiting, "12064").ip_addresses["access_v4"] == "50.57.94.30"
    status["value"] = "FAILED"
    with pytest.raises(TerminalError, match="RackConnect automation failed"):
        rackspace().confirm(waiting, "12064")
    # Without the user field the status is not waited for.
    status["value"] = "UNPROCESSED"
    assert rackspace().confirm(SPEC, "12064").machine_id == "12064"
