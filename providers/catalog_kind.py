"""Providers as a catalog kind: validated against their provider type, with secrets split off and encrypted.

Sensitive values are write-only: reads and exports show ``"$encrypted$"``, and writing ``"$encrypted$"``
back keeps the stored value (so an exported catalog re-imports into the same tenant without retyping
credentials). A value of ``""`` clears the secret.
"""

from __future__ import annotations

from typing import Any

from templates_app import codec
from templates_app.kinds import CatalogKind, register, reject_nul
from templates_app.models import CatalogEntity
from templates_app.plugin_types import registry
from templates_app.problems import Problem, Problems

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
        if plugin is None:
            known = ", ".join(registry.names("provider"))
            problems.error("providertype", f"unknown provider type {type_name!r}; known: {known}")
            doc["provisioner"] = dict(sorted(values.items()))
            return doc, problems
        kept = stored_secrets(existing)
        clean: dict[str, Any] = {}
        for key, value in values.items():
            path = f"provisioner.{key}"
            schema = plugin.admin.fields.get(key)
            if schema is None:
                hint = (
                    "is a user field, supplied with each cluster request"
                    if key in plugin.user.fields
                    else f"is not a field of provider type {type_name}; "
                    f"expected one of {', '.join(plugin.admin.fields)}"
                )
                problems.error(path, hint)
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
            problems.error("provisioner", f"provider type {type_name} requires {options}")
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
    def _split(doc: Doc) -> tuple[Doc, dict[str, Any]]:
        plugin = registry.get("provider", doc.get("providertype") or "")
        sensitive = plugin.sensitive_fields if plugin else frozenset()
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
