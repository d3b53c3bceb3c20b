"""Every operation of the API's own OpenAPI schema, walked as three attackers against a victim tenant.

Why: the other isolation tests (test_isolation.py) cover a hand-written list of URLs, and a list goes stale
the day someone adds an endpoint. This walk is generated from the schema drf-spectacular builds from the
URL conf, so a new route is attacked the day it appears. Each operation is its own test: its path
parameters are filled with the ids and names of real objects of the victim tenant (a cluster with a job,
tasks and an attempt, one entity of every catalog kind with two versions and a grant, a static pool with a
host, a plugin resource, a webhook with a delivery, a member, a token, audit events), its body with a
plausible request built from the schema's request body (names and references pointing at the victim's
objects), and it is sent by:

- ``anonymous``: must be 401 or 403;
- ``member`` and ``admin`` of another tenant, acting in their own tenant: an operation that addresses an
  object must answer 404 (or 405), or else exactly what it answers for an object that does not exist at all
  (then the answer cannot tell the victim's object from nothing), and a 2xx only where the path names the
  caller's own namespace (``OWN_NAMESPACE``); collections act in the caller's tenant, so any non-5xx is
  fine as long as nothing of the victim's comes back;
- the same two naming the victim's tenant in ``X-Loom-Tenant``: 404 for every tenant-scoped operation.

In every case the answer is not a 5xx and contains none of the victim's names or secrets (every one carries
the marker ``zq7``), and afterwards every row of the victim's (everything reachable from its tenant, its
users and their memberships anywhere, object permissions) is exactly as before.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import models
from django.urls import resolve
from drf_spectacular.generators import SchemaGenerator
from guardian.models import GroupObjectPermission, UserObjectPermission
from rest_framework.test import APIClient

from clusters.engine.core import task_claim
from clusters.features.webhooks import webhook_create, webhook_ping
from clusters.models import Task, TaskAttempt
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from providers.pool import pool_host_register
from providers.resources import ResourceKey, resource_stage, resource_upload
from templates_app.kinds import all_kinds
from templates_app.models import ClusterTemplate
from templates_app.services import catalog_import
from tenants.models import AuditEvent, Membership, Role, Tenant
from tenants.services import api_token_create, object_grant
from tests.api.helpers import VALID_DOCS
from tests.factories import TenantFactory, member
from tests.providers.test_static_pool_api import static_provider

pytestmark = pytest.mark.django_db

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SCHEMA: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
OPERATIONS: list[tuple[str, str]] = sorted(
    (path, method) for path, item in SCHEMA["paths"].items() for method in item if method in HTTP_METHODS
)
MIN_OPERATIONS = 30

MARK = "zq7"  # in every name and secret of the victim's, and in nothing else the suite makes
VICTIM_TENANT = f"victim-{MARK}-corp"
CATALOG_KINDS = [kind.key for kind in all_kinds()]
PROBE_TEXT = "pwned by mallory"

# Reachable without credentials on purpose; none of them is in the schema (SERVE_INCLUDE_SCHEMA is off) and
# none says anything about a tenant. test_public_by_design_endpoints_show_nothing_of_the_victim checks that.
PUBLIC_BY_DESIGN: dict[str, str] = {
    "/api/v2/schema?format=json": "the OpenAPI document: describes the API, holds no data",
    "/api/v2/docs": "Swagger UI page around the schema",
    "/api/v2/redoc": "ReDoc page around the schema",
    "/healthz": "liveness probe for load balancers; says only 'ok'",
    "/api/v2/auth/login/": "the browsable API's sign-in form",
}

# Read-only and the same for every tenant: registered plugin types and their field schemas. Any signed-in
# user may read them (200); the path's name is a plugin type, not an object of a tenant.
GLOBAL: dict[tuple[str, str], str] = {
    ("/api/v2/plugins/automatortypes/", "get"): "registered automator types, global",
    ("/api/v2/plugins/automatortypes/{name}/", "get"): "one registered automator type, global",
    ("/api/v2/plugins/providertypes/", "get"): "registered provider types, global",
    ("/api/v2/plugins/providertypes/{name}/", "get"): "one registered provider type, global",
}

# Operations that take no tenant (no X-Loom-Tenant parameter): each filters by the caller itself.
TENANT_LESS: dict[str, str] = {
    "/api/v2/tenants/": "the caller's own tenants (superusers: all)",
    "/api/v2/tokens/": "the caller's own API tokens",
    "/api/v2/plugins/automatortypes/": "global plugin types",
    "/api/v2/plugins/providertypes/": "global plugin types",
}

# Operations with path parameters whose names live in the caller's own tenant: the victim's name there is
# just a name the attacker's tenant may also use, so a 2xx/4xx that is the same for a name nobody has is fine.
OWN_NAMESPACE: dict[tuple[str, str], str] = {
    **{
        (f"/api/v2/{kind}/{{name}}/", "put"): "PUT creates or replaces in the caller's catalog"
        for kind in CATALOG_KINDS
    },
    ("/api/v2/plugins/{pt}/{plugin}/{rt}/", "get"): "lists the caller's tenant's resources of a global type",
    ("/api/v2/plugins/{pt}/{plugin}/{rt}/{name}/", "get"): "lists the caller's tenant's versions of the name",
    ("/api/v2/plugins/{pt}/{plugin}/{rt}/{name}/", "post"): "uploads a version in the caller's tenant",
}
# What an operation addressing an object may answer when it answers the same for an object that does not
# exist: nothing is learnt about the victim's object, and (checked separately) nothing of it changed.
SAME_AS_MISSING = {400, 403, 404, 405, 415}


@dataclass
class Victim:
    """The victim tenant's objects, what fills each path parameter, and every marker string of theirs."""

    tenant: Tenant
    users: list[Any]
    names: dict[str, str]
    ids: dict[str, int]
    resource: ResourceKey
    secrets: list[str] = field(default_factory=list)

    @property
    def markers(self) -> list[str]:
        texts = [self.tenant.name, *(u.username for u in self.users), *self.names.values(), *self.secrets]
        return sorted(set(texts), key=len, reverse=True)


