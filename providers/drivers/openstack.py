"""The ``openstack`` provider: Nova through libcloud's ``OpenStack_2_NodeDriver`` (contract in ``cloud.py``).

Loom's tags are server metadata (set in the create request itself, so a server never exists untagged);
Nova has no client token, so a retried create finds its server by the ``loom-node`` metadata key. Names
are the original's (loom-reference §7.3). ``openstack_auth_url`` is the Keystone URL as people write it
(``https://keystone:5000/v3`` or ``.../v2.0``): its version selects the authentication protocol and the
rest is libcloud's base URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from libcloud.compute.base import Node, NodeDriver
from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver, OpenStackNetwork, OpenStackSecurityGroup

from .base import MachineSpec, TerminalError
from .cloud import CloudDriver, csv

AUTH_VERSIONS = {"v3": "3.x_password", "v2.0": "2.0_password"}


def keystone(url: str) -> tuple[str, str]:
    """(base URL, libcloud auth version) from a Keystone URL; raises ``ValueError`` naming the problem."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    segments = [segment for segment in parts.path.split("/") if segment]
    version = "3.x_password"
    if segments and segments[-1] in AUTH_VERSIONS:
        version = AUTH_VERSIONS[segments.pop()]
    elif segments and segments[-1].startswith("v"):
        raise ValueError(f"{url!r} ends in an unsupported Keystone version; use /v3 or /v2.0")
    path = "/" + "/".join(segments) if segments else ""
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), version


class OpenStackDriver(CloudDriver):
    provider_type = "openstack"

    def check_fields(self) -> None:
        self.required("api_user", "api_password", "openstack_tenant", "openstack_auth_url")
        try:
            keystone(self.text("openstack_auth_url"))
        except ValueError as error:
            raise TerminalError(f"openstack provider field openstack_auth_url: {error}") from None
        if not self.flag("openstack_ssl_verify_peer", default=True):
            # libcloud only switches verification off process-wide, for every tenant's clouds at once.
            raise TerminalError(
                "openstack provider field openstack_ssl_verify_peer: turning verification off is not supported;"
                " add the cloud's CA certificate to the workers' trust store (SSL_CERT_FILE) instead"
            )
        if self.flag("floating_ip"):
            raise TerminalError(
                "openstack provider field floating_ip: floating IPs are not supported yet; attach the nodes to a"
                " network their workers can reach (network_ids)"
            )

    def libcloud_driver(self) -> tuple[type[NodeDriver], dict[str, Any]]:
        base_url, auth_version = keystone(self.text("openstack_auth_url"))
        arguments: dict[str, Any] = {
            "key": self.text("api_user"),
            "secret": self.text("api_password"),
            "ex_tenant_name": self.text("openstack_tenant"),
            "ex_force_auth_url": base_url,
            "ex_force_auth_version": auth_version,
        }
        if self.text("openstack_region"):
            arguments["ex_force_service_region"] = self.text("openstack_region")
        return OpenStack_2_NodeDriver, arguments

    def create_arguments(self, spec: MachineSpec) -> dict[str, Any]:
        """Security groups, availability zone and user data are user fields: the spec's fields win."""
        client = self.client
        arguments: dict[str, Any] = {
            **self.named_size_and_image(spec),
            "ex_metadata": self.encode_tags(self.machine_tags(spec)),
        }
        if self.text("ssh_keypair", spec):
            arguments["ex_keyname"] = self.text("ssh_keypair", spec)
        networks = csv(self.text("network_ids", spec))
        if networks:
            arguments["networks"] = [OpenStackNetwork(network, None, None, client) for network in networks]
        groups = csv(self.text("security_groups", spec))
        if groups:
            arguments["ex_security_groups"] = [OpenStackSecurityGroup(None, None, g, "", client) for g in groups]
        if self.text("availability_zone", spec):
            arguments["ex_availability_zone"] = self.text("availability_zone", spec)
        if self.text("user_data_resource", spec):
            content = self.resource("user_data_resource", "user_data", self.text("user_data_resource", spec))
            arguments["ex_userdata"] = content.decode("utf-8", errors="replace")
        return arguments

    def get_node(self, machine_id: str) -> Node | None:
        node: Node | None = self.client.ex_get_node_details(machine_id)
        return node
