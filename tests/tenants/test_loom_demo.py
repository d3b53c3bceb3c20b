"""``manage.py loom_demo``: the embedded mode's bootstrap must be idempotent and print working logins, and the
demo catalog it imports must preview to layouts that satisfy its own templates and that the engine can run
(every planned service action is a ``noop``). Running it for real: tests/loom_site/test_embedded_engine.py."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from clusters.services.preview import PreviewRequest, cluster_preview
from providers.resources import live_resources
from templates_app.catalog_files import SAMPLES_DIR, read_catalog_dir
from templates_app.kinds import all_kinds
from templates_app.models import ClusterTemplate
from templates_app.services import catalog_import
from tenants.management.commands.loom_demo import DEMO_CATALOG_DIR, demo_catalog_data
from tenants.models import Membership, Role, Tenant


@pytest.fixture
def data_dir(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings.DATA_DIR = tmp_path
    monkeypatch.delenv("LOOM_DEMO_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("LOOM_DEMO_USER_PASSWORD", raising=False)
    return tmp_path


def run_demo() -> str:
    out = io.StringIO()
    call_command("loom_demo", stdout=out)
    return out.getvalue()


def printed_logins(output: str) -> dict[str, str]:
    """The indented ``user / password`` lines under ``Logins:``."""
    logins = {}
    for line in output.splitlines()[output.splitlines().index("Logins:") + 1 :]:
        if not line.startswith("  "):
            break
        username, _slash, password = line.split()[:3]
        logins[username] = password
    return logins


def catalog_counts(tenant: Tenant) -> dict[str, int]:
    return {kind.key: kind.model.objects.filter(tenant=tenant).count() for kind in all_kinds()}


@pytest.mark.django_db
def test_creates_tenant_users_memberships_and_catalog(data_dir: Path) -> None:
    output = run_demo()

    tenant = Tenant.objects.get(name="demo")
    admin = get_user_model().objects.get(username="admin")
    demo = get_user_model().objects.get(username="demo")
    assert admin.is_superuser and admin.is_staff and admin.is_active
    assert not demo.is_superuser and not demo.is_staff and demo.is_active
    assert Membership.objects.get(user=admin, tenant=tenant).role == Role.ADMIN
    assert Membership.objects.get(user=demo, tenant=tenant).role == Role.USER

    expected = {key: len(items) for key, items in demo_catalog_data().items()}
    assert {key: n for key, n in catalog_counts(tenant).items() if n} == expected
    for directory in (SAMPLES_DIR, DEMO_CATALOG_DIR):  # both catalogs, every entity of each
        for key, items in read_catalog_dir(directory).items():
            kind = next(kind for kind in all_kinds() if kind.key == key)
            names = set(kind.model.objects.filter(tenant=tenant).values_list("name", flat=True))
            assert {item["name"] for item in items} <= names, (directory.name, key)

    logins = printed_logins(output)
    assert set(logins) == {"admin", "demo"}
    assert admin.check_password(logins["admin"])
    assert demo.check_password(logins["demo"])
    stored = data_dir / "demo-logins.json"
    assert json.loads(stored.read_text()) == logins
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


@pytest.mark.django_db
def test_rerun_is_idempotent_and_keeps_passwords(data_dir: Path) -> None:
    first = run_demo()
    tenant = Tenant.objects.get(name="demo")
    counts = catalog_counts(tenant)
    user_count = get_user_model().objects.count()

    second = run_demo()

    assert printed_logins(second) == printed_logins(first)
    assert "0 created, 0 updated" in second
    assert catalog_counts(tenant) == counts
    assert Tenant.objects.filter(name="demo").count() == 1
    assert get_user_model().objects.count() == user_count
    assert Membership.objects.filter(tenant=tenant).count() == 2


@pytest.mark.django_db
def test_rerun_restores_changed_password_and_flags(data_dir: Path) -> None:
    logins = printed_logins(run_demo())
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("something-else-entirely")
    admin.is_superuser = False
    admin.save()
    Membership.objects.filter(user=admin).update(role=Role.USER)

    run_demo()

    admin.refresh_from_db()
    assert admin.check_password(logins["admin"]) and admin.is_superuser
    assert set(Membership.objects.filter(user=admin).values_list("tenant__name", "role")) == {
        ("demo", Role.ADMIN),
        ("lab", Role.ADMIN),
    }


@pytest.mark.django_db
def test_passwords_from_environment_are_not_stored(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_DEMO_ADMIN_PASSWORD", "env-admin-pass-123")
    logins = printed_logins(run_demo())

    assert logins["admin"] == "env-admin-pass-123"
    assert get_user_model().objects.get(username="admin").check_password("env-admin-pass-123")
    stored = json.loads((data_dir / "demo-logins.json").read_text())
    assert "admin" not in stored and stored["demo"] == logins["demo"]


@pytest.mark.django_db
def test_rerun_restores_an_edited_demo_entity(data_dir: Path) -> None:
    """A re-run brings the demo catalog back to what ships (as a new version) and says so."""
    run_demo()
    tenant = Tenant.objects.get(name="demo")
    provider = json.loads((DEMO_CATALOG_DIR / "providers" / "demo-cloud.json").read_text())
    edited = {**provider, "provisioner": {**provider["provisioner"], "failure_rate": "0.5"}}
    catalog_import(tenant=tenant, user=None, data={"providers": [edited]})

    output = run_demo()

    assert "0 created, 1 updated" in output
    assert "restored to the shipped version: providers demo-cloud" in output
    kind = next(kind for kind in all_kinds() if kind.key == "providers")
    assert kind.model.objects.get(tenant=tenant, name="demo-cloud").document["provisioner"]["failure_rate"] == "0"


@pytest.mark.django_db
def test_a_demo_entity_named_like_a_sample_is_refused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two catalogs go in one import; an entity in both would silently replace the sample's."""
    clashing = tmp_path / "demo-catalog"
    (clashing / "services").mkdir(parents=True)
    sample = json.loads((SAMPLES_DIR / "services" / "base.json").read_text())
    (clashing / "services" / "base.json").write_text(json.dumps(sample))
    monkeypatch.setattr("tenants.management.commands.loom_demo.DEMO_CATALOG_DIR", clashing)

    with pytest.raises(CommandError, match=r"service 'base': .*base\.json: is also in the sample catalog"):
        run_demo()
    # Nothing of either catalog was imported: the import is all or nothing.
    assert set(catalog_counts(Tenant.objects.get(name="demo")).values()) == {0}


