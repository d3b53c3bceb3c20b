"""The pure catalog core: canonical documents, cross-entity checks and template resolution (no database)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from templates_app import codec
from templates_app.validation import dependents, find_cycles, resolve_template, validate_catalog

NORMALIZERS = {
    "hardwaretypes": codec.normalize_hardwaretype,
    "imagetypes": codec.normalize_imagetype,
    "services": codec.normalize_service,
    "clustertemplates": codec.normalize_clustertemplate,
    "partialtemplates": codec.normalize_partialtemplate,
}


def canonical_view(samples: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    view: dict[str, dict[str, Any]] = {key: {} for key in [*NORMALIZERS, "providers"]}
    for key, normalize in NORMALIZERS.items():
        for raw in samples.get(key, []):
            doc, problems = normalize(raw)
            assert not problems.errors, problems.errors
            view[key][doc["name"]] = doc
    view["providers"] = {p["name"]: p for p in samples["providers"]}
    return view


def service(name: str, install: list[str] | None = None, runtime: list[str] | None = None, **deps: Any) -> dict:
    raw = {"name": name, "dependencies": {"install": {"requires": install or []}, "runtime": {"uses": runtime or []}}}
    raw["dependencies"].update(deps)
    doc, problems = codec.normalize_service(raw)
    assert not problems.errors
    return doc


def template(name: str, **parts: Any) -> dict:
    doc, problems = codec.normalize_clustertemplate({"name": name, **parts})
    assert not problems.errors, problems.errors
    return doc


def messages(problems, severity: str = "error") -> list[str]:
    return [f"{p.kind} {p.name} {p.field}: {p.message}" for p in problems if p.severity == severity]


def test_samples_normalize_idempotently(sample_catalog):
    for key, normalize in NORMALIZERS.items():
        for raw in sample_catalog.get(key, []):
            once, _ = normalize(copy.deepcopy(raw))
            twice, problems = normalize(copy.deepcopy(once))
            assert twice == once and not problems.errors


def test_sample_catalog_is_valid(sample_catalog):
    assert messages(validate_catalog(canonical_view(sample_catalog))) == []


def test_canonical_form_accepts_the_originals_shorthands():
    doc, problems = codec.normalize_clustertemplate(
        {
            "name": "t",
            "defaults": {"services": [{"name": "zk", "config": {"port": 2181}}, "zk"], "dnsSuffix": ".example.com"},
            "constraints": {"services": {"zk": {"quantities": {"min": "1", "max": "3"}}}},
            "administration": {"leaseduration": {"initial": "2d", "max": "10d", "step": 3600000}},
        }
    )
    assert not problems.errors
    assert doc["defaults"]["services"] == ["zk"] and doc["defaults"]["config"] == {"zk": {"port": 2181}}
    assert doc["defaults"]["dnsSuffix"] == "example.com"
    assert doc["constraints"]["services"]["zk"]["quantities"] == {"min": 1, "max": 3}
    assert doc["administration"]["leaseduration"] == {"initial": 172800000, "max": 864000000, "step": 3600000}


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"name": "t", "administration": {"leaseduration": {"initial": "3w"}}}, "administration.leaseduration.initial", "not a duration"),
        ({"name": "t", "administration": {"leaseduration": {"initial": "2d", "max": "1d"}}}, "administration.leaseduration.initial", "cannot be more than max"),
        ({"name": "t", "defaults": {"dnsSuffix": "bad_suffix!"}}, "defaults.dnsSuffix", "invalid DNS suffix"),
        ({"name": "t", "constraints": {"size": {"min": 0}}}, "constraints.size.min", "must be at least 1"),
        ({"name": "t", "constraints": {"layout": {"cantcoexist": [["a"]]}}}, "constraints.layout.cantcoexist[0]", "at least two services"),
        ({"name": "t", "constraints": {"services": {"a": {"quantities": {"min": "x"}}}}}, "constraints.services.a.quantities.min", "not a whole number"),
        ({"name": "t", "links": [{"label": "x"}]}, "links[0].url", "url must be specified"),
        ({"name": "t", "compatibility": {"services": "base"}}, "compatibility.services", "must be a list"),
        ({"name": "t", "surprise": 1}, "surprise", "unknown key"),
    ],
)  # fmt: skip
def test_template_document_problems_name_the_field(raw, field, message):
    _, problems = codec.normalize_clustertemplate(raw)
    assert any(p.field == field and message in p.message for p in problems.errors), problems.errors


def test_service_action_problems():
    _, problems = codec.normalize_service(
        {
            "name": "s",
            "provisioner": {
                "actions": {
                    "INSTALL": {"type": "shell", "fields": {"script": "a.sh"}},
                    "configure": {"type": "shell", "fields": {"args": "x"}},
                    "start": {"type": "salt", "fields": {}},
                    "stop": {"type": "chef-solo", "fields": {"run_list": "r", "colour": "red"}},
                }
            },
        }
    )
    found = {(p.field, p.message.split(";")[0]) for p in problems.errors}
    assert ("provisioner.actions.INSTALL", "unknown action (action names are lower-case)") in found
    assert ("provisioner.actions.configure.fields", "automator shell requires {script}") in found
    assert ("provisioner.actions.start.type", "unknown automator type 'salt'") in found
    assert ("provisioner.actions.stop.fields.colour", "not a field of automator chef-solo") in found


def test_dependency_cycles_are_named_per_section():
    view = {
        "services": {
            "a": service("a", install=["b"]),
            "b": service("b", install=["c"]),
            "c": service("c", install=["a"]),
            "d": service("d", runtime=["e"]),
            "e": service("e", runtime=["d"], provides=["dee"]),
            "f": service("f", runtime=["dee"]),
        }
    }
    found = messages(validate_catalog(view))
    assert "service a dependencies.install: install dependency cycle: a → b → c → a" in found
    assert "service d dependencies.runtime: runtime dependency cycle: d → e → d" in found
    assert len(found) == 2


def test_cycles_through_provided_aliases_are_found():
    graph = {"web": {"php"}, "php": {"web"}}
    assert find_cycles(graph) == [["php", "web", "php"]]
    view = {
        "services": {"web": service("web", install=["lang"]), "php": service("php", install=["web"], provides=["lang"])}
    }
    assert any("php → web → php" in m for m in messages(validate_catalog(view)))


def test_requires_must_resolve_but_uses_may_name_anything():
    view = {
        "services": {
            "a": service("a", install=["ghost"], runtime=["maybe-later"]),
            "b": service("b", install=["a"], conflicts=["a"]),
        }
    }
    found = messages(validate_catalog(view))
    ghost = "service a dependencies.install.requires: requires 'ghost', which is neither a service nor provided"
    assert any(m.startswith(ghost) for m in messages(validate_catalog(view), "warning")), (
        found
    )  # a warning now: templates using a wait for it
    assert "service b dependencies.conflicts: b both requires and conflicts with a" in found


def lamp_view(samples):
    return canonical_view(samples)


def test_template_reference_checks(samples):
    view = lamp_view(samples)
    lamp = view["clustertemplates"]["lamp"]
    lamp["defaults"]["hardwaretype"] = "huge"
    lamp["defaults"]["provider"] = "nowhere"
    lamp["constraints"]["services"]["memcached-x"] = {
        "hardwaretypes": ["tiny"],
        "imagetypes": [],
        "quantities": {"min": 0},
    }
    lamp["constraints"]["layout"]["cantcoexist"].append(["apache-httpd", "php"])
    lamp["constraints"]["services"]["php"] = {"hardwaretypes": [], "imagetypes": [], "quantities": {"min": 2, "max": 2}}
    lamp["constraints"]["services"]["apache-httpd"] = {
        "hardwaretypes": [],
        "imagetypes": [],
        "quantities": {"min": 0, "max": 1},
    }
    problems = validate_catalog(view)
    found = messages(problems) + messages(problems, "warning")
    assert {p.field for p in problems if p.blocks_launch} == {"defaults.hardwaretype", "defaults.provider"}
    assert not any("huge" in m or "nowhere" in m or "'tiny'" in m for m in messages(problems))  # only warnings
    expected = [
        "defaults.hardwaretype: default hardware type 'huge' is not in the catalog",
        "defaults.provider: default provider 'nowhere' is not in the catalog",
        "constraints.services.memcached-x: service 'memcached-x' is not in the catalog",
        "constraints.services.memcached-x.hardwaretypes: hardware type 'tiny' is not in the catalog",
        "constraints.layout.cantcoexist[0]: contradicts mustcoexist[0]",
        "constraints.layout.mustcoexist[0]: members must be on the same nodes",
    ]
    for text in expected:
        assert any(text in m for m in found), (text, found)


def test_constraint_on_a_service_outside_the_template(samples):
    view = lamp_view(samples)
    view["services"]["extra"] = service("extra")
    view["clustertemplates"]["lamp"]["constraints"]["services"]["extra"] = {
        "hardwaretypes": [], "imagetypes": [], "quantities": {"min": 1},
    }  # fmt: skip
    assert (
        "clustertemplate lamp constraints.services.extra: constraint on service 'extra', which is not part of this template"
        in messages(validate_catalog(view))
    )


def test_default_services_must_carry_their_requirements(samples):
    view = lamp_view(samples)
    view["clustertemplates"]["lamp"]["defaults"]["services"].remove("base")
    found = messages(validate_catalog(view))
    assert any("apache-httpd requires base, which is not among the default services" in m for m in found)


def test_resolution_merges_parents_and_partials_in_order():
    view = {
        "services": {n: service(n) for n in ("base", "web", "mon")},
        "partialtemplates": {},
        "clustertemplates": {
            "parent": template(
                "parent",
                compatibility={"services": ["base", "web"]},
                defaults={"services": ["base"], "config": {"a": 1, "b": 1}},
                constraints={"size": {"min": 2, "max": 9}},
                administration={"leaseduration": {"initial": "1d", "max": "7d"}},
            ),
            "child": template(
                "child",
                extends={"name": "parent"},
                includes=[{"name": "monitoring"}],
                defaults={"services": ["web"], "config": {"b": 2}},
            ),
        },
    }
    partial, problems = codec.normalize_partialtemplate(
        {"name": "monitoring", "immutable": True, "compatibility": {"services": ["mon"]},
         "defaults": {"services": ["mon"], "config": {"mon": {"to": "%cluster.owner%@x"}}}}
    )  # fmt: skip
    assert not problems.errors
    view["partialtemplates"]["monitoring"] = partial
    resolved, problems = resolve_template("child", view)
    assert not problems.errors
    assert resolved["defaults"]["services"] == ["base", "mon", "web"]
    assert resolved["defaults"]["config"] == {"a": 1, "b": 2, "mon": {"to": "%cluster.owner%@x"}}
    assert resolved["compatibility"]["services"] == ["base", "web", "mon"]
    # The original reset the size when a later template said nothing about it; we keep the parent's.
    assert resolved["constraints"]["size"] == {"min": 2, "max": 9}
    assert resolved["administration"]["leaseduration"]["initial"] == 86400000
    assert messages(validate_catalog(view)) == []

    view["clustertemplates"]["child"]["defaults"]["config"]["mon"] = {}
    _, problems = resolve_template("child", view)
    assert [p.message for p in problems.errors] == [
        "mon can't be overridden: it comes from immutable partial template monitoring"
    ]


def test_resolution_reports_missing_and_cyclic_parents():
    view = {
        "clustertemplates": {
            "a": template("a", extends={"name": "b"}),
            "b": template("b", extends={"name": "a"}),
            "c": template("c", extends={"name": "ghost"}, includes=[{"name": "nope"}]),
        },
        "partialtemplates": {},
    }
    _, problems = resolve_template("a", view)
    assert [p.message for p in problems.errors] == ["template inheritance cycle: a → b → a"]
    _, problems = resolve_template("c", view)
    assert sorted(p.message for p in problems.errors) == [
        "parent template 'ghost' does not exist",
        "partial template 'nope' does not exist",
    ]


def test_dependents_block_only_hard_references(samples):
    view = lamp_view(samples)
    assert dependents(view, "services", "php") == ["service php-modules", "clustertemplate lamp"]
    assert dependents(view, "services", "php-modules") == ["clustertemplate lamp"]  # php only *uses* it
    assert dependents(view, "imagetypes", "centos6") == []  # only named in compatibility lists
    assert dependents(view, "imagetypes", "ubuntu12") == ["clustertemplate base", "clustertemplate lamp"]
    assert dependents(view, "providers", "rackspace") == ["clustertemplate base", "clustertemplate lamp"]


_names = st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True)


@given(
    st.dictionaries(
        _names,
        st.fixed_dictionaries(
            {
                "flavor": st.text(min_size=1, max_size=8).filter(str.strip),
                "cost": st.decimals(0, 100, places=3).map(str),
            }
        ),
        max_size=5,
    ),
    _names,
)
def test_hardware_type_normalization_is_idempotent(providermap, name):
    once, problems = codec.normalize_hardwaretype({"name": name, "providermap": providermap})
    assert not problems.errors
    assert codec.normalize_hardwaretype(once)[0] == once
