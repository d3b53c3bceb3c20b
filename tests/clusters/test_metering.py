"""Usage metering (clusters/features/metering.py) and ``GET /api/v2/usage/nodes``: node-hours checked against a case
computed by hand from fixed timestamps, the bucket arithmetic at period edges, and who may read what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from clusters.features.metering import Lifetime, bucket_starts, node_usage, usage_compute
from clusters.models import Cluster, Job, Node, Task, TaskAttempt
from templates_app.services import catalog_import
from tests.clusters.engine_helpers import make_cluster

OK = TaskAttempt.Outcome.SUCCEEDED
FAILED = TaskAttempt.Outcome.FAILED
URL = "/api/v2/usage/nodes"


def at(hour: float, day: int = 1) -> datetime:
    """2024-01-<day> at <hour> (fractions are minutes), UTC."""
    return datetime(2024, 1, day, tzinfo=UTC) + timedelta(hours=hour)


_keys = count(1)


def machine(
    cluster: Cluster, number: int, attempts: list[tuple[str, str, datetime, datetime]], *, status: str = "active"
) -> Node:
    """A node of ``cluster`` with one task per (action, outcome, started, finished) attempt."""
    node = Node.objects.create(cluster=cluster, number=number, hostname=f"{cluster.name}-{number}", hardware="small",
                               image="debian", status=status)  # fmt: skip
    job = cluster.jobs.first() or Job.objects.create(cluster=cluster, operation="create")
    for action, outcome, started, finished in attempts:
        task = Task.objects.create(tenant=cluster.tenant, job=job, node=node, key=next(_keys), action=action,
                                   status="completed" if outcome == OK else "failed")  # fmt: skip
        TaskAttempt.objects.create(task=task, number=1, started_at=started, finished_at=finished, outcome=outcome)
    return node


@pytest.fixture
def usage_case(tenant_a: Any, tenant_b: Any, admin_a: Any, user_a: Any, admin_b: Any, catalog_a: Any, samples: Any):
    """The hand-computed case (all 2024-01-01, UTC):

    - shop (arthur, lamp) node 1: a failed create 10:00-10:10 (not counted), the create that worked started
      10:30, its delete succeeded at 12:15 → 10:30-12:15 = 1.75 h (10h 0.5, 11h 1, 12h 0.25);
    - shop node 2: created at 09:00 and still alive → all of 10:00-14:00 = 4 h (1 per hour);
    - shop node 3: its only create failed → nothing;
    - lab (alice, template renamed "hadoop") node 1: created 11:45, marked deleted without a delete task,
      last attempt ended 13:30 → 11:45-13:30 = 1.75 h (11h 0.25, 12h 1, 13h 0.5);
    - globex's cluster: 10:00-14:00, never visible to acme.

    Over 10:00-14:00 by hour: 1.5, 2.25, 2.25, 1.5 = 7.5 node-hours; arthur 5.75, alice 1.75.
    """
    shop = make_cluster(tenant_a, user_a, name="shop")
    machine(shop, 1, [("create", FAILED, at(10), at(10 + 1 / 6)), ("create", OK, at(10.5), at(10 + 35 / 60)),
                      ("delete", OK, at(12), at(12.25))], status="deleted")  # fmt: skip
    machine(shop, 2, [("create", OK, at(9), at(9.1)), ("bootstrap", OK, at(9.1), at(9.2))])
    machine(shop, 3, [("create", FAILED, at(10), at(10.1))], status="failed")
    lab = make_cluster(tenant_a, admin_a, name="lab")
    Cluster.objects.filter(pk=lab.pk).update(template_name="hadoop")
    lab.refresh_from_db()
    machine(lab, 1, [("create", OK, at(11.75), at(12)), ("bootstrap", OK, at(12), at(13.5))], status="deleted")
    catalog_import(tenant=tenant_b, user=None, data=samples)
    other = make_cluster(tenant_b, admin_b, name="elsewhere")
    machine(other, 1, [("create", OK, at(10), at(10.1)), ("delete", OK, at(13.9), at(14))], status="deleted")
    return {"shop": shop, "lab": lab, "other": other}


def hours(usage: Any) -> list[float]:
    return [round(value, 6) for _, value in usage.buckets]


def test_node_hours_match_the_hand_computed_case(usage_case):
    usage = node_usage(nodes=Node.objects.filter(cluster__tenant__name="acme"), start=at(10), end=at(14),
                       groupby="hour", now=at(15))  # fmt: skip
    assert [moment for moment, _ in usage.buckets] == [at(10), at(11), at(12), at(13)]
    assert hours(usage) == [1.5, 2.25, 2.25, 1.5]
    assert round(usage.total, 6) == 7.5
    assert {name: round(value, 6) for name, value in usage.users.items()} == {"arthur": 5.75, "alice": 1.75}
    assert {name: round(value, 6) for name, value in usage.templates.items()} == {"lamp": 5.75, "hadoop": 1.75}
    assert {name: round(value, 6) for name, value in usage.tenants.items()} == {"acme": 7.5}
    shop, lab = usage_case["shop"], usage_case["lab"]
    assert {key: round(value, 6) for key, value in usage.clusters.items()} == {
        (shop.pk, "shop"): 5.75, (lab.pk, "lab"): 1.75,
    }  # fmt: skip


def test_a_living_node_counts_until_now_and_a_range_start_clips(usage_case):
    # By day over the whole of January 1st, with "now" at 15:00: shop-2 counts 09:00-15:00 = 6 h.
    usage = node_usage(nodes=Node.objects.filter(cluster__tenant__name="acme"), start=at(0), end=at(0, day=3),
                       groupby="day", now=at(15))  # fmt: skip
    assert hours(usage) == [1.75 + 6 + 1.75, 0.0]
    # A range starting at 12:00 keeps only what lived after it.
    late = node_usage(nodes=Node.objects.filter(cluster__tenant__name="acme"), start=at(12), end=at(13),
                      groupby="hour", now=at(15))  # fmt: skip
    assert hours(late) == [0.25 + 1 + 1]


def life(start: datetime, end: datetime) -> Lifetime:
    return Lifetime(node_id=1, tenant="t", owner="u", template="p", cluster_id=1, cluster="c", start=start, end=end)


def test_months_weeks_and_clipped_first_buckets():
    start, end = datetime(2024, 1, 15, tzinfo=UTC), datetime(2024, 3, 10, tzinfo=UTC)
    assert bucket_starts(start, end, "month") == [
        start,
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    ]
    # January 20 → March 1: 12 whole days of January, all of (leap) February, nothing of March.
    usage = usage_compute(lifetimes=[life(datetime(2024, 1, 20, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))],
                          start=start, end=end, groupby="month")  # fmt: skip
    assert hours(usage) == [12 * 24, 29 * 24, 0]
    # Weeks start on Monday (2024-01-01 is one); a range starting mid-week has a short first bucket.
    weeks = bucket_starts(at(0, day=3), at(0, day=17), "week")
    assert weeks == [at(0, day=3), at(0, day=8), at(0, day=15)]
    spanning = usage_compute(lifetimes=[life(at(12, day=2), at(12, day=20))], start=at(0, day=3), end=at(0, day=17),
                             groupby="week")  # fmt: skip
    assert hours(spanning) == [5 * 24, 7 * 24, 2 * 24]
    # Lifetimes ending exactly on a boundary, starting on one, and inside one bucket.
    exact = usage_compute(lifetimes=[life(at(10), at(12)), life(at(12), at(12.5)), life(at(13.25), at(13.5))],
                          start=at(10), end=at(14), groupby="hour")  # fmt: skip
    assert hours(exact) == [1, 1, 0.5, 0.25]
    assert round(exact.total, 6) == 2.75


def test_month_buckets_roll_over_the_year():
    starts = bucket_starts(datetime(2023, 11, 5, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC), "month")
    assert [moment.date().isoformat() for moment in starts] == ["2023-11-05", "2023-12-01", "2024-01-01"]


# --- the API -------------------------------------------------------------------------------------------------


def query(**params: Any) -> str:
    return URL + "?" + "&".join(f"{key}={value}" for key, value in params.items())


RANGE = {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T14:00:00Z", "groupby": "hour"}


def test_a_tenant_admin_reads_the_whole_tenant(usage_case, client_for, admin_a):
    response = client_for(admin_a).get(query(**RANGE))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["unit"] == "node-hours" and body["groupby"] == "hour" and body["total"] == 7.5
    assert [row["value"] for row in body["data"]] == [1.5, 2.25, 2.25, 1.5]
    assert body["data"][0]["time"] == "2024-01-01T10:00:00+00:00"
    assert body["users"] == [{"name": "arthur", "value": 5.75}, {"name": "alice", "value": 1.75}]
    assert body["tenants"] == [{"name": "acme", "value": 7.5}]
    assert body["clusters"][0] == {"id": usage_case["shop"].pk, "name": "shop", "value": 5.75}
    # The filters, and Unix seconds as in the original.
    unix = {**RANGE, "start": int(at(10).timestamp()), "end": int(at(14).timestamp())}
    assert client_for(admin_a).get(query(**unix, user="alice")).json()["total"] == 1.75
    assert client_for(admin_a).get(query(**unix, template="lamp")).json()["total"] == 5.75
    assert client_for(admin_a).get(query(**unix, cluster=usage_case["lab"].pk)).json()["total"] == 1.75
    assert client_for(admin_a).get(query(**unix, template="nothing")).json()["total"] == 0


def test_a_member_reads_only_their_own_clusters(usage_case, client_for, user_a):
    body = client_for(user_a).get(query(**RANGE)).json()
    assert body["total"] == 5.75 and [row["name"] for row in body["users"]] == ["arthur"]
    assert client_for(user_a).get(query(**RANGE, user="arthur")).json()["total"] == 5.75
    refused = client_for(user_a).get(query(**RANGE, user="alice"))
    assert refused.status_code == 403 and refused.json()["error"]["fields"] == {"user": ["not you"]}
    hidden = client_for(user_a).get(query(**RANGE, cluster=usage_case["lab"].pk))
    assert hidden.status_code == 404


def test_other_tenants_usage_is_invisible(usage_case, client_for, admin_a, admin_b):
    body = client_for(admin_b).get(query(**RANGE)).json()
    assert body["total"] == 4.0 and body["tenants"] == [{"name": "globex", "value": 4.0}]
    assert client_for(admin_b).get(query(**RANGE, cluster=usage_case["shop"].pk)).status_code == 404
    assert client_for(admin_a).get(query(**RANGE, tenant="globex")).status_code == 404


def test_superusers_choose_the_tenant(usage_case, client_for, superuser):
    assert client_for(superuser, "globex").get(query(**RANGE)).json()["total"] == 4.0
    assert client_for(superuser).get(query(**RANGE, tenant="acme")).json()["total"] == 7.5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"groupby": "fortnight"}, "groupby"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2024-13-01T00:00:00Z"}, "end"),
        ({"start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, "start"),
        ({"start": "1990-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z", "groupby": "hour"}, "groupby"),
        ({"cluster": "shop"}, "cluster"),
        ({"cluster": "99999999999999999999"}, "cluster"),
        ({"user": "no body"}, "user"),
        ({"user": "nobody"}, "user"),
        ({"template": "a/b"}, "template"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(usage_case, client_for, admin_a, params, field):
    response = client_for(admin_a).get(URL, params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_anonymous_callers_are_refused(db, client):
    assert client.get(URL).status_code in (401, 403)


# --- the admin overview --------------------------------------------------------------------------------------


def test_the_admin_usage_overview_shows_only_the_admins_tenants(usage_case, admin_a, superuser, user_a):
    from django.test import Client

    admin_a.is_staff = True
    admin_a.save()
    client = Client()
    client.force_login(admin_a)
    page = client.get("/admin/clusters/cluster/usage/?days=3660")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Usage overview" in text and "shop" in text and "hadoop" in text and "elsewhere" not in text
    client.force_login(superuser)
    text = client.get("/admin/clusters/cluster/usage/?days=3660").content.decode()
    assert "elsewhere" in text and "globex" in text
    user_a.is_staff = True
    user_a.save()
    client.force_login(user_a)
    assert client.get("/admin/clusters/cluster/usage/").status_code == 403