# --- the demo templates preview to layouts their own constraints accept, made only of runnable actions ------

DEMO_TEMPLATES = {doc["name"]: doc for doc in read_catalog_dir(DEMO_CATALOG_DIR)["clustertemplates"]}
DEMO_SERVICES = {doc["name"]: doc for doc in read_catalog_dir(DEMO_CATALOG_DIR)["services"]}
CREATE_ACTIONS = ("install", "configure", "initialize", "start")


def layout_problems(template: dict[str, Any], nodes: list[Any], size: int) -> list[str]:
    """Everything in ``nodes`` that the template's compatibility and constraints forbid, checked from the
    template document itself (not through the solver's own checker). Every requested service must be
    placed somewhere: the original's solver could silently leave one out (loom-reference §0, finding 1)."""
    problems = []
    constraints = template.get("constraints", {})
    compatibility = template["compatibility"]
    requested = set(template["defaults"]["services"])
    bounds = constraints.get("size", {})
    if len(nodes) != size or not bounds.get("min", 1) <= size <= bounds.get("max", size):
        problems.append(f"{len(nodes)} nodes for size {size} (bounds {bounds})")
    placed = set().union(*(node.services for node in nodes))
    if placed != requested:
        problems.append(f"services placed {sorted(placed)} != requested {sorted(requested)}")
    for node in nodes:
        if node.hardware not in compatibility["hardwaretypes"] or node.image not in compatibility["imagetypes"]:
            problems.append(f"node {node.number}: {node.hardware}/{node.image} not compatible")
        for group in constraints.get("layout", {}).get("cantcoexist", []):
            if set(group) <= node.services:
                problems.append(f"node {node.number} has all of cantcoexist {group}")
        for group in constraints.get("layout", {}).get("mustcoexist", []):
            present = set(group) & requested
            if node.services & present and not present <= node.services:
                problems.append(f"node {node.number} has part of mustcoexist {group}")
    for service, rule in constraints.get("services", {}).items():
        holders = [node for node in nodes if service in node.services]
        quantities = rule.get("quantities", {})
        if not quantities.get("min", 0) <= len(holders) <= quantities.get("max", len(holders)):
            problems.append(f"{service} on {len(holders)} nodes, quantities {quantities}")
        for node in holders:
            if rule.get("hardwaretypes") and node.hardware not in rule["hardwaretypes"]:
                problems.append(f"{service} on node {node.number} with hardware {node.hardware}")
    return problems


