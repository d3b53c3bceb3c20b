"""The provider types and automator types Loom ships, registered in code.

Field names follow the original's plugins where they exist (so Loom-format catalogs import unchanged);
credentials are marked ``sensitive``, which the original never did (its users could read admin
credentials). Implementations come with the drivers and automators; the schemas are here so that catalogs
validate today.
"""

from __future__ import annotations

from templates_app.plugin_types import (
    PluginType,
    ResourceType,
    choice,
    flag,
    params,
    registry,
    secret,
    text,
)

SSH_KEYS = {"ssh_keys": ResourceType("file", "0400")}

AWS_REGIONS = (
    "af-south-1", "ap-east-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1",
    "ap-southeast-1", "ap-southeast-2", "ca-central-1", "eu-central-1", "eu-north-1", "eu-south-1",
    "eu-west-1", "eu-west-2", "eu-west-3", "me-south-1", "sa-east-1", "us-east-1", "us-east-2",
    "us-west-1", "us-west-2",
)  # fmt: skip

_ssh_keypair = text("ssh_keypair", "Key pair name", "Name of the SSH key pair known to the cloud", override=True)
_ssh_key_resource = text(
    "ssh_key_resource", "SSH key resource", "Name of the SSH private key resource uploaded to Loom", override=True
)

