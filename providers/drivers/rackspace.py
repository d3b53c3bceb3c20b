"""The ``rackspace`` provider: Rackspace's OpenStack cloud through libcloud's ``RackspaceNodeDriver``.

Everything but the credentials and the endpoint is OpenStack's (``openstack.py``). ``rackconnect_wait``
(a user field, as in the original) keeps a confirm answering "not ready" until RackConnect has finished
automating the server's network (the ``rackconnect_automation_status`` metadata key says ``DEPLOYED``).
"""

from __future__ import annotations

from typing import Any

from libcloud.compute.base import Node, NodeDriver
from libcloud.compute.drivers.rackspace import ENDPOINT_ARGS_MAP, RackspaceNodeDriver

from .base import MachineSpec, TerminalError
from .openstack import OpenStackDriver

RACKCONNECT_STATUS = "rackconnect_automation_status"


class RackspaceDriver(OpenStackDriver):
    provider_type = "rackspace"

    def check_fields(self) -> None:
        self.required("api_user", "api_password", "rackspace_region")
        if self.text("rackspace_region") not in ENDPOINT_ARGS_MAP:
            known = ", ".join(sorted(ENDPOINT_ARGS_MAP))
            raise TerminalError(f"rackspace provider field rackspace_region must be one of {known}")

    def libcloud_driver(self) -> tuple[type[NodeDriver], dict[str, Any]]:
        return RackspaceNodeDriver, {
            "key": self.text("api_user"),
            "secret": self.text("api_password"),
            "region": self.text("rackspace_region"),
        }

    def ready_problem(self, node: Node, spec: MachineSpec) -> str | None:
        if not self.flag("rackconnect_wait", spec=spec):
            return None
        status = str(self.node_tags(node).get(RACKCONNECT_STATUS, "")).upper()
        if status == "FAILED":
            raise TerminalError(f"machine {node.id}: RackConnect automation failed")
        if status != "DEPLOYED":
            return f"waits for RackConnect (automation status {status or 'not reported yet'})"
        return None