@pytest.mark.django_db
@pytest.mark.parametrize("template", sorted(DEMO_TEMPLATES))
def test_demo_templates_preview_to_valid_runnable_layouts(data_dir: Path, template: str) -> None:
    run_demo()
    tenant = Tenant.objects.get(name="demo")
    user = get_user_model().objects.get(username="demo")  # a plain member launches clusters
    document = DEMO_TEMPLATES[template]
    smallest = document["constraints"]["size"]["min"]

    for size in sorted({smallest, 5, 10}):
        preview = cluster_preview(
            user=user, tenant=tenant, request=PreviewRequest(name=f"try-{size}", template=template, size=size)
        )

        assert preview.provider == "demo-cloud"
        assert layout_problems(document, preview.nodes, size) == [], (template, size)
        total, unknown = preview.hourly_cost()
        assert total and not unknown
        # The plan runs on what the worker has: every node is made on the fake provider, and each service's
        # create-time actions are planned exactly as the service defines them, all of them noop.
        tasks = [task for task in preview.plan.tasks if not task.is_join]
        for node in preview.nodes:
            mine = [task for task in tasks if task.node_id == node.node_id]
            assert {str(task.action) for task in mine if not task.service} >= {"create", "confirm"}
            for service in node.services:
                actions = DEMO_SERVICES[service]["provisioner"]["actions"]
                planned = {str(task.action) for task in mine if task.service == service}
                assert planned == {action for action in CREATE_ACTIONS if action in actions}, (service, node)
                assert {actions[action]["type"] for action in planned} == {"noop"}


def test_every_demo_entity_is_named_demo_something() -> None:
    """So that importing another catalog into the demo tenant (the samples, catalogs/starter with its own
    ``nginx`` and ``base``) never replaces a demo entity with one the fake provider cannot run."""
    names = [item["name"] for items in read_catalog_dir(DEMO_CATALOG_DIR).values() for item in items]
    assert names and [name for name in names if not name.startswith("demo-")] == []


@pytest.mark.django_db
def test_the_lab_tenant_gets_the_starter_catalog_with_its_scripts_live(data_dir: Path) -> None:
    """The starter catalog runs on lab hosts (real sshd, real nginx/haproxy/redis): it goes to tenant ``lab``,
    apart from the sample catalog whose ``base`` and ``haproxy`` are other services, with admin as its admin."""
    run_demo()
    run_demo()  # idempotent: nothing uploaded twice
    lab = Tenant.objects.get(name="lab")
    assert set(Membership.objects.filter(tenant=lab).values_list("user__username", "role")) == {("admin", Role.ADMIN)}
    templates = set(ClusterTemplate.objects.filter(tenant=lab).values_list("name", flat=True))
    assert {"web-cluster", "web-cluster-ansible", "web-cluster-puppet"} <= templates
    scripts = {r.name for r in live_resources(tenant_id=lab.pk, plugin_kind="automatortypes", plugin="shell")}
    assert scripts == {"base.sh", "nginx.sh", "haproxy.sh", "redis.sh"}
