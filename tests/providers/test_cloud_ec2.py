"""The ``aws`` driver against moto's EC2 server, and its error classes against a scripted HTTP server.

moto runs as a real ``moto_server`` subprocess on loopback; the driver talks to it over HTTP through
libcloud exactly as to EC2, except for the two test-only adjustments in ``cloud_helpers`` (SigV4 and the
namespace rewrite), which reach the driver through ``LOOM_TEST_CLOUD_HOOK``. What the driver made is
checked independently with boto3 against the same server. moto accepts any credentials, so refused
credentials, throttling and server errors come from a tiny local server answering like EC2 does.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from django.test import override_settings

from providers.drivers.aws import AwsDriver
from providers.drivers.base import MachineSpec, NotReady, Reachable, TerminalError, TransientError, driver_for
from providers.drivers.cloud import TAG_PROVIDER, TEST_HOOK_ENV, CloudDriver

from .cloud_helpers import (
    ENDPOINT_ENV,
    HOOK,
    SIGNATURE_ENV,
    Answer,
    ec2_error,
    free_port,
    moto_server,
    scripted_server,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def ec2_client(moto: str) -> Any:
    """boto3 on the same moto server: the independent witness of what the driver did."""
    return boto3.client(
        "ec2", endpoint_url=moto, region_name="us-east-1", aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET
    )


@pytest.fixture
def image(ec2_client: Any) -> str:
    return str(ec2_client.describe_images()["Images"][0]["ImageId"])


MakeDriver = Callable[..., AwsDriver]


def aws_fields(**overrides: Any) -> dict[str, Any]:
    fields = {"api_user": ACCESS_KEY, "api_password": SECRET, "aws_region": "us-east-1", "ssh_keypair": "",
              "ssh_key_resource": "loom-key", "security_groups": "default"}  # fmt: skip
    return {**fields, **overrides}


def hooked(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> MakeDriver:
    monkeypatch.setenv(TEST_HOOK_ENV, HOOK)
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)

    def make(provider_key: str | None = None, timeout: float = 10, **fields: Any) -> AwsDriver:
        key = provider_key or f"tenant-1/provider-{uuid.uuid4().hex[:8]}"
        return AwsDriver(aws_fields(**fields), provider_key=key, timeout=timeout)

    return make


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> MakeDriver:
    return hooked(monkeypatch, moto)


def spec(image: str, number: int = 1, cluster: str | None = None, **tags: str) -> MachineSpec:
    return MachineSpec.for_node(
        cluster_key=cluster or f"c{uuid.uuid4().hex[:6]}-web",
        node_key=uuid.uuid4().hex,
        node_number=number,
        flavor="t3.micro",
        image=image,
        ssh_user="debian",
        tags=tags,
    )


def instances(ec2_client: Any, **filters: str) -> list[dict[str, Any]]:
    pages = ec2_client.describe_instances(Filters=[{"Name": k, "Values": [v]} for k, v in filters.items()])
    return [i for r in pages["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"]


def confirmed(driver: CloudDriver, machine_spec: MachineSpec, machine_id: str) -> Reachable:
    """Confirm as the engine does: a NotReady is asked again (moto reports "pending" once at most)."""
    for _ in range(20):
        try:
            return driver.confirm(machine_spec, machine_id)
        except NotReady:
            continue
    raise AssertionError(f"{machine_id} never became reachable")


# --- the contract against moto ---------------------------------------------------------------------------------


def test_create_confirm_list_and_delete_one_machine(aws, image, ec2_client):
    driver = aws()
    node = spec(image, number=3)
    machine = driver.create(node)
    assert machine.machine_id.startswith("i-") and machine.name == node.name
    assert machine.node_key == node.node_key and machine.cluster_key == node.cluster_key
    assert machine.tags[TAG_PROVIDER] == driver.provider_key
    [instance] = instances(ec2_client, **{"tag:loom-node": node.node_key})
    assert instance["InstanceType"] == "t3.micro" and instance["ImageId"] == image
    assert {t["Key"]: t["Value"] for t in instance["Tags"]}["Name"] == node.name

    reachable = confirmed(driver, node, machine.machine_id)
    assert reachable.ip_addresses == {"access_v4": instance["PublicIpAddress"], "bind_v4": instance["PrivateIpAddress"]}
    assert (reachable.hostname, reachable.ssh_user, reachable.credentials_ref) == (node.name, "debian", "loom-key")

    assert [m.machine_id for m in driver.list_tagged()] == [machine.machine_id]
    driver.delete(machine.machine_id)
    assert driver.list_tagged() == []
    assert ec2_client.describe_instances(InstanceIds=[machine.machine_id])["Reservations"][0]["Instances"][0]["State"][
        "Name"
    ] in ("shutting-down", "terminated")
    with pytest.raises(TerminalError, match="terminated"):
        driver.confirm(node, machine.machine_id)


def test_the_same_spec_twice_makes_one_instance(aws, image, ec2_client):
    """moto ignores ClientToken (as the lab notes say): the tag lookup alone keeps the create idempotent."""
    driver = aws()
    node = spec(image)
    first = driver.create(node)
    again = aws(provider_key=driver.provider_key).create(node)  # a retry in another worker: a new driver
    assert again.machine_id == first.machine_id
    assert len(instances(ec2_client, **{"tag:loom-node": node.node_key})) == 1
    driver.delete(first.machine_id)
    # Once the machine is gone, a create for the node makes a new one (the node's old machine was deleted).
    replacement = driver.create(node)
    assert replacement.machine_id != first.machine_id
    driver.delete(replacement.machine_id)


def test_extra_tags_user_data_key_pair_and_security_groups_reach_the_instance(aws, image, ec2_client):
    ec2_client.create_security_group(GroupName="loom-web-h6", Description="web")
    ec2_client.create_key_pair(KeyName="loom-h6")
    user_data = "#!/bin/sh\necho 'hello from loom' > /tmp/loom\n"
    driver = aws(tags="team=web, cost-centre=42", user_data=user_data, ssh_keypair="loom-h6",
                 security_groups="default,loom-web-h6")  # fmt: skip
    node = spec(image)
    machine = driver.create(node)
    [instance] = instances(ec2_client, **{"tag:loom-node": node.node_key})
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["team"] == "web" and tags["cost-centre"] == "42"
    assert tags["loom-cluster"] == node.cluster_key and tags[TAG_PROVIDER] == driver.provider_key
    assert instance["KeyName"] == "loom-h6"
    assert {g["GroupName"] for g in instance["SecurityGroups"]} == {"default", "loom-web-h6"}
    attribute = ec2_client.describe_instance_attribute(InstanceId=machine.machine_id, Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]).decode() == user_data
    driver.delete(machine.machine_id)


def test_vpc_subnet_security_group_ids_and_a_data_volume(aws, image, ec2_client):
    vpc = ec2_client.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2_client.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    group = ec2_client.create_security_group(GroupName="loom-vpc-h6", Description="vpc", VpcId=vpc)["GroupId"]
    driver = aws(subnet_id=subnet, security_group_ids=group, security_groups="", aws_ebs_size="30",
                 availability_zone="")  # fmt: skip
    node = spec(image)
    machine = driver.create(node)
    [instance] = instances(ec2_client, **{"tag:loom-node": node.node_key})
    assert instance["SubnetId"] == subnet and instance["VpcId"] == vpc
    # associate_public_ip (on by default) asks for a network interface with a public address, so the groups
    # are the interface's.
    [interface] = instance["NetworkInterfaces"]
    assert [g["GroupId"] for g in interface["Groups"]] == [group] and interface["Association"]["PublicIp"]
    assert instance["PrivateIpAddress"].startswith("10.77.1.")
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]}
    volume = ec2_client.describe_volumes(VolumeIds=[devices["/dev/sdf"]])["Volumes"][0]
    assert volume["Size"] == 30
    driver.delete(machine.machine_id)


def test_list_tagged_sees_only_its_own_providers_machines(aws, image):
    mine, theirs = aws(), aws()
    a = mine.create(spec(image))
    b = theirs.create(spec(image))
    assert [m.machine_id for m in mine.list_tagged()] == [a.machine_id]
    assert [m.machine_id for m in theirs.list_tagged()] == [b.machine_id]
    mine.delete(a.machine_id)
    theirs.delete(b.machine_id)


def test_deleting_a_missing_or_deleted_machine_succeeds(aws, image):
    driver = aws()
    machine = driver.create(spec(image))
    driver.delete(machine.machine_id)
    driver.delete(machine.machine_id)
    driver.delete("i-0123456789abcdef0")


def test_confirm_of_an_unknown_or_foreign_machine(aws, image):
    driver = aws()
    node = spec(image)
    machine = driver.create(node)
    with pytest.raises(TransientError, match="not found"):
        driver.confirm(node, "i-0123456789abcdef0")
    with pytest.raises(TerminalError, match=f"belongs to node {node.node_key}"):
        driver.confirm(spec(image), machine.machine_id)
    driver.delete(machine.machine_id)


def test_provider_hostname_uses_the_clouds_dns_name(aws, image):
    driver = aws(provider_hostname=True)
    node = spec(image)
    machine = driver.create(node)
    hostname = confirmed(driver, node, machine.machine_id).hostname
    assert hostname.endswith(".amazonaws.com") or hostname.endswith(".internal")
    driver.delete(machine.machine_id)


# --- fields that cannot work are rejected before any call -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"aws_region": "mars-1"}, "aws_region: unknown region 'mars-1'"),
        ({"api_password": ""}, "field api_password is required"),
        ({"dedicated_instance": "true"}, "dedicated_instance"),
        ({"security_group_ids": "sg-1"}, "security_group_ids needs subnet_id"),
        ({"tags": "team"}, "field tags: 'team' is not key=value"),
        ({"tags": "loom-node=x"}, "field tags: loom-node is reserved"),
        ({"aws_ebs_size": "big"}, "aws_ebs_size must be a whole number"),
    ],
)
def test_unusable_fields_are_terminal_errors_naming_the_field(fields, message):
    with pytest.raises(TerminalError, match=message):
        AwsDriver(aws_fields(**fields), provider_key="tenant-1/provider-1")


def test_driver_for_builds_the_aws_driver():
    driver = driver_for("aws", aws_fields(), provider_key="tenant-1/provider-9")
    assert isinstance(driver, AwsDriver) and driver.provider_key == "tenant-1/provider-9"


# --- error classes, against a server that answers like EC2 does --------------------------------------------------

# Each case: what the server answers, the error class expected, and a word the message must contain.
FAILURES = [
    (Answer(401, ec2_error("AuthFailure", "AWS was not able to validate the provided access credentials")),
     TerminalError, "credentials"),
    (Answer(400, ec2_error("InvalidClientTokenId", "The security token included in the request is invalid")),
     TerminalError, "credentials"),
    (Answer(403, ec2_error("UnauthorizedOperation", "You are not authorized to perform this operation.")),
     TerminalError, "credentials"),
    (Answer(500, ec2_error("InternalError", "An internal error has occurred")), TransientError, "HTTP 500"),
    (Answer(503, ec2_error("RequestLimitExceeded", "Request limit exceeded.")), TransientError, "throttled"),
    (Answer(400, ec2_error("Throttling", "Rate exceeded")), TransientError, "throttled"),
    (Answer(429, "slow down", {"Retry-After": "7"}), TransientError, "throttled"),
    (Answer(502, "<html><body>Bad gateway</body></html>", {"Content-Type": "text/html"}), TransientError, "502"),
    (Answer(400, ec2_error("InvalidAMIID.NotFound", "The image id '[ami-1]' does not exist")), TerminalError,
     "rejected"),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "error_class", "word"), FAILURES)
def test_cloud_failures_are_classified(monkeypatch, answer, error_class, word):
    with scripted_server(answer) as server:
        driver = hooked(monkeypatch, server.url)()
        for call in (lambda: driver.create(spec("ami-12345678")), driver.list_tagged, lambda: driver.delete("i-1")):
            with pytest.raises(error_class, match=word) as caught:
                call()
            assert SECRET not in str(caught.value) and ACCESS_KEY not in str(caught.value)
            assert caught.value.__cause__ is None and caught.value.__context__ is None
        assert server.requests, "the driver never reached the server"
    if answer.status == 429:
        assert caught.value.retry_after == 7


def test_a_server_that_does_not_answer_in_time_is_transient(monkeypatch):
    with scripted_server(Answer(200, "", hang=3)) as server:
        driver = hooked(monkeypatch, server.url)(timeout=0.5)
        with pytest.raises(TransientError, match=r"no answer within 0\.5 s"):
            driver.list_tagged()


def test_an_unreachable_endpoint_is_transient_and_its_message_holds_no_credentials(monkeypatch, caplog):
    """With SigV2 the access key and the signature travel in the query string, which requests' connection
    errors quote: the message must have neither (nor the secret, for good measure)."""
    monkeypatch.setenv(SIGNATURE_ENV, "2")
    driver = hooked(monkeypatch, f"http://127.0.0.1:{free_port()}")()
    with pytest.raises(TransientError, match="cannot reach the cloud API") as caught:
        driver.list_tagged()
    message = str(caught.value)
    assert "?…" in message and ACCESS_KEY not in message and "Signature=" not in message and SECRET not in message
    assert ACCESS_KEY not in caplog.text and SECRET not in caplog.text


def test_the_test_hook_is_refused_outside_the_test_settings(monkeypatch):
    make = hooked(monkeypatch, "http://127.0.0.1:9")
    refused = pytest.raises(TerminalError, match="only the test suite may use it")
    with override_settings(SETTINGS_MODULE="loom_site.settings"), refused:
        make().list_tagged()
    monkeypatch.setenv(TEST_HOOK_ENV, "evil.module:hook")
    with pytest.raises(TerminalError, match="hook must live under tests"):
        make().list_tagged()


def test_the_provider_types_defaults_apply_to_fields_left_out():
    driver = AwsDriver({"api_user": ACCESS_KEY, "api_password": SECRET}, provider_key="tenant-1/provider-1")
    _, arguments = driver.libcloud_driver()
    assert arguments["region"] == "us-east-1" and driver.text("security_groups") == "default"
    assert driver.flag("associate_public_ip") is True
