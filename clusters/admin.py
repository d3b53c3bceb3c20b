"""Django admin for clusters and webhooks, for superusers and tenant admins (of their own tenants only).

Clusters, nodes, jobs, tasks and attempts are read-only here: they change only through the engine and the
cluster services, never by editing a row. A job's tasks and a cluster's nodes are shown inline up to
``INLINE_LIMIT`` rows (a 10,000-node create has 170,000 tasks), with a link to the full, paginated list.

Webhooks are edited through ``clusters.features.webhooks``. Their secret is write-only: the form's password input is
always empty, blank keeps the stored secret, and no page, list or history entry shows it. The delivery log
is read-only, with a redeliver action.

Every queryset is limited to the tenants the user administers (``TenantAdminScopeMixin``); another tenant's
row answers 404 from every view, as in the other admins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import transaction
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.template import RequestContext, Template
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from clusters.features import metering, webhooks
from clusters.models import Cluster, Job, Node, Task, TaskAttempt, Webhook, WebhookDelivery
from clusters.services import day2
from clusters.services.day2 import Day2Outcome
from providers.secrets import redact
from tenants.admin_mixins import (
    ReadOnlyAdminMixin,
    ServiceBackedAdminMixin,
    ServiceFormMixin,
    TenantAdminScopeMixin,
    TenantListFilter,
    guard_action,
    limit_tenant_field,
)
from tenants.errors import ApplicationError
from tenants.models import Tenant

INLINE_LIMIT = 200
RECENT_DELIVERIES = 20


def pretty_json(value: Any) -> str:
    """JSON for a read-only page, through the log redactor: cluster config is user input and may hold
    a value that is also a registered secret."""
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', redact(json.dumps(value, indent=2)))


def changelist_link(model: type, text: str, **filters: Any) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    return format_html('<a href="{}?{}">{}</a>', url, query, text)


def change_link(obj: Any, text: Any = None) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def tenant_filter(path: str) -> type[TenantListFilter]:
    """The tenant filter for a model that reaches its tenant through ``path`` (e.g. ``cluster__tenant``)."""

    class Filter(TenantListFilter):
        def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
            value = self.value()
            if value and value.isdigit():
                return queryset.filter(**{f"{path}_id": int(value)})
            return queryset

    return Filter


class ReadOnlyInline(admin.TabularInline):
    """Rows shown on their parent's page (which already passed the scope check), never edited here."""

    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class FirstRowsFormSet(BaseInlineFormSet):
    """An inline formset of the first ``INLINE_LIMIT`` rows only; read-only, so nothing is posted back."""

    def get_queryset(self) -> Any:
        if not hasattr(self, "_first_rows"):
            self._first_rows = super().get_queryset()[:INLINE_LIMIT]
        return self._first_rows


def rows_note(count: int, model: type, noun: str, **filters: Any) -> str:
    shown = f"all {count} shown below" if count <= INLINE_LIMIT else f"the first {INLINE_LIMIT} shown below"
    return format_html("{} {} ({}); {}", count, noun, shown, changelist_link(model, f"list all {noun}", **filters))


# --- clusters -----------------------------------------------------------------------------------------------


class NodeInline(ReadOnlyInline):
    model = Node
    formset = FirstRowsFormSet
    # credentials_ref and host_key stay off every page: the one is a secret's name, the other of no use here.
    fields = ("number", "hostname", "status", "hardware", "image", "flavor", "services", "ip_addresses",
              "ssh_user", "machine_id")  # fmt: skip
    readonly_fields = fields
    show_change_link = False


class JobInline(ReadOnlyInline):
    model = Job
    formset = FirstRowsFormSet
    fields = ("operation", "status", "requested_by", "created_at", "finished_at", "message")
    readonly_fields = fields
    verbose_name_plural = "jobs (newest first)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("requested_by").order_by("-created_at", "-pk")


# --- day-2 operations: an action whose form previews the change before it is confirmed ----------------------

