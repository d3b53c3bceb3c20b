"""Shared pieces of the catalog API tests: one valid document per kind, URLs and error-shape assertions."""

from __future__ import annotations

import copy
import json
from typing import Any

from templates_app.kinds import all_kinds, get_kind
from templates_app.models import CatalogVersion
from tenants.models import AuditEvent, Tenant

API = "/api/v2"
KINDS = ("providers", "hardwaretypes", "imagetypes", "services", "clustertemplates", "partialtemplates")

# One valid document per kind, valid in a tenant holding the sample catalog (``catalog_a``). Whatever the name,
# so ``valid_doc(kind, name)`` makes as many as a test needs.
VALID_DOCS: dict[str, dict[str, Any]] = {
    "providers": {
        "name": "fake-lab",
        "description": "simulated machines",
        "providertype": "fake",
        "provisioner": {"failure_rate": "0", "latency_ms": "10"},
    },
    "hardwaretypes": {
        "name": "tiny",
        "description": "tiny machine",
        "providermap": {"fake-lab": {"flavor": "t1"}, "rackspace": {"flavor": "2", "cost": "0.01"}},
    },
    "imagetypes": {
        "name": "debian12",
        "description": "Debian 12",
        "providermap": {"rackspace": {"image": "deb-12", "sshuser": "debian"}},
    },
    "services": {
        "name": "redis",
        "description": "Redis server",
        "dependencies": {"install": {"requires": ["base"]}},
        "provisioner": {"actions": {"install": {"type": "shell", "fields": {"script": "redis.sh", "args": "-q"}}}},
    },
    "clustertemplates": {
        "name": "single",
        "description": "one base node",
        "compatibility": {"hardwaretypes": ["standard-small"], "imagetypes": ["ubuntu12"], "services": ["base"]},
        "defaults": {"services": ["base"], "provider": "rackspace", "hardwaretype": "standard-small"},
        "constraints": {"size": {"min": 1, "max": 3}},
    },
    "partialtemplates": {
        "name": "monitoring",
        "description": "adds monitoring config",
        "immutable": True,
        "compatibility": {"hardwaretypes": [], "imagetypes": [], "services": ["base"]},
        "defaults": {"services": ["base"], "config": {"monitoring": {"endpoint": "mon.example.com"}}},
    },
}
# Per kind, a top-level key that VALID_DOCS gives already in canonical form, so it must come back unchanged.
EXACT_KEY = {
    "providers": "provisioner",
    "hardwaretypes": "providermap",
    "imagetypes": "providermap",
    "services": "provisioner",
    "clustertemplates": "compatibility",
    "partialtemplates": "compatibility",
}


def valid_doc(kind: str, name: str | None = None, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID_DOCS[kind])
    if name is not None:
        doc["name"] = name
    doc.update(changes)
    return doc


def url(kind: str, name: str | None = None, suffix: str = "") -> str:
    return f"{API}/{kind}/" if name is None else f"{API}/{kind}/{name}{suffix}"


def body(response: Any) -> Any:
    return json.loads(response.content)


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The ``error`` object of a response, after checking the status and the one error shape."""
    assert response.status_code == status, (response.status_code, response.content[:2000])
    data = body(response)
    assert set(data) == {"error"}, data
    error = data["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["fields"], dict), error
    return error


def assert_invalid(response: Any, *, field: str, says: tuple[str, ...], entity: str | None = None) -> dict[str, Any]:
    """A 400 whose ``fields`` name ``field`` with a message containing every string of ``says``.

    When ``entity`` is given, the top-level message must name it too (it reads ``<kind> '<name>': ...``).
    """
    error = error_of(response, 400)
    assert error["code"] == "invalid", error
    assert field in error["fields"], (field, error["fields"])
    messages = error["fields"][field]
    assert any(all(text in message for text in says) for message in messages), (says, messages)
    if entity is not None:
        assert entity in error["message"], error["message"]
    return error


def warnings_of(response: Any) -> list[dict[str, Any]]:
    header = response.headers.get("Loom-Warnings")
    return json.loads(header) if header else []


def assert_stored_with_warning(
    response: Any, *, field: str, says: tuple[str, ...], launchable: bool | None = None
) -> dict[str, Any]:
    """A 201/200 whose ``Loom-Warnings`` hold a warning on ``field`` saying every string of ``says``; with
    ``launchable`` given, the stored entity's ``launchable`` flag and a reason naming ``field`` too."""
    assert response.status_code in (200, 201), response.content[:2000]
    found = [w for w in warnings_of(response) if w["field"] == field]
    assert any(all(text in w["message"] for text in says) for w in found), (field, says, warnings_of(response))
    data = body(response)
    if launchable is not None:
        assert data["launchable"] is launchable, data.get("reasons")
        if not launchable:
            assert any(reason.startswith(field) and all(t in reason for t in says) for reason in data["reasons"]), data
    return data


def results(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content[:2000]
    return body(response)["results"]


def names(response: Any) -> list[str]:
    return [item["name"] for item in results(response)]


def catalog_state(tenant: Tenant) -> dict[str, Any]:
    """Everything a catalog write touches, for before/after comparisons: documents, secrets, versions, audit."""
    return {
        "entities": {
            kind.key: sorted(kind.model.objects.filter(tenant=tenant).values_list("name", "version", "document"))
            for kind in all_kinds()
        },
        # Fernet tokens differ on every encryption, so any rewrite of a secret shows up here.
        "secrets": sorted(get_kind("providers").model.objects.filter(tenant=tenant).values_list("name", "secret_data")),
        "versions": CatalogVersion.objects.filter(tenant=tenant).count(),
        "audit": AuditEvent.objects.filter(tenant=tenant).count(),
    }


def without_versions(export: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: [{k: v for k, v in item.items() if k != "version"} for item in items] for kind, items in export.items()
    }
