"""The chef-solo automator against real lab hosts, with a STAND-IN for chef-solo.

Chef is not packaged by Debian, so these tests cannot run the real thing. They install, in the lab host's own
``~/.loom/bin`` (which the automator puts first on ``PATH``), a small Python program named ``chef-solo`` that
checks what real chef-solo would be given: the arguments (``--no-color -c <solo.rb> -j <node JSON>``), that
``solo.rb`` names the synced cookbook, role and data bag folders, and that every run-list item exists there
(``recipe[cookbook::recipe]`` as ``<cookbook>/recipes/<recipe>.rb`` on the cookbook path, ``role[name]`` as
``<role_path>/<name>.json``). It records what it was given in ``~/chef-witness.json`` and fails (exit 1, with
a FATAL line as Chef prints) when something is missing. Everything up to running ``chef-solo`` is real: the
SSH session, the resource sync, the files written on the node and the deep merge the original did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from providers.automators.chef_solo import ChefSoloAutomator, node_attributes, solo_rb
from providers.drivers.base import TerminalError
from providers.resources import LiveResource
from providers.ssh import Session
from tests.lab.fixtures import LabHosts, LabNode

from .test_automators_common import archive, lab_request, request_with

STAND_IN = r'''#!/usr/bin/env python3
"""chef-solo STAND-IN for Loom's tests (Chef is not packaged by Debian): see test_automators_chef_solo.py."""
import json, os, re, sys

def fatal(message):
    print(f"FATAL: {message}", file=sys.stderr)
    sys.exit(1)

args = sys.argv[1:]
if len(args) != 5 or args[:2] != ["--no-color", "-c"] or args[3] != "-j":
    fatal(f"unexpected arguments {args}")
solo = open(args[2]).read()
setting = lambda name: json.loads(re.search(rf"^{name} (.*)$", solo, re.M).group(1))
cookbook_path, role_path = setting("cookbook_path"), setting("role_path")
node = json.load(open(args[4]))
for item in node["run_list"]:
    kind, name = re.fullmatch(r"(recipe|role)\[(.+)\]", item).groups() if "[" in item else ("recipe", item)
    if kind == "role":
        if not os.path.isfile(os.path.join(role_path, name + ".json")):
            fatal(f"Role {name} not found in {role_path}")
        continue
    cookbook, _, recipe = name.partition("::")
    if not any(os.path.isfile(os.path.join(p, cookbook, "recipes", (recipe or "default") + ".rb")) for p in cookbook_path):
        fatal(f"could not find recipe {recipe or 'default'} for cookbook {cookbook}")
with open(os.path.join(os.environ["HOME"], "chef-witness.json"), "w") as witness:
    json.dump({"args": args, "solo_rb": solo, "node": node, "uid": os.getuid(), "cwd": os.getcwd()}, witness)
