"""CatalogImportApi, CatalogExportApi and ``manage.py import_catalog``: the sample catalog imports, export and
import round-trip, an invalid import changes nothing and lists every problem, ``?replace=true``."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.secrets import ENCRYPTED
from templates_app.catalog_files import SAMPLES_DIR, read_catalog_dir
from templates_app.kinds import get_kind
from templates_app.models import CatalogVersion
from tests.api.helpers import API, KINDS, body, catalog_state, error_of, url, valid_doc, without_versions
from tests.conftest import sample

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SAMPLES_DIR = REPO_ROOT.parent / "shared" / "catalog-samples"


def catalog_dir(which: str) -> Path:
    """The bundled copy, or ../shared/catalog-samples beside the repository (always required)."""
    if which == "bundled":
        return SAMPLES_DIR
    if not SHARED_SAMPLES_DIR.is_dir():
        pytest.fail(f"{SHARED_SAMPLES_DIR} is missing: the project is checked out with ../shared beside it")
    return SHARED_SAMPLES_DIR


def export(client) -> dict[str, list[dict[str, Any]]]:
    response = client.get(f"{API}/export")
    assert response.status_code == 200, response.content
    return body(response)


def import_(client, data: Any, *, replace: bool = False):
    return client.post(f"{API}/import" + ("?replace=true" if replace else ""), data, format="json")


def names_by_kind(data: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {kind: sorted(item["name"] for item in items) for kind, items in data.items() if items}


@pytest.fixture
def admin(client_for, admin_a):
    return client_for(admin_a)


@pytest.fixture
def admin_of_b(client_for, admin_b):
    return client_for(admin_b)


# --- importing the sample catalog --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bundled", "shared"])
def test_import_of_the_sample_folder_by_api_creates_every_entity(admin, tenant_a, samples, which):
    data = samples if which == "bundled" else read_catalog_dir(catalog_dir(which))

    response = import_(admin, data)

    assert response.status_code == 200, response.content
    result = body(response)
    assert {kind: sorted(names) for kind, names in result["created"].items()} == names_by_kind(data)
    assert (result["updated"], result["unchanged"], result["deleted"]) == ({}, {}, {})
    assert names_by_kind(export(admin)) == names_by_kind(data)
    assert CatalogVersion.objects.filter(tenant=tenant_a).count() == sum(len(items) for items in data.values())


@pytest.mark.parametrize("which", ["bundled", "shared"])
def test_import_of_the_sample_folder_by_command_matches_the_api_import(admin, admin_of_b, tenant_a, which):
    directory = catalog_dir(which)
    import_(admin_of_b, read_catalog_dir(directory))

    out = io.StringIO()
    call_command("import_catalog", str(directory), tenant=tenant_a.name, stdout=out)

    assert without_versions(export(admin)) == without_versions(export(admin_of_b))
    assert f"imported {directory} into tenant {tenant_a.name}" in out.getvalue()
    assert "created services: apache-httpd, base" in out.getvalue()


def test_import_reports_the_samples_known_gaps_as_warnings(admin):
    """The samples name image types absent from the catalog and leave provider credentials empty."""
    warnings = body(import_(admin, read_catalog_dir(SAMPLES_DIR)))["warnings"]

    image_warnings = {(w["name"], w["field"]) for w in warnings if "'centos5'" in w["message"]}
    assert image_warnings == {("base", "compatibility.imagetypes")}
    assert all(w["severity"] == "warning" for w in warnings)
    empty = {w["name"]: w["message"] for w in warnings if w["kind"] == "provider"}
    assert sorted(empty) == ["aws-us-east-1", "openstack"]
    assert "api_password" in empty["aws-us-east-1"]
    assert empty["openstack"].startswith("ssh_key_resource is empty")


def test_reimporting_the_same_catalog_changes_nothing(admin, tenant_a, catalog_a):
    before = catalog_state(tenant_a)

    response = import_(admin, catalog_a)

    assert response.status_code == 200, response.content
    result = body(response)
    assert result["created"] == {} and result["updated"] == {}
    assert {kind: sorted(names) for kind, names in result["unchanged"].items()} == names_by_kind(catalog_a)
    assert catalog_state(tenant_a) == before


def test_import_updates_changed_entities_as_new_versions(admin, catalog_a):
    changed = copy.deepcopy(catalog_a)
    sample_base = next(item for item in changed["services"] if item["name"] == "base")
    sample_base["description"] = "new description"

    result = body(import_(admin, changed))

    assert result["updated"] == {"services": ["base"]}
    fetched = body(admin.get(url("services", "base")))
    assert (fetched["version"], fetched["description"]) == (2, "new description")


def test_import_writes_an_audit_event_per_written_entity(admin, admin_a, catalog_a):
    changed = copy.deepcopy(catalog_a)
    changed["services"].append(valid_doc("services"))

    import_(admin, changed)

    events = body(admin.get("/api/v2/audit-events/", {"action": "import", "entity_name": "redis"}))["results"]
    assert [(e["entity_kind"], e["entity_name"], e["actor"]) for e in events] == [("service", "redis", "alice")]
    unchanged = body(admin.get("/api/v2/audit-events/", {"action": "import", "entity_name": "lamp"}))["results"]
    assert [e["actor"] for e in unchanged] == [None]  # only the fixture's own import, by the system
    assert events[0]["summary"]["before"] is None
    assert events[0]["summary"]["after"]["name"] == "redis"


# --- export ---------------------------------------------------------------------------------------------------


def test_export_of_an_empty_tenant_lists_every_kind(admin, tenant_a):
    assert export(admin) == {kind: [] for kind in sorted(KINDS)}


def test_export_runs_a_constant_number_of_queries(admin, tenant_a, catalog_a, django_assert_max_num_queries):
    with CaptureQueriesContext(connection) as captured:
        export(admin)
    baseline = len(captured)
    extra = copy.deepcopy(catalog_a)
    extra["services"] += [valid_doc("services", f"bulk-{index}") for index in range(10)]
    extra["hardwaretypes"] += [valid_doc("hardwaretypes", f"bulk-{index}") for index in range(10)]
    import_(admin, extra)

    with django_assert_max_num_queries(baseline):
        exported = export(admin)

    assert len(exported["services"]) == len(catalog_a["services"]) + 10


def test_export_masks_provider_secrets(admin, catalog_a):
    exported = export(admin)
    providers = {item["name"]: item["provisioner"] for item in exported["providers"]}

    assert providers["openstack"]["api_password"] == ENCRYPTED
    assert providers["rackspace"]["api_user"] == ENCRYPTED
    assert providers["openstack"]["openstack_tenant"] == "TENANT"  # not sensitive
    assert providers["aws-us-east-1"]["api_password"] == ""  # an empty secret is shown as empty
    text = json.dumps(exported)
    assert "API_KEY" not in text and "PASSWORD" not in text
    assert body(admin.get(url("providers", "rackspace")))["provisioner"]["api_password"] == ENCRYPTED


def test_export_then_import_into_the_same_tenant_changes_nothing_and_keeps_secrets(admin, tenant_a, catalog_a):
    provider_model = get_kind("providers").model
    stored = {p.name: p.secret_data for p in provider_model.objects.filter(tenant=tenant_a)}
    before = catalog_state(tenant_a)

    response = import_(admin, export(admin))

    assert response.status_code == 200, response.content
    assert body(response)["created"] == {} and body(response)["updated"] == {}
    assert catalog_state(tenant_a) == before
    assert {p.name: p.secret_data for p in provider_model.objects.filter(tenant=tenant_a)} == stored


def test_export_imported_into_a_fresh_tenant_needs_the_masked_secrets(admin, admin_of_b, tenant_b, catalog_a):
    """Secrets never leave the tenant: the masked values must be given again, and nothing is half-imported."""
    before = catalog_state(tenant_b)

    response = import_(admin_of_b, export(admin))

    error = error_of(response, 400)
    masked = {(p["name"], p["field"]) for p in error["problems"] if "no stored secret to keep" in p["message"]}
    assert masked == {
        ("openstack", "provisioner.api_user"),
        ("openstack", "provisioner.api_password"),
        ("rackspace", "provisioner.api_user"),
        ("rackspace", "provisioner.api_password"),
    }
    # What follows from those (providers without their credentials, templates without their provider) is
    # only unsatisfiable now, so it does not add errors of its own.
    assert {(p["name"], p["field"]) for p in error["problems"]} == masked
    assert catalog_state(tenant_b) == before


def test_export_with_secrets_filled_in_round_trips_into_a_fresh_tenant(admin, admin_of_b, catalog_a):
    exported = export(admin)
    refilled = copy.deepcopy(exported)
    for provider in refilled["providers"]:
        original = sample(catalog_a, "providers", provider["name"])["provisioner"]
        for key, value in provider["provisioner"].items():
            if value == ENCRYPTED:
                provider["provisioner"][key] = original[key]

    response = import_(admin_of_b, refilled)

    assert response.status_code == 200, response.content
    assert without_versions(export(admin_of_b)) == without_versions(exported)
    exported_again = export(admin_of_b)
    assert import_(admin_of_b, exported_again).status_code == 200
    assert export(admin_of_b) == exported_again


# --- invalid imports --------------------------------------------------------------------------------------------


def test_invalid_import_lists_every_problem_of_every_entity_and_changes_nothing(admin, tenant_a, catalog_a):
    data = copy.deepcopy(catalog_a)
    by_name = {(kind, item["name"]): item for kind, items in data.items() for item in items}
    by_name[("services", "base")]["description"] = "a valid change that must not be applied"
    by_name[("services", "php")]["provisioner"]["actions"]["install"]["type"] = "saltstack"
    by_name[("hardwaretypes", "standard-small")]["providermap"]["rackspace"]["cost"] = "cheap"
    by_name[("providers", "openstack")]["providertype"] = "vmware"
    by_name[("clustertemplates", "lamp")]["defaults"]["services"].append("nosuch")
    data["imagetypes"].append("not-an-object")
    data["services"].append(valid_doc("services", "bad name"))
    data["widgets"] = []
    before = catalog_state(tenant_a)

    response = import_(admin, data)

    error = error_of(response, 400)
    found = {(p["kind"], p["name"], p["field"]) for p in error["problems"]}
    assert found == {
        ("service", "php", "provisioner.actions.install.type"),
        ("hardwaretype", "standard-small", "providermap.rackspace.cost"),
        ("imagetype", "imagetypes[2]", ""),
        ("service", "services[7]", "name"),  # an invalid name is pointed at by position
        ("catalog", "", "widgets"),
    }
    assert "service php: provisioner.actions.install.type" in error["fields"]
    # A type Loom does not know and a default service not in the catalog are not errors (issue 15): the
    # provider and the template would be stored as not launchable, were the rest valid.
    assert error["message"].startswith(f"{len(found)} problems")
    assert catalog_state(tenant_a) == before
    assert (
        body(admin.get(url("services", "base")))["description"] == sample(catalog_a, "services", "base")["description"]
    )


def test_import_naming_an_entity_twice_is_rejected(admin, tenant_a):
    before = catalog_state(tenant_a)
    data = {"services": [], "hardwaretypes": [valid_doc("hardwaretypes"), valid_doc("hardwaretypes", description="2")]}

    response = import_(admin, data)

    error = error_of(response, 400)
    assert [(p["name"], p["field"], p["message"]) for p in error["problems"]] == [
        ("tiny", "name", "appears twice in this import")
    ]
    assert catalog_state(tenant_a) == before


def test_import_validates_references_against_the_catalog_as_it_will_be(admin, tenant_a):
    """A template may refer to services created by the same import, in any order within the file."""
    data = {
        "clustertemplates": [valid_doc("clustertemplates")],
        "services": [valid_doc("services"), valid_doc("services", "base", dependencies={})],
        "providers": [{"name": "rackspace", "providertype": "fake"}],
        "hardwaretypes": [valid_doc("hardwaretypes", "standard-small")],
    }

    response = import_(admin, data)

    assert response.status_code == 200, response.content
    assert body(response)["created"]["clustertemplates"] == ["single"]


def test_import_as_a_plain_user_is_403(client_for, user_a, tenant_a, samples):
    before = catalog_state(tenant_a)

    response = import_(client_for(user_a), samples)

    assert error_of(response, 403)["code"] == "permission_denied"
    assert catalog_state(tenant_a) == before


def test_command_with_an_invalid_folder_lists_every_problem_and_changes_nothing(tmp_path, tenant_a, catalog_a):
    for kind in ("services", "hardwaretypes"):
        (tmp_path / kind).mkdir()
    (tmp_path / "services" / "broken.json").write_text('{"name": "broken",')
    (tmp_path / "services" / "unreadable.json").write_text("[")
    before = catalog_state(tenant_a)

    with pytest.raises(CommandError) as raised:
        call_command("import_catalog", str(tmp_path), tenant=tenant_a.name)

    assert "broken" in str(raised.value) and "unreadable" in str(raised.value)
    assert catalog_state(tenant_a) == before


def test_command_with_invalid_documents_lists_every_problem_and_changes_nothing(tmp_path, tenant_a, catalog_a):
    for kind in ("services", "hardwaretypes"):
        (tmp_path / kind).mkdir()
    bad_service = valid_doc("services", provisioner={"actions": {"install": {"type": "saltstack"}}})
    (tmp_path / "services" / "redis.json").write_text(json.dumps(bad_service))
    bad_hardware = valid_doc("hardwaretypes", providermap={"rackspace": {"cost": "1"}})
    (tmp_path / "hardwaretypes" / "tiny.json").write_text(json.dumps(bad_hardware))
    before = catalog_state(tenant_a)

    with pytest.raises(CommandError) as raised:
        call_command("import_catalog", str(tmp_path), tenant=tenant_a.name)

    message = str(raised.value)
    assert "nothing imported; 2 problem(s)" in message
    assert "service 'redis': provisioner.actions.install.type: unknown automator type 'saltstack'" in message
    assert "hardwaretype 'tiny': providermap.rackspace.flavor" in message
    assert catalog_state(tenant_a) == before


def test_command_for_an_unknown_tenant_fails(db):
    with pytest.raises(CommandError, match="tenant nosuch does not exist"):
        call_command("import_catalog", str(SAMPLES_DIR), tenant="nosuch")


# --- replace ------------------------------------------------------------------------------------------------------


def _without(data: dict[str, list[Any]], kind: str, name: str) -> dict[str, list[Any]]:
    return {**data, kind: [item for item in data[kind] if item["name"] != name]}


def test_replace_deletes_entities_absent_from_the_import(admin, tenant_a, catalog_a):
    data = _without(_without(catalog_a, "hardwaretypes", "standard-2xlarge"), "clustertemplates", "base")

    response = import_(admin, data, replace=True)

    assert response.status_code == 200, response.content
    assert body(response)["deleted"] == {"clustertemplates": ["base"], "hardwaretypes": ["standard-2xlarge"]}
    assert names_by_kind(export(admin)) == names_by_kind(data)
    assert admin.get(url("clustertemplates", "base")).status_code == 404
    deletions = body(admin.get("/api/v2/audit-events/", {"action": "import-delete"}))["results"]
    assert sorted(e["entity_name"] for e in deletions) == ["base", "standard-2xlarge"]


def test_without_replace_absent_entities_are_kept(admin, catalog_a):
    response = import_(admin, _without(catalog_a, "clustertemplates", "base"))

    assert body(response)["deleted"] == {}
    assert admin.get(url("clustertemplates", "base")).status_code == 200


@pytest.mark.parametrize(
    ("kind", "name", "field"),
    [
        ("services", "memcached", "compatibility.services"),
        ("providers", "rackspace", "defaults.provider"),
        ("imagetypes", "ubuntu12", "defaults.imagetype"),
    ],
)
def test_replace_refuses_to_remove_what_a_remaining_template_uses(admin, tenant_a, catalog_a, kind, name, field):
    before = catalog_state(tenant_a)

    response = import_(admin, _without(catalog_a, kind, name), replace=True)

    error = error_of(response, 400)
    on_lamp = [p for p in error["problems"] if p["name"] == "lamp" and p["field"] == field]
    assert on_lamp and f"'{name}'" in on_lamp[0]["message"], error["problems"]
    assert catalog_state(tenant_a) == before
