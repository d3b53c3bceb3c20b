"""The self-service pages through Django's test client: login and CSRF, tenant isolation, the catalog, tokens,
the create form with its preview and errors, the cluster list and page, and every operation's confirmation."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from django.test import Client

from clusters.models import Cluster, Job, Node
from clusters.services.lifecycle import cluster_create
from clusters.services.preview import PreviewRequest
from tenants.models import ApiToken, AuditEvent, Role
from tests.clusters.day2_helpers import active_cluster
from tests.factories import member

pytestmark = pytest.mark.django_db


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response: Any) -> str:
    return response.content.decode()


def error_of(page: str, field: str) -> str:
    """The error list shown next to ``field`` ("form": the form's own errors), empty when there is none."""
    found = re.search(rf'id="error-{field}"[^>]*>(.*?)</ul>', page, re.S)
    return found.group(1) if found else ""


@pytest.mark.parametrize(
    "path",
    ["/", "/tokens/", "/clusters/", "/clusters/new/", "/clusters/1/", "/clusters/1/live/", "/clusters/1/delete/"],
)
def test_every_page_requires_login(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_catalog_lists_templates_with_size_limits_and_cost(stack, user_a):
    page = text(signed_in(user_a).get("/"))
    assert "stack" in page and "a web stack" in page
    assert re.search(r"about USD 1\.000 an hour at 2 machines", page), page  # db and lb cannot share: 2 x 0.5
    assert 'href="/admin/"' not in page


def test_admin_link_only_for_tenant_admins(stack, admin_a):
    assert 'href="/admin/"' in text(signed_in(admin_a).get("/"))


def test_tenant_switcher_for_users_in_several_tenants(tenant_a, tenant_b, user_a, user_b):
    member(tenant_b, Role.USER, username="multi")
    from django.contrib.auth import get_user_model

    multi = get_user_model().objects.get(username="multi")
    from tenants.models import Membership

    Membership.objects.create(tenant=tenant_a, user=multi, role=Role.USER)
    client = signed_in(multi)
    page = text(client.get("/"))
    assert 'id="tenant-switch"' in page and "Cluster templates in acme" in page
    switched = client.post("/tenant/", {"tenant": "globex", "next": "/clusters/"})
    assert switched.status_code == 302 and switched["Location"] == "/clusters/"
    assert "Clusters in globex" in text(client.get("/clusters/"))
    assert client.post("/tenant/", {"tenant": "initech"}).status_code == 404
    assert client.post("/tenant/", {"tenant": "acme", "next": "https://evil.example/"})["Location"] == "/"
    assert 'id="tenant-switch"' not in text(signed_in(user_a).get("/"))  # one tenant: no switcher


def test_forms_need_the_csrf_token(stack, user_a):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user_a)
    assert browser.post("/tokens/", {"name": "cli"}).status_code == 403
    assert browser.post("/clusters/new/", {"template": "stack", "name": "x", "size": 2}).status_code == 403


def test_tokens_are_shown_once_listed_and_revoked(user_a, user_b):
    client = signed_in(user_a)
    created = client.post("/tokens/", {"name": "cli"})
    key = re.search(r'id="token-key">(loom_[^<]+)<', text(created)).group(1)
    assert created["Cache-Control"] == "no-store"
    listing = text(client.get("/tokens/"))
    assert "cli" in listing and key not in listing
    token = ApiToken.objects.get(user=user_a)
    assert signed_in(user_b).post(f"/tokens/{token.pk}/revoke/").status_code == 404
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.filter(entity_kind="api-token", action="revoke").exists()


def test_token_form_errors_sit_next_to_the_field(user_a):
    client = signed_in(user_a)
    assert "This field is required" in error_of(text(client.post("/tokens/", {"name": ""})), "name")
    past = text(client.post("/tokens/", {"name": "cli", "expires_at": "2001-01-01T00:00"}))
    assert "must be in the future" in error_of(past, "expires_at")
    assert not ApiToken.objects.exists()


def test_create_preview_shows_layout_plan_and_cost_and_creates_nothing(stack, user_a):
    client = signed_in(user_a)
    page = text(client.post("/clusters/new/", {"template": "stack", "name": "shop", "size": 3, "preview": "1"}))
    assert 'id="preview"' in page and "3 machines on fakecloud" in page and "USD 1.500 an hour" in page
    assert '<svg class="dag"' in page and 'id="create-button"' in page
    assert not Cluster.objects.exists()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"config": "{not json"}, "config", "not valid JSON"),
        ({"config": "[1, 2]"}, "config", "must be a JSON object"),
        ({"config": '{"x": "%host.service.nope%"}'}, "config", "no node of this cluster hosts service nope"),
        ({"name": "bad name!"}, "name", "use only letters"),
        ({"size": "1"}, "form", "no layout satisfies"),
        ({"size": "0"}, "size", "greater than or equal to 1"),
        ({"hardwaretype": "huge"}, "hardwaretype", "not one of the available choices"),
        ({"provider_fields": '{"zone": "b"}'}, "provider_fields", "not a field a cluster request may set"),
    ],
)
def test_create_errors_are_shown_in_plain_words_next_to_the_field(stack, user_a, data, field, message):
    form = {"template": "stack", "name": "shop", "size": 3, "preview": "1", **data}
    page = text(signed_in(user_a).post("/clusters/new/", form))
    assert message in error_of(page, field), page[page.find("errorlist") - 200 :][:1500]
    assert not Cluster.objects.exists()


