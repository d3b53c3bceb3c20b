"""Validation problems: every message names the entity, the field and what is wrong.

Validators collect problems instead of raising at the first one, so an import or a save reports everything
that needs fixing in one go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenants.errors import ApplicationError


@dataclass(frozen=True)
class Problem:
    kind: str
    name: str
    field: str
    message: str
    severity: str = "error"
    blocks_launch: bool = False
    """A warning about a reference the catalog cannot satisfy *now* (a missing service, a provider type with
    no driver): the entity is stored, but is not launchable until the catalog changes."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "name": self.name, "field": self.field, "message": self.message}
        if self.severity != "error":
            data["severity"] = self.severity
        if self.blocks_launch:
            data["blocksLaunch"] = True
        return data

    def __str__(self) -> str:
        where = f"{self.kind} {self.name!r}" if self.name else self.kind
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class Problems:
    """A collector bound to one entity."""

    kind: str
    name: str = ""
    items: list[Problem] = field(default_factory=list)

    def error(self, field_path: str, message: str) -> None:
        self.items.append(Problem(self.kind, self.name, field_path, message))

    def warning(self, field_path: str, message: str) -> None:
        self.items.append(Problem(self.kind, self.name, field_path, message, severity="warning"))

    def unlaunchable(self, field_path: str, message: str) -> None:
        """A warning that keeps the entity from launching until the catalog satisfies it."""
        self.items.append(Problem(self.kind, self.name, field_path, message, severity="warning", blocks_launch=True))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    @property
    def launch_blockers(self) -> list[Problem]:
        return [p for p in self.items if p.blocks_launch]


class CatalogValidationError(ApplicationError):
    code = "invalid"
    status = 400

    def __init__(self, problems: list[Problem], message: str | None = None) -> None:
        errors = [p for p in problems if p.severity == "error"]
        self.problems = errors
        single_entity = len({(p.kind, p.name) for p in errors}) <= 1
        fields: dict[str, list[str]] = {}
        for problem in errors:
            key = problem.field or "non_field_errors"
            if not single_entity:
                key = f"{problem.kind} {problem.name}: {key}" if problem.name else f"{problem.kind}: {key}"
            fields.setdefault(key, []).append(problem.message)
        summary = message or (str(errors[0]) if len(errors) == 1 else f"{len(errors)} problems; first: {errors[0]}")
        super().__init__(summary, fields=fields, extra={"problems": [p.to_json() for p in errors]})
