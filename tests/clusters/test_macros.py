"""Macro expansion per node: every form of the grammar, the errors, and a cluster-wide property."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusters.planning.macros import MacroContext, MacroError, config_problems, expand_config, expand_string
from clusters.planning.specs import NodeSpec


def node(number: int, *services: str, hostname: str | None = None, ips: dict | None = None) -> NodeSpec:
    return NodeSpec(
        node_id=f"n{number}",
        number=number,
        hardware="small",
        image="linux",
        services=frozenset(services),
        hostname=hostname if hostname is not None else f"web{number}.example",
        ip_addresses=ips
        if ips is not None
        else {"bind_v4": f"10.0.0.{number - 999}", "access_v4": f"1.2.3.{number - 999}"},
    )


NODES = [node(1002, "zk", "base"), node(1000, "nn", "zk", "base"), node(1001, "zk", "base"), node(1003, "dn", "base")]
CONTEXT = MacroContext(nodes=NODES, owner="alice")
SELF = NODES[2]  # number 1001


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%cluster.owner%@example.com", "alice@example.com"),
        ("%host.self%", "web1001.example"),
        ("%ip.self%", "10.0.0.2"),
        ("%ip.access_v4.self%", "1.2.3.2"),
        ("%host.service.zk%", "web1000.example,web1001.example,web1002.example"),
        ("%host.service.zk[2]%", "web1002.example"),
        ("%ip.service.zk%", "10.0.0.1,10.0.0.2,10.0.0.3"),
        ("%ip.access_v4.service.nn[0]%", "1.2.3.1"),
        ("%num.service.zk% / %num.service.dn% / %num.service.absent%", "3 / 1 / 0"),
        ("%instance.self.service.zk%", "2"),
        ("%join(map(host.service.zk,'$:2181'),',')%", "web1000.example:2181,web1001.example:2181,web1002.example:2181"),
        ("%map(ip.service.zk,'$$$')%", "$10.0.0.1,$10.0.0.2,$10.0.0.3"),
        ("%join(host.service.zk,' ')%", "web1000.example web1001.example web1002.example"),
        ("hdfs://%host.service.nn%:8020 is 100%% up", "hdfs://web1000.example:8020 is 100% up"),
        ("no macros, 50% off", "no macros, 50% off"),
    ],
)
def test_every_form_expands(text, expected):
    assert expand_string(text, context=CONTEXT, node=SELF) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%host.service.absent%", "no node of this cluster hosts service absent"),
        ("%host.service.zk[3]%", "index 3 is out of range: 3 node(s) host zk"),
        ("%instance.self.service.dn%", "this node (number 1001) does not host dn"),
        ("%ip.private_v6.self%", "node 1001 has no private_v6 address yet"),
        ("%nonsense.macro%", "'nonsense.macro' is not a valid macro name"),
    ],
)
def test_unexpandable_macros_are_errors_naming_macro_and_path(text, message):
    with pytest.raises(MacroError) as caught:
        expand_config({"a": [{"b": text}]}, context=CONTEXT, node=SELF)
    assert caught.value.message == message
    assert caught.value.path == "/a/0/b"


def test_missing_hostname_is_reported():
    nodes = [node(1000, "zk", hostname="")]
    with pytest.raises(MacroError, match="node 1000 has no hostname yet"):
        expand_string("%host.service.zk%", context=MacroContext(nodes=nodes), node=nodes[0])


def test_expand_config_keeps_structure_and_keys():
    config = {"hadoop": {"fs.defaultFS": "hdfs://%host.service.nn%", "%keys.stay%": [1, True, None, "%ip.self%"]}}
    assert expand_config(config, context=CONTEXT, node=SELF) == {
        "hadoop": {"fs.defaultFS": "hdfs://web1000.example", "%keys.stay%": [1, True, None, "10.0.0.2"]}
    }


def test_config_problems_lists_each_problem_once():
    config = {"x": "%host.service.absent%", "y": "%instance.self.service.dn%", "ok": "%host.self%"}
    problems = list(config_problems(config, context=CONTEXT, nodes=NODES))
    assert sorted((p.path, p.macro) for p in problems) == [
        ("/x", "%host.service.absent%"),
        ("/y", "%instance.self.service.dn%"),
    ]


def test_the_pure_cores_import_no_django():
    code = (
        "import sys, clusters.planning.macros, clusters.planning.planner, clusters.planning.solver, clusters.planning.specs; "
        "print(any(m.startswith('django') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@given(
    st.lists(st.frozensets(st.sampled_from(["a", "b", "c"]), min_size=1), min_size=1, max_size=12),
    st.sampled_from(["a", "b", "c"]),
)
def test_instance_numbers_are_a_permutation_and_lists_follow_node_numbers(service_sets, service):
    nodes = [node(1000 + i, *services) for i, services in enumerate(service_sets)]
    context = MacroContext(nodes=list(reversed(nodes)))
    hosts = [n for n in nodes if service in n.services]
    config = {"all": f"%host.service.{service}%", "me": f"%instance.self.service.{service}%"}
    if not hosts:
        assert [p.macro for p in config_problems(config, context=context, nodes=nodes)] == [config["all"], config["me"]]
        return
    numbers = []
    for current in hosts:
        expanded = expand_config(config, context=context, node=current)
        assert "%" not in str(expanded)
        assert expanded["all"] == ",".join(n.hostname for n in hosts)
        numbers.append(int(expanded["me"]))
    assert numbers == list(range(1, len(hosts) + 1))