def test_create_makes_the_cluster_and_opens_its_page(stack, user_a):
    client = signed_in(user_a)
    response = client.post(
        "/clusters/new/",
        {"template": "stack", "name": "shop", "size": 3, "config": json.dumps({"tier": "gold"}), "create": "1"},
    )
    cluster = Cluster.objects.get(name="shop")
    assert response.status_code == 302 and response["Location"] == f"/clusters/{cluster.pk}/"
    assert cluster.owner == user_a and cluster.config == {"tier": "gold"}
    page = text(client.get(response["Location"]))
    assert 'id="cluster-status"' in page and 'hx-trigger="every 1s"' in page  # polls while the job runs
    again = client.post("/clusters/new/", {"template": "stack", "name": "shop", "size": 3, "create": "1"})
    assert "a cluster named shop already exists" in re.search(r'id="error-name".*?</ul>', text(again), re.S).group(0)


def test_cluster_list_filters_and_shows_progress(stack, tenant_a, user_a):
    active = active_cluster(user_a, tenant_a, name="shop")
    cluster_create(user=user_a, tenant=tenant_a, request=PreviewRequest("fresh", "stack", 2))
    client = signed_in(user_a)
    page = text(client.get("/clusters/"))
    assert "shop" in page and "fresh" in page and "<progress" in page and 'hx-trigger="every 2s"' in page
    assert "fresh" not in text(client.get("/clusters/?live=true&status=active"))
    assert "shop" not in text(client.get("/clusters/?live=all&name=fre"))
    assert "No clusters match" in text(client.get("/clusters/?live=false"))
    fragment = text(client.get("/clusters/", HTTP_HX_REQUEST="true"))
    assert fragment.startswith('<div id="cluster-table"') and active.name in fragment


def test_cluster_page_shows_nodes_by_role_timeline_plan_and_links(stack, tenant_a, user_a):
    cluster = active_cluster(user_a, tenant_a)
    page = text(signed_in(user_a).get(f"/clusters/{cluster.pk}/"))
    assert '<svg class="gantt"' in page and '<svg class="dag"' in page
    assert "shop-1000" in page and "10.0.0.1" in page
    assert "hx-trigger" not in page.split('id="cluster-live"')[1].split(">")[0]  # settled: no more polling
    assert f'href="/clusters/{cluster.pk}/scale-out/"' in page and f'href="/clusters/{cluster.pk}/abort/"' not in page


def test_failed_attempts_show_their_output(stack, tenant_a, user_a):
    from clusters.models import TaskAttempt

    cluster = active_cluster(user_a, tenant_a)
    attempt = TaskAttempt.objects.filter(task__job__cluster=cluster).first()
    TaskAttempt.objects.filter(pk=attempt.pk).update(outcome="failed", log_tail="boom: <script>x</script>")
    page = text(signed_in(user_a).get(f"/clusters/{cluster.pk}/live/"))
    assert "boom: &lt;script&gt;" in page and "<script>x" not in page