DAY2_OPERATIONS: dict[str, tuple[str, Callable[..., Day2Outcome]]] = {
    "reconfigure": ("Reconfigure (replace the config)", day2.cluster_reconfigure),
    "start": ("Start services", day2.cluster_services_start),
    "stop": ("Stop services", day2.cluster_services_stop),
    "restart": ("Restart services", day2.cluster_services_restart),
    "add": ("Add services", day2.cluster_services_add),
    "remove": ("Remove services", day2.cluster_services_remove),
    "scale_out": ("Scale out by count", day2.cluster_scale_out),
    "scale_in": ("Scale in (count, or the listed nodes)", day2.cluster_scale_in),
    "sync": ("Sync to the template's latest version", day2.cluster_sync),
}

DAY2_PAGE = Template(
    """{% extends "admin/base_site.html" %}{% block content %}
<h1>{{ title }}</h1>
<form method="post">{% csrf_token %}
<input type="hidden" name="action" value="day2_operation">
<input type="hidden" name="_selected_action" value="{{ cluster.pk }}">
<table>{{ form.as_table }}</table>
{% if preview %}<h2>Preview</h2>
<p>{{ preview.operation }}: {{ preview.size.before }} → {{ preview.size.after }} nodes; services
{{ preview.services.after|join:", " }}; {{ preview.plan.tasks }} tasks in {{ preview.plan.stages }} stages
({% for action, n in preview.plan.by_action.items %}{{ n }} {{ action }}{% if not forloop.last %}, {% endif %}
{% endfor %}).</p>
{% if preview.restarts %}<p>Restarts: {% for service, nodes in preview.restarts.items %}{{ service }} on
{{ nodes|join:", " }}{% if not forloop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% if preview.nodes.added %}<p>Nodes added: {% for n in preview.nodes.added %}{{ n.hostname }}
{% endfor %}</p>{% endif %}
{% if preview.nodes.removed %}<p>Nodes removed: {% for n in preview.nodes.removed %}{{ n.hostname }}
{% endfor %}</p>{% endif %}
<pre style="white-space: pre-wrap">{{ preview_json }}</pre>
<input type="submit" name="apply" value="Confirm and start the job">{% endif %}
<input type="submit" name="preview" value="Preview">
</form>{% endblock %}"""
)


class Day2Form(forms.Form):
    """What a day-2 operation needs; the fields an operation does not use are ignored."""

    operation = forms.ChoiceField(choices=[(key, label) for key, (label, _) in DAY2_OPERATIONS.items()])
    services = forms.CharField(required=False, help_text="Comma-separated; empty for start/stop/restart = all.")
    count = forms.IntegerField(required=False, min_value=1)
    nodes = forms.CharField(required=False, help_text="Scale in: comma-separated node numbers or hostnames.")
    config = forms.JSONField(required=False, help_text="Reconfigure: the whole new config.")
    restart = forms.BooleanField(required=False, help_text="Reconfigure and sync: restart services around it.")

    def arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        names = [name.strip() for name in (data["services"] or "").split(",") if name.strip()]
        operation = data["operation"]
        if operation == "reconfigure":
            return {"config": data["config"] if data["config"] is not None else {}, "restart": data["restart"]}
        if operation in ("start", "stop", "restart", "add", "remove"):
            return {"services": names}
        if operation == "scale_out":
            return {"count": data["count"] or 0}
        if operation == "scale_in":
            nodes = [name.strip() for name in (data["nodes"] or "").split(",") if name.strip()]
            return {"nodes": nodes} if nodes else {"count": data["count"] or 0}
        return {"restart": data["restart"]}


