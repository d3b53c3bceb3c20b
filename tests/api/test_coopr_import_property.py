"""Property (issue 15): a catalog the original would accept never fails to import as a whole because of a
reference that is only unsatisfiable *now*.

Each example starts from the sample catalog (whose ``lamp`` and ``base`` templates launch) and injects any mix
of the faults Coopr accepted at write time and refused only at cluster create: services named in
compatibility, defaults or constraints that the catalog lacks, default image or hardware types outside the
template's compatibility or missing from the catalog, default providers that do not exist or whose type has no
driver here, hardware types mapped to providers that do not exist. The import must answer 200 with every
entity stored and a warning per fault, and a template is launchable exactly when none of its faults blocks
a launch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.helpers import API, body

pytestmark = pytest.mark.django_db

# Names the original accepts ([\w.-]+) that the sample catalog does not hold.
missing_names = st.from_regex(r"\Azz[a-z0-9_.-]{1,10}\Z", fullmatch=True)
driverless_types = st.sampled_from(["joyent", "digitalocean-v1", "softlayer", "cloudstack"])


@dataclass(frozen=True)
class Fault:
    """One unsatisfiable reference: how to inject it, the field its warning names, and whether it blocks."""

    label: str
    field: str
    blocks: bool
    inject: Callable[[dict[str, Any], dict[str, Any]], None]

    def __repr__(self) -> str:
        return self.label


def compat_service(name: str) -> Fault:
    def inject(catalog: dict[str, Any], template: dict[str, Any]) -> None:
        template["compatibility"]["services"].append(name)

    return Fault(f"compatibility.services += {name}", "compatibility.services", False, inject)


def default_service(name: str) -> Fault:
    def inject(catalog: dict[str, Any], template: dict[str, Any]) -> None:
        template["compatibility"]["services"].append(name)
        template["defaults"]["services"].append(name)

    return Fault(f"defaults.services += {name}", "defaults.services", True, inject)


def constrained_service(name: str, how: str) -> Fault:
    def inject(catalog: dict[str, Any], template: dict[str, Any]) -> None:
        constraints = template.setdefault("constraints", {})
        if how == "quantities":
            constraints.setdefault("services", {})[name] = {"quantities": {"min": 0, "max": 1}}
        else:
            layout = constraints.setdefault("layout", {})
            layout.setdefault(how, []).append([name, template["defaults"]["services"][0]])

    return Fault(f"constraints {how} {name}", "constraints", False, inject)


def default_type(kind: str, where: str, name: str) -> Fault:
    """A default image or hardware type outside the template's own compatibility (``where='outside'``; the
    type exists and the provider maps it) or missing from the catalog (``where='missing'``)."""

    def inject(catalog: dict[str, Any], template: dict[str, Any]) -> None:
        compatible = template["compatibility"][f"{kind}s"]
        if where == "outside":
            outside = [t["name"] for t in catalog[f"{kind}s"] if t["name"] not in compatible]
            chosen = outside[0] if outside else compatible.pop()  # base allows every hardware type
        else:
            chosen = name
            compatible.append(name)
        template["defaults"][kind] = chosen

    return Fault(f"defaults.{kind} {where} {name}", f"defaults.{kind}", True, inject)


def default_provider(where: str, name: str, providertype: str) -> Fault:
    """A default provider missing from the catalog, or one whose type Loom has no driver for."""

    def inject(catalog: dict[str, Any], template: dict[str, Any]) -> None:
        if where == "driverless" and all(p["name"] != name for p in catalog["providers"]):
            catalog["providers"].append({
                "name": name, "description": "a cloud Loom has no driver for", "providertype": providertype,
                "provisioner": {"api_user": "ops", "region": "east-1"},
            })  # fmt: skip
        template["defaults"]["provider"] = name

    return Fault(f"defaults.provider {where} {name} {providertype}", "defaults.provider", True, inject)


def mapped_provider(name: str) -> Fault:
    def inject(catalog: dict[str, Any], template: dict[str, Any]) -> None:
        hardware = next(t for t in catalog["hardwaretypes"] if t["name"] in template["compatibility"]["hardwaretypes"])
        hardware["providermap"][name] = {"flavor": "m1.large"}

    return Fault(f"providermap += {name}", "providermap", False, inject)


faults = st.one_of(
    missing_names.map(compat_service),
    missing_names.map(default_service),
    st.builds(constrained_service, missing_names, st.sampled_from(["quantities", "mustcoexist", "cantcoexist"])),
    st.builds(default_type, st.sampled_from(["imagetype", "hardwaretype"]), st.just("outside"), missing_names),
    st.builds(default_type, st.sampled_from(["imagetype", "hardwaretype"]), st.just("missing"), missing_names),
    st.builds(default_provider, st.just("missing"), missing_names, driverless_types),
    st.builds(default_provider, st.just("driverless"), missing_names, driverless_types),
    missing_names.map(lambda name: mapped_provider(f"zm{name}")),
)


@pytest.fixture
def admin(client_for, admin_a):
    return client_for(admin_a)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lamp_faults=st.lists(faults, max_size=4), base_faults=st.lists(faults, max_size=2))
def test_unsatisfiable_references_never_fail_an_import_as_a_whole(admin, samples, lamp_faults, base_faults):
    catalog = copy.deepcopy(samples)
    injected = {"lamp": lamp_faults, "base": base_faults}
    for template in catalog["clustertemplates"]:
        for fault in injected.get(template["name"], []):
            fault.inject(catalog, template)

    # Each example imports into the same tenant; roll it back so that the next starts from an empty catalog.
    with transaction.atomic():
        response = admin.post(f"{API}/import", catalog, format="json")
        assert response.status_code == 200, response.content
        result = body(response)
        for kind, documents in catalog.items():
            assert {doc["name"] for doc in documents} <= set(result["created"][kind]), kind
        warned = {(w["name"], w["field"].split(".")[0] if w["field"].startswith("constraints") else w["field"])
                  for w in result["warnings"]}  # fmt: skip
        for name, injected_faults in injected.items():
            for fault in injected_faults:
                if fault.field != "providermap":
                    assert (name, fault.field) in warned, (name, fault.field, result["warnings"])
            launchable = body(admin.get(f"{API}/clustertemplates/{name}"))
            blocked = any(fault.blocks for fault in injected_faults)
            assert launchable["launchable"] is not blocked, (name, launchable["reasons"])
            assert bool(launchable["reasons"]) is blocked
        transaction.set_rollback(True)