def test_another_tenants_or_users_cluster_is_not_found(stack, tenant_a, user_a, admin_a, user_b, admin_b):
    cluster = active_cluster(admin_a, tenant_a)
    for outsider in (user_b, admin_b, user_a):  # user_a: a plain member, not the owner, no grant
        client = signed_in(outsider)
        for suffix in ("", "live/", "delete/", "scale-out/"):
            assert client.get(f"/clusters/{cluster.pk}/{suffix}").status_code == 404
        assert client.post(f"/clusters/{cluster.pk}/delete/", {"confirm": "1"}).status_code == 404
    assert signed_in(admin_a).get("/clusters/99999999999999999999/").status_code == 404
    Cluster.objects.get(pk=cluster.pk)  # untouched


def test_scale_out_is_previewed_then_confirmed(stack, tenant_a, user_a):
    cluster = active_cluster(user_a, tenant_a)
    client = signed_in(user_a)
    preview = text(client.post(f"/clusters/{cluster.pk}/scale-out/", {"count": "2"}))
    assert "Machines: 3 → <strong>5</strong>" in preview and "shop-1003" in preview and 'id="confirm-button"' in preview
    assert Job.objects.filter(cluster=cluster).count() == 1
    done = client.post(f"/clusters/{cluster.pk}/scale-out/", {"count": "2", "confirm": "1"})
    assert done.status_code == 302 and Job.objects.filter(cluster=cluster, operation="scale_out").exists()
    busy = text(client.post(f"/clusters/{cluster.pk}/scale-in/", {"count": "1"}))
    assert ('id="error-form"' in busy and "busy" in busy) or "job" in busy


@pytest.mark.parametrize(
    ("slug", "data", "expected"),
    [
        ("scale-in", {"count": "1"}, "Nodes removed"),
        ("scale-in", {}, "give either a number of nodes"),
        ("add-services", {"services": ["cache"]}, "Services added: cache"),
        ("remove-services", {"services": ["lb"]}, "Services removed: lb"),
        ("stop-services", {}, "stop"),
        ("start-services", {"services": ["web"]}, "start"),
        ("restart-services", {}, "Restarts"),
        ("reconfigure", {"config": '{"tier": "silver"}', "restart": "on"}, "The config changes"),
        ("reconfigure", {"config": "nope"}, "not valid JSON"),
        ("sync", {}, "tasks in"),
        ("lease", {"extend_minutes": "5"}, "never expires"),
    ],
)
def test_every_day2_operation_previews_before_it_runs(stack, tenant_a, user_a, slug, data, expected):
    cluster = active_cluster(user_a, tenant_a)
    client = signed_in(user_a)
    assert client.get(f"/clusters/{cluster.pk}/{slug}/").status_code == 200
    page = text(client.post(f"/clusters/{cluster.pk}/{slug}/", data))
    assert expected in page, page[page.find("<main>") :][:3000]
    assert Job.objects.filter(cluster=cluster).count() == 1  # only the create: nothing ran


def test_delete_abort_pause_resume_retry_confirmations(stack, tenant_a, user_a):
    cluster, job = cluster_create(user=user_a, tenant=tenant_a, request=PreviewRequest("shop", "stack", 3))
    client = signed_in(user_a)
    assert "not started" in text(client.get(f"/clusters/{cluster.pk}/abort/"))
    assert "No more tasks are handed out" in text(client.get(f"/clusters/{cluster.pk}/pause/"))
    refused = text(client.post(f"/clusters/{cluster.pk}/resume/", {"confirm": "1"}))
    assert "resume needs a paused job" in refused
    assert client.post(f"/clusters/{cluster.pk}/abort/", {"confirm": "1"}).status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.ABORTED
    assert AuditEvent.objects.filter(action="abort", entity_kind="cluster").exists()
    assert "failed or dropped tasks run again" in text(client.get(f"/clusters/{cluster.pk}/retry/"))
    Cluster.objects.filter(pk=cluster.pk).update(status=Cluster.Status.INCOMPLETE)
    delete = text(client.get(f"/clusters/{cluster.pk}/delete/"))
    assert "3 nodes" in delete and "shop-1000" in delete
    assert client.post(f"/clusters/{cluster.pk}/delete/", {"confirm": "1"}).status_code == 302
    assert Job.objects.filter(cluster=cluster, operation="delete").exists()
    assert Node.objects.filter(cluster=cluster).count() == 3


