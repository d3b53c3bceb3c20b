"""Self-service pages: the catalog, creating clusters, watching them and operating them, API tokens.

Views are thin: they read through ``frontend.selectors`` and act through the clusters and tenants services,
so a page can do exactly what the API lets the same user do, with the same checks and audit events. The
service's errors are shown next to the field that caused them (``forms.add_service_error``).

The acting tenant is the one chosen in the header (kept in the session) for users in several tenants; a
cluster page works for a cluster in any of the user's tenants, and anything else (another tenant's cluster,
a member's cluster not shared with the user) is a 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms as django_forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_http_methods, require_POST

from clusters.features.leases import cluster_lease, lease_end, lease_policy
from clusters.models import Cluster
from clusters.services import day2
from clusters.services.lifecycle import ACTIVE_JOB_STATUSES, cluster_create, cluster_delete
from clusters.services.operations import (
    cluster_abort,
    cluster_lease_extend,
    cluster_pause,
    cluster_resume,
    cluster_retry,
)
from clusters.services.preview import cluster_preview
from tenants.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from tenants.models import Tenant
from tenants.services import api_token_create, api_token_revoke

from . import forms, selectors
from .pictures import Bar, DagTask, dag_from_plan, dag_svg, gantt_svg, task_label

SESSION_TENANT = "loom_tenant"


# --- layout and tenant ---------------------------------------------------------------------------------------


def current_tenant(request: HttpRequest) -> Tenant | None:
    """The tenant the pages act in: the one chosen in the header if the user still belongs to it, else the
    first of theirs by name (None for a user in no tenant)."""
    tenants = selectors.tenants_for(user=request.user)
    chosen = request.session.get(SESSION_TENANT)
    return next((t for t in tenants if t.name == chosen), tenants[0] if tenants else None)


def page(request: HttpRequest, template: str, context: dict[str, Any], *, status: int = 200) -> HttpResponse:
    """Render ``template`` with what the header needs: the user's tenants, the current one, the admin link."""
    tenant = context.get("tenant") or current_tenant(request)
    header = {
        "tenants": selectors.tenants_for(user=request.user),
        "tenant": tenant,
        "is_tenant_admin": request.user.is_superuser or selectors.is_tenant_admin(user=request.user, tenant=tenant),
    }
    return render(request, template, {**header, **context}, status=status)


def require_tenant(request: HttpRequest) -> Tenant:
    tenant = current_tenant(request)
    if tenant is None:
        raise Http404("you are not a member of any tenant yet")
    return tenant


def _safe_next(request: HttpRequest, target: str | None) -> str:
    allowed = url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure())
    return target if target and allowed else reverse("frontend:home")


@login_required
@require_POST
def tenant_switch(request: HttpRequest) -> HttpResponse:
    """Choose the tenant the pages act in (stored in the session); a tenant the user is not in is a 404."""
    form = forms.TenantSwitchForm(request.POST)
    if not form.is_valid():
        raise Http404("no such tenant")
    names = {tenant.name for tenant in selectors.tenants_for(user=request.user)}
    if form.cleaned_data["tenant"] not in names:
        raise Http404("no such tenant")
    request.session[SESSION_TENANT] = form.cleaned_data["tenant"]
    return HttpResponseRedirect(_safe_next(request, form.cleaned_data.get("next")))


# --- catalog -------------------------------------------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The catalog: the templates the user may launch in the current tenant, with sizes and hourly cost."""
    tenant = current_tenant(request)
    entries = selectors.catalog_entries(user=request.user, tenant=tenant) if tenant else []
    return page(request, "frontend/home.html", {"tenant": tenant, "entries": entries})


# --- API tokens ----------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """List the user's tokens and make new ones; a new token's key is shown on this answer only."""
    form = forms.TokenCreateForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        try:
            created = api_token_create(user=request.user, **form.cleaned_data)
        except ApplicationError as error:
            forms.add_service_error(form, error)
        else:
            new_key, form = created.key, forms.TokenCreateForm()
    response = page(request, "frontend/tokens.html",
                    {"form": form, "new_key": new_key, "tokens": selectors.tokens_for(user=request.user)})  # fmt: skip
    response["Cache-Control"] = "no-store"  # the key must not linger in a cache
    return response


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        token = api_token_revoke(user=request.user, token=selectors.token_for(user=request.user, pk=pk))
    except NotFound as error:
        raise Http404(error.message) from error
    messages.success(request, f"Token {token.name} ({token.key_prefix}) revoked.")
    return redirect("frontend:tokens")


