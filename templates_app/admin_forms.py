"""Admin forms for catalog entities: structured fields in, one Loom JSON document out.

Each form reads its initial values from ``kind.export(obj)`` and, when submitted, builds the Loom JSON
document from its fields and embedded row formsets and hands it to ``catalog_entity_save``; the service
normalises and validates it (nothing is validated twice here beyond parsing what a field holds). The
service's problems carry dotted paths (``constraints.services.mysql.quantities.max``); each form maps them
back to the field or row they came from, so the message appears where the user typed the value and the
submitted input is shown again as typed.

Saving an untouched form must not make a new version, so building a document keeps what the form cannot
show differently: the original order of names in a multi-select, the JSON type of a value that reads the
same as text (``0.1`` stays a number), and keys the document had with an empty value.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib import messages
from django.contrib.admin.widgets import FilteredSelectMultiple

from tenants.admin_mixins import ServiceFormMixin, add_error_safely, limit_tenant_field
from tenants.errors import ApplicationError, Conflict
from tenants.models import Tenant

from .admin_fields import (
    CatalogNames,
    JsonObjectField,
    format_duration_ms,
    join_names,
    name_choices,
    ordered_like,
    path_rest,
    split_names,
    with_context,
)
from .admin_rows import (
    ActionForms,
    HardwareMappingForm,
    ImageMappingForm,
    LinkForm,
    LinkFormSet,
    ProviderMapFormSet,
    ProviderMappingForm,
    Section,
    ServiceConstraintForm,
    ServiceConstraintFormSet,
    row_formset,
)
from .kinds import get_kind
from .models import ClusterTemplate, HardwareType, ImageType, PartialTemplate, Service
from .problems import CatalogValidationError
from .services import catalog_entity_save

Doc = dict[str, Any]

# --- the entity forms ---------------------------------------------------------------------------------


class CatalogEntityForm(ServiceFormMixin, forms.ModelForm):
    """Base of every catalog admin form: base fields, the tenant, and the save through the service.

    Every field is declared (``Meta.fields`` is empty): the form maps to a document, not to model fields,
    and the service is the validator (see ``ServiceFormMixin._post_clean``). Subclasses set ``kind_key``,
    ``fieldsets``, ``problem_fields`` (problem path prefix → form field) and implement
    ``initial_from_document``, ``build_sections`` and ``to_document``.
    """

    kind_key: ClassVar[str] = ""
    fieldsets: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    problem_fields: ClassVar[dict[str, str]] = {}
    base_problem_fields: ClassVar[dict[str, str]] = {
        "name": "name", "label": "label", "description": "description", "icon": "icon",
    }  # fmt: skip

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    name = forms.CharField(max_length=255, help_text="Letters, digits, '_', '.' and '-'. Cannot be changed later.")
    label = forms.CharField(max_length=255, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
    icon = forms.CharField(required=False, max_length=255)

    class Meta:
        fields: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adding = self.instance.pk is None
        self.kind = get_kind(self.kind_key)
        self.original: Doc = self.kind.export(self.instance) if not self.adding else {}
        limit_tenant_field(self, self.request, adding=self.adding)
        if not self.adding:
            del self.fields["name"]
        self.add_dynamic_fields()
        self.names = CatalogNames(self.request.user, self.catalog_tenant_pks())
        document_initial = {
            "label": self.original.get("label") or "",
            "description": self.original.get("description") or "",
            "icon": self.original.get("icon") or "",
            **self.initial_from_document(self.original),
        }
        self.initial = {**document_initial, **self.initial}
        self.set_choices()
        data = self.data if self.is_bound else None
        self.sections: list[Section] = self.build_sections(data)

    # hooks

    def add_dynamic_fields(self) -> None:
        """Fields that depend on the plugin registry (providers)."""

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        return {}

    def set_choices(self) -> None:
        """Fill choices of selects from ``self.names`` plus the names the document already uses."""

    def build_sections(self, data: Any) -> list[Section]:
        return []

    def to_document(self) -> Doc:
        raise NotImplementedError

    # machinery

    def catalog_tenant_pks(self) -> list[int]:
        """Tenants whose catalog the choices come from: the entity's, else the one chosen, else all."""
        if not self.adding:
            return [self.instance.tenant_id]
        allowed = list(self.fields["tenant"].queryset.values_list("pk", flat=True))
        chosen = self.data.get("tenant") if self.is_bound else self.initial.get("tenant")
        chosen = getattr(chosen, "pk", chosen)
        if str(chosen).isdigit() and int(chosen) in allowed:
            return [int(chosen)]
        return allowed

    def subforms(self) -> list[Section]:
        return self.sections

    def base_document(self) -> Doc:
        data = self.cleaned_data
        original = self.original

        def optional(key: str) -> str | None:
            # None and "" both mean "no label"; keep whichever the document had.
            return data.get(key) or (original.get(key) if original.get(key) in ("", None) else None)

        return {
            "name": data["name"] if self.adding else self.instance.name,
            "label": optional("label"),
            "description": data.get("description") or "",
            "icon": optional("icon"),
        }

    def persist(self) -> Any:
        tenant = self.cleaned_data["tenant"] if self.adding else self.instance.tenant
        result = catalog_entity_save(
            tenant=tenant,
            user=self.request.user,
            kind_key=self.kind_key,
            data=self.to_document(),
            name=None if self.adding else self.instance.name,
            create=self.adding,
        )
        self.service_messages = [(messages.WARNING, str(warning)) for warning in result.warnings]
        if not result.changed:
            self.service_messages.append(
                (messages.INFO, f"Nothing changed, so {result.entity.name} stays at version {result.entity.version}.")
            )
        return result.entity

    def handle_service_error(self, error: ApplicationError) -> None:
        if isinstance(error, CatalogValidationError):
            own_name = self.cleaned_data.get("name") if self.adding else self.instance.name
            for problem in error.problems:
                if problem.kind == self.kind.singular and problem.name in ("", own_name):
                    self.route_problem(problem.field, problem.message)
                else:  # another entity this change would break: say which
                    self.add_error(None, str(problem))
            return
        if isinstance(error, Conflict) and self.adding and not error.fields:
            add_error_safely(self, "name", error.message)
            return
        super().handle_service_error(error)

    def route_problem(self, path: str, message: str) -> None:
        for section in self.sections:
            if section.route(path, message):
                return
        routes = {**self.base_problem_fields, **self.problem_fields}
        for prefix in sorted(routes, key=len, reverse=True):
            rest = path_rest(path, prefix)
            if rest is not None and routes[prefix] in self.fields:
                self.add_error(routes[prefix], with_context(rest, message))
                return
        self.add_error(None, f"{path}: {message}" if path else message)

    @property
    def sections_have_errors(self) -> bool:
        return self.is_bound and any(section.has_errors for section in self.sections)


