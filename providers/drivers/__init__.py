"""Provider drivers: one contract (``base``), one implementation per provider type.

Import from here; the concrete drivers are loaded lazily by ``driver_for`` so that importing the contract
pulls in no cloud SDK and no Django.
"""

from .base import (
    DRIVERS,
    TAG_CLUSTER,
    TAG_NODE,
    Driver,
    DriverError,
    Machine,
    MachineSpec,
    NotReady,
    Reachable,
    TerminalError,
    TransientError,
    client_token,
    driver_for,
    machine_name,
)

__all__ = [
    "DRIVERS",
    "TAG_CLUSTER",
    "TAG_NODE",
    "Driver",
    "DriverError",
    "Machine",
    "MachineSpec",
    "NotReady",
    "Reachable",
    "TerminalError",
    "TransientError",
    "client_token",
    "driver_for",
    "machine_name",
]
