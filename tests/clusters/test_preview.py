"""POST /api/v2/clusters/preview: layout, plan and cost of a create, on the sample lamp template."""

from __future__ import annotations

import pytest

from clusters.planning.planner import Action

PREVIEW = "/api/v2/clusters/preview"


def body(**changes):
    return {"name": "shop", "clusterTemplate": "lamp", "numMachines": 3, **changes}


@pytest.fixture
def admin(admin_a, client_for, catalog_a):
    return client_for(admin_a)


def test_preview_of_the_lamp_template(admin, user_a, client_for):
    response = client_for(user_a).post(PREVIEW, body(), format="json")  # plain users may preview
    assert response.status_code == 200, response.content
    preview = response.json()
    assert preview["provider"] == "rackspace" and preview["size"] == 3
    assert preview["services"] == ["apache-httpd", "base", "mysql-server", "php", "php-modules"]
    roles = preview["layout"]["roles"]
    assert sum(r["count"] for r in roles) == 3
    assert all(r["hardwaretype"] == "standard-medium" and r["flavor"] == "5" for r in roles)
    assert all(r["imagetype"] == "ubuntu12" for r in roles)
    assert sum("mysql-server" in r["services"] for r in roles for _ in range(r["count"])) == 1
    for role in roles:  # must-coexist: apache, php and php-modules travel together
        assert {"apache-httpd", "php", "php-modules"} <= set(role["services"]) or not (
            {"apache-httpd", "php", "php-modules"} & set(role["services"])
        )
    assert preview["cost"] == {"hourly": pytest.approx(1.08), "currency": "USD", "complete": True,
                               "unknown_hardwaretypes": []}  # fmt: skip
    assert [n["hostname"] for n in preview["nodes"]] == ["shop-1000.local", "shop-1001.local", "shop-1002.local"]
    plan = preview["plan"]
    assert plan["by_action"]["create"] == 3 and plan["by_action"]["confirm"] == 3
    assert "delete" not in plan["by_action"]
    assert plan["critical_path"] >= 7  # create, confirm, bootstrap, install, configure, (initialize,) start
    tasks = plan["task_list"]
    assert len([t for t in tasks if t["action"] != Action.JOIN]) == plan["tasks"]
    keys = {t["key"]: t for t in tasks}
    for predecessor, successor in plan["edge_list"]:
        assert keys[predecessor]["stage"] <= keys[successor]["stage"]


def test_preview_of_a_different_size_provider_and_hardware(admin):
    response = admin.post(
        PREVIEW, body(numMachines=5, hardwaretype="standard-small", dnsSuffix="dev.example.com"), format="json"
    )
    assert response.status_code == 200, response.content
    preview = response.json()
    assert {r["hardwaretype"] for r in preview["layout"]["roles"]} == {"standard-small"}
    assert preview["cost"]["hourly"] == pytest.approx(5 * 0.24)
    assert preview["nodes"][0]["hostname"] == "shop-1000.dev.example.com"


@pytest.mark.parametrize(
    ("changes", "status", "field", "text"),
    [
        ({"numMachines": 0}, 400, "numMachines", "greater than or equal to 1"),
        ({"numMachines": 20000}, 400, "numMachines", "maximum cluster size"),
        ({"clusterTemplate": "nope"}, 404, None, "cluster template nope not found"),
        ({"provider": "ghost"}, 404, None, "provider ghost not found"),
        ({"services": ["base", "haproxy", "haproxy", "mysql-server"], "numMachines": 1}, 200, None, None),
        ({"services": ["memcached-x"]}, 400, "layout", "memcached-x"),
        ({"hardwaretype": "standard-huge"}, 400, "layout", "standard-huge"),
        (
            {"config": {"db": "%host.service.memcached%"}},
            400,
            "config/db",
            "no node of this cluster hosts service memcached",
        ),
        ({"config": {"db": "%bad macro%"}}, 400, "config/db", "not a valid macro name"),
        ({"name": "bad name"}, 400, "name", ""),
    ],
)
def test_bad_requests_name_the_problem(admin, changes, status, field, text):
    response = admin.post(PREVIEW, body(**changes), format="json")
    assert response.status_code == status, response.content
    if status == 200:
        return
    error = response.json()["error"]
    assert text in error["message"] or any(text in m for messages in error["fields"].values() for m in messages)
    if field:
        assert field in error["fields"], error


def test_other_tenants_templates_are_not_found(admin, admin_b, client_for):
    response = client_for(admin_b).post(PREVIEW, body(), format="json")
    assert response.status_code == 404


def test_large_previews_summarise_the_plan(admin):
    response = admin.post(PREVIEW, body(numMachines=400), format="json")
    assert response.status_code == 200, response.content
    preview = response.json()
    assert "task_list" not in preview["plan"] and "nodes" not in preview
    assert sum(preview["plan"]["stage_sizes"]) == preview["plan"]["tasks"]
    assert preview["plan"]["edges"] < preview["plan"]["edges_without_join_points"]