def multi_select(label: str, help_text: str = "") -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        label=label, required=False, help_text=help_text, widget=FilteredSelectMultiple(label, is_stacked=False)
    )


def _links_section(data: Any, links: list[dict[str, str]]) -> Section:
    formset_class = row_formset(LinkForm, LinkFormSet)
    formset = formset_class(data, prefix="links", initial=LinkFormSet.initial_rows(links))
    return Section("links", "Links", formset, formset.route, help="Shown to users of the entity.")


class _ProviderMapEntityForm(CatalogEntityForm):
    mapping_form: ClassVar[type[ProviderMappingForm]]

    def build_sections(self, data: Any) -> list[Section]:
        formset_class = row_formset(self.mapping_form, ProviderMapFormSet, extra=2)
        initial = formset_class.initial_rows(self.original.get("providermap", {}))  # type: ignore[attr-defined]
        formset = formset_class(data, prefix="providermap", initial=initial)
        return [
            Section(
                "providermap",
                "Provider mapping",
                formset,
                help=f"What this type is called at each provider ({self.mapping_form.key_field}).",
                route=formset.route,
            )
        ]

    def to_document(self) -> Doc:
        formset = self.sections[0].rows
        return {**self.base_document(), "providermap": formset.to_document(self.original.get("providermap", {}))}


class HardwareTypeForm(_ProviderMapEntityForm):
    kind_key = "hardwaretypes"
    mapping_form = HardwareMappingForm

    class Meta(CatalogEntityForm.Meta):
        model = HardwareType


class ImageTypeForm(_ProviderMapEntityForm):
    kind_key = "imagetypes"
    mapping_form = ImageMappingForm

    class Meta(CatalogEntityForm.Meta):
        model = ImageType


_DEPENDENCY_FIELDS = {
    "conflicts": ("conflicts",),
    "install_requires": ("install", "requires"),
    "install_uses": ("install", "uses"),
    "runtime_requires": ("runtime", "requires"),
    "runtime_uses": ("runtime", "uses"),
}


