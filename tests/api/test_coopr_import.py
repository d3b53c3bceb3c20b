"""A catalog exported from Coopr imports as it is (issue 15): references the catalog cannot satisfy now are
warnings, the entities they touch are stored as not launchable with the reasons, and the reasons are computed
from the catalog as it is now (adding the missing service makes the template launchable, untouched)."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from django.core.management import call_command

from providers.drivers.base import DRIVERS
from templates_app.plugin_types import registry
from tests.api.coopr_rules import violations
from tests.api.helpers import API, body
from tests.catalogs.test_starter_catalog import STARTER
from tests.conftest import sample
from tests.factories import enable_operator_providers

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


def test_sample_credentials_keep_a_provider_and_its_templates_from_launching(admin, sample_catalog):
    admin.post(f"{API}/import", sample_catalog, format="json")  # as shipped: USERNAME / API_KEY
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


# --- preview and create refuse what cannot launch, naming the reason ----------------------------------------

PREVIEW, CLUSTERS = f"{API}/clusters/preview", f"{API}/clusters"


def create_body(template: str, **changes: Any) -> dict[str, Any]:
    return {"name": "moved", "clusterTemplate": template, "numMachines": 3, **changes}


@pytest.fixture
def imported(admin, samples):
    response = admin.post(f"{API}/import", coopr_catalog(samples), format="json")
    assert response.status_code == 200, response.content
    return admin


@pytest.mark.parametrize(
    ("template", "says"),
    [("lamp-solr", "defaults.services: default service 'solr' is not in the catalog"),
     ("lamp-centos", "defaults.imagetype: default image type 'centos6' is not in compatibility.imagetypes")],
)  # fmt: skip
@pytest.mark.parametrize("url", [PREVIEW, CLUSTERS])
def test_preview_and_create_of_a_template_that_cannot_launch_are_400_naming_the_reason(imported, url, template, says):
    from clusters.models import Cluster

    response = imported.post(url, create_body(template), format="json")

    assert response.status_code == 400, response.content
    error = body(response)["error"]
    assert says in error["fields"]["clusterTemplate"] and says in error["message"]
    assert not Cluster.objects.exists()


@pytest.mark.parametrize("url", [PREVIEW, CLUSTERS])
def test_preview_and_create_on_a_provider_without_a_driver_are_400_naming_it(imported, url):
    response = imported.post(url, create_body("lamp", provider="joyent-east"), format="json")

    assert response.status_code == 400, response.content
    [reason] = body(response)["error"]["fields"]["provider"]
    assert reason.startswith("provider type joyent has no driver in Loom")


def test_a_template_whose_default_provider_has_sample_credentials_is_refused_until_they_are_set(
    admin, sample_catalog, samples
):
    admin.post(f"{API}/import", sample_catalog, format="json")  # rackspace as shipped: USERNAME / API_KEY
    refused = admin.post(PREVIEW, create_body("lamp"), format="json")
    assert refused.status_code == 400
    assert body(refused)["error"]["fields"]["clusterTemplate"] == [
        "defaults.provider: provider rackspace: api_password, api_user hold sample values, not credentials"
    ]
    rackspace = sample(samples, "providers", "rackspace")  # the test fixture's credentials
    assert admin.put(f"{API}/providers/rackspace", rackspace, format="json").status_code == 200
    assert admin.post(PREVIEW, create_body("lamp"), format="json").status_code == 200


def test_a_request_that_overrides_the_unusable_default_is_not_refused_for_it(imported):
    """lamp-centos's default image is outside its compatibility; a create naming ubuntu12 does not use it."""
    response = imported.post(PREVIEW, create_body("lamp-centos", imagetype="ubuntu12"), format="json")
    assert response.status_code == 200, response.content
    assert {role["imagetype"] for role in body(response)["layout"]["roles"]} == {"ubuntu12"}


@pytest.mark.parametrize("template", ["lamp", "lamp-maybe"])
def test_the_launchable_templates_of_the_imported_catalog_launch(imported, template):
    """lamp-maybe lists a service the catalog lacks in its compatibility only: a warning, not a blocker."""
    from clusters.models import Cluster

    assert launch(imported, "clustertemplates", template) == (True, [])
    assert imported.post(PREVIEW, create_body(template), format="json").status_code == 200
    created = imported.post(CLUSTERS, create_body(template), format="json")
    assert created.status_code == 202, created.content
    assert Cluster.objects.get(name="moved").template_name == template


