"""Through the engine on EC2: ten machines created, confirmed and deleted by real Celery workers against moto.

A ``moto_server`` subprocess plays EC2. The catalog's ``aws`` provider carries ordinary fields (keys,
region, key pair, security group, extra tags, user data); the worker process reaches moto because it is
started with ``LOOM_TEST_CLOUD_HOOK`` and ``LOOM_TEST_EC2_ENDPOINT`` in its environment, the test-only hook
that ``providers/drivers/cloud.py`` honours only under the test settings (see ``tests/providers/
cloud_helpers.py``). The services use the noop automator: moto's addresses are fake, nothing could SSH to
them. boto3 on the same moto server is the witness of what exists.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from clusters.engine.runner import cluster_key
from clusters.models import Cluster, Node
from clusters.services.lifecycle import cluster_create, cluster_delete
from clusters.services.preview import PreviewRequest
from providers.drivers.cloud import TAG_PROVIDER, TEST_HOOK_ENV
from providers.models import Provider
from providers.services import provider_key
from templates_app.services import catalog_import

from ..providers.cloud_helpers import ENDPOINT_ENV, HOOK, moto_server
from .workers import run_to_completion

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 10


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def ec2_catalog(image: str) -> dict[str, list[Any]]:
    action = {"type": "noop", "fields": {"latency_ms": "20"}}
    return {
        "providers": [
            {"name": "ec2", "providertype": "aws",
             "provisioner": {"api_user": "AKIAIOSFODNN7EXAMPLE", "api_password": "not-a-real-secret-key-0123456789",
                             "aws_region": "us-east-1", "ssh_keypair": "loom-engine", "ssh_key_resource": "loom-key",
                             "security_groups": "loom-engine", "tags": "suite=engine",
                             "user_data": "#!/bin/sh\necho loom\n"}},
        ],
        "hardwaretypes": [{"name": "small", "providermap": {"ec2": {"flavor": "t3.micro"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"ec2": {"image": image, "sshuser": "admin"}}}],
        "services": [
            {"name": "base", "dependencies": {}, "provisioner": {"actions": {"install": action, "configure": action}}},
            {"name": "app", "dependencies": {"install": {"requires": ["base"]}, "runtime": {"requires": ["base"]}},
             "provisioner": {"actions": {"install": action, "configure": action, "start": action}}},
        ],
        "clustertemplates": [
            {"name": "ec2fleet", "description": "noop services on EC2 (moto)",
             "defaults": {"services": ["base", "app"], "provider": "ec2", "hardwaretype": "small",
                          "imagetype": "debian", "config": {}},
             "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"], "services": ["base", "app"]}},
        ],
    }  # fmt: skip


def live_instances(ec2: Any, **filters: str) -> list[dict[str, Any]]:
    answer = ec2.describe_instances(Filters=[{"Name": k, "Values": [v]} for k, v in filters.items()])
    instances = [i for reservation in answer["Reservations"] for i in reservation["Instances"]]
    return [i for i in instances if i["State"]["Name"] not in ("terminated", "shutting-down")]


def test_ten_ec2_nodes_are_created_confirmed_and_deleted_by_real_workers(moto, workers, tenant_a, admin_a):
    ec2 = boto3.client("ec2", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                       aws_secret_access_key="not-a-real-secret-key-0123456789")  # fmt: skip
    ec2.create_key_pair(KeyName="loom-engine")
    ec2.create_security_group(GroupName="loom-engine", Description="loom engine test")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    catalog_import(tenant=tenant_a, user=None, data=ec2_catalog(image))
    workers.start(env={TEST_HOOK_ENV: HOOK, ENDPOINT_ENV: moto})

    started = time.monotonic()
    cluster, job = cluster_create(
        user=admin_a, tenant=tenant_a, request=PreviewRequest(name="ec2fleet", template="ec2fleet", size=SIZE)
    )
    run_to_completion(job, workers.log)
    created_in = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.ACTIVE
    nodes = list(Node.objects.filter(cluster=cluster))
    provider = Provider.objects.get(tenant=tenant_a, name="ec2")

    running = live_instances(ec2, **{"tag:loom-cluster": cluster_key(cluster)})
    assert len(running) == SIZE == len(nodes)
    # One instance per node, each node holding its own instance's addresses.
    by_node = Counter({t["Value"]: 1 for i in running for t in i["Tags"] if t["Key"] == "loom-node"})
    assert by_node == Counter({n.node_key: 1 for n in nodes})
    by_id = {i["InstanceId"]: i for i in running}
    for node in nodes:
        instance = by_id[node.machine_id]
        assert node.status == Node.Status.ACTIVE
        assert node.ip_addresses == {"access_v4": instance["PublicIpAddress"], "bind_v4": instance["PrivateIpAddress"]}
        assert (instance["InstanceType"], instance["ImageId"], instance["KeyName"]) == (
            "t3.micro",
            image,
            "loom-engine",
        )
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["suite"] == "engine" and tags[TAG_PROVIDER] == provider_key(provider=provider)
        assert node.ssh_user == "admin"

    started = time.monotonic()
    delete_job = cluster_delete(user=admin_a, cluster=cluster)
    run_to_completion(delete_job, workers.log)
    deleted_in = time.monotonic() - started
    cluster.refresh_from_db()
    assert cluster.status == Cluster.Status.TERMINATED
    assert set(Node.objects.filter(cluster=cluster).values_list("status", flat=True)) == {Node.Status.DELETED}
    assert live_instances(ec2) == [], "instances left running in moto after the delete"
    terminated = ec2.describe_instances(InstanceIds=[n.machine_id for n in nodes])["Reservations"]
    assert len([i for r in terminated for i in r["Instances"]]) == SIZE
    print(f"{SIZE} EC2 (moto) nodes: create job {created_in:.1f} s, delete job {deleted_in:.1f} s")
