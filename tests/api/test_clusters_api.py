"""The cluster API: create (202 + Location, idempotency, quotas), list (pagination, filters, constant queries),
detail, delete, abort/pause/resume/retry, leases, jobs, tasks and attempts; who sees and does what.

Most tests let ``cluster_create`` start the job and drive it by hand (``run_by_hand``), inside the test's
transaction: what the engine would hand to the broker on commit simply stays queued. The concurrency tests and
the end-to-end test are transactional, with a real broker (``workers``) and, for the latter, a real worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.dateparse import parse_datetime
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from clusters.features.hooks import JobRequest, _hooks
from clusters.models import Cluster, IdempotencyRecord, Job, Task
from clusters.planning.planner import Action
from templates_app.services import catalog_import
from tenants.models import AuditEvent, Role, Tenant
from tests.api.helpers import API, body, error_of, results
from tests.clusters.engine_helpers import run_by_hand
from tests.clusters.test_operations import fails_app_install, fleet_catalog
from tests.clusters.workers import wait_for_job
from tests.factories import member

pytestmark = pytest.mark.django_db

CLUSTERS = f"{API}/clusters"
LEASE = {"initial": "1d", "max": "3d", "step": "1d"}
DAY_MS = 86_400_000

CLUSTER_FIELDS = {"id", "url", "name", "description", "owner", "status", "status_message", "health", "template", "provider",
                  "size", "services", "created_at", "expires_at", "latest_job"}  # fmt: skip
DETAIL_FIELDS = CLUSTER_FIELDS | {"dns_suffix", "config", "provider_fields", "service_versions", "lease", "node_count", "nodes",
                                  "nodes_url", "jobs_url"}  # fmt: skip
JOB_FIELDS = {"id", "url", "cluster", "operation", "status", "message", "requested_by", "created_at", "started_at",
              "finished_at", "max_attempts", "task_timeout_seconds", "progress", "tasks_url"}  # fmt: skip


def post(client: APIClient, name: str = "web", size: int = 1, template: str = "fleet", key: str | None = None,
         **extra: Any) -> Any:  # fmt: skip
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    data = {"name": name, "clusterTemplate": template, "numMachines": size, **extra}
    return client.post(CLUSTERS, data, format="json", **headers)


def created(response: Any) -> tuple[Cluster, Job]:
    assert response.status_code == 202, response.content[:2000]
    data = body(response)
    return Cluster.objects.get(pk=data["cluster"]["id"]), Job.objects.get(pk=data["job"]["id"])


@pytest.fixture
def fleet(tenant_a: Tenant) -> None:
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog(lease=LEASE))


@pytest.fixture
def admin(client_for, admin_a, fleet) -> APIClient:
    return client_for(admin_a)


@pytest.fixture
def user(client_for, user_a, fleet) -> APIClient:
    return client_for(user_a)


@pytest.fixture
def colleague(tenant_a) -> Any:
    return member(tenant_a, Role.USER, username="carla")


# --- create --------------------------------------------------------------------------------------------------


def test_create_answers_202_with_the_cluster_its_job_and_the_jobs_url(user, user_a, tenant_a):
    response = post(user, "web", size=2, description="shop front", config={"app": {"port": 8080}})
    cluster, job = created(response)
    data = body(response)
    assert set(data) == {"cluster", "job"}
    assert set(data["cluster"]) == DETAIL_FIELDS and set(data["job"]) == JOB_FIELDS
    assert response["Location"] == data["job"]["url"] and data["job"]["url"].endswith(f"/api/v2/jobs/{job.pk}")
    # A plain str: WSGI servers (runserver's wsgiref) refuse a str subclass such as DRF's Hyperlink with a 500.
    assert type(response.headers["Location"]) is str
    assert data["cluster"]["url"].endswith(f"/api/v2/clusters/{cluster.pk}")
    shown = data["cluster"]
    assert (shown["name"], shown["owner"], shown["status"], shown["size"]) == ("web", "arthur", "pending", 2)
    assert shown["description"] == "shop front" and shown["config"] == {"app": {"port": 8080}}
    assert shown["template"] == {"name": "fleet", "version": 1}
    assert shown["provider"] == {"name": "fakecloud", "version": 1}
    assert shown["services"] == ["app", "base"] and shown["expires_at"] is None
    assert shown["latest_job"]["id"] == job.pk and shown["node_count"] == 2
    assert [n["hostname"] for n in shown["nodes"]] == [f"web{n}.local" for n in ("-1000", "-1001")]
    assert data["job"]["operation"] == "create" and data["job"]["status"] == "running"
    assert data["job"]["requested_by"] == "arthur"
    real = Task.objects.filter(job=job).exclude(action=Action.JOIN).count()
    assert data["job"]["progress"]["total"] == real and data["job"]["progress"]["tasks"]["queued"] == 2
    # The Location answers: the job with its progress, and why tasks wait.
    job_view = user.get(response["Location"])
    assert job_view.status_code == 200 and body(job_view)["id"] == job.pk and body(job_view)["waiting"] == []
    assert AuditEvent.objects.filter(tenant=tenant_a, action="create", entity_kind="cluster", actor=user_a).exists()


def test_bad_create_requests_name_the_field(admin, tenant_a):
    cases = [
        ({"numMachines": 0}, "numMachines", "greater than or equal to 1"),
        ({"name": "bad name"}, "name", "does not match"),
        ({"clusterTemplate": None}, "clusterTemplate", "may not be null"),
        ({"services": "base"}, "services", "list"),
        ({"initialLeaseDuration": -5}, "initialLeaseDuration", "greater than or equal to 1"),
        ({"clusterTemplate": "leased", "initialLeaseDuration": 2 * DAY_MS}, "initialLeaseDuration", "longer than"),
        ({"numMachines": 10**9}, "numMachines", "at most"),
    ]
    for change, field, says in cases:
        data = {"name": "web", "clusterTemplate": "fleet", "numMachines": 1, **change}
        error = error_of(admin.post(CLUSTERS, data, format="json"), 400)
        assert field in error["fields"] and says in " ".join(error["fields"][field]), (change, error)
    assert error_of(post(admin, template="nosuch"), 404)["message"] == "cluster template nosuch not found"
    response = admin.post(CLUSTERS, "{", content_type="application/json")
    assert error_of(response, 400)["code"] == "malformed"
    assert not Cluster.objects.exists()


def test_a_second_live_cluster_with_the_same_name_is_a_conflict(admin):
    created(post(admin, "web"))
    error = error_of(post(admin, "web"), 409)
    assert error["code"] == "conflict" and "a cluster named web already exists" in error["message"]


# --- quotas --------------------------------------------------------------------------------------------------


def test_quotas_are_checked_before_anything_is_created(admin, tenant_a):
    Tenant.objects.filter(pk=tenant_a.pk).update(max_nodes=3, max_clusters=2)
    created(post(admin, "one", size=2))
    error = error_of(post(admin, "two", size=2), 409)
    assert error["code"] == "quota_exceeded"
    assert error["quota"] == {"name": "max_nodes", "limit": 3, "in_use": 2, "requested": 2}
    assert "max_nodes" in error["message"] and "numMachines" in error["fields"]
    created(post(admin, "two", size=1))
    error = error_of(post(admin, "three", size=1), 409)
    assert error["quota"] == {"name": "max_clusters", "limit": 2, "in_use": 2, "requested": 1}
    assert sorted(Cluster.objects.values_list("name", flat=True)) == ["one", "two"]
    assert AuditEvent.objects.filter(tenant=tenant_a, action="create").count() == 2


# --- idempotency ---------------------------------------------------------------------------------------------


def test_the_same_key_and_request_replay_the_first_answer(admin, tenant_a):
    first = post(admin, "web", size=2, key="k-1")
    created(first)
    # Same request (key order does not matter), same key: the stored answer, nothing new.
    again = admin.post(
        CLUSTERS,
        {"numMachines": 2, "clusterTemplate": "fleet", "name": "web"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert again.status_code == 202 and body(again) == body(first)
    assert again["Location"] == first["Location"] and again["Idempotent-Replayed"] == "true"
    assert Cluster.objects.count() == 1 and Job.objects.count() == 1
    assert AuditEvent.objects.filter(tenant=tenant_a, action="create").count() == 1
    # Same key, different request: refused, naming the header.
    error = error_of(post(admin, "web", size=3, key="k-1"), 422)
    assert error["code"] == "idempotency_key_reused" and "Idempotency-Key" in error["fields"]
    # Another key is another request.
    assert error_of(post(admin, "web", size=2, key="k-2"), 409)["code"] == "conflict"


def test_a_failed_request_is_not_stored_and_bad_keys_are_refused(admin, admin_a, client_for):
    assert error_of(post(admin, "web", template="nosuch", key="k"), 404)
    assert not IdempotencyRecord.objects.exists()
    created(post(admin, "web", key="k"))  # fixed request, same key: runs
    for bad in ("", "x" * 256, "clé"):
        error = error_of(post(admin, "other", key=bad), 400)
        assert list(error["fields"]) == ["Idempotency-Key"], bad
    # Keys are per user: the same key from someone else is their own.
    bob = member(Tenant.objects.get(name="acme"), Role.ADMIN, username="ben")
    created(post(client_for(bob), "theirs", key="k"))


PEER_WAIT_S = 20
SAW_BLOCKED_PEER: list[bool] = []


def wait_for_blocked_peer(request: JobRequest) -> None:
    """A job hook (it runs inside the create's transaction, after the idempotency record was inserted) that
    holds the create until another connection is blocked on a lock: the duplicate, waiting on the record's
    unique index. Makes the concurrent-duplicate test exercise the overlap every time (and say if it did not)."""
    deadline = time.monotonic() + PEER_WAIT_S
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                SAW_BLOCKED_PEER.append(True)
                return
            time.sleep(0.02)


def in_threads(count: int, make_request: Callable[[int], Any]) -> list[Any]:
    """Run ``make_request(i)`` in ``count`` threads at once; each closes its database connection."""
    responses: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(timeout=PEER_WAIT_S)
            responses[index] = make_request(index)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


@pytest.fixture
def hook(settings):
    def use(name: str) -> None:
        settings.LOOM_JOB_HOOKS = [f"{__name__}.{name}"]
        _hooks.cache_clear()

    yield use
    settings.LOOM_JOB_HOOKS = []
    _hooks.cache_clear()


def test_concurrent_duplicates_create_one_cluster(workers, tenant_a, admin_a, client_for, hook):
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog())
    hook("wait_for_blocked_peer")
    SAW_BLOCKED_PEER.clear()
    responses = in_threads(2, lambda _: post(client_for(admin_a), "web", size=1, key="same"))
    assert SAW_BLOCKED_PEER == [True], "the duplicate never waited on the first request"
    assert [r.status_code for r in responses] == [202, 202], [r.content[:500] for r in responses]
    assert body(responses[0]) == body(responses[1])
    assert sorted(r.get("Idempotent-Replayed", "") for r in responses) == ["", "true"]
    assert Cluster.objects.count() == 1 and Job.objects.count() == 1 and IdempotencyRecord.objects.count() == 1


QUOTA_BARRIER = threading.Barrier(2, timeout=PEER_WAIT_S)


def both_past_the_early_check(request: JobRequest) -> None:
    """Both creates have passed the unlocked quota check before either takes the tenant lock."""
    QUOTA_BARRIER.wait()


def test_concurrent_creates_cannot_both_take_the_last_quota_slot(workers, tenant_a, admin_a, client_for, hook):
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog())
    Tenant.objects.filter(pk=tenant_a.pk).update(max_clusters=1)
    QUOTA_BARRIER.reset()
    hook("both_past_the_early_check")
    responses = in_threads(2, lambda i: post(client_for(admin_a), f"web{i}", size=1))
    assert sorted(r.status_code for r in responses) == [202, 409], [r.content[:500] for r in responses]
    refused = next(r for r in responses if r.status_code == 409)
    assert body(refused)["error"]["quota"] == {"name": "max_clusters", "limit": 1, "in_use": 1, "requested": 1}
    assert Cluster.objects.count() == 1


# --- list and detail -----------------------------------------------------------------------------------------


@pytest.fixture
def three(admin, user, admin_a):
    """alice's terminated ``a1`` (fleet); arthur's ``u1`` (fleet) and ``u2`` (leased), both pending."""
    _, job = created(post(admin, "a1"))
    run_by_hand(job, fail=lambda task: True)
    return {name: created(post(user, name, template=template))[0]
            for name, template in (("u1", "fleet"), ("u2", "leased"))}  # fmt: skip


def names(response: Any) -> list[str]:
    return sorted(item["name"] for item in results(response))


def test_the_list_is_paginated_and_filtered(admin, user, three):
    page = body(admin.get(f"{CLUSTERS}?page_size=2"))
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"] and page["previous"] is None
    assert set(page["results"][0]) == CLUSTER_FIELDS
    assert [c["name"] for c in page["results"]] == ["u2", "u1"]  # newest first
    assert names(admin.get(CLUSTERS)) == ["a1", "u1", "u2"]
    assert names(user.get(CLUSTERS)) == ["u1", "u2"]  # a user sees their own
    for query, expected in [
        ("status=terminated", ["a1"]),
        ("status=pending,terminated", ["a1", "u1", "u2"]),
        ("template=leased", ["u2"]),
        ("owner=arthur", ["u1", "u2"]),
        ("owner=alice", ["a1"]),
        ("name=u1", ["u1"]),
        ("live=true", ["u1", "u2"]),
        ("live=false", ["a1"]),
    ]:
        assert names(admin.get(f"{CLUSTERS}?{query}")) == expected, query
    for query, field in [("status=bogus", "status"), ("status=active,bogus", "status"), ("live=maybe", "live")]:
        error = error_of(admin.get(f"{CLUSTERS}?{query}"), 400)
        assert field in error["fields"], (query, error)


def test_the_list_costs_the_same_queries_whatever_its_size(admin):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin.get(CLUSTERS).status_code == 200
        return len(queries)

    for name in ("q1", "q2"):
        created(post(admin, name))
    count_queries()  # warm-up: run alone, the first request also fills once-per-process caches (one query)
    few = count_queries()
    for name in ("q3", "q4", "q5", "q6", "q7"):
        created(post(admin, name, size=2))
    assert count_queries() == few


def test_the_detail_shows_nodes_config_lease_and_live_progress(user, three):
    cluster = three["u2"]
    job = Job.objects.get(cluster=cluster)
    data = body(user.get(f"{CLUSTERS}/{cluster.pk}"))
    assert set(data) == DETAIL_FIELDS
    node = data["nodes"][0]
    assert set(node) >= {"hostname", "ipaddresses", "services", "status", "number", "hardwaretype", "imagetype"}
    assert (node["number"], node["status"], node["services"], node["hardwaretype"]) == (1000, "planned",
                                                                                          ["app", "base"], "small")  # fmt: skip
    lease = data["lease"]
    assert (lease["initial_ms"], lease["max_ms"], lease["step_ms"]) == (DAY_MS, 3 * DAY_MS, DAY_MS)
    expires = parse_datetime(lease["expires_at"])
    assert expires == cluster.expires_at and lease["warned_at"] is None
    assert parse_datetime(lease["next_limit"]) == expires + timedelta(days=1)
    assert parse_datetime(lease["latest_expiry"]) == cluster.created_at + timedelta(days=3)
    progress = data["latest_job"]["progress"]
    assert (progress["completed"], progress["percent"], progress["stage"]) == (0, 0.0, 0)
    run_by_hand(job)
    progress = body(user.get(f"{CLUSTERS}/{cluster.pk}"))["latest_job"]["progress"]
    assert (progress["completed"], progress["percent"], progress["stage"]) == (progress["total"], 100.0, None)
    assert body(user.get(f"{CLUSTERS}/{cluster.pk}"))["status"] == "active"
    nodes = body(user.get(data["nodes_url"]))
    assert nodes["count"] == 1 and nodes["results"][0]["hostname"] == node["hostname"]
    jobs = body(user.get(data["jobs_url"]))
    assert [j["id"] for j in jobs["results"]] == [job.pk] and jobs["results"][0]["progress"]["percent"] == 100.0


# --- who sees and acts ---------------------------------------------------------------------------------------


def test_users_act_on_their_own_clusters_admins_on_all_others_get_404(
    user, admin, client_for, colleague, admin_b, user_b, three
):
    cluster = three["u1"]
    detail = f"{CLUSTERS}/{cluster.pk}"
    assert admin.get(detail).status_code == 200
    other = client_for(colleague)
    assert error_of(other.get(detail), 404)["code"] == "not_found"
    assert names(other.get(CLUSTERS)) == []
    # Shared for viewing: visible, but acting on it is refused (403, since they can see it).
    assign_perm("clusters.view_cluster", colleague, cluster)
    assert other.get(detail).status_code == 200 and names(other.get(CLUSTERS)) == ["u1"]
    assert error_of(other.post(f"{detail}/pause"), 403)["code"] == "permission_denied"
    assign_perm("clusters.change_cluster", colleague, cluster)
    assert other.post(f"{detail}/pause").status_code == 202
    assert user.post(f"{detail}/resume").status_code == 202  # the owner
    assert admin.post(f"{detail}/pause").status_code == 202  # a tenant admin
    # Another tenant: nothing, whoever asks and however.
    job = Job.objects.get(cluster=cluster)
    task = Task.objects.filter(job=job).exclude(action=Action.JOIN).first()
    for who in (admin_b, user_b):
        client = client_for(who)
        assert names(client.get(CLUSTERS)) == []
        for url in (detail, f"{detail}/jobs", f"{detail}/nodes", f"{API}/jobs/{job.pk}", f"{API}/jobs/{job.pk}/tasks",
                    f"{API}/tasks/{task.pk}", f"{API}/tasks/{task.pk}/attempts/1"):  # fmt: skip
            assert error_of(client.get(url), 404)["code"] == "not_found", url
        for url in (f"{detail}/abort", f"{detail}/pause", f"{detail}/resume", f"{detail}/retry", f"{detail}/lease"):
            assert client.post(url, {}, format="json").status_code == 404, url
        assert client.delete(detail).status_code == 404
    job.refresh_from_db()
    assert job.status == "paused"


# --- operations ----------------------------------------------------------------------------------------------


def test_abort_pause_resume_retry_transitions(admin):
    cluster, job = created(post(admin, "ops", size=2))
    ops = f"{CLUSTERS}/{cluster.pk}"

    def operate(name: str, expected: str) -> dict[str, Any]:
        response = admin.post(f"{ops}/{name}")
        assert response.status_code == 202, response.content
        data = body(response)
        assert data["job"]["id"] == job.pk and data["job"]["status"] == expected
        assert response["Location"] == data["job"]["url"]
        return data

    operate("pause", "paused")
    error = error_of(admin.post(f"{ops}/pause"), 409)
    assert f"latest job {job.pk} (create) is paused" in error["message"]
    assert error["job"] == {"id": job.pk, "operation": "create", "status": "paused"}
    operate("resume", "running")
    assert f"job {job.pk} (create) is running" in error_of(admin.post(f"{ops}/retry"), 409)["message"]
    run_by_hand(job, fail=fails_app_install)
    assert body(admin.get(ops))["status"] == "incomplete"
    data = operate("retry", "running")
    assert data["cluster"]["status"] == "pending"
    operate("abort", "aborted")
    assert body(admin.get(ops))["status"] == "incomplete"  # something was created before the abort
    operate("retry", "running")
    run_by_hand(job)
    assert body(admin.get(ops))["status"] == "active"
    assert error_of(admin.post(f"{ops}/abort"), 409)["job"]["status"] == "completed"


def test_delete_answers_202_with_the_delete_job_once_nothing_runs(admin, tenant_a):
    cluster, job = created(post(admin, "gone", size=2))
    detail = f"{CLUSTERS}/{cluster.pk}"
    error = error_of(admin.delete(detail), 409)
    assert f"create job {job.pk} running" in error["message"]
    run_by_hand(job)
    response = admin.delete(detail)
    assert response.status_code == 202
    data = body(response)
    assert data["job"]["operation"] == "delete" and response["Location"] == data["job"]["url"]
    assert data["cluster"]["status"] == "pending" and data["cluster"]["latest_job"]["id"] == data["job"]["id"]
    run_by_hand(Job.objects.get(pk=data["job"]["id"]))
    assert body(admin.get(detail))["status"] == "terminated"
    assert error_of(admin.delete(detail), 409)["message"] == "cluster gone is already terminated"
    assert AuditEvent.objects.filter(tenant=tenant_a, action="delete", entity_name="gone").count() == 1


# --- leases --------------------------------------------------------------------------------------------------


def test_the_lease_is_extended_within_step_and_max(user):
    cluster, _ = created(post(user, "leased", template="leased"))
    url = f"{CLUSTERS}/{cluster.pk}/lease"
    response = user.post(url, {"extend_by": DAY_MS}, format="json")
    assert response.status_code == 200
    assert parse_datetime(body(response)["lease"]["expires_at"]) == cluster.expires_at + timedelta(days=1)
    error = error_of(user.post(url, {"extend_by": DAY_MS + 1}, format="json"), 400)
    assert "one extension may add at most 86400000 ms (1d)" in error["fields"]["extend_by"][0]
    beyond = (cluster.created_at + timedelta(days=3, seconds=1)).isoformat()
    error = error_of(user.post(url, {"expires_at": beyond}, format="json"), 400)
    assert any("from the cluster's creation" in message for message in error["fields"]["expires_at"])
    for bad, fields in [({}, {"expires_at", "extend_by"}), ({"extend_by": "soon"}, {"extend_by"}),
                        ({"expires_at": "tomorrow"}, {"expires_at"}), ({"extend_by": 0}, {"extend_by"}),
                        ({"expires_at": beyond, "extend_by": 1}, {"expires_at", "extend_by"})]:  # fmt: skip
        assert set(error_of(user.post(url, bad, format="json"), 400)["fields"]) == fields, bad
    forever, _ = created(post(user, "forever"))
    error = error_of(user.post(f"{CLUSTERS}/{forever.pk}/lease", {"extend_by": 1}, format="json"), 409)
    assert "never expires" in error["message"]


# --- jobs, tasks, attempts -----------------------------------------------------------------------------------


def test_tasks_show_their_attempts_and_each_attempt_its_log(admin):
    _, job = created(post(admin, "logs", size=1))
    run_by_hand(job, fail=fails_app_install)
    tasks_url = body(admin.get(f"{API}/jobs/{job.pk}"))["tasks_url"]
    listed = body(admin.get(tasks_url))
    real = Task.objects.filter(job=job).exclude(action=Action.JOIN)
    assert listed["count"] == real.count()
    assert [t["key"] for t in listed["results"]] == sorted(real.values_list("key", flat=True))
    (failed,) = results(admin.get(f"{tasks_url}?status=failed"))
    assert (failed["action"], failed["service"], failed["status"]) == ("install", "app", "failed")
    assert failed["node"]["number"] == 1000 and failed["attempts_used"] == 1 and failed["max_attempts"] == 3
    assert failed["started_at"] and failed["finished_at"]
    (attempt,) = failed["attempts"]
    assert (attempt["number"], attempt["outcome"], attempt["error_class"], attempt["worker"]) == (
        1, "failed", "ScriptError", "test/1")  # fmt: skip
    assert attempt["log_tail"] == "install failed" and "log" not in attempt
    full = body(admin.get(attempt["log_url"]))
    assert full["log"] == "install failed" and full["number"] == 1
    assert body(admin.get(failed["url"]))["id"] == failed["id"]
    assert error_of(admin.get(f"{API}/tasks/{failed['id']}/attempts/2"), 404)["code"] == "not_found"
    assert {t["action"] for t in results(admin.get(f"{tasks_url}?action=create"))} == {"create"}
    assert error_of(admin.get(f"{tasks_url}?status=bogus"), 400)["fields"].keys() == {"status"}
    job_view = body(admin.get(f"{API}/jobs/{job.pk}"))
    assert job_view["status"] == "failed" and "ScriptError" in job_view["message"]


def test_huge_ids_are_404(admin):
    for url in (f"{CLUSTERS}/99999999999999999999999", f"{API}/jobs/99999999999999999999999",
                f"{API}/tasks/1/attempts/9999999"):  # fmt: skip
        assert admin.get(url).status_code == 404, url


# --- end to end, on a real worker ----------------------------------------------------------------------------


def test_a_cluster_made_and_deleted_through_the_api_on_a_real_worker(worker, tenant_a, admin_a, client_for):
    catalog_import(tenant=tenant_a, user=None, data=fleet_catalog())
    client = client_for(admin_a)
    cluster, job = created(post(client, "real", size=2))
    wait_for_job(job)
    data = body(client.get(f"{CLUSTERS}/{cluster.pk}"))
    assert data["status"] == "active" and data["latest_job"]["progress"]["percent"] == 100.0
    assert all(node["ipaddresses"].get("access_v4") and node["status"] == "active" for node in data["nodes"])
    tasks = results(client.get(f"{API}/jobs/{job.pk}/tasks?page_size=200"))
    assert all(t["status"] == "completed" and t["attempts"][-1]["outcome"] == "succeeded" for t in tasks)
    assert all(t["attempts"][-1]["worker"].startswith("test-") for t in tasks)
    response = client.delete(f"{CLUSTERS}/{cluster.pk}")
    assert response.status_code == 202
    wait_for_job(Job.objects.get(pk=body(response)["job"]["id"]))
    assert body(client.get(f"{CLUSTERS}/{cluster.pk}"))["status"] == "terminated"