print("Chef Infra Client STAND-IN: converged " + ", ".join(node["run_list"]))
'''

COOKBOOKS = archive(
    "cookbooks",
    "web",
    {
        "nginx/recipes/default.rb": "package 'nginx'\n",
        "nginx/recipes/config.rb": "template 'x'\n",
        "nginx/metadata.rb": "",
    },
)
MORE_COOKBOOKS = archive("cookbooks", "base", {"hosts/recipes/default.rb": "# hosts\n"})
BAGS = archive("data_bags", "users", {"users/alice.json": '{"id": "alice"}'})
ROLE = LiveResource("roles", "webserver.json", 1, "file", None, b'{"name": "webserver", "run_list": []}')
RESOURCES = (COOKBOOKS, MORE_COOKBOOKS, BAGS, ROLE)
CONFIG = {"web": {"port": 8080, "message": "hello", "tags": ["a"]}, "cache": {"port": 6379}}


@pytest.fixture
def chef_node(lab: LabHosts) -> Iterator[tuple[LabNode, Session]]:
    """Lab host 4 with the chef-solo stand-in in its ~/.loom/bin (removed after, with what it wrote)."""
    host = lab.nodes[3]
    with host.session() as session:
        session.run("mkdir -p /root/.loom/bin")
        session.upload(STAND_IN.encode(), "/root/.loom/bin/chef-solo", mode=0o755)
        yield host, session
        session.run("rm -rf /root/.loom/bin/chef-solo /root/chef-witness.json /root/.loom/chef")


def witness(session: Session) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(session.run("cat /root/chef-witness.json").stdout)
    return document


def test_chef_solo_gets_the_json_attributes_deep_merged_into_the_cluster_config(chef_node) -> None:
    host, session = chef_node
    request = lab_request(
        host,
        service="nginx",
        action="configure",
        fields={
            "run_list": " recipe[nginx::config], recipe[hosts],\n role[webserver] ",
            "json_attributes": json.dumps({"web": {"port": 9090, "tags": ["b"]}, "nginx": {"workers": 2}}),
        },
        config=CONFIG,
        resources=RESOURCES,
    )
    output = ChefSoloAutomator().run(session, request)
    assert output.splitlines()[0].startswith("$ chef-solo recipe[nginx::config],recipe[hosts],role[webserver]")
    assert "STAND-IN: converged recipe[nginx::config], recipe[hosts], role[webserver]" in output

    seen = witness(session)
    node = seen["node"]
    assert node["run_list"] == ["recipe[nginx::config]", "recipe[hosts]", "role[webserver]"]
    # The service's attributes win, object by object; what they do not name stays as the cluster config has it.
    assert node["web"] == {"port": 9090, "message": "hello", "tags": ["b"]}
    assert node["cache"] == {"port": 6379} and node["nginx"] == {"workers": 2}
    # loom: the task, like the original's coopr attributes (the cluster config as it was, the node, its peers).
    assert node["loom"]["config"] == CONFIG
    assert (node["loom"]["service"], node["loom"]["action"], node["loom"]["cluster"]["name"]) == (
        "nginx",
        "configure",
        "automators",
    )
    assert node["loom"]["node"]["ip_addresses"]["bind_v4"] == host.address
    assert seen["args"] == [
        "--no-color",
        "-c",
        "/root/.loom/chef/solo.rb",
        "-j",
        "/root/.loom/tasks/nginx.configure.chef.json",
    ]
    assert 'cookbook_path ["/root/.loom/chef/cookbooks/base", "/root/.loom/chef/cookbooks/web"]' in seen["solo_rb"]
    assert 'data_bag_path "/root/.loom/chef/data_bags/users"' in seen["solo_rb"]
    assert (seen["uid"], seen["cwd"]) == (0, "/root/.loom/chef")
    assert session.run("cat /root/.loom/chef/data_bags/users/users/alice.json").stdout == '{"id": "alice"}'
    assert session.run("stat -c %a /root/.loom/tasks/nginx.configure.chef.json").stdout.strip() == "600"


def test_a_failing_run_is_a_terminal_error_with_the_output_tail(chef_node) -> None:
    host, session = chef_node
    request = lab_request(host, service="nginx", fields={"run_list": "recipe[nginx::missing]"}, resources=RESOURCES)
    with pytest.raises(TerminalError, match="exited with status 1") as error:
        ChefSoloAutomator().run(session, request)
    assert "FATAL: could not find recipe missing for cookbook nginx" in str(error.value)


def test_a_node_without_chef_solo_is_told_what_to_install(lab: LabHosts) -> None:
    host = lab.nodes[1]  # no stand-in there
    with host.session() as session:
        request = lab_request(host, service="nginx", fields={"run_list": "recipe[nginx]"}, resources=RESOURCES)
        with pytest.raises(TerminalError, match=r"status 127 \(chef-solo is not installed on the node\)"):
            ChefSoloAutomator().run(session, request)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "needs a run_list"),
        ({"run_list": " , "}, "needs a run_list"),
        ({"run_list": "recipe[nginx], rm -rf /"}, r"'rm-rf/' in field run_list is not recipe\[\.\.\.\]"),
        ({"run_list": "nginx", "json_attributes": "{nope"}, "field json_attributes is not valid JSON"),
        ({"run_list": "nginx", "json_attributes": '{"run_list": ["x"]}'}, "json_attributes may not set run_list"),
        ({"run_list": "nginx", "json_attributes": '{"loom": 1}'}, "json_attributes may not set loom"),
    ],
)
def test_bad_fields_are_terminal_errors_before_the_node_is_touched(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(TerminalError, match=says):
        ChefSoloAutomator().run(None, request_with(fields=fields))  # type: ignore[arg-type] # never reached


def test_a_bare_recipe_name_is_kept_as_chef_takes_it() -> None:
    attributes = node_attributes(request_with(fields={"run_list": "nginx::default,role[web]"}, config={"a": 1}))
    assert attributes["run_list"] == ["nginx::default", "role[web]"] and attributes["a"] == 1


def test_solo_rb_lists_several_data_bag_folders() -> None:
    text = solo_rb("/h/.loom/chef", ["a"], ["x", "y"])
    assert 'data_bag_path ["/h/.loom/chef/data_bags/x", "/h/.loom/chef/data_bags/y"]' in text
    assert "data_bag_path" not in solo_rb("/h/.loom/chef", ["a"], [])
