"""The catalog kinds (hardware types, image types, services, templates, providers) behind one interface.

Import/export, versioning, the API and the admin treat every kind alike through ``CatalogKind``. The
providers app registers its own kind (with secret handling) at start-up, which keeps the dependency
direction: templates_app never imports providers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.apps import apps

from . import codec
from .problems import Problem, Problems

if TYPE_CHECKING:
    from .models import CatalogEntity

Doc = dict[str, Any]


@dataclass(frozen=True)
class CatalogKind:
    """One kind of catalog entity.

    ``key`` is the Loom JSON key and URL segment (``hardwaretypes``); ``order`` is the order in which
    an import applies kinds so references resolve (types before services before templates).
    """

    key: str
    singular: str
    label: str
    model_label: str
    normalizer: codec.Normalizer | None
    order: int

    @property
    def model(self) -> type[CatalogEntity]:
        return apps.get_model(self.model_label)

    def normalize(self, raw: Any, existing: CatalogEntity | None = None) -> tuple[Doc, Problems]:
        """Canonical document from user input. ``existing`` lets providers keep stored secrets."""
        problems = Problems(self.singular)
        if not isinstance(raw, dict):
            problems.error("", f"must be a JSON object, got {type(raw).__name__}")
            return {}, problems
        if reject_nul(raw, problems):
            return {}, problems
        assert self.normalizer is not None, f"{self.key} must override normalize()"
        return self.normalizer(raw)

    def tenant_problems(self, tenant: Any, doc: Doc) -> list[Problem]:
        """Problems of ``doc`` that depend on the tenant it is saved in (what the tenant may use and
        reach); none by default. Checked on every save and import, after ``normalize``."""
        return []

    def apply(self, obj: CatalogEntity, doc: Doc) -> None:
        """Store a normalized document on the model instance (not saved)."""
        obj.set_document(doc)

    def export(self, obj: CatalogEntity) -> Doc:
        """The document as the API and export show it (never with secret values)."""
        return {**obj.document, "version": obj.version}

    def export_version(self, row: Any) -> Doc:
        """An old version (a ``CatalogVersion`` row) as the API shows it."""
        return {**row.document, "version": row.version}

    def version_secret_data(self, obj: CatalogEntity) -> str:
        return ""

    def view_documents(self, tenant: Any) -> dict[str, Doc]:
        """``{name: document}`` of the tenant's entities as the catalog checks read them, in one query."""
        return dict(self.model.objects.filter(tenant=tenant).values_list("name", "document"))

    def public_equal(self, obj: CatalogEntity, doc: Doc) -> bool:
        """True when writing ``doc`` would change nothing (so no new version is made)."""
        return obj.document == doc


def reject_nul(raw: Doc, problems: Problems) -> bool:
    """Record a problem for every NUL character (PostgreSQL text cannot hold one); True if any.

    The API's JSON parser already refuses them; this covers imports from files and internal callers.
    """
    from loom_site.input_guards import MESSAGE, nul_paths

    name = raw.get("name")
    problems.name = name.replace("\x00", "\\0") if isinstance(name, str) else ""
    paths = list(nul_paths(raw))
    for path in paths:
        problems.error(path, MESSAGE)
    return bool(paths)


_kinds: dict[str, CatalogKind] = {}


def register(kind: CatalogKind) -> CatalogKind:
    _kinds[kind.key] = kind
    return kind


def get_kind(key: str) -> CatalogKind:
    return _kinds[key]


def all_kinds() -> list[CatalogKind]:
    return sorted(_kinds.values(), key=lambda kind: kind.order)


HARDWARE_TYPES = register(
    CatalogKind("hardwaretypes", "hardwaretype", "hardware type", "templates_app.HardwareType",
                codec.normalize_hardwaretype, order=20)
)  # fmt: skip
IMAGE_TYPES = register(
    CatalogKind("imagetypes", "imagetype", "image type", "templates_app.ImageType",
                codec.normalize_imagetype, order=30)
)  # fmt: skip
SERVICES = register(
    CatalogKind("services", "service", "service", "templates_app.Service",
                codec.normalize_service, order=40)
)  # fmt: skip
PARTIAL_TEMPLATES = register(
    CatalogKind("partialtemplates", "partialtemplate", "partial template",
                "templates_app.PartialTemplate", codec.normalize_partialtemplate, order=50)
)  # fmt: skip
CLUSTER_TEMPLATES = register(
    CatalogKind("clustertemplates", "clustertemplate", "cluster template",
                "templates_app.ClusterTemplate", codec.normalize_clustertemplate, order=60)
)  # fmt: skip