def victim_name(kind: str) -> str:
    return f"victim-{MARK}-{kind}"


def victim_catalog(description: str) -> dict[str, list[dict[str, Any]]]:
    """A small catalog whose every name is the victim's (so any of it in an answer is a leak), enough for a
    one-node cluster, with a provider secret and a config secret in it."""
    provider, hardware, image, service, template, partial = (
        victim_name(kind)
        for kind in ("providers", "hardwaretypes", "imagetypes", "services", "clustertemplates", "partialtemplates")
    )
    everything = {"hardwaretypes": [hardware], "imagetypes": [image], "services": [service]}
    return {
        "providers": [{"name": provider, "description": description, "providertype": "rackspace",
                       "provisioner": {"api_user": f"victim-{MARK}-apiuser",
                                       "api_password": f"victim-{MARK}-provider-s3cret", "rackspace_region": "dfw"}}],
        "hardwaretypes": [{"name": hardware, "description": description, "providermap": {provider: {"flavor": "4"}}}],
        "imagetypes": [{"name": image, "description": description, "providermap": {provider: {"image": "ubuntu"}}}],
        "services": [{"name": service, "description": description, "dependencies": {},
                      "provisioner": {"actions": {"install": {"type": "shell", "fields": {"script": "x.sh"}}}}}],
        "clustertemplates": [{"name": template, "description": description, "compatibility": everything,
                              "defaults": {"services": [service], "provider": provider, "hardwaretype": hardware,
                                           "imagetype": image, "config": {"note": f"victim-{MARK}-config-s3cret"}}}],
        "partialtemplates": [{"name": partial, "description": description, "compatibility": everything,
                              "defaults": {"services": [service]}}],
    }  # fmt: skip