class ServiceForm(CatalogEntityForm):
    kind_key = "services"
    fieldsets = [
        (
            "Dependencies",
            {
                "fields": ["provides", "conflicts", *(name for name in _DEPENDENCY_FIELDS if name != "conflicts")],
                "description": "Requires: must be in the cluster. Uses: ordered after it when present. "
                "Install dependencies order installation; runtime dependencies order start-up.",
            },
        ),
    ]
    problem_fields = {
        "dependencies.provides": "provides",
        "dependencies.conflicts": "conflicts",
        "dependencies.install": "install_requires",
        "dependencies.install.requires": "install_requires",
        "dependencies.install.uses": "install_uses",
        "dependencies.runtime": "runtime_requires",
        "dependencies.runtime.requires": "runtime_requires",
        "dependencies.runtime.uses": "runtime_uses",
    }

    provides = forms.CharField(
        required=False,
        help_text="Other names this service answers to (e.g. a generic 'database'), comma or space separated.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    conflicts = multi_select("Conflicts with")
    install_requires = multi_select("Install requires")
    install_uses = multi_select("Install uses")
    runtime_requires = multi_select("Runtime requires")
    runtime_uses = multi_select("Runtime uses")

    class Meta(CatalogEntityForm.Meta):
        model = Service

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        deps = doc.get("dependencies", {})
        initial: dict[str, Any] = {"provides": join_names(deps.get("provides", []))}
        for name, path in _DEPENDENCY_FIELDS.items():
            initial[name] = self._dependency(deps, path)
        return initial

    @staticmethod
    def _dependency(deps: Doc, path: tuple[str, ...]) -> list[str]:
        value: Any = deps
        for key in path:
            value = (value or {}).get(key, [])
        return list(value or [])

    def set_choices(self) -> None:
        deps = self.original.get("dependencies", {})
        known = [*self.names.names("services"), *self.names.service_aliases()]
        for name, path in _DEPENDENCY_FIELDS.items():
            self.fields[name].choices = name_choices(known, self._dependency(deps, path))

    def build_sections(self, data: Any) -> list[Section]:
        actions = ActionForms(data, self.original.get("provisioner", {}).get("actions", {}))
        return [
            Section(
                "actions",
                "Actions",
                actions,
                help="What the automator runs for each action; the fields follow the selected automator type.",
                layout="actions",
                route=actions.route,
            ),
            _links_section(data, self.original.get("links", [])),
        ]

    def to_document(self) -> Doc:
        data = self.cleaned_data
        before = self.original.get("dependencies", {})

        def names(field_name: str) -> list[str]:
            return ordered_like(data[field_name], self._dependency(before, _DEPENDENCY_FIELDS[field_name]))

        actions, links = self.sections
        return {
            **self.base_document(),
            "dependencies": {
                "provides": split_names(data.get("provides", "")),
                "conflicts": names("conflicts"),
                "install": {"requires": names("install_requires"), "uses": names("install_uses")},
                "runtime": {"requires": names("runtime_requires"), "uses": names("runtime_uses")},
            },
            "provisioner": {
                "actions": actions.rows.to_document(self.original.get("provisioner", {}).get("actions", {}))
            },
            "links": links.rows.to_document(),
        }


def _group_lines(groups: list[list[str]]) -> str:
    return "\n".join(join_names(group) for group in groups)


class _TemplateForm(CatalogEntityForm):
    """Shared by cluster and partial templates: compatibility, defaults, constraints, lease, links."""

    template_fieldsets: ClassVar[list[tuple[str, dict[str, Any]]]] = [
        ("Compatibility", {
            "fields": ["compat_services", "compat_hardwaretypes", "compat_imagetypes"],
            "description": "What users may choose when they create a cluster from this template.",
        }),
        ("Defaults", {"fields": ["default_services", ("default_provider", "default_hardwaretype", "default_imagetype"),
                                 "dns_suffix", "config"]}),
        ("Constraints", {"fields": [("size_min", "size_max"), "must_coexist", "cant_coexist"]}),
        ("Lease", {
            "fields": [("lease_initial", "lease_max", "lease_step")],
            "description": "Milliseconds, or a number with s, m, h or d (e.g. 7d). 0 means no limit.",
        }),
    ]  # fmt: skip
    problem_fields = {
        "compatibility.services": "compat_services",
        "compatibility.hardwaretypes": "compat_hardwaretypes",
        "compatibility.imagetypes": "compat_imagetypes",
        "defaults.services": "default_services",
        "defaults.provider": "default_provider",
        "defaults.hardwaretype": "default_hardwaretype",
        "defaults.imagetype": "default_imagetype",
        "defaults.dnsSuffix": "dns_suffix",
        "defaults.config": "config",
        "constraints.size": "size_max",
        "constraints.size.min": "size_min",
        "constraints.size.max": "size_max",
        "constraints.layout.mustcoexist": "must_coexist",
        "constraints.layout.cantcoexist": "cant_coexist",
        "administration.leaseduration.initial": "lease_initial",
        "administration.leaseduration.max": "lease_max",
        "administration.leaseduration.step": "lease_step",
    }

    compat_services = multi_select("Services")
    compat_hardwaretypes = multi_select("Hardware types")
    compat_imagetypes = multi_select("Image types")
    default_services = multi_select("Services")
    default_provider = forms.ChoiceField(label="Provider", required=False)
    default_hardwaretype = forms.ChoiceField(label="Hardware type", required=False)
    default_imagetype = forms.ChoiceField(label="Image type", required=False)
    dns_suffix = forms.CharField(label="DNS suffix", required=False)
    config = JsonObjectField(label="Config", required=False, help_text="A JSON object; may contain macros.")
    size_min = forms.IntegerField(label="Min nodes", required=False)
    size_max = forms.IntegerField(label="Max nodes", required=False)
    must_coexist = forms.CharField(
        label="Must coexist",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="One group per line: services that must always be on the same nodes.",
    )
    cant_coexist = forms.CharField(
        label="Can't coexist",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="One group per line: services that must never share a node.",
    )
    lease_initial = forms.CharField(label="Initial", required=False, widget=forms.TextInput(attrs={"size": 10}))
    lease_max = forms.CharField(label="Max", required=False, widget=forms.TextInput(attrs={"size": 10}))
    lease_step = forms.CharField(label="Step", required=False, widget=forms.TextInput(attrs={"size": 10}))

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        compat = doc.get("compatibility", {})
        defaults = doc.get("defaults", {})
        constraints = doc.get("constraints", {})
        layout = constraints.get("layout", {})
        lease = doc.get("administration", {}).get("leaseduration", {})
        size = constraints.get("size", {})
        return {
            "compat_services": compat.get("services", []),
            "compat_hardwaretypes": compat.get("hardwaretypes", []),
            "compat_imagetypes": compat.get("imagetypes", []),
            "default_services": defaults.get("services", []),
            "default_provider": defaults.get("provider") or "",
            "default_hardwaretype": defaults.get("hardwaretype") or "",
            "default_imagetype": defaults.get("imagetype") or "",
            "dns_suffix": defaults.get("dnsSuffix") or "",
            "config": defaults.get("config", {}),
            "size_min": size.get("min"),
            "size_max": size.get("max"),
            "must_coexist": _group_lines(layout.get("mustcoexist", [])),
            "cant_coexist": _group_lines(layout.get("cantcoexist", [])),
            "lease_initial": format_duration_ms(lease.get("initial", 0)),
            "lease_max": format_duration_ms(lease.get("max", 0)),
            "lease_step": format_duration_ms(lease.get("step", 0)),
        }

    def set_choices(self) -> None:
        compat = self.original.get("compatibility", {})
        defaults = self.original.get("defaults", {})
        constraint_specs = self.original.get("constraints", {}).get("services", {}).values()
        services = self.names.names("services")
        hardware = self.names.names("hardwaretypes")
        images = self.names.names("imagetypes")
        self.fields["compat_services"].choices = name_choices(services, compat.get("services", []))
        self.fields["default_services"].choices = name_choices(services, defaults.get("services", []))
        self.fields["compat_hardwaretypes"].choices = name_choices(hardware, compat.get("hardwaretypes", []))
        self.fields["compat_imagetypes"].choices = name_choices(images, compat.get("imagetypes", []))
        blank = [("", "---------")]
        self.fields["default_provider"].choices = blank + name_choices(
            self.names.names("providers"), [defaults.get("provider") or ""]
        )
        self.fields["default_hardwaretype"].choices = blank + name_choices(hardware, [defaults.get("hardwaretype")])
        self.fields["default_imagetype"].choices = blank + name_choices(images, [defaults.get("imagetype")])
        self.row_choices = {
            "services": name_choices(services, self.original.get("constraints", {}).get("services", {})),
            "hardwaretypes": name_choices(hardware, *(spec.get("hardwaretypes", []) for spec in constraint_specs)),
            "imagetypes": name_choices(images, *(spec.get("imagetypes", []) for spec in constraint_specs)),
        }

    def build_sections(self, data: Any) -> list[Section]:
        formset_class = row_formset(ServiceConstraintForm, ServiceConstraintFormSet)
        constraints = formset_class(
            data,
            prefix="constraints",
            initial=ServiceConstraintFormSet.initial_rows(self.original.get("constraints", {}).get("services", {})),
            form_kwargs={"choices": self.row_choices},
        )
        return [
            Section(
                "constraints",
                "Per-service constraints",
                constraints,
                help="How many nodes may run a service, and on which hardware and image types.",
                route=constraints.route,
            ),
            _links_section(data, self.original.get("links", [])),
        ]

    def template_document(self) -> Doc:
        data = self.cleaned_data
        original = self.original
        compat = original.get("compatibility", {})
        defaults = original.get("defaults", {})
        constraints_rows, links = self.sections
        size: Doc = {"min": data.get("size_min")}
        if data.get("size_max") is not None:
            size["max"] = data["size_max"]
        return {
            **self.base_document(),
            "compatibility": {
                key: ordered_like(data[f"compat_{key}"], compat.get(key, []))
                for key in ("services", "hardwaretypes", "imagetypes")
            },
            "defaults": {
                "services": ordered_like(data["default_services"], defaults.get("services", [])),
                "provider": data.get("default_provider") or None,
                "hardwaretype": data.get("default_hardwaretype") or None,
                "imagetype": data.get("default_imagetype") or None,
                "dnsSuffix": data.get("dns_suffix") or None,
                "config": data.get("config") or {},
            },
            "constraints": {
                "size": size,
                "layout": {
                    "mustcoexist": [split_names(line) for line in data["must_coexist"].splitlines() if line.strip()],
                    "cantcoexist": [split_names(line) for line in data["cant_coexist"].splitlines() if line.strip()],
                },
                "services": constraints_rows.rows.to_document(original.get("constraints", {}).get("services", {})),
            },
            "administration": {
                "leaseduration": {key: data.get(f"lease_{key}", "").strip() for key in ("initial", "max", "step")}
            },
            "links": links.rows.to_document(),
        }


class ClusterTemplateForm(_TemplateForm):
    kind_key = "clustertemplates"
    fieldsets = [
        ("Inheritance", {
            "fields": ["extends", "includes"],
            "description": "A template may extend one parent and include partial templates, merged in order.",
        }),
        *_TemplateForm.template_fieldsets,
    ]  # fmt: skip
    problem_fields = {**_TemplateForm.problem_fields, "extends": "extends", "includes": "includes"}

    extends = forms.ChoiceField(label="Extends", required=False)
    includes = forms.CharField(
        label="Includes",
        required=False,
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="Partial templates, comma separated, in merge order.",
    )

    class Meta(CatalogEntityForm.Meta):
        model = ClusterTemplate

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        return {
            **super().initial_from_document(doc),
            "extends": (doc.get("extends") or {}).get("name", ""),
            "includes": join_names(include["name"] for include in doc.get("includes", [])),
        }

    def set_choices(self) -> None:
        super().set_choices()
        own = self.original.get("name")
        parents = [name for name in self.names.names("clustertemplates") if name != own]
        current = (self.original.get("extends") or {}).get("name")
        self.fields["extends"].choices = [("", "(none)"), *name_choices(parents, [current])]
        partials = self.names.names("partialtemplates")
        if partials:
            self.fields["includes"].help_text += f" Available: {join_names(partials)}."

    def to_document(self) -> Doc:
        data = self.cleaned_data
        return {
            **self.template_document(),
            "extends": {"name": data["extends"]} if data.get("extends") else None,
            "includes": [{"name": name} for name in split_names(data.get("includes", ""))],
        }


class PartialTemplateForm(_TemplateForm):
    kind_key = "partialtemplates"
    fieldsets = [
        ("Partial template", {
            "fields": ["immutable"],
            "description": "Immutable: templates that include this one cannot override its config keys.",
        }),
        *_TemplateForm.template_fieldsets,
    ]  # fmt: skip
    problem_fields = {**_TemplateForm.problem_fields, "immutable": "immutable"}

    immutable = forms.BooleanField(required=False)

    class Meta(CatalogEntityForm.Meta):
        model = PartialTemplate

    def initial_from_document(self, doc: Doc) -> dict[str, Any]:
        return {**super().initial_from_document(doc), "immutable": bool(doc.get("immutable"))}

    def to_document(self) -> Doc:
        return {**self.template_document(), "immutable": bool(self.cleaned_data.get("immutable"))}
