"""``manage.py loom_demo``: the embedded mode's bootstrap, safe to run again and again.

Makes tenant ``demo``, a superuser ``admin`` (also an admin member of ``demo``) and a plain user ``demo``
(a user member of ``demo``), and imports two bundled catalogs into the tenant: the sample catalog (the
original's ``lamp`` and ``base`` templates, for import, export and validation; they name real clouds and
chef-solo, so they preview but cannot run here) and the demo catalog (``demo-web``, ``demo-hadoop`` on the
``fake`` provider ``demo-cloud`` with ``noop`` services), which really provisions in the embedded mode, so a
new user can launch a cluster and watch it progress. Both go in one import: validated as a whole and
applied all or nothing; a re-run reports everything unchanged, or brings edited entities back to the
shipped state (as a new version). Passwords come from
``LOOM_DEMO_ADMIN_PASSWORD`` / ``LOOM_DEMO_USER_PASSWORD``; otherwise they are generated once and kept in
``<LOOM_DATA_DIR>/demo-logins.json`` (mode 0600), so every run prints the same logins. A run restores the
printed password if it was changed since, so what is printed always works.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from providers.resources import resources_import_dir
from templates_app.catalog_files import SAMPLES_DIR, read_catalog_dir
from templates_app.kinds import all_kinds
from templates_app.problems import CatalogValidationError, Problem
from templates_app.services import catalog_import
from tenants.models import Membership, Role, Tenant
from tenants.services import tenant_save

TENANT = "demo"
LAB_TENANT = "lab"
"""A second tenant holding the starter catalog (catalogs/starter): services that really run, on lab hosts of
this machine (the ``local`` provider, which needs root). Separate from ``demo`` because the starter's
``base`` and ``haproxy`` are not the sample catalog's; only ``admin`` belongs to it."""
STARTER_DIR = Path(settings.BASE_DIR) / "catalogs" / "starter"
# username -> (password environment variable, superuser?, role in the demo tenant)
ACCOUNTS = {
    "admin": ("LOOM_DEMO_ADMIN_PASSWORD", True, Role.ADMIN),
    "demo": ("LOOM_DEMO_USER_PASSWORD", False, Role.USER),
}
LOGINS_FILE = "demo-logins.json"
# The runnable demo catalog, next to the sample catalog (its names do not clash with the samples').
DEMO_CATALOG_DIR = SAMPLES_DIR.parent / "demo-catalog"


def demo_catalog_data() -> dict[str, list[Any]]:
    """The sample and the demo catalog as one import payload (one list per kind, samples first).

    Raises CatalogValidationError when a file cannot be read, or when the two catalogs name the same entity
    (one would silently replace the other)."""
    data = read_catalog_dir(SAMPLES_DIR)
    singular = {kind.key: kind.singular for kind in all_kinds()}
    problems: list[Problem] = []
    for key, items in read_catalog_dir(DEMO_CATALOG_DIR).items():
        names = {item.get("name") for item in data.get(key, []) if isinstance(item, dict)}
        for item in items:
            if isinstance(item, dict) and item.get("name") in names:
                path = str(DEMO_CATALOG_DIR / key / f"{item['name']}.json")
                problems.append(Problem(singular[key], str(item["name"]), path, "is also in the sample catalog"))
        data.setdefault(key, []).extend(items)
    if problems:
        raise CatalogValidationError(problems)
    return data


def _stored_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read {path}: {error}; delete it to generate new demo passwords") from error
    return {k: v for k, v in data.items() if isinstance(v, str) and v} if isinstance(data, dict) else {}


def _write_private(path: Path, data: dict[str, str]) -> None:
    """Write ``data`` as JSON readable by the owner only, replacing the file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def demo_passwords() -> dict[str, str]:
    """Each demo account's password: its environment variable, else the stored (or a new) generated one."""
    path = Path(settings.DATA_DIR) / LOGINS_FILE
    stored = _stored_passwords(path)
    generated = dict(stored)
    passwords = {}
    for username, (variable, _superuser, _role) in ACCOUNTS.items():
        from_env = os.environ.get(variable, "")
        if from_env:
            passwords[username] = from_env
            continue
        generated.setdefault(username, secrets.token_urlsafe(12))
        passwords[username] = generated[username]
    if generated != stored:
        _write_private(path, generated)
    return passwords


