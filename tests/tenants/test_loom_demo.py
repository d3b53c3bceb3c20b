"""``manage.py loom_demo``: the embedded mode's bootstrap must be idempotent and print working logins."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from templates_app.catalog_files import SAMPLES_DIR, read_catalog_dir
from templates_app.kinds import all_kinds
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
    logins = {}
    for line in output.splitlines()[output.splitlines().index("Logins:") + 1 :]:
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

    expected = {key: len(items) for key, items in read_catalog_dir(SAMPLES_DIR).items()}
    assert {key: n for key, n in catalog_counts(tenant).items() if n} == expected

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
    assert Membership.objects.get(user=admin).role == Role.ADMIN


@pytest.mark.django_db
def test_passwords_from_environment_are_not_stored(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_DEMO_ADMIN_PASSWORD", "env-admin-pass-123")
    logins = printed_logins(run_demo())

    assert logins["admin"] == "env-admin-pass-123"
    assert get_user_model().objects.get(username="admin").check_password("env-admin-pass-123")
    stored = json.loads((data_dir / "demo-logins.json").read_text())
    assert "admin" not in stored and stored["demo"] == logins["demo"]
