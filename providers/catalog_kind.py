"""Providers as a catalog kind: validated against their provider type, with secrets split off and encrypted.

Sensitive values are write-only: reads and exports show ``"$encrypted$"``, and writing ``"$encrypted$"``
back keeps the stored value (so an exported catalog re-imports into the same tenant without retyping
credentials). A value of ``""`` clears the secret.
"""

from __future__ import annotations

import re
from typing import Any

from templates_app import codec
from templates_app.kinds import CatalogKind, register, reject_nul
from templates_app.models import CatalogEntity
from templates_app.plugin_types import registry
from templates_app.problems import Problem, Problems
from templates_app.validation import register_provider_check

from .drivers.base import DRIVERS
from .egress import EgressRefused, check_url_field
from .secrets import ENCRYPTED, decrypt_json, encrypt_json

OPERATOR_ONLY_TYPES = frozenset({"local"})
"""Provider types whose machines run on Loom's own hosts (``local``: network namespaces on the worker that
share its filesystem, sessions as root). Only tenants a superuser marked ``operator_providers`` use them."""


def is_url_field(name: str) -> bool:
    """Provider fields that hold an address the worker's driver connects to (``openstack_auth_url``, an
    ``endpoint``): each passes the egress policy."""
    return name.endswith("url") or "endpoint" in name


Doc = dict[str, Any]

PLACEHOLDER = "$placeholder$"
_SECRET_NAME = re.compile(r"pass|secret|token|credential|private|(^|_)(api_?)?key$|apikey", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"<[^<>]*>|x{3,}|X{3,}|\.\.\.|\*{3,}")
_CAPITALS = re.compile(r"[A-Z]+(_[A-Z]+)*")
_PLACEHOLDER_WORD = re.compile(r"USER|NAME|PASS|KEY|SECRET|TOKEN|EXAMPLE|CHANGE|REPLACE|YOUR")


def looks_like_placeholder(value: Any) -> bool:
    """A sample credential such as ``USERNAME``, ``API_KEY``, ``<your key>`` or ``xxxx`` (the original's
    sample catalog ships its providers so); a placeholder stored as a secret would only fail at the cloud.

    Capitals alone are not enough: an AWS access key id is 20 capitals and digits, and about one in 28 has no
    digit. So a word of capitals counts only when it is joined by underscores, short (12 letters or fewer),
    or holds a word that sample values use (USER, KEY, EXAMPLE, ...)."""
    if not isinstance(value, str):
        return False
    if _PLACEHOLDER.fullmatch(value):
        return True
    if not _CAPITALS.fullmatch(value):
        return False
    return "_" in value or len(value) <= 12 or bool(_PLACEHOLDER_WORD.search(value))


def sensitive_fields(plugin: Any, provisioner: dict[str, Any]) -> frozenset[str]:
    """The fields stored encrypted: the type's sensitive ones, and any field no schema describes whose name
    says it holds a secret (a password, key or token of a type Loom does not know)."""
    declared = plugin.sensitive_fields if plugin else frozenset()
    described = set(plugin.admin.fields) | set(plugin.user.fields) if plugin else set()
    guessed = {key for key in provisioner if key not in described and _SECRET_NAME.search(key)}
    return frozenset(declared | guessed)


def stored_secrets(obj: CatalogEntity | None) -> dict[str, Any]:
    return decrypt_json(getattr(obj, "secret_data", "")) if obj is not None else {}