# --- clusters ------------------------------------------------------------------------------------------------

LIST_FILTERS = ("live", "status", "template", "name")


@login_required
def clusters(request: HttpRequest) -> HttpResponse:
    """The current tenant's clusters the user sees, filtered; htmx asks for the table alone to refresh it."""
    tenant = require_tenant(request)
    filters = {key: request.GET.get(key, "") for key in LIST_FILTERS}
    if "live" not in request.GET:
        filters["live"] = "true"
    paged, rows = selectors.cluster_rows(user=request.user, tenant=tenant, filters=filters,
                                         page=request.GET.get("page") or 1)  # fmt: skip
    context = {
        "tenant": tenant,
        "rows": rows,
        "paged": paged,
        "filters": filters,
        "statuses": Cluster.Status.choices,
        "busy": any(row.job is not None and row.job.status in ACTIVE_JOB_STATUSES for row in rows),
        "query": urlencode({key: value for key, value in filters.items() if value}),
    }
    if request.headers.get("HX-Request"):
        return render(request, "frontend/_cluster_table.html", context)
    return page(request, "frontend/clusters.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def cluster_new(request: HttpRequest) -> HttpResponse:
    """The create form. "Preview" shows the layout, plan and cost; "Create" creates and opens the cluster."""
    tenant = require_tenant(request)
    names = selectors.catalog_names(user=request.user, tenant=tenant)
    initial: dict[str, Any] = {}
    chosen = request.GET.get("template")
    if chosen in names["templates"]:
        initial["template"] = chosen
        try:
            resolved = selectors.template_resolved(user=request.user, tenant=tenant, name=chosen)
            initial["size"] = max(int(((resolved.get("constraints") or {}).get("size") or {}).get("min") or 1), 1)
        except ApplicationError:
            pass
    form = forms.ClusterCreateForm(request.POST or None, names=names, initial=initial)
    preview = None
    if request.method == "POST" and form.is_valid():
        try:
            if "create" in request.POST:
                cluster, _job = cluster_create(user=request.user, tenant=tenant, request=form.preview_request(),
                                               lease_ms=form.lease_ms(),
                                               description=form.cleaned_data.get("description") or "")  # fmt: skip
                messages.success(request, f"Creating cluster {cluster.name}.")
                return redirect("frontend:cluster", pk=cluster.pk)
            preview = cluster_preview(user=request.user, tenant=tenant, request=form.preview_request()).to_json()
        except ApplicationError as error:
            forms.add_service_error(form, error)
    advanced = ("services", "provider", "hardwaretype", "imagetype", "lease_minutes", "dns_suffix", "config")
    open_advanced = request.method == "POST" and any(form.data.get(name) or name in form.errors for name in advanced)
    return page(request, "frontend/cluster_new.html", {
        "tenant": tenant, "form": form, "preview": preview, "open_advanced": open_advanced,
        "dag": dag_from_plan(preview["plan"]) if preview else None,
    })  # fmt: skip


def _cluster_or_404(request: HttpRequest, pk: int) -> Cluster:
    try:
        return selectors.cluster_for_page(user=request.user, pk=pk)
    except NotFound as error:
        raise Http404(error.message) from error


def _live_context(request: HttpRequest, cluster: Cluster) -> dict[str, Any]:
    job_pk = request.GET.get("job")
    try:
        live = selectors.cluster_live(cluster=cluster, job_pk=int(job_pk) if job_pk and job_pk.isdigit() else None)
    except NotFound as error:
        raise Http404(error.message) from error
    now = timezone.now()
    bars = [
        Bar(row=task.key, label=task_label(task.action, task.service, task.node.hostname if task.node else None),
            start=attempt.started_at, end=attempt.finished_at, outcome=attempt.outcome)
        for task in live.tasks
        for attempt in task.task_attempts.all()
    ]  # fmt: skip
    dag_tasks = [
        DagTask(key=task.key, stage=task.stage, status=task.status,
                label=task_label(task.action, task.service, task.node.hostname if task.node else None))
        for task in live.tasks
    ]  # fmt: skip
    if live.job is not None and live.edges:
        dag_tasks += [DagTask(key=key, stage=stage, label="join", is_join=True)
                      for key, stage in selectors.job_join_keys(live.job).items()]  # fmt: skip
    return {
        "live": live,
        "cluster": live.cluster,
        "may_change": selectors.may_change(user=request.user, cluster=live.cluster),
        "gantt": gantt_svg(bars, now=now),
        "dag": dag_svg(dag_tasks, live.edges),
        "job_query": f"?job={live.job.pk}" if job_pk and live.job else "",
        "operations": OPERATIONS,
    }


@login_required
def cluster(request: HttpRequest, pk: int) -> HttpResponse:
    """A cluster: status and progress that refresh in place while a job runs, nodes, pictures, actions."""
    found = _cluster_or_404(request, pk)
    return page(request, "frontend/cluster.html", {"tenant": found.tenant, **_live_context(request, found)})


@login_required
def cluster_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the cluster page alone, which htmx polls every second while a job is active."""
    found = _cluster_or_404(request, pk)
    return render(request, "frontend/_cluster_live.html", _live_context(request, found))


# --- operations: each confirmed against its preview ----------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One thing a user can do to a cluster: its form, what it would do (shown before confirming), and the
    service call. ``preview`` returns a dict the confirmation page shows; ``day2`` previews are the
    services' own ``Day2Change.to_json()``."""

    slug: str
    title: str
    button: str
    make_form: Callable[[Any, Cluster, Any], django_forms.Form]
    preview: Callable[[Any, Cluster, dict[str, Any]], dict[str, Any]]
    run: Callable[[Any, Cluster, dict[str, Any]], str]
    day2: bool = False
    danger: bool = False


def _job_preview(user: Any, cluster: Cluster, kwargs: dict[str, Any]) -> dict[str, Any]:
    live = selectors.cluster_live(cluster=cluster)
    job = live.job
    return {
        "job": job,
        "progress": live.progress,
        "unfinished": selectors.task_counts(job, ("waiting", "queued")) if job else 0,
        "running": selectors.task_counts(job, ("running",)) if job else 0,
        "to_retry": selectors.task_counts(job, ("failed", "dropped")) if job else 0,
    }


def _delete_preview(user: Any, cluster: Cluster, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": selectors.live_nodes(cluster)}


def _lease_preview(user: Any, cluster: Cluster, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The new expiry, checked against the template's lease policy as the service will check it."""
    if cluster.expires_at is None:
        raise Conflict(f"cluster {cluster.name} never expires; there is no lease to extend")
    new = lease_end(cluster.expires_at, kwargs["extend_by_ms"])
    lease_policy(cluster).check_extension(created_at=cluster.created_at, expires_at=cluster.expires_at, new=new,
                                          now=timezone.now(), field_name="extend_by")  # fmt: skip
    return {"lease": cluster_lease(cluster), "new_expiry": new}


def _job_run(service: Callable[..., Any], done: str) -> Callable[[Any, Cluster, dict[str, Any]], str]:
    def run(user: Any, cluster: Cluster, kwargs: dict[str, Any]) -> str:
        result = service(user=user, cluster=cluster, **kwargs)
        return f"{done} (job {result.pk})." if getattr(result, "operation", None) else f"{done}."

    return run


def _day2(slug: str, service: Callable[..., day2.Day2Outcome], title: str,
          make_form: Callable[[Any, Cluster, Any], Any], button: str) -> Operation:  # fmt: skip
    def preview(user: Any, cluster: Cluster, kwargs: dict[str, Any]) -> dict[str, Any]:
        change = service(user=user, cluster=cluster, preview=True, **kwargs).change.to_json()
        return {"change": change, "dag": dag_from_plan(change["plan"])}

    def run(user: Any, cluster: Cluster, kwargs: dict[str, Any]) -> str:
        outcome = service(user=user, cluster=cluster, **kwargs)
        return f"{title} started (job {outcome.job.pk})." if outcome.job else f"{title}: nothing to run."

    return Operation(slug, title, button, make_form, preview, run, day2=True)


def _services_choices(cluster: Cluster, user: Any, adding: bool) -> list[str]:
    if not adding:
        return sorted(cluster.services)
    try:
        resolved = selectors.template_resolved(user=user, tenant=cluster.tenant, name=cluster.template_name)
    except ApplicationError:
        return []
    compatible = (resolved.get("compatibility") or {}).get("services") or []
    return sorted(set(compatible) - set(cluster.services))


def _services_form(required: bool, adding: bool = False) -> Callable[[Any, Cluster, Any], forms.ServicesForm]:
    def make(data: Any, cluster: Cluster, user: Any) -> forms.ServicesForm:
        return forms.ServicesForm(data, choices=_services_choices(cluster, user, adding), required=required)

    return make


def _plain(form_class: type[django_forms.Form]) -> Callable[[Any, Cluster, Any], django_forms.Form]:
    return lambda data, cluster, user: form_class(data)


def _reconfigure_form(data: Any, cluster: Cluster, user: Any) -> forms.ReconfigureForm:
    return forms.ReconfigureForm(data, initial={"config": json.dumps(cluster.config, indent=2), "restart": True})


def _scale_in_form(data: Any, cluster: Cluster, user: Any) -> forms.ScaleInForm:
    return forms.ScaleInForm(data, nodes=selectors.node_numbers(cluster))


def _repair_form(data: Any, cluster: Cluster, user: Any) -> forms.RepairForm:
    return forms.RepairForm(data, nodes=selectors.node_health(cluster))


OPERATION_LIST = [
    Operation("abort", "Abort", "Abort the job", _plain(forms.EmptyForm), _job_preview,
              _job_run(cluster_abort, "Aborted"), danger=True),
    Operation("pause", "Pause", "Pause the job", _plain(forms.EmptyForm), _job_preview,
              _job_run(cluster_pause, "Paused")),
    Operation("resume", "Resume", "Resume the job", _plain(forms.EmptyForm), _job_preview,
              _job_run(cluster_resume, "Resumed")),
    Operation("retry", "Retry", "Retry the failed tasks", _plain(forms.EmptyForm), _job_preview,
              _job_run(cluster_retry, "Retrying")),
    Operation("lease", "Extend lease", "Extend the lease", _plain(forms.LeaseForm), _lease_preview,
              _job_run(cluster_lease_extend, "Lease extended")),
    _day2("scale-out", day2.cluster_scale_out, "Scale out", _plain(forms.ScaleOutForm), "Add the nodes"),
    _day2("scale-in", day2.cluster_scale_in, "Scale in", _scale_in_form, "Remove the nodes"),
    _day2("add-services", day2.cluster_services_add, "Add services", _services_form(True, adding=True), "Add"),
    _day2("remove-services", day2.cluster_services_remove, "Remove services", _services_form(True), "Remove"),
    _day2("start-services", day2.cluster_services_start, "Start services", _services_form(False), "Start"),
    _day2("stop-services", day2.cluster_services_stop, "Stop services", _services_form(False), "Stop"),
    _day2("restart-services", day2.cluster_services_restart, "Restart services", _services_form(False), "Restart"),
    _day2("reconfigure", day2.cluster_reconfigure, "Reconfigure", _reconfigure_form, "Apply the config"),
    _day2("sync", day2.cluster_sync, "Sync to template", _plain(forms.SyncForm), "Sync"),
    _day2("repair", day2.cluster_repair, "Repair", _repair_form, "Repair"),
    Operation("delete", "Delete", "Delete the cluster", _plain(forms.EmptyForm), _delete_preview,
              _job_run(cluster_delete, "Deleting"), danger=True),
]  # fmt: skip
OPERATIONS = {operation.slug: operation for operation in OPERATION_LIST}


@login_required
@require_http_methods(["GET", "POST"])
def cluster_operation(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    """Ask for the operation's input, show what it would do, and run it only once that is confirmed.

    GET: the form (an operation without input shows its preview at once). POST without ``confirm``: the
    preview of what was asked. POST with ``confirm``: run it, then back to the cluster page. A user who may
    see but not change the cluster gets a 403; anything the service refuses is shown on the form."""
    operation = OPERATIONS.get(slug)
    if operation is None:
        raise Http404(f"no operation {slug}")
    found = _cluster_or_404(request, pk)
    if not selectors.may_change(user=request.user, cluster=found):
        raise DjangoPermissionDenied(f"you may view cluster {found.name} but not change it")
    data = request.POST if request.method == "POST" else None
    form = operation.make_form(data, found, request.user)
    if not form.fields and data is None:  # nothing to ask: show what it would do at once
        form = operation.make_form({}, found, request.user)
    preview = None
    if form.is_bound and form.is_valid():
        kwargs = form.service_kwargs()  # type: ignore[attr-defined]
        try:
            if data is not None and "confirm" in data:
                messages.success(request, operation.run(request.user, found, kwargs))
                return redirect("frontend:cluster", pk=found.pk)
            preview = operation.preview(request.user, found, kwargs)
        except PermissionDenied as error:
            raise DjangoPermissionDenied(error.message) from error
        except ApplicationError as error:
            forms.add_service_error(form, error)
    return page(request, "frontend/operation.html", {
        "tenant": found.tenant, "cluster": found, "operation": operation, "form": form, "preview": preview,
    })  # fmt: skip