PROVIDER_TYPES = [
    PluginType(
        kind="provider",
        name="fake",
        description="Simulated machines with configurable latency and failure rates, for tests and demos.",
        admin=params(
            text("latency_ms", "Boot time (ms)", "Mean time from create until the machine is reachable", default="200"),
            text("latency_jitter_ms", "Boot time spread (ms)", "Standard deviation; empty means a quarter of the mean"),
            text(
                "call_latency_ms",
                "Call latency (ms)",
                "Time each API call takes: a number, or per action like create=300,confirm=20,delete=100,list=50",
                default="0",
            ),
            text("failure_rate", "Transient failure rate", "Probability 0..1 of a transient error", default="0"),
            text("terminal_failure_rate", "Terminal failure rate", "Probability 0..1 of a terminal error", default="0"),
            text(
                "not_found_after_create",
                "Eventual-consistency window (ms)",
                "Lookups right after a create 404 for this long",
                default="0",
            ),
            text("seed", "Random seed", "Seed for reproducible runs"),
        ),
    ),
    PluginType(
        kind="provider",
        name="local",
        description="Lab hosts on this machine: one network namespace with its own sshd per node (needs root).",
        admin=params(
            text("bridge", "Bridge name", "Linux bridge the namespaces attach to", default="loombr0"),
            text("subnet", "Subnet", "IPv4 /24 for node addresses", default="10.200.0.0/24"),
        ),
    ),
    PluginType(
        kind="provider",
        name="static",
        description="A pool of existing hosts (bare metal or VMs made elsewhere) registered by an admin.",
        admin=params(
            text("cleanup_script", "Cleanup script", "Shell run on a host when it returns to the pool"),
            secret("ssh_private_key", "SSH private key", "Key used to reach pool hosts"),
            text("ssh_user", "SSH user", default="root"),
            required=[["ssh_private_key"]],
        ),
    ),
    PluginType(
        kind="provider",
        name="aws",
        description="Amazon EC2 through apache-libcloud.",
        admin=params(
            secret("api_user", "Access key ID"),
            secret("api_password", "Secret access key"),
            _ssh_keypair,
            _ssh_key_resource,
            choice("aws_region", "Region", AWS_REGIONS, default="us-east-1"),
            text("aws_ebs_size", "EBS size (GB)", "Size of the data EBS volume", override=True),
            flag("aws_ebs_delete_on_term", "Delete EBS on termination", override=True, default=True),
            text("aws_root_ebs_size", "Root EBS size (GB)", override=True),
            flag("aws_root_ebs_delete_on_term", "Delete root EBS on termination", override=True, default=True),
            text(
                "security_groups",
                "Security groups",
                "Comma-separated names (non-VPC)",
                override=True,
                default="default",
            ),
            text("security_group_ids", "Security group IDs", "Comma-separated IDs (VPC)", override=True),
            text("subnet_id", "Subnet ID", "Launch into this VPC subnet", override=True),
            flag("dedicated_instance", "Dedicated instances", override=True),
            flag("associate_public_ip", "Associate public IP", override=True, default=True),
            flag("provider_hostname", "Use the provider's DNS name as hostname", override=True),
            text("availability_zone", "Availability zone", override=True),
            text("iam_instance_profile", "IAM instance profile", override=True),
            text("placement_group", "Placement group", override=True),
            text("user_data", "User data", "Cloud-init user data passed at launch", override=True),
            text("tags", "Extra tags", "Comma-separated key=value pairs added to every machine", override=True),
            required=[
                ["api_user", "api_password", "ssh_keypair", "ssh_key_resource", "aws_region", "security_groups"],
                [
                    "api_user",
                    "api_password",
                    "ssh_keypair",
                    "ssh_key_resource",
                    "aws_region",
                    "security_group_ids",
                    "subnet_id",
                ],
            ],
        ),
        resource_types=SSH_KEYS,
    ),
    PluginType(
        kind="provider",
        name="openstack",
        description="OpenStack Nova through apache-libcloud.",
        admin=params(
            secret("api_user", "Username"),
            secret("api_password", "Password"),
            text("openstack_tenant", "Tenant (project)"),
            text("openstack_auth_url", "Auth URL", "Keystone URL, e.g. https://keystone:5000/v3"),
            text("openstack_region", "Region", override=True),
            text("ssh_keypair", "Key pair name"),
            text("ssh_key_resource", "SSH key resource"),
            flag("floating_ip", "Floating IP", "Request a floating IP for each node", override=True),
            text("network_ids", "Network IDs", "Comma-separated network UUIDs", override=True),
            flag("openstack_ssl_verify_peer", "Verify SSL peers", default=True),
            required=[
                [
                    "api_user",
                    "api_password",
                    "openstack_tenant",
                    "openstack_auth_url",
                    "ssh_keypair",
                    "ssh_key_resource",
                ]
            ],
        ),
        user=params(
            text("security_groups", "Security groups", "Comma-separated", default="default"),
            text("availability_zone", "Availability zone"),
            text("user_data_resource", "User data resource"),
        ),
        resource_types={**SSH_KEYS, "user_data": ResourceType("file", "0755")},
    ),
    PluginType(
        kind="provider",
        name="google",
        description="Google Compute Engine through apache-libcloud.",
        admin=params(
            text("google_project", "Project ID"),
            text("google_client_email", "Service account e-mail"),
            text("api_key_resource", "API key resource", "Service-account key resource uploaded to Loom"),
            text("ssh_key_resource", "SSH key resource"),
            text("ssh_user", "SSH user"),
            text("google_data_disk_size_gb", "Data disk size(s) in GB", override=True, default="200"),
            choice("google_data_disk_type", "Data disk type", ("standard", "ssd"), override=True, default="standard"),
            text("google_root_disk_size_gb", "Root disk size in GB", override=True, default="10"),
            choice("google_root_disk_type", "Root disk type", ("standard", "ssd"), override=True, default="standard"),
            text("zone_name", "Zone", override=True, default="us-central1-a"),
            flag("provider_hostname", "Use the provider's DNS name as hostname", override=True),
            required=[["google_project", "google_client_email", "api_key_resource", "ssh_key_resource", "zone_name"]],
        ),
        user=params(text("network", "Network", "Custom network name")),
        resource_types={**SSH_KEYS, "api_keys": ResourceType("file", "0400")},
    ),
    PluginType(
        kind="provider",
        name="joyent",
        description="Joyent Triton CloudAPI, as the original's fog plugin knew it. Loom has no driver for it "
        "(apache-libcloud dropped Joyent): its providers import and export unchanged and cannot launch.",
        admin=params(
            text("joyent_username", "Username"),
            secret("joyent_password", "Password"),
            text("joyent_keyname", "Key name"),
            text("joyent_keyfile", "Key file resource"),
            text("joyent_url", "CloudAPI URL", default="https://us-east-1.api.joyentcloud.com"),
            text("joyent_version", "CloudAPI version", default="~7.0"),
            required=[["joyent_username", "joyent_password"], ["joyent_username", "joyent_keyname", "joyent_keyfile"]],
        ),
        user=params(text("ssh_keypair", "Key name"), text("ssh_key_resource", "SSH key resource")),
        resource_types=SSH_KEYS,
        has_driver=False,
    ),
    PluginType(
        kind="provider",
        name="digitalocean",
        description="DigitalOcean droplets through apache-libcloud.",
        admin=params(
            secret("api_user", "Client ID"),
            secret("api_password", "API token"),
            text("digitalocean_region", "Region", override=True, default="nyc3"),
            text("ssh_keypair", "Key name"),
            text("ssh_key_resource", "SSH key resource"),
            required=[["api_user", "api_password", "ssh_keypair", "ssh_key_resource", "digitalocean_region"]],
        ),
        resource_types=SSH_KEYS,
    ),
    PluginType(
        kind="provider",
        name="rackspace",
        description="Rackspace public cloud through apache-libcloud.",
        admin=params(
            secret("api_user", "Username"),
            secret("api_password", "API key"),
            choice(
                "rackspace_region", "Region", ("dfw", "ord", "iad", "lon", "syd", "hkg"), override=True, default="dfw"
            ),
            required=[["api_user", "api_password", "rackspace_region"]],
        ),
        user=params(
            flag("rackconnect_wait", "RackConnect wait"),
            text("ssh_keypair", "Key name"),
            text("ssh_key_resource", "SSH key resource"),
        ),
        resource_types=SSH_KEYS,
    ),
]

