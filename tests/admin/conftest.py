"""Admin test helpers: staff tenant admins, logged-in clients, and a browser-like form reader.

``form_fields(response)`` reads the change form's HTML the way a browser submits it (inputs, checked boxes,
selected options, textareas; not the row templates used by "Add another row"), so a test edits the page
it was shown instead of guessing field names, and the templates are exercised too.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client

from templates_app.services import catalog_import
from tenants.models import Role, Tenant
from tests.factories import TenantFactory, member

ADMIN = "/admin"


class _FormReader(HTMLParser):
    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.in_form = False
        self.template_depth = 0
        self.fields: list[tuple[str, str]] = []
        self.select: tuple[str, bool] | None = None
        self.select_options: list[tuple[str, bool]] = []
        self.option_value: str | None = None
        self.option_selected = False
        self.option_text = ""
        self.textarea: str | None = None
        self.textarea_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "form" and attributes.get("id") == self.form_id:
            self.in_form = True
        if not self.in_form:
            return
        if tag == "template":
            self.template_depth += 1
        if self.template_depth:
            return
        name = attributes.get("name")
        if tag == "input" and name and "disabled" not in attributes:
            kind = attributes.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in attributes:
                    self.fields.append((name, attributes.get("value", "on")))
            elif kind not in ("submit", "button", "file", "image", "reset"):
                self.fields.append((name, attributes.get("value", "")))
        elif tag == "select" and name:
            self.select = (name, "multiple" in attributes)
            self.select_options = []
        elif tag == "option" and self.select:
            self.option_value = attributes.get("value")
            self.option_selected = "selected" in attributes
            self.option_text = ""
        elif tag == "textarea" and name:
            self.textarea, self.textarea_text = name, ""

    def handle_data(self, data: str) -> None:
        if self.textarea is not None:
            self.textarea_text += data
        elif self.option_value is None and self.select is not None:
            self.option_text += data

    def handle_endtag(self, tag: str) -> None:
        if not self.in_form:
            return
        if tag == "template":
            self.template_depth -= 1
        elif tag == "form":
            self.in_form = False
        elif tag == "option" and self.select is not None:
            value = self.option_value if self.option_value is not None else self.option_text.strip()
            self.select_options.append((value, self.option_selected))
            self.option_value = None
        elif tag == "select" and self.select is not None:
            name, multiple = self.select
            chosen = [value for value, selected in self.select_options if selected]
            if not multiple and not chosen and self.select_options:
                chosen = [self.select_options[0][0]]
            self.fields.extend((name, value) for value in chosen)
            self.select = None
        elif tag == "textarea" and self.textarea is not None:
            # Browsers drop the one newline that follows <textarea>.
            text = self.textarea_text[1:] if self.textarea_text.startswith("\n") else self.textarea_text
            self.fields.append((self.textarea, text))
            self.textarea = None


def form_fields(response: Any) -> dict[str, Any]:
    """The change form's submission: name → value, or a list for repeated names (multi-selects)."""
    model_name = response.context["opts"].model_name
    reader = _FormReader(f"{model_name}_form")
    reader.feed(response.content.decode())
    data: dict[str, Any] = {}
    for name, value in reader.fields:
        if name in data:
            data[name] = [*data[name], value] if isinstance(data[name], list) else [data[name], value]
        else:
            data[name] = value
    return data


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def field_errors(response: Any, field: str) -> list[str]:
    return list(response.context["adminform"].form.errors.get(field, []))


def url(model: type, action: str = "changelist", pk: Any = None) -> str:
    base = f"{ADMIN}/{model._meta.app_label}/{model._meta.model_name}"
    if action == "changelist":
        return f"{base}/"
    if action == "add":
        return f"{base}/add/"
    return f"{base}/{pk}/{action}/"


@pytest.fixture
def staff_admin_a(admin_a: Any) -> Any:
    """Tenant A's admin, able to log into the admin.

    ``membership_save`` keeps ``is_staff`` in step with the admin role, but the shared fixtures create
    memberships with a factory, so the flag is set here.
    """
    admin_a.is_staff = True
    admin_a.save(update_fields=["is_staff"])
    return admin_a


@pytest.fixture
def staff_admin_b(admin_b: Any) -> Any:
    admin_b.is_staff = True
    admin_b.save(update_fields=["is_staff"])
    return admin_b


@pytest.fixture
def staff_user_a(user_a: Any) -> Any:
    """A plain member of tenant A who is staff anyway: may look, may not change."""
    user_a.is_staff = True
    user_a.save(update_fields=["is_staff"])
    return user_a


@pytest.fixture
def login() -> Callable[[Any], Client]:
    def make(user: Any) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def catalog_b(tenant_b: Tenant, samples: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Tenant B with the same sample catalog (same names, so only tenant restriction tells them apart)."""
    catalog_import(tenant=tenant_b, user=None, data=samples)
    return samples


@pytest.fixture
def tenant_c(db: None) -> Tenant:
    return TenantFactory(name="initech")


@pytest.fixture
def staff_user_b(user_b: Any) -> Any:
    user_b.is_staff = True
    user_b.save(update_fields=["is_staff"])
    return user_b


def make_member(tenant: Tenant, role: str = Role.USER, **kwargs: Any) -> Any:
    return member(tenant, role, **kwargs)