def test_a_member_who_may_only_view_gets_403_on_operations(stack, tenant_a, admin_a, user_a):
    from guardian.shortcuts import assign_perm

    cluster = active_cluster(admin_a, tenant_a)
    assign_perm("view_cluster", user_a, cluster)
    client = signed_in(user_a)
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert 'id="actions"' not in page
    assert client.get(f"/clusters/{cluster.pk}/delete/").status_code == 403


def test_the_catalog_card_of_a_template_that_cannot_launch_shows_why_instead_of_a_create_button(
    tenant_a, user_a, sample_catalog
):
    """The sample catalog as shipped: lamp and base run on rackspace, whose credentials are sample values."""
    from templates_app.services import catalog_import

    catalog_import(tenant=tenant_a, user=None, data=sample_catalog)
    page = text(signed_in(user_a).get("/"))
    cards = dict(re.findall(r'<section class="card" aria-labelledby="t-([\w-]+)">(.*?)</section>', page, re.S))
    assert set(cards) == {"base", "lamp"}
    for card in cards.values():
        assert "Cannot be launched yet" in card and "Create a cluster" not in card
        assert "api_password, api_user hold sample values, not credentials" in card
        assert "an hour" not in card


def test_launchable_and_unlaunchable_cards_side_by_side(stack, tenant_a, admin_a, user_a):
    from templates_app.services import catalog_entity_save

    broken = copy.deepcopy(next(t for t in stack["clustertemplates"] if t["name"] == "stack"))
    broken["name"] = "stack-search"
    broken["defaults"]["services"].append("solr")
    saved = catalog_entity_save(tenant=tenant_a, user=admin_a, kind_key="clustertemplates", name=None, data=broken)
    assert saved is not None
    page = text(signed_in(user_a).get("/"))
    cards = dict(re.findall(r'<section class="card" aria-labelledby="t-([\w-]+)">(.*?)</section>', page, re.S))
    assert "Create a cluster" in cards["stack"] and "Cannot be launched" not in cards["stack"]
    assert "Create a cluster" not in cards["stack-search"]
    assert "defaults.services: default service &#x27;solr&#x27; is not in the catalog" in cards["stack-search"]


def test_the_cost_of_one_machine_is_singular(stack, tenant_a, admin_a, user_a):
    from templates_app.services import catalog_entity_save

    solo = copy.deepcopy(next(t for t in stack["clustertemplates"] if t["name"] == "stack"))
    solo |= {"name": "solo"}
    solo["defaults"]["services"] = ["base"]
    solo["defaults"]["config"] = {}
    catalog_entity_save(tenant=tenant_a, user=admin_a, kind_key="clustertemplates", name=None, data=solo)
    page = text(signed_in(user_a).get("/"))
    assert re.search(r"about USD 0\.500 an hour at 1 machine</dd>", page), page


def test_health_is_shown_and_a_repair_previewed_then_confirmed(stack, tenant_a, user_a, user_b):
    from clusters.models import Health

    cluster = active_cluster(user_a, tenant_a)
    client = signed_in(user_a)
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert 'id="cluster-health"' in page and "not checked yet" in page and 'id="health-banner"' not in page
    assert f'href="/clusters/{cluster.pk}/repair/"' not in page  # nothing to repair
    Node.objects.filter(cluster=cluster, number=1002).update(
        health=Health.MISSING, health_message="machine <m-1> no longer exists"
    )
    Cluster.objects.filter(pk=cluster.pk).update(health=Health.MISSING, health_message="1 node missing: <m-1>",
                                                 status=Cluster.Status.INCONSISTENT)  # fmt: skip
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert 'id="health-banner"' in page and "1 node missing: &lt;m-1&gt;" in page
    assert "machine &lt;m-1&gt; no longer exists" in page  # the node's own reason, escaped
    assert f'href="/clusters/{cluster.pk}/repair/"' in page  # offered on an inconsistent cluster too
    assert 'class="status health-missing"' in text(client.get("/clusters/"))
    preview = text(client.post(f"/clusters/{cluster.pk}/repair/", {}))
    assert "Replaced" in preview and "by node 1003" in preview and 'id="confirm-button"' in preview
    client.post(f"/clusters/{cluster.pk}/repair/", {"confirm": "1"})
    assert Job.objects.filter(cluster=cluster, operation="repair").count() == 1
    assert signed_in(user_b).get(f"/clusters/{cluster.pk}/repair/").status_code == 404
