"""The ``google`` provider: Compute Engine through libcloud's ``GCENodeDriver`` (contract in ``cloud.py``).

Instance names are unique per zone, so the machine id is the name and a retried create finds its machine
by name (``ex_get_node``) before anything else; Loom's tags are instance metadata items. Credentials are
a service account: ``google_client_email`` and the key file uploaded as the ``api_keys`` plugin resource
named by ``api_key_resource`` (JSON or PEM; the original's PKCS#12 files must be converted, libcloud reads
only those two). The ``ssh_key_resource`` private key's public half goes into the ``ssh-keys`` metadata
for ``ssh_user``, which is how GCE lets a user in.

libcloud waits for GCE's insert operation inside ``create_node``; that wait is bounded by the driver's
timeout, and a create that times out is found by name on the retry. Deletes do not wait for theirs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from libcloud.compute.base import Node, NodeDriver
from libcloud.compute.drivers.gce import GCENodeDriver, GCENodeImage, GCENodeSize

from .base import MachineSpec, TerminalError
from .cloud import CloudDriver

API_BASE = "https://www.googleapis.com/compute/v1/projects"
DISK_TYPES = {"standard": "pd-standard", "ssd": "pd-ssd"}


def public_key_line(private_key: bytes, comment: str) -> str:
    """The OpenSSH public key line of a PEM or OpenSSH private key (``ValueError`` when it is neither)."""
    try:
        key = serialization.load_ssh_private_key(private_key, password=None)
    except (ValueError, TypeError):
        key = serialization.load_pem_private_key(private_key, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}"


class GoogleDriver(CloudDriver):
    provider_type = "google"
    tag_value_limit = 256

    def check_fields(self) -> None:
        self.required("google_project", "google_client_email", "api_key_resource", "zone_name")
        for name in ("google_root_disk_type", "google_data_disk_type"):
            if self.text(name) and self.text(name) not in DISK_TYPES:
                raise TerminalError(f"google provider field {name} must be standard or ssd")
        self.positive_int("google_root_disk_size_gb")
        self.data_disk_sizes()

    def data_disk_sizes(self) -> list[int]:
        """``google_data_disk_size_gb``: one size, or several comma-separated (one disk each)."""
        sizes = []
        for item in self.text("google_data_disk_size_gb").split(","):
            if item.strip() and item.strip() != "0":
                if not item.strip().isdigit():
                    raise TerminalError(
                        f"google provider field google_data_disk_size_gb: {item.strip()!r} is not a size"
                    )
                sizes.append(int(item.strip()))
        return sizes

    def libcloud_driver(self) -> tuple[type[NodeDriver], dict[str, Any]]:
        key = self.resource("api_key_resource", "api_keys", self.text("api_key_resource")).decode()
        self.add_secret(key)
        return GCENodeDriver, {
            "user_id": self.text("google_client_email"),
            "key": key,
            "project": self.text("google_project"),
            "datacenter": self.text("zone_name"),
            "auth_type": "SA",
            "credential_file": str(self._token_cache()),
        }

    def _token_cache(self) -> Path:
        """Where libcloud caches the short-lived access token: a folder only this user can read."""
        folder = Path(tempfile.gettempdir()) / f"loom-gce-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
        name = hashlib.sha256(f"{self.provider_key}\x00{self.text('google_client_email')}".encode()).hexdigest()
        return folder / name[:32]

    def create_arguments(self, spec: MachineSpec) -> dict[str, Any]:
        client = self.client
        zone = self.text("zone_name")
        project = self.text("google_project")
        root_type = DISK_TYPES[self.text("google_root_disk_type") or "standard"]
        metadata = self.encode_tags(self.machine_tags(spec))
        if self.text("ssh_key_resource"):
            private_key = self.resource("ssh_key_resource", "ssh_keys", self.text("ssh_key_resource"))
            try:
                line = public_key_line(private_key, comment=spec.name)
            except (ValueError, TypeError):
                raise TerminalError(
                    f"google provider field ssh_key_resource: {self.text('ssh_key_resource')!r} is not an"
                    " unencrypted PEM or OpenSSH private key"
                ) from None
            metadata["ssh-keys"] = f"{self.ssh_user(spec)}:{line}"
        size_link = f"{API_BASE}/{project}/zones/{zone}/machineTypes/{spec.flavor}"
        arguments: dict[str, Any] = {
            "name": spec.name,
            "size": GCENodeSize(spec.flavor, spec.flavor, None, None, None, None, client, {"selfLink": size_link}),
            "image": self._image(spec.image),
            "location": client.zone,
            "ex_metadata": metadata,
            "ex_disk_type": root_type,
            "ex_network": self.text("network", spec) or "default",
        }
        root_size = self.positive_int("google_root_disk_size_gb")
        if root_size:
            arguments["ex_disk_size"] = root_size
        if self.data_disk_sizes():
            image = arguments["image"]
            if isinstance(image, str):  # the disks need its link: look it up once, for both
                image = arguments["image"] = self.call(f"look up image {image}", lambda: client.ex_get_image(image))
            arguments["ex_disks_gce_struct"] = self._disks(spec, image, root_size)
        return arguments

    def _image(self, image: str) -> GCENodeImage | str:
        """An image given as a path or URL needs no lookup; a bare name is searched by libcloud."""
        if image.startswith("https://"):
            link = image
        elif image.startswith("projects/"):
            link = f"https://www.googleapis.com/compute/v1/{image}"
        else:
            return image
        return GCENodeImage(link, link.rsplit("/", 1)[-1], self.client, {"selfLink": link})

    def _disks(self, spec: MachineSpec, image: GCENodeImage, root_size: int | None) -> list[dict[str, Any]]:
        """The boot disk and the data disks, all deleted with the machine."""
        client = self.client
        zone = self.text("zone_name")
        root_type = DISK_TYPES[self.text("google_root_disk_type") or "standard"]
        data_type = DISK_TYPES[self.text("google_data_disk_type") or "standard"]
        types = {
            name: self.call(f"look up disk type {name}", lambda name=name: client.ex_get_disktype(name, zone=zone))
            for name in {root_type, data_type}
        }
        boot: dict[str, Any] = {
            "autoDelete": True, "boot": True, "type": "PERSISTENT", "mode": "READ_WRITE", "deviceName": spec.name,
            "initializeParams": {"diskName": spec.name, "diskType": types[root_type].extra["selfLink"],
                                 "sourceImage": image.extra["selfLink"]},
        }  # fmt: skip
        if root_size:
            boot["initializeParams"]["diskSizeGb"] = root_size
        disks = [boot]
        for number, size in enumerate(self.data_disk_sizes(), start=1):
            name = f"{spec.name}-data-{number}"
            disks.append(
                {"autoDelete": True, "type": "PERSISTENT", "mode": "READ_WRITE", "deviceName": name,
                 "initializeParams": {"diskName": name, "diskSizeGb": size,
                                      "diskType": types[data_type].extra["selfLink"]}}
            )  # fmt: skip
        return disks

    def node_tags(self, node: Node) -> dict[str, str]:
        items = (node.extra.get("metadata") or {}).get("items") or []
        return {str(item.get("key")): str(item.get("value", "")) for item in items if item.get("key") != "ssh-keys"}

    def machine_id(self, node: Node) -> str:
        return str(node.name)

    def list_nodes(self) -> list[Node]:
        return list(self.client.list_nodes(ex_zone=self.text("zone_name")))

    def find_nodes(self, spec: MachineSpec) -> list[Node]:
        try:
            node = self.client.ex_get_node(spec.name, self.text("zone_name"))
        except Exception as error:
            if self.is_missing(error):
                return []
            raise
        owner = self.node_tags(node).get("loom-node")
        if owner != spec.node_key:
            raise TerminalError(f"machine name {spec.name} is already used by another machine (node {owner or '-'})")
        return [node]

    def get_node(self, machine_id: str) -> Node | None:
        node: Node = self.client.ex_get_node(machine_id, self.text("zone_name"))
        return node

    def destroy(self, machine_id: str) -> bool:
        client = self.client
        stub = Node(machine_id, machine_id, None, [], [], client, extra={"zone": client.zone})
        return bool(client.destroy_node(stub, ex_sync=False))

    def ssh_user(self, spec: MachineSpec) -> str:
        return self.text("ssh_user") or spec.ssh_user

    def hostname(self, node: Node, spec: MachineSpec) -> str:
        if self.flag("provider_hostname"):
            return f"{node.name}.{self.text('zone_name')}.c.{self.text('google_project')}.internal"
        return spec.name
