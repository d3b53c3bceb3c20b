"""Forms of the self-service pages: input checks in plain words, and service errors put next to their field.

Forms only check the shape of the input (a name is a name, the config is a JSON object); whether a request
makes sense (a layout exists, the quota allows it, a macro expands) is the services' call, and their
``ApplicationError.fields`` are mapped back onto these forms by ``add_service_error``.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.validators import RegexValidator

from clusters.services.preview import PreviewRequest
from tenants.admin_mixins import add_error_safely
from tenants.errors import ApplicationError
from tenants.models import NAME_PATTERN

name_validator = RegexValidator(NAME_PATTERN, "use only letters, digits, dots, dashes and underscores")
MINUTE_MS = 60_000

# Service field names (the Loom format's and the serializers') → this module's form field names.
FIELD_NAMES = {
    "name": "name",
    "clusterTemplate": "template",
    "template": "template",
    "numMachines": "size",
    "provider": "provider",
    "hardwaretype": "hardwaretype",
    "imagetype": "imagetype",
    "services": "services",
    "initialLeaseDuration": "lease_minutes",
    "dnsSuffix": "dns_suffix",
    "count": "count",
    "nodes": "nodes",
    "expires_at": "extend_minutes",
    "extend_by": "extend_minutes",
}


def add_service_error(form: forms.BaseForm, error: ApplicationError) -> None:
    """Put a service's error next to the field it names (``config/...`` paths go to ``config``); what names
    no field of the form becomes a message at the top of it."""
    placed = False
    for key, problems in error.fields.items():
        field = (
            "config" if key.startswith("config")
            else "provider_fields" if key.startswith("providerFields")
            else key if key in form.fields else FIELD_NAMES.get(key, key)
        )  # fmt: skip
        if field in form.fields:
            for problem in problems if isinstance(problems, list) else [problems]:
                form.add_error(field, f"{problem}" if key == field or key in FIELD_NAMES else f"{key}: {problem}")
            placed = True
    if error.message.startswith("a cluster named") and "name" in form.fields:
        form.add_error("name", error.message)
        placed = True
    if not placed or not error.fields:
        add_error_safely(form, None, error.message)


class JSONObjectField(forms.CharField):
    """A JSON object typed into a textarea; empty means "not given" (None)."""

    widget = forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "mono"})

    def to_python(self, value: Any) -> dict[str, Any] | None:
        text = (super().to_python(value) or "").strip()
        if not text:
            return None
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(
                f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
            ) from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError("must be a JSON object ({...}), not a list or a single value")
        return parsed


class ClusterCreateForm(forms.Form):
    """The create request: template, name and size up front; the rest under "Advanced"."""

    template = forms.ChoiceField(label="Template")
    name = forms.CharField(max_length=255, validators=[name_validator], help_text="Letters, digits, . - _")
    size = forms.IntegerField(label="Number of machines", min_value=1)
    description = forms.CharField(max_length=2000, required=False)
    services = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, help_text="None checked: the template's defaults."
    )
    provider = forms.ChoiceField(required=False)
    hardwaretype = forms.ChoiceField(label="Hardware type", required=False)
    imagetype = forms.ChoiceField(label="Image type", required=False)
    lease_minutes = forms.IntegerField(
        label="Lease (minutes)", min_value=1, max_value=100 * 365 * 24 * 60, required=False,
        help_text="Empty: the template's initial lease.",
    )  # fmt: skip
    dns_suffix = forms.CharField(label="DNS suffix", max_length=191, required=False)
    config = JSONObjectField(required=False, help_text="A JSON object; empty: the template's default config.")
    provider_fields = JSONObjectField(
        label="Provider fields", required=False,
        help_text='Fields of the provider this cluster sets, as a JSON object, e.g. {"availability_zone": '
        '"us-east-1b"}: the provider type\'s user fields and the ones its admin lets users override.',
    )  # fmt: skip

    def __init__(self, *args: Any, names: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

        def choices(kind: str, blank: str | None = "(template default)") -> list[tuple[str, str]]:
            return ([("", blank)] if blank else []) + [(name, name) for name in names[kind]]

        self.fields["template"].choices = choices("templates", None)
        self.fields["services"].choices = choices("services", None)
        for kind in ("provider", "hardwaretype", "imagetype"):
            self.fields[kind].choices = choices(f"{kind}s")

    def preview_request(self) -> PreviewRequest:
        data = self.cleaned_data
        return PreviewRequest(
            name=data["name"],
            template=data["template"],
            size=data["size"],
            provider=data.get("provider") or None,
            hardware=data.get("hardwaretype") or None,
            image=data.get("imagetype") or None,
            services=tuple(data.get("services") or ()),
            config=data.get("config"),
            dns_suffix=data.get("dns_suffix") or None,
            provider_fields=data.get("provider_fields") or None,
        )

    def lease_ms(self) -> int | None:
        minutes = self.cleaned_data.get("lease_minutes")
        return minutes * MINUTE_MS if minutes else None


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. cli or ci.")
    expires_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="Empty: never."
    )


class TenantSwitchForm(forms.Form):
    tenant = forms.CharField(max_length=255)
    next = forms.CharField(max_length=2000, required=False)


# --- cluster operations --------------------------------------------------------------------------------------


class EmptyForm(forms.Form):
    """An operation without input (abort, pause, resume, retry, delete): only the confirmation."""

    def service_kwargs(self) -> dict[str, Any]:
        return {}


class LeaseForm(forms.Form):
    extend_minutes = forms.IntegerField(label="Extend by (minutes)", min_value=1, max_value=100 * 365 * 24 * 60)

    def service_kwargs(self) -> dict[str, Any]:
        return {"extend_by_ms": self.cleaned_data["extend_minutes"] * MINUTE_MS}


class ServicesForm(forms.Form):
    """Services to act on; ``required`` for add / remove, optional (all) for start, stop, restart."""

    services = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)

    def __init__(self, *args: Any, choices: list[str], required: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["services"]
        field.choices = [(name, name) for name in choices]
        field.required = required
        field.help_text = "" if required else "None checked: all of the cluster's services."

    def service_kwargs(self) -> dict[str, Any]:
        return {"services": list(self.cleaned_data["services"])}


class ReconfigureForm(forms.Form):
    config = JSONObjectField(help_text="The whole new config (it replaces the current one).")
    restart = forms.BooleanField(required=False, initial=True, help_text="Stop services before, start after.")

    def service_kwargs(self) -> dict[str, Any]:
        return {"config": self.cleaned_data["config"], "restart": self.cleaned_data["restart"]}

    def clean_config(self) -> dict[str, Any]:
        config = self.cleaned_data.get("config")
        if config is None:
            raise forms.ValidationError("give the whole config as a JSON object ({} for none)")
        return config


class ScaleOutForm(forms.Form):
    count = forms.IntegerField(label="Nodes to add", min_value=1, max_value=100_000)

    def service_kwargs(self) -> dict[str, Any]:
        return {"count": self.cleaned_data["count"]}


class ScaleInForm(forms.Form):
    count = forms.IntegerField(label="Nodes to remove", min_value=1, max_value=100_000, required=False)
    nodes = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, help_text="Or pick the nodes to remove."
    )

    def __init__(self, *args: Any, nodes: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["nodes"].choices = [(str(number), f"{number} {hostname}") for number, hostname in nodes]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("count")) == bool(data.get("nodes")):
            raise forms.ValidationError("give either a number of nodes to remove or pick the nodes, not both")
        return data

    def service_kwargs(self) -> dict[str, Any]:
        if self.cleaned_data.get("nodes"):
            return {"nodes": [int(number) for number in self.cleaned_data["nodes"]]}
        return {"count": self.cleaned_data["count"]}


class RepairForm(forms.Form):
    nodes = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Leave empty to repair every degraded, unreachable or missing node; a picked node that is not "
        "degraded is replaced.",
    )  # fmt: skip

    def __init__(self, *args: Any, nodes: list[tuple[int, str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["nodes"].choices = [(str(n), f"{n} {hostname} ({health})") for n, hostname, health in nodes]

    def service_kwargs(self) -> dict[str, Any]:
        return {"nodes": [int(number) for number in self.cleaned_data.get("nodes") or []]}


class SyncForm(forms.Form):
    restart = forms.BooleanField(required=False, help_text="Restart services around the reconfigure.")

    def service_kwargs(self) -> dict[str, Any]:
        return {"restart": self.cleaned_data["restart"]}