AUTOMATOR_TYPES = [
    PluginType(
        kind="automator",
        name="noop",
        description="Does nothing for a while: stands in for real work on the fake provider (tests, demo, benchmarks).",
        admin=params(
            text("latency_ms", "Duration (ms)", "How long the action takes", default="100"),
            text("jitter_ms", "Spread (ms)", "Standard deviation; empty means a tenth of the duration"),
        ),
    ),
    PluginType(
        kind="automator",
        name="shell",
        description="Runs a script from the service's uploaded scripts on the node over SSH.",
        admin=params(
            text("script", "Script", "Script to run, relative to the scripts resource"),
            text("args", "Arguments", "Arguments passed to the script"),
            required=[["script"]],
        ),
        resource_types={"scripts": ResourceType("file", "0755"), "archives": ResourceType("archive")},
    ),
    PluginType(
        kind="automator",
        name="ansible",
        description="Runs an Ansible playbook or role from plugin resources against the node.",
        admin=params(
            text("playbook", "Playbook", "Playbook file inside the playbooks resource"),
            text("role", "Role", "Role to apply when no playbook is given"),
            text("extra_vars", "Extra vars", "JSON object merged over the cluster config"),
            text("tags", "Tags", "Comma-separated tags to run"),
            required=[["playbook"], ["role"]],
        ),
        resource_types={"playbooks": ResourceType("archive"), "roles": ResourceType("archive")},
    ),
    PluginType(
        kind="automator",
        name="puppet",
        description="Uploads manifests and modules and runs puppet apply on the node.",
        admin=params(
            text("manifest", "Manifest", "Manifest file inside the manifests resource"),
            text("classes", "Classes", "Comma-separated classes to include when no manifest is given"),
            text("hiera_data", "Hiera data", "JSON object available as hiera data"),
            required=[["manifest"], ["classes"]],
        ),
        resource_types={"manifests": ResourceType("archive"), "modules": ResourceType("archive")},
    ),
    PluginType(
        kind="automator",
        name="chef-solo",
        description="Uploads cookbooks, roles and data bags and runs chef-solo with the given run-list.",
        admin=params(
            text("run_list", "Run-list", "The chef-solo run-list for this action"),
            text("json_attributes", "JSON attributes", "JSON deep-merged into the cluster config"),
            required=[["run_list"]],
        ),
        resource_types={
            "cookbooks": ResourceType("archive"),
            "data_bags": ResourceType("archive"),
            "roles": ResourceType("file"),
        },
    ),
    PluginType(
        kind="automator",
        name="docker",
        description="Pulls and runs container images on the node.",
        admin=params(
            text("image_name", "Image"),
            text("publish_ports", "Published ports", override=True),
            text("volumes", "Volumes", override=True),
            text("environment_variables", "Environment variables", override=True),
            text("links", "Links", override=True),
            text("command", "Command", override=True),
            required=[["image_name"]],
        ),
    ),
]

for _plugin_type in PROVIDER_TYPES + AUTOMATOR_TYPES:
    registry.register(_plugin_type)
