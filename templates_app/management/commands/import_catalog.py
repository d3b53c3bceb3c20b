"""``manage.py import_catalog DIR --tenant NAME``: import a folder laid out like catalog-samples/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.resources import resources_import_dir
from templates_app.catalog_files import read_catalog_dir
from templates_app.problems import CatalogValidationError
from templates_app.services import catalog_import
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Validate and import a Loom-format catalog folder into a tenant, all or nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--tenant", required=True, help="Tenant name")
        parser.add_argument("--replace", action="store_true", help="Delete entities absent from the folder")
        parser.add_argument(
            "--resources",
            action="store_true",
            help="Also upload, stage and activate the plugin resources in DIR/resources/<pt>/<plugin>/<rt>/<name>",
        )

    def handle(
        self, *args: Any, directory: Path, tenant: str, replace: bool, resources: bool = False, **options: Any
    ) -> None:
        target = Tenant.objects.filter(name=tenant).first()
        if target is None:
            raise CommandError(f"tenant {tenant} does not exist")
        try:
            result = catalog_import(tenant=target, user=None, data=read_catalog_dir(directory), replace=replace)
        except CatalogValidationError as error:
            lines = "\n".join(f"  - {problem}" for problem in error.problems)
            raise CommandError(f"nothing imported; {len(error.problems)} problem(s):\n{lines}") from error
        for label, section in (("created", result.created), ("updated", result.updated),
                               ("unchanged", result.unchanged), ("deleted", result.deleted)):  # fmt: skip
            for kind, names in sorted(section.items()):
                self.stdout.write(f"{label} {kind}: {', '.join(names)}")
        for warning in result.warnings:
            self.stdout.write(self.style.WARNING(f"warning: {warning}"))
        if resources:
            report = resources_import_dir(tenant=target, user=None, directory=directory / "resources")
            for label, names in report.items():
                if names:
                    self.stdout.write(f"{label} resources: {', '.join(names)}")
        self.stdout.write(self.style.SUCCESS(f"imported {directory} into tenant {tenant}"))
