"""Reading a catalog laid out as folders of JSON files (``providers/``, ``services/``, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .kinds import all_kinds
from .problems import CatalogValidationError, Problem

SAMPLES_DIR = Path(__file__).resolve().parent / "fixtures" / "catalog-samples"


def read_catalog_dir(directory: Path) -> dict[str, list[Any]]:
    """One list per kind from ``directory/<kind>/*.json``; unreadable files are reported together."""
    if not directory.is_dir():
        raise CatalogValidationError([Problem("catalog", str(directory), "", "is not a directory")])
    data: dict[str, list[Any]] = {}
    problems: list[Problem] = []
    for kind in all_kinds():
        folder = directory / kind.key
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.json")):
            try:
                data.setdefault(kind.key, []).append(json.loads(file.read_text()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                problems.append(Problem(kind.singular, file.stem, str(file), f"cannot read JSON: {error}"))
    if problems:
        raise CatalogValidationError(problems)
    return data
