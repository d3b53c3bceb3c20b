"""The ``aws`` provider: Amazon EC2 through libcloud's ``EC2NodeDriver`` (see ``cloud.py`` for the contract).

Field names are the original's (loom-reference §7.3). Lookups filter server-side by tag and instance
state, so a create's idempotency check and the reaper's listing are one ``DescribeInstances`` each. The
tags are set in the ``RunInstances`` call itself (``TagSpecification``): a machine never exists untagged,
which is what makes the tag lookup of a retried create reliable. ``ClientToken`` is sent too (real EC2
honours it; moto does not, hence the tag lookup first).
"""

from __future__ import annotations

from typing import Any

from libcloud.compute.base import Node, NodeDriver
from libcloud.compute.drivers.ec2 import EC2NetworkSubnet, EC2NodeDriver, EC2NodeLocation, ExEC2AvailabilityZone

from .base import TAG_NODE, MachineSpec, TerminalError
from .cloud import TAG_PROVIDER, CloudDriver, csv

# Instances in these states still exist (terminated ones stay listed for about an hour, and are not ours).
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
DATA_DEVICE = "/dev/sdf"


class AwsDriver(CloudDriver):
    provider_type = "aws"
    tag_value_limit = 256

    def check_fields(self) -> None:
        self.required("api_user", "api_password", "aws_region")
        region = self.text("aws_region")
        if region not in EC2NodeDriver.list_regions():
            raise TerminalError(f"aws provider field aws_region: unknown region {region!r}")
        if self.text("security_group_ids") and not self.text("subnet_id"):
            raise TerminalError(
                "aws provider field security_group_ids needs subnet_id (security group IDs are for VPC)"
            )
        if self.flag("dedicated_instance"):
            raise TerminalError(
                "aws provider field dedicated_instance: libcloud's EC2 driver cannot request dedicated tenancy;"
                " use a dedicated VPC (instance tenancy 'dedicated') instead and leave this off"
            )
        self.positive_int("aws_ebs_size")
        self.positive_int("aws_root_ebs_size")

    def libcloud_driver(self) -> tuple[type[NodeDriver], dict[str, Any]]:
        return EC2NodeDriver, {
            "key": self.text("api_user"),
            "secret": self.text("api_password"),
            "region": self.text("aws_region"),
        }

    def create_arguments(self, spec: MachineSpec) -> dict[str, Any]:
        client = self.client
        arguments: dict[str, Any] = {
            **self.named_size_and_image(spec),
            "ex_metadata": self.encode_tags(self.machine_tags(spec)),
            "ex_clienttoken": spec.client_token,
        }
        if self.text("ssh_keypair"):
            arguments["ex_keyname"] = self.text("ssh_keypair")
        if self.text("user_data"):
            arguments["ex_userdata"] = str(self.fields["user_data"])
        if self.text("subnet_id"):
            arguments["ex_subnet"] = EC2NetworkSubnet(self.text("subnet_id"), None, None)
            if csv(self.fields.get("security_group_ids")):
                arguments["ex_security_group_ids"] = csv(self.fields.get("security_group_ids"))
            # Only in a chosen subnet: EC2 refuses instance-level security group names next to the network
            # interface that a public address needs, and the default VPC's subnets assign one anyway.
            if self.flag("associate_public_ip", default=True):
                arguments["ex_assign_public_ip"] = True
        if "ex_security_group_ids" not in arguments and csv(self.fields.get("security_groups")):
            arguments["ex_security_groups"] = csv(self.fields.get("security_groups"))
        if self.text("availability_zone"):
            region = self.text("aws_region")
            zone = ExEC2AvailabilityZone(self.text("availability_zone"), "available", region)
            arguments["location"] = EC2NodeLocation(zone.name, zone.name, region, client, zone)
        if self.text("iam_instance_profile"):
            arguments["ex_iamprofile"] = self.text("iam_instance_profile")
        if self.text("placement_group"):
            arguments["ex_placement_group"] = self.text("placement_group")
        mappings = self._block_devices(spec)
        if mappings:
            arguments["ex_blockdevicemappings"] = mappings
        return arguments

    def _block_devices(self, spec: MachineSpec) -> list[dict[str, Any]]:
        """EBS sizes: the root volume (whose device name only the image knows) and a data volume."""
        mappings: list[dict[str, Any]] = []
        root_size = self.positive_int("aws_root_ebs_size")
        if root_size:
            image = self.call(f"describe image {spec.image}", lambda: self.client.get_image(spec.image))
            device = image.extra.get("root_device_name") or "/dev/xvda"
            mappings.append(
                {
                    "DeviceName": device,
                    "Ebs": {
                        "VolumeSize": root_size,
                        "DeleteOnTermination": str(self.flag("aws_root_ebs_delete_on_term", True)).lower(),
                    },
                }
            )
        data_size = self.positive_int("aws_ebs_size")
        if data_size:
            mappings.append(
                {
                    "DeviceName": DATA_DEVICE,
                    "Ebs": {
                        "VolumeSize": data_size,
                        "DeleteOnTermination": str(self.flag("aws_ebs_delete_on_term", True)).lower(),
                    },
                }
            )
        return mappings

    def node_tags(self, node: Node) -> dict[str, str]:
        return {str(key): str(value) for key, value in (node.extra.get("tags") or {}).items()}

    def list_nodes(self) -> list[Node]:
        filters = {f"tag:{TAG_PROVIDER}": self.provider_key, "instance-state-name": LIVE_STATES}
        return list(self.client.list_nodes(ex_filters=filters))

    def find_nodes(self, spec: MachineSpec) -> list[Node]:
        filters = {f"tag:{TAG_NODE}": spec.node_key, "instance-state-name": LIVE_STATES}
        return list(self.client.list_nodes(ex_filters=filters))

    def get_node(self, machine_id: str) -> Node | None:
        nodes = self.client.list_nodes(ex_node_ids=[machine_id])
        return nodes[0] if nodes else None

    def is_missing(self, error: BaseException) -> bool:
        return "InvalidInstanceID.NotFound" in str(getattr(error, "message", "") or error)

    def hostname(self, node: Node, spec: MachineSpec) -> str:
        if self.flag("provider_hostname"):
            return str(node.extra.get("dns_name") or node.extra.get("private_dns") or spec.name)
        return spec.name