@pytest.fixture
def victim(db: None) -> Victim:
    """Tenant ``victim-zq7-corp`` with one object behind every kind of path parameter the API has."""
    tenant = TenantFactory(name=VICTIM_TENANT)
    admin = member(tenant, Role.ADMIN, username=f"victim-{MARK}-admin")
    owner = member(tenant, Role.USER, username=f"victim-{MARK}-owner")
    catalog_import(tenant=tenant, user=admin, data=victim_catalog(f"victim-{MARK}-first"))
    catalog_import(tenant=tenant, user=admin, data=victim_catalog(f"victim-{MARK}-edited"))  # versions/1 is old
    template = ClusterTemplate.objects.get(tenant=tenant, name=victim_name("clustertemplates"))
    object_grant(actor=admin, tenant=tenant, obj=template, username=owner.username, action="view", grant=True)

    request = PreviewRequest(f"victim-{MARK}-cluster", victim_name("clustertemplates"), 1)
    cluster, job = cluster_create(user=owner, tenant=tenant, request=request)
    task = Task.objects.filter(job=job, status="queued").order_by("pk").first()
    task_claim(task_pk=task.pk, worker="test/1")
    TaskAttempt.objects.filter(task=task).update(log=f"victim-{MARK}-attempt-log")

    token = api_token_create(user=owner, name=f"victim-{MARK}-token")
    webhook = webhook_create(actor=admin, tenant=tenant, name=f"victim-{MARK}-hook",
                             url=f"https://10.77.0.9/victim-{MARK}-hook-path",
                             secret=f"victim-{MARK}-webhook-s3cret")  # fmt: skip
    delivery = webhook_ping(actor=admin, webhook=webhook)

    pool = static_provider(tenant, name=f"victim-{MARK}-pool", ssh_user=f"victim-{MARK}-ssh")
    host = pool_host_register(actor=admin, provider=pool, address="10.77.0.10", ssh_user=f"victim-{MARK}-hostuser")

    resource = ResourceKey("automatortypes", "shell", "scripts", f"victim-{MARK}-script")
    upload = resource_upload(tenant=tenant, user=admin, key=resource, data=f"echo victim-{MARK}-script-body".encode())
    resource_stage(tenant=tenant, user=admin, key=resource, version=upload.version)

    names = {kind: victim_name(kind) for kind in CATALOG_KINDS}
    names.update(cluster=cluster.name, webhook=webhook.name, pool=pool.name, resource=resource.name,
                 token=f"victim-{MARK}-token")  # fmt: skip
    ids = {
        "cluster": cluster.pk, "job": job.pk, "task": task.pk, "membership": Membership.objects.get(user=owner).pk,
        "token": token.token.pk, "audit": AuditEvent.objects.filter(tenant=tenant).order_by("pk").first().pk,
        "delivery": delivery.pk, "host": host.pk, "resource_version": upload.version,
    }  # fmt: skip
    texts = ("provider-s3cret", "apiuser", "first", "edited", "webhook-s3cret", "hook-path", "config-s3cret",
             "attempt-log", "script-body", "ssh", "hostuser")  # fmt: skip
    secrets = [token.key, upload.sha256, *(f"victim-{MARK}-{text}" for text in texts)]
    return Victim(tenant=tenant, users=[admin, owner], names=names, ids=ids, resource=resource, secrets=secrets)


# --- what fills a path, a query and a body ------------------------------------------------------------------


ID_OF_PREFIX = {"clusters": "cluster", "jobs": "job", "tasks": "task", "memberships": "membership",
                "tokens": "token", "audit-events": "audit"}  # fmt: skip
GLOBAL_TYPE = {"providertypes": "rackspace", "automatortypes": "shell"}


def path_values(victim: Victim, path: str) -> dict[str, str]:
    """The victim's object of the right kind for each path parameter of ``path``."""
    segments = path.strip("/").split("/")[2:]  # after api/v2
    prefix = segments[0]
    values: dict[str, Any] = {}
    if prefix == "plugins" and segments[1] == "{pt}":
        key = victim.resource
        values = {"pt": key.plugin_kind, "plugin": key.plugin, "rt": key.resource_type, "name": key.name,
                  "version": victim.ids["resource_version"]}  # fmt: skip
    elif prefix == "plugins" and segments[1] in GLOBAL_TYPE:
        values = {"name": GLOBAL_TYPE[segments[1]]}
    elif prefix == "providers" and "hosts" in segments:
        values = {"name": victim.names["pool"], "host_pk": victim.ids["host"]}
    elif prefix in CATALOG_KINDS:
        values = {"name": victim.names[prefix], "version": 1}
    elif prefix == "tenants":
        values = {"name": victim.tenant.name}
    elif prefix == "webhooks":
        values = {"name": victim.names["webhook"], "delivery_pk": victim.ids["delivery"]}
    elif prefix in ID_OF_PREFIX:
        values = {"id": victim.ids[ID_OF_PREFIX[prefix]], "number": 1}
    wanted = [segment[1:-1] for segment in segments if segment.startswith("{")]
    # A parameter nothing above maps still gets a victim's object: an id, or the tenant's name.
    fallback = {name: victim.ids["cluster"] if name.endswith(("id", "pk")) else victim.tenant.name for name in wanted}
    return {name: str(values.get(name, fallback[name])) for name in wanted}


def missing_values(values: dict[str, str]) -> dict[str, str]:
    """The same parameters naming objects nobody has (plugin kind, plugin and resource type are global)."""
    return {
        name: value if name in {"pt", "plugin", "rt"} else "987654321" if value.isdigit() else "nosuch-qq1"
        for name, value in values.items()
    }


