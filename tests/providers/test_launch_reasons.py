"""Why a provider cannot launch (``providers.catalog_kind.provider_launch_reasons``), without a database: a
type with no driver, missing required fields, and sample credentials, told apart from real ones."""

from __future__ import annotations

import pytest

from providers.catalog_kind import looks_like_placeholder, provider_launch_reasons


@pytest.mark.parametrize(
    "value",
    ["USERNAME", "API_KEY", "PASSWORD", "SECRET", "YOUR_ACCESS_KEY", "AKIDEXAMPLE", "<your key>", "xxxx", "XXXXXX",
     "...", "****", "CHANGEMEPLEASEREPLACE"],
)  # fmt: skip
def test_sample_values_look_like_placeholders(value):
    assert looks_like_placeholder(value)


@pytest.mark.parametrize(
    "value",
    # Real-looking keys: an AWS key id without a digit (about 1 in 28 are), mixed case, digits, a password.
    ["AKIAQWERTYUIOPASDFGH", "AKIAIOSFODNN7EXAMPLE", "ops", "s3cret-7", "wJalrXUtnFEMI/K7MDENG", "", None, 42],
)  # fmt: skip
def test_real_credentials_do_not(value):
    assert not looks_like_placeholder(value)


def aws(**fields: str) -> dict:
    ready = {"api_user": "AKIAQWERTYUIOPASDFGH", "api_password": "wJalrXUtnFEMI/K7MDENG", "ssh_keypair": "loom",
             "ssh_key_resource": "loom.pem", "security_groups": "default", "aws_region": "us-east-1"}  # fmt: skip
    return {"name": "aws", "providertype": "aws", "provisioner": {**ready, **fields}}


def test_a_complete_provider_can_launch():
    assert provider_launch_reasons(aws()) == []


def test_sample_credentials_are_named():
    assert provider_launch_reasons(aws(api_user="USERNAME", api_password="API_KEY")) == [
        "api_password, api_user hold sample values, not credentials"
    ]
    assert provider_launch_reasons(aws(api_password="$placeholder$")) == [
        "api_password holds a sample value, not credentials"
    ]


def test_a_sample_looking_value_in_a_field_that_is_not_secret_is_fine():
    assert provider_launch_reasons(aws(aws_region="US")) == []


def test_missing_required_fields_are_named_per_set():
    reasons = provider_launch_reasons(aws(ssh_keypair="", security_groups=""))
    assert reasons == ["needs {security_groups, ssh_keypair} or {security_group_ids, ssh_keypair, subnet_id}"]
    assert provider_launch_reasons(aws(ssh_keypair="", security_group_ids="g", subnet_id="s")) == [
        "needs {ssh_keypair}"
    ]


def test_a_type_without_a_driver_says_so_and_lists_the_drivers():
    [reason] = provider_launch_reasons({"name": "j", "providertype": "joyent", "provisioner": {}})
    assert reason.startswith("provider type joyent has no driver in Loom (drivers: ") and "aws" in reason
