"""The macro grammar: every documented form parses, every malformed one is reported with its reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from templates_app.macro_syntax import MacroRef, MacroSyntaxError, iter_macros, macro_errors, parse_macros


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%cluster.owner%", {"kind": "cluster.owner"}),
        ("%host.self%", {"kind": "host", "service": None}),
        ("%host.service.zookeeper-server%", {"kind": "host", "service": "zookeeper-server"}),
        ("%host.service.hbase.master[2]%", {"kind": "host", "service": "hbase.master", "index": 2}),
        ("%ip.self%", {"kind": "ip", "ip_type": None, "service": None}),
        ("%ip.access_v4.self%", {"kind": "ip", "ip_type": "access_v4"}),
        ("%ip.service.mysql%", {"kind": "ip", "service": "mysql", "ip_type": None}),
        ("%ip.bind_v4.service.mysql-server[0]%", {"kind": "ip", "ip_type": "bind_v4", "index": 0}),
        ("%num.service.datanode%", {"kind": "num", "service": "datanode"}),
        ("%instance.self.service.zk%", {"kind": "instance", "service": "zk"}),
        ("%map(host.service.zk,'$:2181')%", {"map_format": "$:2181", "join_separator": None}),
        ("%join(map(host.service.zk,\"$:2181\"),';')%", {"map_format": "$:2181", "join_separator": ";"}),
        ("%join(ip.service.zk,' ')%", {"kind": "ip", "join_separator": " "}),
    ],
)
def test_documented_forms_parse(text, expected):
    (macro,) = parse_macros(f"x {text} y")
    assert macro.text == text
    for key, value in expected.items():
        assert getattr(macro, key) == value, key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%foo.bar%", "'foo.bar' is not a valid macro name"),
        ("%host.self.service.x%", "is not a valid macro name"),
        ("%host.service.%", "missing a service name"),
        ("%%% %", "A macro name must not be empty."),
        ("%host.service.x[]%", "No service number seen."),
        ("%host.service.x[1a]%", "No ending bracket"),
        ("%host.service.x[a]%", "digits only"),
        ("%host.self[1]%", "takes no index"),
        ("%map(host.service.x)%", "',' expected"),
        ("%map(host.service.x,$)%", "Expected ' or \""),
        ("%join(host.service.x,',' %", "')' expected"),
        ("%host.service.x extra%", "Extra characters after macro"),
        ("%join(host.service.x,'unterminated)% tail %", "unterminated literal"),
    ],
)
def test_malformed_macros_name_the_problem(text, message):
    with pytest.raises(MacroSyntaxError) as caught:
        parse_macros(text)
    assert message in caught.value.message


def test_percent_escapes_and_lone_percent_are_text():
    assert list(iter_macros("100%% sure")) == ["100%", " sure"]
    assert parse_macros("50% off") == []


def test_macro_errors_report_json_paths():
    config = {"a": {"b/c": ["ok", "%nope.x%"]}, "fine": "%host.self%", "n": 3}
    assert macro_errors(config, "defaults.config") == [
        ("defaults.config/a/b~1c/1", "bad macro in '%nope.x%': 'nope.x' is not a valid macro name")
    ]


_plain = st.text(alphabet=st.characters(blacklist_characters="%"), max_size=30)
_service = st.from_regex(r"[a-z][a-z0-9\-]{0,12}", fullmatch=True)
_basic = st.one_of(
    st.just("host.self"),
    st.just("cluster.owner"),
    _service.map(lambda s: f"host.service.{s}"),
    st.tuples(_service, st.integers(0, 99)).map(lambda t: f"ip.bind_v4.service.{t[0]}[{t[1]}]"),
    _service.map(lambda s: f"num.service.{s}"),
)
_macro = st.one_of(
    _basic,
    _basic.filter(lambda b: "service" in b).map(lambda b: f"map({b},'$:80')"),
    _basic.map(lambda b: f"join({b},',')"),
).map(lambda body: f"%{body}%")


@given(st.lists(st.one_of(_plain, _macro), max_size=6))
def test_any_mix_of_text_and_valid_macros_reassembles(parts):
    text = "".join(parts)
    pieces = list(iter_macros(text))
    rebuilt = "".join(p.text if isinstance(p, MacroRef) else p for p in pieces)
    assert rebuilt == text
    assert [p.text for p in pieces if isinstance(p, MacroRef)] == [p for p in parts if p.startswith("%")]
