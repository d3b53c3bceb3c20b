"""Shared admin machinery: tenant restriction by membership role, and writes that go through services.

Tenant admins are staff users *without* Django model permissions: what they may do follows from their
``Membership`` role, so every permission hook here answers from the roles (read once per request) instead
of ``user.has_perm``. Objects outside the restricted queryset answer 404, never a redirect or a 403, so the
admin does not reveal that another tenant's object exists.

Django's admin validates a form and only then calls ``save_model``, where an error can no longer reach the
form (it would be a 500). The services are the only complete validators (a catalog save checks the whole
catalog), so a service-backed form calls its service as the last step of its own validation. The admin runs
every POST in a transaction, and the form calls the service only when everything else is valid, so nothing
can make the page re-render after the write has happened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect

from .errors import ApplicationError
from .models import Membership, Role, Tenant

_ROLES_ATTRIBUTE = "_loom_tenant_roles"


# --- who may do what ------------------------------------------------------------------------------


def is_platform_admin(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_authenticated and user.is_active and user.is_superuser)


def tenant_roles(request: HttpRequest) -> dict[int, str]:
    """tenant pk → the requesting user's role there, read once per request (the admin asks a lot)."""
    roles = getattr(request, _ROLES_ATTRIBUTE, None)
    if roles is None:
        user = request.user
        roles = {}
        if user.is_authenticated and user.is_active:
            roles = dict(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
        setattr(request, _ROLES_ATTRIBUTE, roles)
    return roles


def member_tenant_pks(request: HttpRequest) -> set[int]:
    return set(tenant_roles(request))


def admin_tenant_pks(request: HttpRequest) -> set[int]:
    return {pk for pk, role in tenant_roles(request).items() if role == Role.ADMIN}


def administered_tenants(request: HttpRequest) -> QuerySet[Tenant]:
    """Tenants the user may create things in: all for superusers, else those they administer."""
    if is_platform_admin(request):
        return Tenant.objects.order_by("name")
    return Tenant.objects.filter(pk__in=admin_tenant_pks(request)).order_by("name")


def limit_tenant_field(form: forms.BaseForm, request: HttpRequest, *, adding: bool) -> None:
    """On add, offer only the tenants the user administers; on change the tenant is fixed, so drop the field."""
    if adding:
        tenants = administered_tenants(request)
        form.fields["tenant"].queryset = tenants  # type: ignore[attr-defined]
        if len(tenants) > 1:
            form.fields["tenant"].empty_label = "---------"  # type: ignore[attr-defined]
    else:
        del form.fields["tenant"]


class ReadOnlyAdminMixin:
    """Records written only by services (versions, tokens, audit events): the admin lists and shows them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TenantListFilter(admin.SimpleListFilter):
    """A tenant filter that lists only tenants the user belongs to.

    Django's related-field filter would list every tenant in the database, naming other tenants.
    """

    title = "tenant"
    parameter_name = "tenant"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[int, str]]:
        tenants = Tenant.objects.order_by("name")
        if not is_platform_admin(request):
            tenants = tenants.filter(pk__in=member_tenant_pks(request))
        return list(tenants.values_list("pk", "name"))

    def has_output(self) -> bool:
        return len(self.lookup_choices) > 1

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(tenant_id=int(value))
        return queryset


class RestrictedAdminMixin:
    """An object outside ``get_queryset`` is not found: 404 from the change, delete and history views.

    Django would redirect to the index with "doesn't exist" (and the delete view checks permissions
    before existence, which would answer 403); both tell a user that the object id is taken.
    """

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)  # type: ignore[misc]
        if obj is None:
            raise Http404("no such object")
        return obj


class TenantAdminScopeMixin(RestrictedAdminMixin):
    """Superusers see every row; tenant admins the rows of the tenants they administer; nobody else any.

    For what is the tenant's infrastructure rather than its catalog: the engine's rows and the webhook log
    (they describe every cluster of the tenant, not only a member's own), plugin resources (keys, scripts),
    host pools. ``tenant_path`` is how the model reaches its tenant. Put it before
    ``TenantRestrictedAdminMixin`` where members' grants still decide change and delete.
    """

    tenant_path: ClassVar[str] = "tenant"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        rows: QuerySet = super().get_queryset(request)  # type: ignore[misc]
        if is_platform_admin(request):
            return rows
        return rows.filter(**{f"{self.tenant_path}__in": admin_tenant_pks(request)})

    def manages(self, request: HttpRequest) -> bool:
        return is_platform_admin(request) or bool(admin_tenant_pks(request))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.manages(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An object outside the queryset never gets here: get_object answers 404 first.
        return self.manages(request)


class TenantRestrictedAdminMixin(RestrictedAdminMixin):
    """Admin of a ``TenantModel``: members view, tenant admins add, change and delete; superusers all.

    The queryset is ``restrict(user, "view")``. A member holding a django-guardian change or delete grant
    on one object may change or delete that object, as the services allow. Without any admin role the
    changelist offers no bulk actions (Django asks with no object), so grants are used from the object's
    own pages.
    """

    model: type[Model]
    list_select_related = ("tenant",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return self.model.objects.restrict(request.user, "view").select_related("tenant")  # type: ignore[attr-defined]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if is_platform_admin(request):
            return True
        members = member_tenant_pks(request)
        return bool(members) if obj is None else obj.tenant_id in members

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_platform_admin(request) or bool(admin_tenant_pks(request))

    def _may(self, request: HttpRequest, obj: Any, action: str) -> bool:
        """Tenant admins may ``action`` anything of their tenants; members only what a grant names."""
        if is_platform_admin(request):
            return True
        admins = admin_tenant_pks(request)
        if obj is None:
            return bool(admins)
        if obj.tenant_id in admins:
            return True
        if obj.tenant_id not in member_tenant_pks(request):
            return False
        restricted = self.model.objects.restrict(request.user, action)  # type: ignore[attr-defined]
        return bool(restricted.filter(pk=obj.pk).exists())

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, obj, "change")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, obj, "delete")


# --- writes through services ------------------------------------------------------------------------


def add_error_safely(form: forms.BaseForm, field: str | None, message: str) -> None:
    """``form.add_error`` that falls back to a non-field error when the form lacks ``field``."""
    if field is not None and field not in form.fields:
        field = None
    form.add_error(field, message)


class ServiceFormMixin:
    """A form whose validation ends with one service call: the write itself.

    Subclasses implement ``persist()`` (call the service, return the saved object) and may list embedded
    formsets or forms in ``subforms()``; the service is called only when the form and every subform are
    valid. Service errors land on the form: ``error.fields`` keys are mapped to form fields by
    ``problem_field()``; anything unmapped becomes a non-field error naming where it applies. Messages for
    the user (warnings, "nothing changed") go in ``service_messages`` for the admin to show.
    """

    request: HttpRequest  # bound by ServiceBackedAdminMixin.get_form
    instance: Any
    fields: dict[str, forms.Field]
    _errors: Any

    def subforms(self) -> Iterable[Any]:
        return ()

    def persist(self) -> Any:
        raise NotImplementedError

    def problem_field(self, path: str) -> str | None:
        """The form field that a service error key refers to, or None for a non-field error."""
        return path if path in self.fields else None

    def add_service_error(self, path: str, message: str) -> None:
        field = self.problem_field(path)
        if field is None or field not in self.fields:
            where = "" if path in ("", NON_FIELD_ERRORS, "non_field_errors") else f"{path}: "
            self.add_error(None, f"{where}{message}")  # type: ignore[attr-defined]
        else:
            self.add_error(field, message)  # type: ignore[attr-defined]

    def handle_service_error(self, error: ApplicationError) -> None:
        if not error.fields:
            self.add_error(None, error.message)  # type: ignore[attr-defined]
            return
        for path, found in error.fields.items():
            for message in found if isinstance(found, (list, tuple)) else [found]:
                self.add_service_error(str(path), str(message))

    def handle_validation_error(self, error: DjangoValidationError) -> None:
        """Model validation raised inside a service (``full_clean``)."""
        if hasattr(error, "error_dict"):
            for path, found in error.message_dict.items():
                for message in found:
                    self.add_service_error(path, message)
        else:
            for message in error.messages:
                self.add_error(None, message)  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        self.service_messages: list[tuple[int, str]] = []
        subforms_valid = all([subform.is_valid() for subform in self.subforms()])
        if self._errors or not subforms_valid:
            return cleaned
        try:
            self.instance = self.persist()
        except ApplicationError as error:
            self.handle_service_error(error)
        except DjangoValidationError as error:
            self.handle_validation_error(error)
        return cleaned

    def _post_clean(self) -> None:
        """Skip ModelForm's model validation (Django's hook for it runs after ``clean``).

        The service validated and wrote already; validating again would either repeat its checks after
        the write or, after a refused write, validate the blank instance and report bogus errors.
        """

    def is_valid(self) -> bool:
        # Errors that the service reports on a row of an embedded formset leave the form itself without
        # errors, so the rows must be asked too.
        valid = super().is_valid()  # type: ignore[misc]
        return bool(valid) and all([subform.is_valid() for subform in self.subforms()])


class ServiceBackedAdminMixin:
    """ModelAdmin side of ``ServiceFormMixin``: no direct model writes anywhere.

    Saves already happened in the form; ``save_model`` only reports the service's messages. Deletes go
    through ``delete_via_service``; a service refusal (e.g. "still used by ...") becomes an error message
    instead of a 500, and the admin's log entry for the failed delete is rolled back with it.
    """

    form: type[forms.ModelForm]

    def delete_via_service(self, request: HttpRequest, obj: Any) -> None:
        raise NotImplementedError

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> type:
        # The form calls services as the requesting user and needs it for its choices; Django builds a
        # fresh form class per request too (modelform_factory), so a per-request subclass costs nothing.
        return type(self.form.__name__, (self.form,), {"request": request, "model_admin": self})

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        return form.instance

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        for level, message in getattr(form, "service_messages", []):
            self.message_user(request, message, level)  # type: ignore[attr-defined]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing to do: embedded rows are part of the document the service saved."""

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete_via_service(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            self.delete_via_service(request, obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)  # type: ignore[misc]
        except ApplicationError as error:
            self.message_user(request, error.message, messages.ERROR)  # type: ignore[attr-defined]
            return HttpResponseRedirect(request.path)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)  # type: ignore[misc]
        for name, (function, action_name, description) in list(actions.items()):
            actions[name] = (guard_action(function), action_name, description)
        return actions


def guard_action(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run an admin action all-or-nothing; a service refusal becomes an error message, not a 500."""

    @functools.wraps(function)
    def guarded(model_admin: Any, request: HttpRequest, queryset: QuerySet) -> Any:
        try:
            with transaction.atomic():
                return function(model_admin, request, queryset)
        except ApplicationError as error:
            model_admin.message_user(request, error.message, messages.ERROR)
            return None

    return guarded