def query_values(victim: Victim, operation: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """Declared query parameters that can point at the victim's objects (filters), filled with them."""
    offers = {
        "cluster": str(victim.ids["cluster"]), "user": f"victim-{MARK}-owner", "owner": f"victim-{MARK}-owner",
        "template": victim.names["clustertemplates"], "entity_name": victim.names["clustertemplates"],
        "name": names.get("name", victim.tenant.name), "provider": victim.names["providers"],
        "replace": "true", "preview": "true",
    }  # fmt: skip
    declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    return {name: value for name, value in offers.items() if name in declared}


def resolve_ref(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMA["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def example(schema: dict[str, Any]) -> Any:
    schema = resolve_ref(schema)
    if "enum" in schema:
        return next(value for value in schema["enum"] if value is not None)
    kind = schema.get("type")
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1
    if kind == "boolean":
        return False
    if kind == "array":
        return [example(schema.get("items", {}))] if schema.get("minItems") else []
    if kind == "object":
        return {}
    return "probe"


def body_for(victim: Victim, path: str, method: str, operation: dict[str, Any], names: dict[str, str]) -> Any:
    """A plausible body: the schema's required fields, and every field that can name a victim's object."""
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return None
    if "application/json" not in content:
        return b"#!/bin/sh\necho mallory\n"  # plugin resource uploads take raw bytes
    schema = resolve_ref(content["application/json"]["schema"])
    prefix = path.strip("/").split("/")[2]
    if "properties" not in schema:  # a Loom document (catalog kinds) or a whole catalog (import)
        if prefix in CATALOG_KINDS:
            doc = {**copy.deepcopy(VALID_DOCS[prefix]), "name": names.get("name", victim.names[prefix])}
            return {"description": PROBE_TEXT} if method == "patch" else {**doc, "description": PROBE_TEXT}
        return {kind: [{**copy.deepcopy(VALID_DOCS[kind]), "name": victim.names[kind]}] for kind in CATALOG_KINDS}
    offers = {
        "name": names.get("name", victim.names.get(prefix.rstrip("s"), "probe")),
        "clusterTemplate": victim.names["clustertemplates"], "provider": victim.names["providers"],
        "hardwaretype": victim.names["hardwaretypes"], "imagetype": victim.names["imagetypes"],
        "services": [victim.names["services"]], "user": f"victim-{MARK}-owner", "role": Role.ADMIN,
        "action": "view", "numMachines": 1, "count": 1, "extend_by": 60_000, "config": {"owned": PROBE_TEXT},
        "description": PROBE_TEXT, "url": "https://10.66.0.6/mallory", "secret": "mallory-secret-0123456789",
        "address": "10.66.0.7", "state": "broken", "active": False, "max_clusters": 1000, "workers": 1,
    }  # fmt: skip
    required = set(schema.get("required", []))
    body = {}
    for prop, prop_schema in schema["properties"].items():
        if prop in offers:
            body[prop] = offers[prop]
        elif prop in required:
            body[prop] = example(prop_schema)
    return body


# --- sending and judging -----------------------------------------------------------------------------------


@dataclass
class Attempt:
    who: str
    url: str
    status: int
    content: bytes
    request_text: str  # everything the attacker sent: URL, body, tenant header
    error: str = ""  # the exception behind a 500


def client_as(user: Any = None, tenant: str | None = None) -> APIClient:
    """A client that answers a crash with its 500 (so every attacker of the operation is still tried)."""
    client = APIClient(raise_request_exception=False)
    if user is not None:
        client.force_authenticate(user=user)
    if tenant:
        client.credentials(HTTP_X_LOOM_TENANT=tenant)
    return client


def send(client: APIClient, method: str, url: str, body: Any) -> Any:
    call: Callable[..., Any] = getattr(client, method)
    if body is None:
        return call(url)
    if isinstance(body, bytes):
        return call(url, body, content_type="application/octet-stream")
    return call(url, body, format="json")


def leaks(victim: Victim, attempt: Attempt) -> list[str]:
    """Victim markers in the answer that the request did not itself carry (a 404 may echo the asked name)."""
    text = attempt.content.decode(errors="replace")
    if MARK not in attempt.request_text and MARK in text:
        start = text.index(MARK)
        return [text[max(0, start - 60) : start + 60]]
    return [marker for marker in victim.markers if marker in text and marker not in attempt.request_text]


def build_url(path: str, values: dict[str, str], query: dict[str, str]) -> str:
    url = path.format(**values)
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def operation_of(path: str, method: str) -> dict[str, Any]:
    return SCHEMA["paths"][path][method]


def takes_tenant(operation: dict[str, Any]) -> bool:
    return any(p["in"] == "header" and p["name"] == "X-Loom-Tenant" for p in operation.get("parameters", []))


# --- the victim's state ------------------------------------------------------------------------------------


def lookup_to_tenant(model: type[models.Model], depth: int = 4) -> str | None:
    """The shortest ORM lookup from ``model`` to its Tenant through foreign keys (``tenant``,
    ``job__cluster__tenant``...), or None."""
    queue: deque[tuple[type[models.Model], str]] = deque([(model, "")])
    while queue:
        current, path = queue.popleft()
        for fk in current._meta.get_fields():
            if not (fk.many_to_one and fk.concrete) or fk.related_model is None:
                continue
            lookup = f"{path}__{fk.name}" if path else fk.name
            if fk.related_model is Tenant:
                return lookup
            if lookup.count("__") < depth - 1:
                queue.append((fk.related_model, lookup))
    return None


def tenant_models() -> list[tuple[type[models.Model], str]]:
    found = []
    for app in ("tenants", "templates_app", "providers", "clusters"):
        for model in apps.get_app_config(app).get_models():
            lookup = "pk" if model is Tenant else lookup_to_tenant(model)
            if lookup is not None:
                found.append((model, lookup))
    return found


TENANT_MODELS = tenant_models()


def state(victim: Victim) -> dict[str, Any]:
    """Every row of the victim's, all columns: anything an attacker changed or deleted shows up."""
    users = [user.pk for user in victim.users]
    snapshot: dict[str, Any] = {
        model._meta.label: list(model.objects.filter(**{lookup: victim.tenant.pk}).order_by("pk").values())
        for model, lookup in TENANT_MODELS
    }
    snapshot["users"] = list(get_user_model().objects.filter(pk__in=users).order_by("pk").values())
    snapshot["memberships anywhere"] = list(Membership.objects.filter(user__in=users).order_by("pk").values())
    snapshot["object permissions"] = sorted(UserObjectPermission.objects.values_list("user_id", "permission_id",
                                                                                      "object_pk"))  # fmt: skip
    snapshot["group object permissions"] = GroupObjectPermission.objects.count()
    return snapshot


# --- the walk ----------------------------------------------------------------------------------------------


@pytest.fixture
def attackers(db: None) -> dict[str, Any]:
    tenant = TenantFactory(name="mallory-inc")
    return {
        "member": member(tenant, Role.USER, username="mallory-member"),
        "admin": member(tenant, Role.ADMIN, username="mallory-admin"),  # last: its writes land in its own tenant
    }


def walk(victim: Victim, attackers: dict[str, Any], path: str, method: str) -> Iterator[str]:
    """Send the operation as every attacker; yield one line per broken rule."""
    operation = operation_of(path, method)
    values = path_values(victim, path)
    missing = missing_values(values)
    query = query_values(victim, operation, values)
    body = body_for(victim, path, method, operation, values)
    missing_body = body_for(victim, path, method, operation, missing)

    def attempt(who: str, client: APIClient, url: str, payload: Any, tenant: str = "") -> Attempt:
        response = send(client, method, url, payload)
        error = repr(response.exc_info[1]) if getattr(response, "exc_info", None) else ""
        return Attempt(who, url, response.status_code, response.content,
                       tenant + url + json.dumps(payload, default=str), error)  # fmt: skip

    url = build_url(path, values, query)
    anonymous = attempt("anonymous", client_as(), url, body)
    tries = [anonymous]
    if anonymous.status not in (401, 403):
        yield f"anonymous: {anonymous.status} (expected 401/403) {anonymous.content[:300]!r}"
    for role, user in attackers.items():
        client = client_as(user)
        own = attempt(f"other tenant's {role}", client, url, body)
        tries.append(own)
        if (path, method) in GLOBAL:
            if own.status != 200:
                yield f"{own.who}: {own.status} on a global read (expected 200)"
        elif values and own.status not in (404, 405):
            nothing = attempt(f"{own.who} (missing object)", client, build_url(path, missing, query), missing_body)
            tries.append(nothing)
            allowed = SAME_AS_MISSING | ({200, 201, 202, 204} if (path, method) in OWN_NAMESPACE else set())
            if own.status != nothing.status or own.status not in allowed:
                yield (f"{own.who}: {own.status} for the victim's object, {nothing.status} for a missing one "
                       f"(expected 404) {own.content[:300]!r}")  # fmt: skip
        if takes_tenant(operation):
            naming = client_as(user, tenant=victim.tenant.name)
            named = attempt(f"{own.who} naming the victim's tenant", naming, url, body, victim.tenant.name)
            tries.append(named)
            if named.status != 404:
                yield f"{named.who}: {named.status} (expected 404) {named.content[:300]!r}"
    for tried in tries:
        if tried.status >= 500:
            yield f"{tried.who}: server error {tried.status} {tried.error or tried.content[:300]!r}"
        for leak in leaks(victim, tried):
            yield f"{tried.who}: {tried.status} answer shows the victim's {leak!r}"


# Real findings of this walk that are not fixed in the code yet, because the fix is a product decision: each
# is a strict xfail, so the fix turns it into a failure and the entry goes with the fix.
KNOWN_FINDINGS: dict[tuple[str, str], str] = {}


def walk_params() -> list[Any]:
    params = []
    for path, method in OPERATIONS:
        finding = KNOWN_FINDINGS.get((path, method))
        marks = [pytest.mark.xfail(strict=True, reason=finding)] if finding else []
        params.append(pytest.param(path, method, id=f"{method.upper()} {path}", marks=marks))
    return params


@pytest.mark.parametrize(("path", "method"), walk_params())
def test_hostile_tenant_walk(victim: Victim, attackers: dict[str, Any], path: str, method: str) -> None:
    before = state(victim)
    problems = list(walk(victim, attackers, path, method))
    after = state(victim)
    changed = [key for key in before if before[key] != after[key]]
    assert not problems and not changed, "\n".join([*problems, *(f"victim's {key} changed" for key in changed)])


# --- guards on the walk itself -----------------------------------------------------------------------------


def test_the_schema_has_enough_operations_to_walk() -> None:
    """An empty or truncated schema would make every test above pass by walking nothing."""
    assert len(OPERATIONS) >= MIN_OPERATIONS, OPERATIONS


def test_the_walked_schema_is_the_served_one(client: Any) -> None:
    served = client.get("/api/v2/schema?format=json")
    assert served.status_code == 200
    paths = json.loads(served.content)["paths"]
    assert sorted((p, m) for p, item in paths.items() for m in item if m in HTTP_METHODS) == OPERATIONS


def test_every_tenant_less_operation_is_listed() -> None:
    """A new operation without X-Loom-Tenant must be a conscious choice: it escapes the header check."""
    tenant_less = {path for path, method in OPERATIONS if not takes_tenant(operation_of(path, method))}
    assert {p for p in tenant_less if not any(p.startswith(prefix) for prefix in TENANT_LESS)} == set()
    assert all(any(p.startswith(prefix) for p, _ in OPERATIONS) for prefix in TENANT_LESS)
    assert set(GLOBAL) | set(OWN_NAMESPACE) | set(KNOWN_FINDINGS) <= set(OPERATIONS)


def test_the_walk_addresses_real_victim_objects(victim: Victim, client_for: Any) -> None:
    """The 404s above mean something only if the URLs name existing objects: every one resolves to a view,
    and the victim's own admin (or owner) reads every one of them."""
    admin, owner = (client_for(user) for user in victim.users)  # the token is the owner's own
    for path, method in OPERATIONS:
        values = path_values(victim, path)
        url = build_url(path, values, {})
        resolve(url)
        if method == "get" and values:
            answers = [client.get(url) for client in (admin, owner)]
            assert 200 in [a.status_code for a in answers], (url, [(a.status_code, a.content[:200]) for a in answers])


def test_public_by_design_endpoints_show_nothing_of_the_victim(victim: Victim, client: Any) -> None:
    for url, reason in PUBLIC_BY_DESIGN.items():
        response = client.get(url)
        assert response.status_code == 200, (url, reason, response.status_code)
        assert MARK not in response.content.decode(errors="replace"), (url, reason)


def test_metrics_are_not_public_and_not_for_tenant_admins(
    victim: Victim, attackers: dict[str, Any], client: Any
) -> None:
    """``/metrics`` labels samples with tenant names: superusers and the metrics token only."""
    assert client.get("/metrics").status_code in (401, 403)
    admin = client_as()
    admin.force_login(attackers["admin"])
    response = admin.get("/metrics")
    assert response.status_code in (401, 403), response.status_code
    assert MARK not in response.content.decode(errors="replace")