def test_an_exported_coopr_catalog_reimports_into_an_empty_tenant_to_the_same_documents(
    admin, samples, tenant_b, admin_b, client_for
):
    """Round trip: what Loom writes in the Coopr format reads back to the same documents, secrets aside
    (masked as ``$encrypted$`` on export, so they are given again in the new tenant)."""
    admin.post(f"{API}/import", coopr_catalog(samples), format="json")
    exported = body(admin.get(f"{API}/export"))
    secrets = {"joyent-east": {"joyent_password": "s3cret-7"}, "rackspace": {"api_password": "rk-0f3a9c-tests"}}
    again = copy.deepcopy(exported)
    for provider in again["providers"]:
        for key, value in provider["provisioner"].items():
            if value == "$encrypted$":
                provider["provisioner"][key] = secrets.get(provider["name"], {}).get(key, "given-again-1")
    other = client_for(admin_b)
    response = other.post(f"{API}/import", again, format="json")
    assert response.status_code == 200, response.content
    assert body(other.get(f"{API}/export")) == exported
    assert violations(exported) == []  # the original's own field rules, and none of Loom's additions


def test_loom_s_own_starter_catalog_exports_in_the_original_s_shape(tenant_a, admin_a, client_for):
    """A catalog written for Loom (shell automators, scripts as plugin resources) exports within the
    original's rules too: nothing Loom-only appears unless the catalog asked for it (next test) — here the
    health ``check`` actions of nginx, haproxy and redis, the only Loom addition the starter catalog uses."""
    enable_operator_providers(tenant_a)
    call_command("import_catalog", str(STARTER), "--tenant", tenant_a.name, "--resources", stdout=io.StringIO())
    exported = body(client_for(admin_a).get(f"{API}/export"))
    assert {kind for kind, docs in exported.items() if docs} >= {"providers", "services", "clustertemplates"}
    assert violations(exported, extensions={"provisioner.actions.check"}) == []
    checked = sorted(doc["name"] for doc in exported["services"] if "check" in doc["provisioner"]["actions"])
    assert checked == ["haproxy", "nginx", "redis"]


def test_loom_s_additions_are_written_only_when_set_and_are_the_only_departure(admin, samples):
    """Loom's per-template task settings are keys the original's codec skips: they appear in the export
    only in the template that set them, and nothing else departs from the original's rules."""
    lamp = next(doc for doc in samples["clustertemplates"] if doc["name"] == "lamp")
    lamp["administration"] |= {"maxattempts": 5, "tasktimeout": "10m"}
    assert admin.post(f"{API}/import", samples, format="json").status_code == 200
    exported = body(admin.get(f"{API}/export"))
    assert sorted(violations(exported)) == [
        "clustertemplates/lamp: administration.maxattempts: is not a key the original's codec reads",
        "clustertemplates/lamp: administration.tasktimeout: is not a key the original's codec reads",
    ]
    additions = {"administration.maxattempts", "administration.tasktimeout"}
    assert violations(exported, extensions=additions) == []


BROKEN = [
    ("services", {"provisioner": {"actions": {"INSTALL": {"type": "shell", "fields": {}}}}},
     "provisioner.actions.INSTALL: is not a key"),
    ("services", {"provisioner": {"actions": {"start": {"type": "Shell", "fields": {}}}}}, "not lower-case"),
    ("services", {"provisioner": {"actions": {"start": {"fields": {}}}}}, "start.type: must be a non-empty"),
    ("services", {"provisioner": {"actions": {"start": {"type": "shell", "fields": {"n": 1}}}}}, "to strings"),
    ("services", {"dependencies": {"runtime": {"needs": ["base"]}}}, "dependencies.runtime.needs: is not a key"),
    ("services", {"links": [{"label": "ui"}]}, "links[0].url: must be a non-empty string"),
    ("clustertemplates", {"constraints": {"services": {"web": {"hardwaretypes": []}}}},
     "constraints.services.web.quantities: is required"),
    ("clustertemplates", {"constraints": {"size": {"min": 0}}}, "constraints.size.min: must be a whole number >= 1"),
    ("clustertemplates", {"administration": {"leaseduration": {"initial": "2w"}}}, "Unsupported relative time"),
    ("clustertemplates", {"administration": {"maxattempts": 3}}, "administration.maxattempts: is not a key"),
    ("clustertemplates", {"defaults": {"dnsSuffix": "-bad-.x"}}, "is an invalid DNS suffix"),
    ("clustertemplates", {"immutable": True}, "immutable: is not a key"),
    ("partialtemplates", {"extends": {"name": "x"}}, "extends: is not a key"),
    ("hardwaretypes", {"providermap": {"aws": {"flavor": 2}}}, "providermap.aws: must map field names to strings"),
    ("providers", {"providertype": ""}, "providertype: must be a non-empty string"),
    ("imagetypes", {"name": "centos 6"}, "invalid name"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "change", "says"), BROKEN, ids=[says for _, _, says in BROKEN])
def test_the_field_rules_catch_what_the_original_would_refuse_or_misread(samples, kind, change, says):
    """The checker the round trip relies on can fail: each break of a rule is reported on its path."""
    assert violations(samples) == []
    doc = (samples.get(kind) or [{"name": "p"}])[0] | change
    assert [line for line in violations({kind: [doc]}) if says in line], violations({kind: [doc]})