class ProviderKind(CatalogKind):
    def normalize(self, raw: Any, existing: CatalogEntity | None = None) -> tuple[Doc, Problems]:
        problems = Problems("provider")
        if not isinstance(raw, dict):
            problems.error("", f"must be a JSON object, got {type(raw).__name__}")
            return {}, problems
        if reject_nul(raw, problems):
            return {}, problems
        doc = codec.base_fields(raw, problems)
        codec.check_unknown_keys(
            raw, {"name", "label", "description", "icon", "version", "providertype", "provisioner"}, problems
        )
        type_name = raw.get("providertype")
        plugin = registry.get("provider", type_name) if isinstance(type_name, str) else None
        doc["providertype"] = type_name
        values = codec.as_object(raw.get("provisioner"), problems, "provisioner")
        if not isinstance(type_name, str) or not codec.NAME_RE.fullmatch(type_name):
            problems.error("providertype", "required: the provider type's name (e.g. aws, openstack, google)")
            return doc, problems
        if plugin is None:
            # The original took any type its plugins might know: keep the fields as they are, launch nothing.
            known = ", ".join(registry.names("provider"))
            problems.unlaunchable(
                "providertype", f"provider type {type_name!r} is not one Loom knows (known: {known}); stored as is"
            )
            kept = stored_secrets(existing)
            doc["provisioner"] = {key: self._keep(key, value, kept, problems) for key, value in sorted(values.items())}
            return doc, problems
        kept = stored_secrets(existing)
        clean: dict[str, Any] = {}
        for key, value in values.items():
            path = f"provisioner.{key}"
            schema = plugin.admin.fields.get(key)
            if schema is None and key in plugin.user.fields:
                problems.error(path, "is a user field, supplied with each cluster request")
                continue
            if schema is None:
                problems.warning(path, f"is not a field of provider type {type_name}, so its driver ignores it "
                                       f"(kept; the type's fields: {', '.join(plugin.admin.fields)})")  # fmt: skip
                clean[key] = self._keep(key, value, kept, problems)
                continue
            if schema.sensitive and value == ENCRYPTED:
                if key not in kept:
                    problems.error(path, "no stored secret to keep: give the actual value")
                    continue
                value = kept[key]
            issue = schema.check_value(value)
            if issue:
                problems.error(path, issue)
            clean[key] = value
        missing = plugin.admin.missing([key for key, value in clean.items() if value is not None])
        if missing:
            options = " or ".join("{" + ", ".join(group) + "}" for group in missing)
            problems.unlaunchable("provisioner", f"provider type {type_name} requires {options}")
        else:
            # Of the complete alternatives, report the one closest to usable.
            complete = [group for group in plugin.admin.required if group and group <= set(clean)]
            empty = min((sorted(key for key in group if clean[key] == "") for group in complete), key=len, default=[])
            if empty:
                problems.warning(
                    "provisioner",
                    f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: clusters on this "
                    "provider will fail until set",
                )
        doc["provisioner"] = dict(sorted(clean.items()))
        return doc, problems

    def tenant_problems(self, tenant: Any, doc: Doc) -> list[Problem]:
        problems = Problems("provider", name=str(doc.get("name") or ""))
        type_name = doc.get("providertype")
        if type_name in OPERATOR_ONLY_TYPES and not getattr(tenant, "operator_providers", False):
            problems.error(
                "providertype",
                f"provider type {type_name} runs machines on Loom's own hosts; only tenants the operator "
                "enables (Tenant.operator_providers, set by a superuser) may use it",
            )
        for key, value in (doc.get("provisioner") or {}).items():
            if is_url_field(key):
                try:
                    check_url_field(f"provisioner.{key}", value)
                except EgressRefused as error:
                    problems.error(f"provisioner.{key}", error.fields[f"provisioner.{key}"][0])
        return problems.items

    @staticmethod
    def _keep(key: str, value: Any, kept: dict[str, Any], problems: Problems) -> Any:
        """A field no schema describes, as given; ``$encrypted$`` keeps the stored secret of that name and is
        an error without one (as for declared secrets), never stored as a literal."""
        if value != ENCRYPTED:
            return value
        if key not in kept:
            problems.error(f"provisioner.{key}", "no stored secret to keep: give the actual value")
        return kept.get(key, "")

    def view_documents(self, tenant: Any) -> dict[str, Doc]:
        """Documents with every stored secret present as ``$encrypted$`` (or as ``$placeholder$`` when it
        holds a sample value such as ``API_KEY``), so the launch checks see which credentials are set
        without any secret value leaving this method."""
        rows = self.model.objects.filter(tenant=tenant).values_list("name", "document", "secret_data")
        views = {}
        for name, document, secret_data in rows:
            marks = {key: PLACEHOLDER if looks_like_placeholder(value) else ENCRYPTED
                     for key, value in decrypt_json(secret_data).items()}  # fmt: skip
            views[name] = {**document, "provisioner": {**document.get("provisioner", {}), **marks}}
        return views

    @staticmethod
    def _split(doc: Doc) -> tuple[Doc, dict[str, Any]]:
        plugin = registry.get("provider", doc.get("providertype") or "")
        sensitive = sensitive_fields(plugin, doc.get("provisioner", {}))
        public = {k: v for k, v in doc.get("provisioner", {}).items() if k not in sensitive}
        secrets = {k: v for k, v in doc.get("provisioner", {}).items() if k in sensitive and v != ""}
        empty = {k: "" for k, v in doc.get("provisioner", {}).items() if k in sensitive and v == ""}
        return {**doc, "provisioner": dict(sorted({**public, **empty}.items()))}, secrets

    def apply(self, obj: CatalogEntity, doc: Doc) -> None:
        public, secrets = self._split(doc)
        obj.set_document(public)
        obj.provider_type = doc["providertype"]  # type: ignore[attr-defined]
        obj.secret_data = encrypt_json(secrets)  # type: ignore[attr-defined]

    @staticmethod
    def _masked(document: Doc, secret_data: str, version: int) -> Doc:
        masked = {key: ENCRYPTED for key in decrypt_json(secret_data)}
        fields = dict(sorted({**document.get("provisioner", {}), **masked}.items()))
        return {**document, "provisioner": fields, "version": version}

    def export(self, obj: CatalogEntity) -> Doc:
        return self._masked(obj.document, getattr(obj, "secret_data", ""), obj.version)

    def export_version(self, row: Any) -> Doc:
        return self._masked(row.document, row.secret_data, row.version)

    def version_secret_data(self, obj: CatalogEntity) -> str:
        return getattr(obj, "secret_data", "")

    def public_equal(self, obj: CatalogEntity, doc: Doc) -> bool:
        public, secrets = self._split(doc)
        return obj.document == public and stored_secrets(obj) == secrets


