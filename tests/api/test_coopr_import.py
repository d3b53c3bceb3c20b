"""A catalog exported from Coopr imports as it is (issue 15): references the catalog cannot satisfy now are
warnings, the entities they touch are stored as not launchable with the reasons, and the reasons are computed
from the catalog as it is now (adding the missing service makes the template launchable, untouched)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from providers.drivers.base import DRIVERS
from templates_app.plugin_types import registry
from tests.api.helpers import API, body
from tests.conftest import sample

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(client_for, admin_a):
    return client_for(admin_a)


def coopr_catalog(samples: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The sample catalog plus each case the original accepted at import time and refused only at create."""
    data = copy.deepcopy(samples)
    data["providers"].append({
        "name": "joyent-east", "description": "Joyent", "providertype": "joyent",
        "provisioner": {"joyent_username": "ops", "joyent_password": "s3cret-7", "joyent_version": "~7.0"},
    })  # fmt: skip
    lamp = sample(data, "clustertemplates", "lamp")
    wants_missing = copy.deepcopy(lamp) | {"name": "lamp-solr"}
    wants_missing["compatibility"]["services"].append("solr")
    wants_missing["defaults"]["services"].append("solr")
    off_image = copy.deepcopy(lamp) | {"name": "lamp-centos"}
    off_image["compatibility"]["imagetypes"] = ["ubuntu12"]
    off_image["defaults"]["imagetype"] = "centos6"
    compat_only = copy.deepcopy(lamp) | {"name": "lamp-maybe"}
    compat_only["compatibility"]["services"].append("varnish")
    data["clustertemplates"] += [wants_missing, off_image, compat_only]
    return data


def launch(client, kind: str, name: str) -> tuple[bool, list[str]]:
    data = body(client.get(f"{API}/{kind}/{name}"))
    return data["launchable"], data["reasons"]


def test_a_coopr_catalog_imports_in_one_call_with_warnings(admin, samples):
    response = admin.post(f"{API}/import", coopr_catalog(samples), format="json")

    assert response.status_code == 200, response.content
    result = body(response)
    assert {"joyent-east"} <= set(result["created"]["providers"])
    assert {"lamp-solr", "lamp-centos", "lamp-maybe"} <= set(result["created"]["clustertemplates"])
    warned = {(w["name"], w["field"]) for w in result["warnings"]}
    assert {("lamp-solr", "compatibility.services"), ("lamp-solr", "defaults.services"),
            ("lamp-centos", "defaults.imagetype"), ("lamp-maybe", "compatibility.services")} <= warned  # fmt: skip
    blocking = {(w["name"], w["field"]) for w in result["warnings"] if w.get("blocksLaunch")}
    assert ("lamp-maybe", "compatibility.services") not in blocking
    assert {("lamp-solr", "defaults.services"), ("lamp-centos", "defaults.imagetype")} <= blocking

    launchable, reasons = launch(admin, "clustertemplates", "lamp-solr")
    assert not launchable and "defaults.services: default service 'solr' is not in the catalog" in reasons
    launchable, reasons = launch(admin, "clustertemplates", "lamp-centos")
    assert (
        not launchable
        and "defaults.imagetype: default image type 'centos6' is not in compatibility.imagetypes" in reasons
    )
    assert launch(admin, "providers", "joyent-east")[0] is False
    assert "has no driver in Loom" in launch(admin, "providers", "joyent-east")[1][0]


def test_the_reasons_follow_the_catalog_as_it_is_now(admin, samples):
    admin.post(f"{API}/import", coopr_catalog(samples), format="json")
    solr = {"name": "solr", "description": "Solr", "dependencies": {}, "provisioner": {"actions": {}}}
    assert admin.post(f"{API}/services", solr, format="json").status_code == 201

    reasons = launch(admin, "clustertemplates", "lamp-solr")[1]
    assert not any("solr" in reason for reason in reasons), reasons  # the template itself was not touched


def test_sample_credentials_keep_a_provider_and_its_templates_from_launching(admin, catalog_a):
    launchable, reasons = launch(admin, "providers", "rackspace")
    assert not launchable and reasons == ["api_password, api_user hold sample values, not credentials"]
    launchable, reasons = launch(admin, "clustertemplates", "lamp")
    assert not launchable and any(r.startswith("defaults.provider: provider rackspace: ") for r in reasons)
    listed = {item["name"]: item["launchable"] for item in body(admin.get(f"{API}/clustertemplates"))["results"]}
    assert listed == {"base": False, "lamp": False}


def test_a_provider_without_a_driver_exports_its_fields_unchanged_and_secrets_masked(admin, samples):
    admin.post(f"{API}/import", coopr_catalog(samples), format="json")
    exported = {p["name"]: p for p in body(admin.get(f"{API}/export"))["providers"]}["joyent-east"]
    assert exported["providertype"] == "joyent"
    assert exported["provisioner"] == {"joyent_password": "$encrypted$", "joyent_username": "ops",
                                       "joyent_version": "~7.0"}  # fmt: skip
    assert "launchable" not in exported, "the export is the Coopr format, without Loom's read-only flags"
    # Written back as it was read (flags included), nothing changes and nothing is refused.
    read = body(admin.get(f"{API}/providers/joyent-east"))
    again = admin.put(f"{API}/providers/joyent-east", read, format="json")
    assert again.status_code == 200, again.content
    assert body(again)["version"] == read["version"]


def test_provider_types_say_whether_loom_has_a_driver(admin):
    listed = {item["name"]: item["driver"] for item in body(admin.get(f"{API}/plugins/providertypes"))}
    assert listed["joyent"] is False and listed["aws"] is True
    assert listed == {plugin.name: plugin.name in DRIVERS for plugin in registry.all("provider")}


def test_a_masked_secret_of_an_unknown_type_without_a_stored_one_is_refused(admin, tenant_a):
    """An export carries ``$encrypted$``; into a tenant that never held the secret it must be given again,
    for fields Loom only guesses are secret as for declared ones, and never stored as the literal."""
    doc = {"name": "vm", "providertype": "vmware", "provisioner": {"vsphere_password": "$encrypted$"}}

    response = admin.post(f"{API}/providers", doc, format="json")

    assert response.status_code == 400
    assert body(response)["error"]["fields"]["provisioner.vsphere_password"] == [
        "no stored secret to keep: give the actual value"]  # fmt: skip
