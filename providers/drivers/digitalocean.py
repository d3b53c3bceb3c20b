"""The ``digitalocean`` provider: droplets through libcloud's DigitalOcean v2 driver (contract in ``cloud.py``).

The v2 API takes one token (``api_password``); ``api_user`` (the v1 client id) is no longer used. Droplet
names are not unique and there is no client token, so a retried create finds its droplet by tag. Droplet
tags are plain strings of letters, digits, ``:``, ``-`` and ``_``: Loom's ``key=value`` tags become
``key:value`` with every other character escaped as ``_xx`` (hex), which decodes back exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from libcloud.compute.base import Node, NodeDriver, NodeLocation
from libcloud.compute.drivers.digitalocean import DigitalOceanNodeDriver

from .base import MachineSpec, TerminalError
from .cloud import CloudDriver

TAG_LIMIT = 255


def encode_tag(key: str, value: str) -> str:
    """``key:value`` in DigitalOcean's tag alphabet; ``_`` escapes (``_3a`` is a literal colon)."""

    def escape(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9-]", lambda match: "".join(f"_{byte:02x}" for byte in match[0].encode()), text)

    return f"{escape(key)}:{escape(value)}"[:TAG_LIMIT]


def decode_tag(tag: str) -> tuple[str, str] | None:
    """The (key, value) of a tag made by ``encode_tag``; None for tags that are not ``key:value``."""
    key, separator, value = tag.partition(":")
    if not separator:
        return None

    def unescape(text: str) -> str:
        raw = re.sub(rb"_([0-9a-f]{2})", lambda match: bytes([int(match[1], 16)]), text.encode())
        return raw.decode(errors="replace")

    return unescape(key), unescape(value)


class DigitalOceanDriver(CloudDriver):
    provider_type = "digitalocean"
    timeout_argument = False  # libcloud's DigitalOcean __new__ passes extra arguments on to object.__new__

    def check_fields(self) -> None:
        self.required("api_password", "digitalocean_region")

    def libcloud_driver(self) -> tuple[type[NodeDriver], dict[str, Any]]:
        # The generic class picks the v2 driver; libcloud's v2 class cannot be instantiated directly.
        return DigitalOceanNodeDriver, {"key": self.text("api_password"), "api_version": "v2"}

    def encode_tags(self, tags: Mapping[str, str]) -> list[str]:
        return [encode_tag(key, value) for key, value in tags.items()]

    def node_tags(self, node: Node) -> dict[str, str]:
        pairs = [decode_tag(str(tag)) for tag in node.extra.get("tags") or []]
        return dict(pair for pair in pairs if pair is not None)

    def create_arguments(self, spec: MachineSpec) -> dict[str, Any]:
        client = self.client
        region = self.text("digitalocean_region")
        attributes: dict[str, Any] = {"tags": self.encode_tags(self.machine_tags(spec))}
        if self.text("ssh_keypair"):
            attributes["ssh_keys"] = [self._key_id(self.text("ssh_keypair"))]
        return {
            # The v2 API names sizes by slug (libcloud sends ``size.name``) and images by id or slug.
            **self.named_size_and_image(spec),
            "location": NodeLocation(region, region, "", client),
            "ex_create_attr": attributes,
        }

    def _key_id(self, name: str) -> int:
        """The account's SSH key with this name (or fingerprint): droplets take key ids, not names."""
        keys = self.call("list SSH keys on digitalocean", self.client.list_key_pairs)
        for key in keys:
            if name in (key.name, key.fingerprint):
                return int(key.extra["id"])
        raise TerminalError(f"digitalocean provider field ssh_keypair: the account has no SSH key named {name!r}")

    def get_node(self, machine_id: str) -> Node | None:
        node: Node = self.client.ex_get_node_details(machine_id)
        return node