USAGE_PAGE = Template(
    """{% extends "admin/base_site.html" %}{% block content %}
<h1>{{ title }}</h1>
<p>Node-hours from {{ usage.start }} to {{ usage.end }} (UTC days; <code>?days=</code> changes the range), in
total <strong>{{ usage.total }}</strong>. A machine counts from its successful create to its successful delete
(<code>GET /api/v2/usage/nodes</code> has the same with filters).</p>
{% for heading, rows in tables %}<h2>{{ heading }}</h2><table>
{% for row in rows %}<tr><td>{{ row.name }}</td><td>{{ row.value }}</td></tr>{% empty %}<tr><td>none</td></tr>
{% endfor %}</table>{% endfor %}
<h2>Per day</h2><table>{% for row in usage.data %}<tr><td>{{ row.time }}</td><td>{{ row.value }}</td></tr>
{% endfor %}</table>{% endblock %}"""
)


@admin.register(Cluster)
class ClusterAdmin(TenantAdminScopeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    actions = ("day2_operation",)
    list_display = ("name", "tenant", "owner", "template", "size", "status", "expires_at", "created_at")
    list_filter = (TenantListFilter, "status")
    list_select_related = ("tenant", "owner", "template_version")
    search_fields = ("name", "template_name", "owner__username")
    date_hierarchy = "created_at"
    fieldsets = [
        (None, {"fields": ["name", "tenant", "owner", "status", "status_message", "description", "created_at"]}),
        ("Built from", {"fields": ["template", "provider", "size", "services", "service_versions", "dns_suffix"]}),
        ("Lease", {"fields": ["expires_at", "lease_warned_at"]}),
        ("Configuration", {"fields": ["config_json"], "classes": ["collapse"]}),
        ("Nodes", {"fields": ["node_summary"]}),
    ]
    readonly_fields = ("name", "tenant", "owner", "status", "status_message", "description", "created_at",
                       "template", "provider", "size", "services", "service_versions", "dns_suffix", "expires_at",
                       "lease_warned_at", "config_json", "node_summary")  # fmt: skip
    inlines = (NodeInline, JobInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("tenant", "owner", "template_version", "provider_version")

    def get_urls(self) -> list[Any]:
        usage = path("usage/", self.admin_site.admin_view(self.usage_view), name="clusters_cluster_usage")
        return [usage, *super().get_urls()]

    def usage_view(self, request: HttpRequest) -> HttpResponse:
        """Usage overview: node-hours of the clusters this admin may see (superusers: every tenant) over the
        last ``?days=`` days (default 30), per tenant, user, template and cluster, and per day."""
        if not self.has_view_permission(request):
            raise DjangoPermissionDenied
        try:
            days = min(max(int(request.GET.get("days", "30")), 1), 3660)
        except ValueError:
            days = 30
        end = timezone.now()
        nodes = Node.objects.filter(cluster__in=self.get_queryset(request).values("pk"))
        usage = metering.node_usage(nodes=nodes, start=end - timedelta(days=days), end=end, groupby="day").to_json()
        tables = [("Per tenant", usage["tenants"]), ("Per user", usage["users"]),
                  ("Per template", usage["templates"]), ("Per cluster", usage["clusters"])]  # fmt: skip
        context = {**self.admin_site.each_context(request), "title": "Usage overview", "usage": usage,
                   "tables": tables}  # fmt: skip
        return HttpResponse(USAGE_PAGE.render(RequestContext(request, context)))

    @admin.action(description="Day-2 operation (preview, then confirm)")
    def day2_operation(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> HttpResponse | None:
        """One cluster at a time: the form, then (Preview) what would happen, then (Confirm) the job. The
        services decide who may act on the cluster and refuse a busy one; a refusal is shown on the form."""
        clusters = list(queryset[:2])
        if len(clusters) != 1:
            self.message_user(request, "Select exactly one cluster for a day-2 operation.", messages.ERROR)
            return None
        cluster = clusters[0]
        form = Day2Form(request.POST if "operation" in request.POST else None)
        preview: dict[str, Any] | None = None
        if form.is_valid():
            run = DAY2_OPERATIONS[form.cleaned_data["operation"]][1]
            try:
                with transaction.atomic():
                    outcome = run(user=request.user, cluster=cluster, preview="apply" not in request.POST,
                                  **form.arguments())  # fmt: skip
            except ApplicationError as error:
                form.add_error(None, error.message)
            else:
                if outcome.job is not None or "apply" in request.POST:
                    what = change_link(outcome.job) if outcome.job is not None else "the template pin moved"
                    self.message_user(request, format_html("{}: {}", cluster.name, what), messages.SUCCESS)
                    return None
                preview = outcome.change.to_json()
        context = {**self.admin_site.each_context(request), "title": f"Day-2 operation on {cluster.name}",
                   "cluster": cluster, "form": form, "preview": preview,
                   "preview_json": redact(json.dumps(preview, indent=2)) if preview else ""}  # fmt: skip
        return HttpResponse(DAY2_PAGE.render(RequestContext(request, context)))

    @admin.display(description="template", ordering="template_name")
    def template(self, obj: Cluster) -> str:
        return f"{obj.template_name} (version {obj.template_version.version})"

    @admin.display(description="provider")
    def provider(self, obj: Cluster) -> str:
        return f"{obj.provider_name} (version {obj.provider_version.version})"

    @admin.display(description="config")
    def config_json(self, obj: Cluster) -> str:
        return pretty_json(obj.config)

    @admin.display(description="nodes")
    def node_summary(self, obj: Cluster) -> str:
        return rows_note(obj.nodes.count(), Node, "nodes", cluster__id__exact=obj.pk)


@admin.register(Node)
class NodeAdmin(TenantAdminScopeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The full node list behind a cluster's inline, filterable by cluster and status."""

    tenant_path = "cluster__tenant"
    list_display = ("hostname", "cluster", "number", "status", "hardware", "image", "machine_id")
    list_filter = (tenant_filter(tenant_path), "status")
    list_select_related = ("cluster",)
    search_fields = ("hostname", "machine_id", "cluster__name")
    fields = ("cluster", "number", "hostname", "status", "hardware", "image", "flavor", "image_id", "services",
              "ip_addresses", "ssh_user", "machine_id", "created_at")  # fmt: skip
    readonly_fields = fields


# --- jobs, tasks, attempts ----------------------------------------------------------------------------------


class TaskInline(ReadOnlyInline):
    model = Task
    formset = FirstRowsFormSet
    fields = ("key", "node", "action", "service", "status", "attempts", "waiting_reason")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("node").order_by("key")


@admin.register(Job)
class JobAdmin(TenantAdminScopeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    tenant_path = "cluster__tenant"
    list_display = ("__str__", "cluster", "tenant", "operation", "status", "requested_by", "created_at",
                    "finished_at")  # fmt: skip
    list_filter = (tenant_filter(tenant_path), "status", "operation")
    list_select_related = ("cluster__tenant", "requested_by")
    search_fields = ("cluster__name",)
    date_hierarchy = "created_at"
    fields = ("cluster", "operation", "status", "message", "requested_by", "max_attempts", "task_timeout_seconds",
              "created_at", "started_at", "finished_at", "task_summary")  # fmt: skip
    readonly_fields = fields
    inlines = (TaskInline,)

    @admin.display(description="tenant", ordering="cluster__tenant__name")
    def tenant(self, obj: Job) -> Tenant:
        return obj.cluster.tenant

    @admin.display(description="tasks")
    def task_summary(self, obj: Job) -> str:
        counts = dict(
            Task.objects.filter(job=obj).order_by().values("status").annotate(n=Count("pk")).values_list("status", "n")
        )
        by_status = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        note = rows_note(sum(counts.values()), Task, "tasks", job__id__exact=obj.pk)
        return format_html("{}<br>{}", by_status or "none", note)


class TaskAttemptInline(ReadOnlyInline):
    model = TaskAttempt
    fields = ("number", "worker", "outcome", "error_class", "retryable", "started_at", "finished_at")
    readonly_fields = fields


@admin.register(Task)
class TaskAdmin(TenantAdminScopeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The full task list behind a job's inline; each task with its attempts."""

    list_display = ("__str__", "job", "node", "action", "service", "status", "attempts", "waiting_reason")
    list_filter = (TenantListFilter, "status", "action")
    list_select_related = ("job", "node")
    search_fields = ("service", "node__hostname")
    fields = ("job", "key", "node", "action", "service", "label", "status", "stage", "pending_deps", "attempts",
              "max_attempts", "timeout_seconds", "waiting_reason", "worker", "heartbeat_at", "not_before",
              "dispatched_at")  # fmt: skip
    readonly_fields = fields
    inlines = (TaskAttemptInline,)


@admin.register(TaskAttempt)
class TaskAttemptAdmin(TenantAdminScopeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    tenant_path = "task__tenant"
    list_display = ("__str__", "task", "number", "worker", "outcome", "error_class", "retryable", "started_at",
                    "finished_at")  # fmt: skip
    list_filter = (tenant_filter(tenant_path), "outcome", "retryable")
    list_select_related = ("task",)
    search_fields = ("worker", "error_class")
    fields = ("task", "job", "number", "worker", "outcome", "error_class", "retryable", "started_at",
              "finished_at", "output")  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The full log can be large; the page shows the tail.
        return super().get_queryset(request).select_related("task__job").defer("log")

    @admin.display(description="job")
    def job(self, obj: TaskAttempt) -> str:
        return change_link(obj.task.job)

    @admin.display(description="log tail")
    def output(self, obj: TaskAttempt) -> str:
        """The last 2 KiB, redacted when written and once more here (secrets registered since)."""
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', redact(obj.log_tail))


# --- webhooks -----------------------------------------------------------------------------------------------


class WebhookForm(ServiceFormMixin, forms.ModelForm):
    """Create or change a webhook through ``clusters.features.webhooks``; the secret input never shows a value."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    name = forms.CharField(max_length=255, help_text="Cannot be changed later.")
    url = forms.CharField(
        label="URL",
        max_length=webhooks.URL_MAX_LENGTH,
        widget=forms.URLInput(attrs={"size": 80}),
        help_text="http:// or https:// address the events are POSTed to.",
    )
    secret = forms.CharField(
        required=False,
        strip=False,
        max_length=webhooks.SECRET_MAX_LENGTH,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    events = forms.MultipleChoiceField(
        choices=[(event, event) for event in webhooks.EVENTS],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: every event.",
    )
    active = forms.BooleanField(required=False, initial=True)

    class Meta:
        model = Webhook
        fields: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adding = self.instance.pk is None
        limit_tenant_field(self, self.request, adding=self.adding)
        secret_help = (
            f"Signs every request (HMAC-SHA256); at least {webhooks.SECRET_MIN_LENGTH} characters. Never shown again."
        )
        if not self.adding:
            del self.fields["name"]
            for name in ("url", "events", "active"):
                self.initial.setdefault(name, getattr(self.instance, name))
            stored = webhooks.webhook_has_secret(self.instance)
            secret_help += " A secret is stored: leave blank to keep it." if stored else " No secret is stored."
        self.fields["secret"].help_text = secret_help

    def persist(self) -> Webhook:
        data = self.cleaned_data
        actor = self.request.user
        if self.adding:
            return webhooks.webhook_create(
                actor=actor, tenant=data["tenant"], name=data["name"], url=data["url"], secret=data["secret"],
                events=data["events"], active=data["active"],
            )  # fmt: skip
        return webhooks.webhook_update(
            actor=actor, webhook=self.instance, url=data["url"], secret=data["secret"] or None,
            events=data["events"], active=data["active"],
        )  # fmt: skip


@admin.register(Webhook)
class WebhookAdmin(TenantAdminScopeMixin, ServiceBackedAdminMixin, admin.ModelAdmin):
    form = WebhookForm
    list_display = ("name", "tenant", "url", "subscribed", "active", "secret_stored", "created_at")
    list_filter = (TenantListFilter, "active")
    list_select_related = ("tenant",)
    search_fields = ("name", "url")
    actions = ("ping",)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[str | None, dict[str, Any]]]:
        editable = ["url", "secret", "events", "active"]
        if obj is None:
            return [(None, {"fields": ["tenant", "name", *editable]})]
        return [
            (None, {"fields": [("tenant", "name", "created_at"), *editable]}),
            ("Recent deliveries", {"fields": ["recent_deliveries"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if obj is None else ("tenant", "name", "created_at", "recent_deliveries")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.manages(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.manages(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.manages(request)

    def delete_via_service(self, request: HttpRequest, obj: Webhook) -> None:
        webhooks.webhook_delete(actor=request.user, webhook=obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list[str], dict[str, int], set, list]:
        """The confirmation names the webhooks and counts their deliveries.

        Django's default lists every related row (a busy webhook has thousands of deliveries) and demands
        delete permission on them, which the read-only delivery log never grants; the deliveries go with
        their webhook in ``webhook_delete``.
        """
        webhooks_to_delete = list(objs)
        deliveries = WebhookDelivery.objects.filter(webhook__in=webhooks_to_delete).count()
        names = [f"Webhook: {webhook.name} ({webhook.tenant})" for webhook in webhooks_to_delete]
        return names, {"webhooks": len(webhooks_to_delete), "deliveries": deliveries}, set(), []

    @admin.display(description="events")
    def subscribed(self, obj: Webhook) -> str:
        return ", ".join(obj.events) or "all"

    @admin.display(description="secret stored", boolean=True)
    def secret_stored(self, obj: Webhook) -> bool:
        return webhooks.webhook_has_secret(obj)

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, obj: Webhook) -> str:
        recent = list(obj.deliveries.order_by("-created_at", "-pk")[:RECENT_DELIVERIES])
        if not recent:
            return "none yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (change_link(d, d.pk), d.event, d.status, d.attempts, d.response_status or "", d.created_at)
                for d in recent
            ),
        )
        table = format_html(
            "<table><thead><tr><th>delivery</th><th>event</th><th>status</th><th>tries</th><th>HTTP</th>"
            "<th>created</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )
        return format_html("{}{}", table, changelist_link(WebhookDelivery, "all deliveries", webhook__id__exact=obj.pk))

    @admin.action(description="Send a test event (webhook.ping)")
    def ping(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        sent = [webhooks.webhook_ping(actor=request.user, webhook=webhook).pk for webhook in queryset]
        self.message_user(request, f"Queued {len(sent)} test event{'s' if len(sent) != 1 else ''}.", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(TenantAdminScopeMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The delivery log: what was sent where, how often, and what came back. Read-only; redeliver is an action."""

    tenant_path = "webhook__tenant"
    list_display = ("__str__", "webhook", "tenant", "event", "status", "attempts", "response_status", "created_at",
                    "delivered_at")  # fmt: skip
    list_filter = (tenant_filter(tenant_path), "status", "event")
    list_select_related = ("webhook__tenant",)
    search_fields = ("webhook__name", "event")
    date_hierarchy = "created_at"
    fields = ("webhook", "event", "status", "attempts", "next_attempt_at", "response_status", "excerpt", "error",
              "created_at", "delivered_at", "payload_json")  # fmt: skip
    readonly_fields = fields
    actions = ("redeliver",)

    @admin.display(description="tenant", ordering="webhook__tenant__name")
    def tenant(self, obj: WebhookDelivery) -> Tenant:
        return obj.webhook.tenant

    @admin.display(description="response excerpt")
    def excerpt(self, obj: WebhookDelivery) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.response_excerpt)

    @admin.display(description="payload")
    def payload_json(self, obj: WebhookDelivery) -> str:
        return pretty_json(obj.payload)

    @admin.action(description="Redeliver selected deliveries (as new deliveries)")
    @guard_action
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        queued = [webhooks.webhook_delivery_redeliver(actor=request.user, delivery=d).pk for d in queryset]
        self.message_user(request, f"Queued {len(queued)} redeliver{'ies' if len(queued) != 1 else 'y'}.")