class Command(BaseCommand):
    help = "Create (or refresh) the demo tenant, its admin and user, and import the sample and demo catalogs."

    def handle(self, *args: Any, **options: Any) -> None:
        passwords = demo_passwords()
        for username, password in passwords.items():
            if os.environ.get(ACCOUNTS[username][0]):
                try:
                    validate_password(password)
                except ValidationError as error:
                    self.stdout.write(self.style.WARNING(f"warning: weak password for {username}: {error.messages}"))
        with transaction.atomic():
            tenant = Tenant.objects.filter(name=TENANT).first()
            if tenant is None:
                # actor=None: a system call, there is no user yet to act as.
                tenant = tenant_save(actor=None, name=TENANT, create=True, description="Demo tenant (loom_demo)")
                self.stdout.write(f"created tenant {TENANT}")
            for username, (_variable, superuser, role) in ACCOUNTS.items():
                self._ensure_account(tenant, username, passwords[username], superuser=superuser, role=role)
        try:
            result = catalog_import(tenant=tenant, user=None, data=demo_catalog_data())
        except CatalogValidationError as error:
            lines = "\n".join(f"  - {problem}" for problem in error.problems)
            raise CommandError(
                f"sample and demo catalogs not imported; {len(error.problems)} problem(s):\n{lines}"
            ) from error
        sections = {"created": result.created, "updated": result.updated, "unchanged": result.unchanged}
        counts = ", ".join(f"{sum(map(len, section.values()))} {label}" for label, section in sections.items())
        self.stdout.write(f"sample and demo catalogs imported into tenant {TENANT}: {counts}")
        for kind, names in sorted(result.updated.items()):
            self.stdout.write(f"  restored to the shipped version: {kind} {', '.join(sorted(names))}")
        self._import_starter(passwords)
        self.stdout.write("Logins:")
        self.stdout.write(f"  admin / {passwords['admin']}   (superuser; admin of tenant {TENANT})")
        self.stdout.write(f"  demo / {passwords['demo']}   (user of tenant {TENANT})")
        self.stdout.write(
            "Try it: create a cluster from template demo-web or demo-hadoop (3-10 nodes); it runs on the simulated"
            " provider demo-cloud and is active in about 20-30 s."
        )

    def _import_starter(self, passwords: dict[str, str]) -> None:
        """The ``lab`` tenant with the starter catalog and its scripts, ``admin`` as its admin."""
        with transaction.atomic():
            lab = Tenant.objects.filter(name=LAB_TENANT).first()
            if lab is None:
                description = "Real clusters on lab hosts of this machine (starter catalog; needs root)"
                lab = tenant_save(actor=None, name=LAB_TENANT, create=True, description=description)
            if not lab.operator_providers:  # its lab hosts run on this machine: the operator's own choice
                Tenant.objects.filter(pk=lab.pk).update(operator_providers=True)
                lab.operator_providers = True
                self.stdout.write(f"created tenant {LAB_TENANT}")
            self._ensure_account(lab, "admin", passwords["admin"], superuser=True, role=Role.ADMIN)
        try:
            catalog_import(tenant=lab, user=None, data=read_catalog_dir(STARTER_DIR))
        except CatalogValidationError as error:
            lines = "\n".join(f"  - {problem}" for problem in error.problems)
            raise CommandError(f"starter catalog not imported; {len(error.problems)} problem(s):\n{lines}") from error
        report = resources_import_dir(tenant=lab, user=None, directory=STARTER_DIR / "resources")
        self.stdout.write(
            f"starter catalog imported into tenant {LAB_TENANT} ({len(report['uploaded'])} resource(s) uploaded, "
            f"{len(report['unchanged'])} unchanged)"
        )
        if os.geteuid() != 0:
            self.stdout.write("  (the lab provider makes network namespaces: its clusters need Loom to run as root)")

    def _ensure_account(self, tenant: Tenant, username: str, password: str, *, superuser: bool, role: str) -> None:
        user, created = get_user_model().objects.get_or_create(username=username)
        changed = created
        for attribute, value in (("is_active", True), ("is_superuser", superuser), ("is_staff", superuser)):
            if getattr(user, attribute) != value:
                setattr(user, attribute, value)
                changed = True
        if not user.check_password(password):
            user.set_password(password)
            changed = True
        if changed:
            user.save()
        # membership_save needs an admin actor to authorise it; at bootstrap there is none yet (the admin
        # is being made right here), so the membership row is written directly.
        membership, made = Membership.objects.get_or_create(user=user, tenant=tenant, defaults={"role": role})
        if not made and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        if created:
            self.stdout.write(f"created user {username}")
        elif changed or made:
            self.stdout.write(f"updated user {username}")