PROVIDERS = register(ProviderKind("providers", "provider", "provider", "providers.Provider", None, order=10))


def provider_launch_reasons(doc: Doc) -> list[str]:
    """Why no cluster can be created on this provider now (registered with the catalog's launch checks):
    a type without a driver, required fields missing, or credentials that are sample values."""
    type_name = doc.get("providertype")
    if type_name not in DRIVERS:
        return [f"provider type {type_name} has no driver in Loom (drivers: {', '.join(sorted(DRIVERS))})"]
    plugin = registry.get("provider", str(type_name))
    fields = doc.get("provisioner", {})
    sensitive = sensitive_fields(plugin, fields)
    reasons = []
    samples = sorted(key for key, value in fields.items()
                     if value == PLACEHOLDER or (key in sensitive and looks_like_placeholder(value)))  # fmt: skip
    if samples:
        reasons.append(f"{', '.join(samples)} {'holds a sample value' if len(samples) == 1 else 'hold sample values'}"
                       ", not credentials")  # fmt: skip
    missing = plugin.admin.missing(key for key, value in fields.items() if value not in (None, "")) if plugin else []
    if missing:
        groups = sorted({tuple(group) for group in missing}, key=lambda group: (len(group), group))
        reasons.append("needs " + " or ".join("{" + ", ".join(group) + "}" for group in groups))
    return reasons


register_provider_check(provider_launch_reasons)
