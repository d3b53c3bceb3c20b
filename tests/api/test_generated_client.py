"""A client nobody here wrote by hand (issue 18): openapi-python-client generates one from the served schema
(``/api/v2/schema``) in the test, and the test runs a cluster's whole life through it alone — create (with an
Idempotency-Key), watch the job, read the cluster, its nodes, health and inventory, scale out, delete — against
a live server and a real worker on the fake provider.

Every answer is also validated against the schema it claims to follow (its component in the served document,
OpenAPI 3.0's ``nullable`` read as JSON Schema's ``null``), so a response shape the schema gets wrong (a field
that can be null but is not said to be, a missing field, a wrong type) fails here and is fixed in the schema.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from clusters.models import Cluster, Job
from templates_app.services import catalog_import
from tenants.services import api_token_create
from tests.clusters.workers import catalog

pytestmark = pytest.mark.django_db(transaction=True)

JOB_TIMEOUT_S = 120.0


def generated_client(schema_path: Path, into: Path) -> Any:
    """Generate the client package ``loom_client`` from ``schema_path`` into ``into`` and import it."""
    tool = Path(sys.executable).parent / "openapi-python-client"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # its ruff post-hook: the project's ruff
    done = subprocess.run([str(tool), "generate", "--path", str(schema_path), "--meta", "none", "--output-path",
                           str(into / "loom_client")], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr  # nothing skipped
    sys.path.insert(0, str(into))
    return importlib.import_module("loom_client")


def nullable_as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema: ``nullable: true`` admits null; ``$ref`` points into ``$defs``."""
    if isinstance(node, list):
        return [nullable_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: nullable_as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if "$ref" in result:
        result["$ref"] = result["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable"):
        return {"anyOf": [result, {"type": "null"}]}
    return result


@pytest.fixture
def fleet(live_server: Any, tenant_a: Any, admin_a: Any, tmp_path: Path) -> dict[str, Any]:
    catalog_import(tenant=tenant_a, user=None, data=catalog())
    token = api_token_create(user=admin_a, name="generated").key
    request = urllib.request.Request(f"{live_server.url}/api/v2/schema?format=json",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        schema = json.loads(response.read())
    schema_path = tmp_path / "openapi.json"
    schema_path.write_text(json.dumps(schema))
    yield {"url": live_server.url, "token": token, "schema": schema, "client": generated_client(schema_path, tmp_path)}
    for name in [name for name in sys.modules if name == "loom_client" or name.startswith("loom_client.")]:
        del sys.modules[name]
    sys.path.remove(str(tmp_path))
    shutil.rmtree(tmp_path / "loom_client", ignore_errors=True)


def test_the_generated_client_runs_a_cluster_s_whole_life(fleet, workers):
    workers.start(concurrency=8)
    loom = fleet["client"]
    from loom_client.api.clusters import (  # type: ignore[import-not-found]
        clusters_create,
        clusters_destroy,
        clusters_health_retrieve,
        clusters_inventory_retrieve,
        clusters_nodes_list,
        clusters_retrieve,
        clusters_scale_out_create,
    )
    from loom_client.api.jobs import jobs_retrieve  # type: ignore[import-not-found]
    from loom_client.models import ClusterCreateInputRequest, ScaleOutInputRequest  # type: ignore[import-not-found]

    definitions = nullable_as_json_schema(fleet["schema"]["components"]["schemas"])

    def valid(response: Any, component: str) -> Any:
        """The parsed answer, after its raw JSON is checked against the schema's ``component``."""
        body = json.loads(response.content)
        jsonschema.validate(body, {"$ref": f"#/$defs/{component}", "$defs": definitions})
        assert response.parsed is not None, (response.status_code, body)
        return response.parsed

    client = loom.AuthenticatedClient(base_url=fleet["url"], token=fleet["token"], prefix="Bearer",
                                      raise_on_unexpected_status=True)  # fmt: skip

    def watch(job_id: int) -> Any:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            job = valid(jobs_retrieve.sync_detailed(job_id, client=client), "JobDetail")
            if job.status in ("completed", "failed", "aborted"):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
            time.sleep(0.2)

    key = str(uuid.uuid4())
    request = ClusterCreateInputRequest(name="gen", cluster_template="fleet", num_machines=2)
    created = valid(clusters_create.sync_detailed(client=client, body=request, idempotency_key=key),
                    "ClusterOperation")  # fmt: skip
    again = valid(clusters_create.sync_detailed(client=client, body=request, idempotency_key=key), "ClusterOperation")
    assert again.cluster.id == created.cluster.id  # the key replayed the answer: one cluster
    assert watch(created.job.id).status == "completed"
    cluster_id = created.cluster.id

    detail = valid(clusters_retrieve.sync_detailed(cluster_id, client=client), "ClusterDetail")
    assert (detail.status, detail.node_count) == ("active", 2)
    nodes = valid(clusters_nodes_list.sync_detailed(cluster_id, client=client), "PaginatedNodeList")
    assert [node.number for node in nodes.results] == [1000, 1001]
    assert nodes.results[0].health.state == "unknown"
    health = valid(clusters_health_retrieve.sync_detailed(cluster_id, client=client), "ClusterHealth")
    assert health.health.state == "unknown" and health.history == []
    inventory = json.loads(clusters_inventory_retrieve.sync_detailed(cluster_id, client=client).content)
    assert sorted(inventory["loom_gen"]["hosts"]) == sorted(node.hostname for node in nodes.results)

    scaled = valid(clusters_scale_out_create.sync_detailed(cluster_id, client=client,
                                                           body=ScaleOutInputRequest(count=1)), "ClusterOperation")  # fmt: skip
    assert watch(scaled.job.id).status == "completed"
    deleted = valid(clusters_destroy.sync_detailed(cluster_id, client=client), "ClusterOperation")
    ended = watch(deleted.job.id)
    assert ended.status == "completed" and ended.requested_by == "alice"
    assert Cluster.objects.get(pk=cluster_id).status == "terminated"
    # A job Loom started itself (the lease janitor, auto-repair) has no requesting user: null, as the schema says.
    Job.objects.filter(pk=deleted.job.id).update(requested_by=None)
    assert watch(deleted.job.id).requested_by is None
    final = valid(clusters_retrieve.sync_detailed(cluster_id, client=client), "ClusterDetail")
    assert final.status == "terminated" and final.latest_job.operation == "delete"
