"""The layout solver: each constraint kind, each failure message, the lamp sample template, day-2 changes,
and hypothesis properties (valid layouts only; on small instances a failure means no layout exists).

No database: the solver is a pure core.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clusters.planning import solver
from clusters.planning.solver import LayoutError, LayoutRequest, check_layout, solve, solve_change
from clusters.planning.specs import (
    ClusterLayout,
    HardwareOption,
    ImageOption,
    NodeRole,
    ServiceConstraint,
    ServiceSpec,
    TemplateSpec,
    provider_options,
    service_spec,
    template_spec,
)
from templates_app import codec
from templates_app.catalog_files import SAMPLES_DIR, read_catalog_dir
from templates_app.validation import resolve_template

HARDWARE = (
    HardwareOption("small", "s", 0.1),
    HardwareOption("medium", "m", 0.2),
    HardwareOption("large", "l", 0.4),
)
IMAGES = (ImageOption("centos", "c"), ImageOption("ubuntu", "u"))


def constraint(
    low: int = 0, high: int | None = None, hardware: Iterable[str] = (), images: Iterable[str] = ()
) -> ServiceConstraint:
    return ServiceConstraint(low, high, frozenset(hardware), frozenset(images))


def make_request(
    services: Iterable[str],
    *,
    size: int,
    constraints: Mapping[str, ServiceConstraint] | None = None,
    must: Iterable[Iterable[str]] = (),
    cant: Iterable[Iterable[str]] = (),
    specs: Mapping[str, ServiceSpec] | None = None,
    requested: Iterable[str] = (),
    hardware_options: tuple[HardwareOption, ...] = HARDWARE,
    image_options: tuple[ImageOption, ...] = IMAGES,
    **template_fields: Any,
) -> LayoutRequest:
    names = tuple(services)
    template = TemplateSpec(
        name="t",
        default_services=names,
        must_coexist=tuple(frozenset(group) for group in must),
        cant_coexist=tuple(frozenset(group) for group in cant),
        service_constraints=MappingProxyType(dict(constraints or {})),
        **template_fields,
    )
    catalog = {name: ServiceSpec(name) for name in names}
    catalog.update(specs or {})
    return LayoutRequest(
        template=template,
        services=catalog,
        size=size,
        requested_services=tuple(requested),
        hardware_options=hardware_options,
        image_options=image_options,
    )


def role_sets(layout: ClusterLayout) -> Counter[frozenset[str]]:
    counts: Counter[frozenset[str]] = Counter()
    for role in layout.roles:
        counts[role.services] += role.count
    return counts


def assert_valid(request: LayoutRequest, layout: ClusterLayout) -> None:
    assert check_layout(request, layout) == []
    assert independent_problems(request, layout) == []
    assert layout.size == request.size
    assert layout.services == frozenset(request.requested_services or request.template.default_services)


def reasons_of(request: LayoutRequest) -> str:
    with pytest.raises(LayoutError) as caught:
        solve(request)
    assert caught.value.reasons and all(isinstance(r, str) and r for r in caught.value.reasons)
    return "\n".join(caught.value.reasons)


# --- an oracle written independently of the solver --------------------------------------------------------


def _requested(request: LayoutRequest) -> tuple[str, ...]:
    return tuple(dict.fromkeys(request.requested_services or request.template.default_services))


def node_is_valid(request: LayoutRequest, services: frozenset[str], hardware: str, image: str) -> bool:
    template, present = request.template, set(_requested(request))
    if not services:
        return False
    for group in template.must_coexist:
        part = group & present
        if len(part) >= 2 and services & part and not part <= services:
            return False
    if any(group <= services for group in template.cant_coexist):
        return False
    for name in services:
        limits = template.service_constraints.get(name, ServiceConstraint())
        if limits.hardware_types and hardware not in limits.hardware_types:
            return False
        if limits.image_types and image not in limits.image_types:
            return False
    return True


def counts_are_valid(request: LayoutRequest, counts: Mapping[str, int]) -> bool:
    for name in _requested(request):
        limits = request.template.service_constraints.get(name, ServiceConstraint())
        placed = counts.get(name, 0)
        if placed < max(limits.min, 1) or (limits.max is not None and placed > limits.max):
            return False
    return True


def independent_problems(request: LayoutRequest, layout: ClusterLayout) -> list[str]:
    """The spec re-stated plainly (no compatibility lists, no dependencies: the generated cases have none)."""
    hardware = {option.name for option in request.hardware_options}
    images = {option.name for option in request.image_options}
    problems = []
    for role in layout.roles:
        if role.count < 1 or role.hardware not in hardware or role.image not in images:
            problems.append(f"bad role {role}")
        if not role.services <= set(_requested(request)):
            problems.append(f"unrequested services on {role}")
        if not node_is_valid(request, role.services, role.hardware, role.image):
            problems.append(f"invalid node {role}")
    if not counts_are_valid(request, layout.service_counts()):
        problems.append(f"bad counts {layout.service_counts()}")
    return problems


def brute_force_exists(request: LayoutRequest) -> bool:
    """Any multiset of ``size`` valid nodes with valid counts? Hardware and image only matter per node, so
    a service set is usable when some (hardware, image) pair suits it."""
    names = _requested(request)
    usable = []
    for width in range(1, len(names) + 1):
        for combo in itertools.combinations(names, width):
            services = frozenset(combo)
            if any(
                node_is_valid(request, services, hardware.name, image.name)
                for hardware in request.hardware_options
                for image in request.image_options
            ):
                usable.append(services)
    for nodes in itertools.combinations_with_replacement(usable, request.size):
        counts: Counter[str] = Counter()
        for services in nodes:
            counts.update(services)
        if counts_are_valid(request, counts):
            return True
    return False


# --- request validation ---------------------------------------------------------------------------------


class TestRequestValidation:
    def test_size_below_template_minimum(self) -> None:
        text = reasons_of(make_request(["a"], size=2, size_min=3, size_max=5))
        assert "template t allows from 3 to 5 nodes; the requested size is 2" in text

    def test_size_below_template_minimum_without_maximum(self) -> None:
        assert "template t allows at least 3 nodes; the requested size is 2" in reasons_of(
            make_request(["a"], size=2, size_min=3)
        )

    def test_size_above_template_maximum(self) -> None:
        assert "the requested size is 6" in reasons_of(make_request(["a"], size=6, size_max=5))

    def test_size_above_max_size(self) -> None:
        request = dataclasses.replace(make_request(["a"], size=11), max_size=10)
        assert "size 11 exceeds the maximum cluster size of 10" in reasons_of(request)

    def test_size_zero(self) -> None:
        assert "at least 1 node" in reasons_of(make_request(["a"], size=0))

    def test_no_services(self) -> None:
        assert "no services were requested and template t has no default services" in reasons_of(
            make_request([], size=1)
        )

    def test_unknown_service(self) -> None:
        request = make_request(["a"], size=1, requested=["a", "ghost"])
        assert "service ghost does not exist" in reasons_of(request)

    def test_incompatible_services(self) -> None:
        request = make_request(["a", "b", "c"], size=1, requested=["b", "c"], compatible_services=frozenset({"a"}))
        assert "b, c are not compatible with template t" in reasons_of(request)

    def test_requires_unmet(self) -> None:
        specs = {"a": ServiceSpec("a", install_requires=frozenset({"b"}))}
        text = reasons_of(make_request(["a"], size=1, specs=specs))
        assert "a requires b, which is neither on the cluster nor provided by one of its services" in text

    def test_requires_met_through_provides(self) -> None:
        specs = {
            "a": ServiceSpec("a", runtime_requires=frozenset({"database"})),
            "b": ServiceSpec("b", provides=frozenset({"database"})),
        }
        assert_valid(request := make_request(["a", "b"], size=1, specs=specs), solve(request))

    def test_conflicts(self) -> None:
        specs = {"a": ServiceSpec("a", conflicts=frozenset({"b"}))}
        assert "a conflicts with b" in reasons_of(make_request(["a", "b"], size=2, specs=specs))

    def test_conflict_with_an_alias(self) -> None:
        specs = {
            "a": ServiceSpec("a", conflicts=frozenset({"web-server"})),
            "b": ServiceSpec("b", provides=frozenset({"web-server"})),
        }
        assert "a conflicts with web-server (b is on the cluster)" in reasons_of(
            make_request(["a", "b"], size=2, specs=specs)
        )

    def test_every_problem_is_reported_at_once(self) -> None:
        request = make_request(["a"], size=9, size_max=5, requested=["a", "ghost"], hardware_options=())
        with pytest.raises(LayoutError) as caught:
            solve(request)
        assert caught.value.reasons == (
            "template t allows from 1 to 5 nodes; the requested size is 9",
            "service ghost does not exist",
            "no hardware type is available to template t with this provider (template allows: any; provider "
            "maps: nothing)",
        )

    def test_layout_error_is_a_value_error(self) -> None:
        assert issubclass(LayoutError, ValueError)


# --- compatibility and hardware / image choice -----------------------------------------------------------


class TestCompatibility:
    def test_only_template_compatible_hardware_and_images(self) -> None:
        request = make_request(
            ["a"], size=2, compatible_hardware=frozenset({"large"}), compatible_images=frozenset({"ubuntu"})
        )
        assert solve(request).roles == (NodeRole("large", "ubuntu", frozenset({"a"}), 2),)

    def test_request_override_wins(self) -> None:
        request = dataclasses.replace(make_request(["a"], size=1, default_hardware="small"), hardware="medium")
        assert solve(request).roles[0].hardware == "medium"

    def test_template_default_is_used(self) -> None:
        request = make_request(["a"], size=1, default_hardware="large", default_image="ubuntu")
        assert solve(request).roles == (NodeRole("large", "ubuntu", frozenset({"a"}), 1),)

    def test_override_not_compatible_with_template(self) -> None:
        request = dataclasses.replace(
            make_request(["a"], size=1, compatible_hardware=frozenset({"small"})), hardware="large"
        )
        assert "the requested hardware type large is not compatible with template t" in reasons_of(request)

    def test_override_not_mapped_by_provider(self) -> None:
        request = dataclasses.replace(make_request(["a"], size=1), image="debian")
        assert "the requested image type debian has no image for this provider (it maps: centos, ubuntu)" in (
            reasons_of(request)
        )

    def test_nothing_compatible_with_the_provider(self) -> None:
        request = make_request(["a"], size=1, compatible_hardware=frozenset({"huge"}))
        assert "no hardware type is available to template t with this provider (template allows: huge" in (
            reasons_of(request)
        )


# --- quantities ---------------------------------------------------------------------------------------------


class TestQuantities:
    def test_minimum_and_maximum(self) -> None:
        request = make_request(
            ["a", "b", "c"], size=6, constraints={"a": constraint(3), "b": constraint(1, 1)}, cant=[["a", "b"]]
        )
        layout = solve(request)
        assert_valid(request, layout)
        assert layout.service_counts()["a"] >= 3
        assert layout.service_counts()["b"] == 1

    def test_minimum_above_size_names_service_and_size(self) -> None:
        text = reasons_of(make_request(["a"], size=2, constraints={"a": constraint(3)}))
        assert "a needs at least 3 nodes (quantities.min), but the cluster has 2" in text

    def test_maximum_zero(self) -> None:
        text = reasons_of(make_request(["a", "b"], size=2, constraints={"a": constraint(0, 0)}))
        assert "a has quantities.max 0 but every requested service must run on at least one node" in text

    def test_service_without_minimum_is_still_placed(self) -> None:
        # The original returned 3 x {a} here and dropped b (reference, finding 1).
        request = make_request(["a", "b"], size=3, cant=[["a", "b"]])
        layout = solve(request)
        assert_valid(request, layout)
        assert layout.service_counts()["b"] >= 1

    def test_services_with_maxima_cannot_fill_the_cluster(self) -> None:
        request = make_request(["a", "b"], size=5, constraints={"a": constraint(0, 1), "b": constraint(0, 2)})
        text = reasons_of(request)
        assert "every node needs at least one service" in text
        assert "a at most 1, b at most 2" in text
        assert "at most 3 of the 5 new nodes" in text

    def test_capped_services_fill_the_cluster_exactly(self) -> None:
        request = make_request(["a", "b"], size=3, constraints={"a": constraint(0, 1), "b": constraint(0, 2)})
        layout = solve(request)
        assert_valid(request, layout)
        assert role_sets(layout) == Counter({frozenset({"a"}): 1, frozenset({"b"}): 2})

    def test_constraints_of_services_not_requested_are_ignored(self) -> None:
        request = make_request(["a", "b"], size=1, requested=["a"], constraints={"b": constraint(5)})
        assert_valid(request, solve(request))


# --- per-service hardware and image types ----------------------------------------------------------------


class TestServiceTypes:
    def test_restricted_service_gets_its_hardware_and_the_rest_stays_cheap(self) -> None:
        request = make_request(["a", "b"], size=3, constraints={"a": constraint(1, 1, hardware=["large"])})
        layout = solve(request)
        assert_valid(request, layout)
        by_services = {role.services: role for role in layout.roles}
        assert by_services[frozenset({"a", "b"})].hardware == "large"
        assert by_services[frozenset({"b"})].hardware == "small"

    def test_image_restriction(self) -> None:
        request = make_request(["a"], size=2, constraints={"a": constraint(images=["ubuntu"])})
        assert solve(request).roles == (NodeRole("small", "ubuntu", frozenset({"a"}), 2),)

    def test_restriction_clashes_with_default_hardware(self) -> None:
        request = make_request(
            ["a"], size=1, default_hardware="small", constraints={"a": constraint(hardware=["large"])}
        )
        text = reasons_of(request)
        assert "a allows large, but the cluster can use only template t's default hardware type small" in text

    def test_must_coexist_services_without_common_hardware(self) -> None:
        request = make_request(
            ["a", "b"],
            size=2,
            must=[["a", "b"]],
            constraints={"a": constraint(hardware=["small"]), "b": constraint(hardware=["large", "medium"])},
        )
        text = reasons_of(request)
        assert "[a, b] (must-coexist [a, b]) must share nodes, but no hardware type suits all" in text
        assert "a allows small; b allows large, medium" in text

    def test_services_needing_different_hardware_get_different_roles(self) -> None:
        request = make_request(
            ["a", "b"], size=2, constraints={"a": constraint(hardware=["small"]), "b": constraint(hardware=["large"])}
        )
        layout = solve(request)
        assert_valid(request, layout)
        assert {(role.hardware, role.services) for role in layout.roles} == {
            ("small", frozenset({"a"})),
            ("large", frozenset({"b"})),
        }

    def test_mutually_exclusive_by_hardware_need_more_nodes(self) -> None:
        request = make_request(
            ["a", "b"],
            size=3,
            constraints={"a": constraint(2, hardware=["small"]), "b": constraint(2, hardware=["large"])},
        )
        text = reasons_of(request)
        assert "a (at least 2), b (at least 2) can never share a node" in text
        assert "no hardware type allowed for both a and b" in text
        assert "need at least 4 nodes, but the cluster has 3" in text


# --- must-coexist and can't-coexist -------------------------------------------------------------------------


class TestLayoutConstraints:
    def test_must_coexist_members_share_every_node(self) -> None:
        request = make_request(["a", "b", "c"], size=4, must=[["a", "b"]], constraints={"a": constraint(2, 2)})
        layout = solve(request)
        assert_valid(request, layout)
        for role in layout.roles:
            assert ("a" in role.services) == ("b" in role.services)

    def test_must_coexist_restricted_to_present_services(self) -> None:
        request = make_request(["a", "b", "c"], size=2, requested=["a", "c"], must=[["a", "b"]], cant=[["a", "c"]])
        assert_valid(request, solve(request))

    def test_intersecting_must_coexist_groups_merge(self) -> None:
        request = make_request(
            ["a", "b", "c", "d"], size=4, must=[["a", "b"], ["b", "c"]], constraints={"a": constraint(1, 1)}
        )
        layout = solve(request)
        assert_valid(request, layout)
        assert layout.service_counts()["c"] == 1

    def test_must_coexist_meets_quantity_limits(self) -> None:
        request = make_request(
            ["nn", "zk", "base"],
            size=5,
            must=[["nn", "zk"]],
            constraints={"nn": constraint(1, 1), "zk": constraint(3, 5)},
        )
        text = reasons_of(request)
        assert (
            "[nn, zk] (must-coexist [nn, zk]) must share nodes, but zk needs at least 3 nodes (quantities.min) "
            "and nn allows at most 1 (quantities.max)"
        ) in text

    def test_cant_coexist_whole_group_never_on_one_node(self) -> None:
        request = make_request(["a", "b", "c"], size=1, cant=[["a", "b", "c"]])
        text = reasons_of(request)
        assert "can never share a node" not in text  # pairs are fine, only the triple is not
        request = make_request(["a", "b", "c"], size=2, cant=[["a", "b", "c"]])
        layout = solve(request)
        assert_valid(request, layout)
        assert all(not {"a", "b", "c"} <= role.services for role in layout.roles)
        assert len(layout.roles) == 2

    def test_cant_coexist_pair_is_fine_inside_a_larger_group(self) -> None:
        request = make_request(["a", "b", "c"], size=2, cant=[["a", "b", "c"]], constraints={"c": constraint(1, 1)})
        layout = solve(request)
        assert_valid(request, layout)
        assert any({"a", "b"} <= role.services for role in layout.roles)

    def test_cant_coexist_inside_must_coexist(self) -> None:
        request = make_request(["a", "b", "c"], size=2, must=[["a", "b", "c"]], cant=[["a", "b"]])
        text = reasons_of(request)
        assert "can't-coexist [a, b] can never hold: must-coexist groups put all of [a, b, c]" in text

    def test_cant_coexist_with_quantities_at_a_size(self) -> None:
        request = make_request(
            ["master", "worker", "base"], size=3, cant=[["master", "worker"]],
            constraints={"master": constraint(2), "worker": constraint(2)},
        )  # fmt: skip
        text = reasons_of(request)
        assert (
            "master (at least 2), worker (at least 2) can never share a node (can't-coexist [master, worker])" in text
        )
        assert "so together they need at least 4 nodes, but the cluster has 3" in text

    def test_cant_coexist_cycle_needs_three_roles(self) -> None:
        request = make_request(["a", "b", "c"], size=3, cant=[["a", "b"], ["b", "c"], ["a", "c"]])
        layout = solve(request)
        assert_valid(request, layout)
        assert len(layout.roles) == 3
        with pytest.raises(LayoutError) as caught:
            solve(dataclasses.replace(request, size=2))
        assert "a (at least 1), b (at least 1), c (at least 1) can never share a node" in caught.value.reasons[0]


# --- preferences and determinism ----------------------------------------------------------------------------


class TestCheckLayout:
    def test_valid_layout(self) -> None:
        request = make_request(["a", "b"], size=2, cant=[["a", "b"]])
        layout = ClusterLayout(
            (NodeRole("small", "centos", frozenset({"a"}), 1), NodeRole("large", "ubuntu", frozenset({"b"}), 1))
        )
        assert check_layout(request, layout) == []

    def test_every_kind_of_violation(self) -> None:
        request = make_request(
            ["a", "b", "c", "d"], size=3, size_max=2, must=[["a", "b"]], cant=[["c", "d"]],
            constraints={"a": constraint(2, hardware=["large"]), "b": constraint(images=["ubuntu"])},
        )  # fmt: skip
        layout = ClusterLayout(
            (
                NodeRole("small", "centos", frozenset({"a", "b", "c", "d"}), 1),
                NodeRole("small", "centos", frozenset({"c", "x"}), 2),
                NodeRole("small", "centos", frozenset(), 0),
            )
        )
        problems = "\n".join(check_layout(request, layout))
        for expected in (
            "template t allows from 1 to 2 nodes; the requested size is 3",
            "can't-coexist [c, d]: role 1 × small/centos [a, b, c, d] runs all of them",
            "a allows hardware types large, but role 1 × small/centos [a, b, c, d] uses small",
            "b allows image types ubuntu, but role 1 × small/centos [a, b, c, d] uses centos",
            "role 2 × small/centos [c, x] runs x, which is not among the cluster's services",
            "role 0 × small/centos [] has 0 nodes; a role needs at least one",
            "role 0 × small/centos [] has no services",
            "a is on 1 nodes, but its quantities.min is 2",
        ):
            assert expected in problems

    def test_unplaced_service_and_broken_group(self) -> None:
        request = make_request(["a", "b", "c"], size=2, must=[["a", "b"]])
        layout = ClusterLayout((NodeRole("small", "centos", frozenset({"a"}), 2),))
        assert check_layout(request, layout) == [
            "must-coexist [a, b]: role 2 × small/centos [a] runs a without b",
            "b is not placed on any node",
            "c is not placed on any node",
        ]


class TestPreference:
    def test_fewest_roles(self) -> None:
        request = make_request(["a", "b", "c"], size=10, must=[["a", "b"]], constraints={"c": constraint(1, 3)})
        layout = solve(request)
        assert_valid(request, layout)
        assert len(layout.roles) == 2
        assert role_sets(layout) == Counter({frozenset({"a", "b", "c"}): 3, frozenset({"a", "b"}): 7})

    def test_unconstrained_services_go_on_every_node(self) -> None:
        request = make_request(["base", "a", "b"], size=4, cant=[["a", "b"]], constraints={"a": constraint(1, 1)})
        layout = solve(request)
        assert all("base" in role.services for role in layout.roles)

    def test_cheapest_hardware_when_costs_are_known(self) -> None:
        hardware = (HardwareOption("alpha", "1", 0.9), HardwareOption("beta", "2", 0.1))
        request = make_request(["a"], size=2, hardware_options=hardware)
        assert solve(request).roles[0].hardware == "beta"

    def test_names_when_costs_are_unknown(self) -> None:
        hardware = (HardwareOption("beta", "2"), HardwareOption("alpha", "1"))
        request = make_request(["a"], size=2, hardware_options=hardware)
        assert solve(request).roles[0].hardware == "alpha"

    def test_known_costs_before_unknown(self) -> None:
        hardware = (HardwareOption("alpha", "1"), HardwareOption("beta", "2", 5.0))
        request = make_request(["a"], size=2, hardware_options=hardware)
        assert solve(request).roles[0].hardware == "beta"

    def test_deterministic_whatever_the_request_order(self) -> None:
        first = make_request(["a", "b", "c", "d"], size=7, cant=[["a", "b"]], constraints={"c": constraint(2, 2)})
        second = dataclasses.replace(first, requested_services=("d", "c", "b", "a"))
        assert solve(first) == solve(second) == solve(first)


# --- the lamp template from the sample catalog -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_catalog() -> dict[str, dict[str, dict[str, Any]]]:
    raw = read_catalog_dir(SAMPLES_DIR)
    normalizers = {
        "services": codec.normalize_service,
        "hardwaretypes": codec.normalize_hardwaretype,
        "imagetypes": codec.normalize_imagetype,
        "clustertemplates": codec.normalize_clustertemplate,
    }
    view: dict[str, dict[str, dict[str, Any]]] = {}
    for key, normalize in normalizers.items():
        for document in raw[key]:
            normalized, problems = normalize(document)
            assert not problems.errors, problems.errors
            view.setdefault(key, {})[normalized["name"]] = normalized
    return view


def lamp_request(
    catalog: dict[str, dict[str, dict[str, Any]]], provider: str, size: int, **changes: Any
) -> LayoutRequest:
    document, problems = resolve_template("lamp", catalog)
    assert not problems.errors
    hardware, images = provider_options(provider, catalog["hardwaretypes"].values(), catalog["imagetypes"].values())
    request = LayoutRequest(
        template=template_spec(document),
        services={name: service_spec(doc) for name, doc in catalog["services"].items()},
        size=size,
        hardware_options=hardware,
        image_options=images,
    )
    return dataclasses.replace(request, **changes)


LAMP_DEFAULT = frozenset({"base", "apache-httpd", "php", "php-modules", "mysql-server"})
LAMP_WEB = frozenset({"base", "apache-httpd", "php", "php-modules"})


class TestLampTemplate:
    @pytest.mark.parametrize("provider", ["rackspace", "aws-us-east-1", "google"])
    def test_single_node(self, sample_catalog: Any, provider: str) -> None:
        request = lamp_request(sample_catalog, provider, 1)
        layout = solve(request)
        assert_valid(request, layout)
        assert layout.roles == (NodeRole("standard-medium", "ubuntu12", LAMP_DEFAULT, 1),)

    @pytest.mark.parametrize("size", [2, 5, 50, 1000])
    def test_one_database_and_web_servers_everywhere(self, sample_catalog: Any, size: int) -> None:
        request = lamp_request(sample_catalog, "rackspace", size)
        layout = solve(request)
        assert_valid(request, layout)
        assert layout.roles == (
            NodeRole("standard-medium", "ubuntu12", LAMP_DEFAULT, 1),
            NodeRole("standard-medium", "ubuntu12", LAMP_WEB, size - 1),
        )

    def test_all_compatible_services(self, sample_catalog: Any) -> None:
        services = ("base", "haproxy", "apache-httpd", "memcached", "php", "php-modules", "mysql-server")
        request = lamp_request(sample_catalog, "aws-us-east-1", 4, requested_services=services)
        layout = solve(request)
        assert_valid(request, layout)
        counts = layout.service_counts()
        assert counts["haproxy"] == counts["mysql-server"] == 1
        assert counts["memcached"] == counts["base"] == counts["apache-httpd"] == 4
        assert len(layout.roles) == 2

    def test_hardware_override(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 3, hardware="standard-xlarge", image="centos6")
        assert {(role.hardware, role.image) for role in solve(request).roles} == {("standard-xlarge", "centos6")}

    @pytest.mark.parametrize(("provider", "cheapest"), [("rackspace", "standard-small"), ("joyent", "standard-small")])
    def test_cheapest_hardware_without_a_default(self, sample_catalog: Any, provider: str, cheapest: str) -> None:
        request = lamp_request(sample_catalog, provider, 3)
        request = dataclasses.replace(request, template=dataclasses.replace(request.template, default_hardware=None))
        assert {role.hardware for role in solve(request).roles} == {cheapest}

    def test_provider_without_mappings(self, sample_catalog: Any) -> None:
        text = reasons_of(lamp_request(sample_catalog, "openstack", 3))
        assert "template lamp's default hardware type standard-medium has no flavor for this provider" in text
        assert "template lamp's default image type ubuntu12 has no image for this provider" in text

    def test_override_outside_compatibility(self, sample_catalog: Any) -> None:
        text = reasons_of(lamp_request(sample_catalog, "rackspace", 3, image="centos5"))
        assert "the requested image type centos5 is not compatible with template lamp" in text

    def test_missing_dependencies(self, sample_catalog: Any) -> None:
        text = reasons_of(lamp_request(sample_catalog, "rackspace", 1, requested_services=("php",)))
        assert "php requires apache-httpd" in text
        assert "php requires base" in text

    def test_check_layout_lists_every_violation(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 3)
        broken = ClusterLayout(
            (
                NodeRole("standard-medium", "ubuntu12", frozenset({"base", "mysql-server", "apache-httpd"}), 2),
                NodeRole("standard-huge", "ubuntu12", frozenset({"base", "php", "php-modules", "apache-httpd"}), 1),
            )
        )
        problems = "\n".join(check_layout(request, broken))
        assert "mysql-server is on 2 nodes, but its quantities.max is 1" in problems
        assert "must-coexist [apache-httpd, php, php-modules]" in problems
        assert "runs apache-httpd without php, php-modules" in problems
        assert "uses hardware type standard-huge, which this provider does not offer" in problems


# --- day-2 changes ---------------------------------------------------------------------------------------------


def hadoop_like(size: int) -> LayoutRequest:
    return make_request(
        ["base", "nn", "rm", "dn", "nm", "zk"],
        size=size,
        must=[["dn", "nm"], ["nn", "rm"]],
        cant=[["nn", "dn"], ["rm", "nm"]],
        constraints={"nn": constraint(1, 1), "dn": constraint(3, hardware=["large"]), "zk": constraint(3, 5)},
    )


class TestSolveChange:
    def test_add_nodes_grows_the_worker_role(self) -> None:
        request = hadoop_like(10)
        before = solve(request)
        after = solve_change(request=request, existing=before, add_nodes=5)
        assert after.size == 15
        assert len(after.roles) == len(before.roles)
        grown = [(a.count - b.count) for a, b in zip(after.roles, before.roles, strict=True)]
        assert sorted(grown) == [0] * (len(grown) - 1) + [5]
        assert_valid(dataclasses.replace(request, size=15), after)

    def test_add_nodes_keeps_existing_roles(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 5)
        before = solve(request)
        after = solve_change(request=request, existing=before, add_nodes=3)
        assert after.roles == (before.roles[0], dataclasses.replace(before.roles[1], count=7))

    def test_added_nodes_use_the_request_hardware_for_new_roles(self) -> None:
        request = make_request(["a", "b"], size=1, constraints={"a": constraint(1, 1)})
        existing = ClusterLayout((NodeRole("large", "centos", frozenset({"a", "b"}), 1),))
        after = solve_change(request=dataclasses.replace(request, hardware="medium"), existing=existing, add_nodes=2)
        assert after.roles == (existing.roles[0], NodeRole("medium", "centos", frozenset({"b"}), 2))

    def test_remove_nodes_takes_from_the_largest_role(self) -> None:
        request = hadoop_like(10)
        before = solve(request)
        after = solve_change(request=request, existing=before, remove_nodes=4)
        assert after.size == 6
        assert_valid(dataclasses.replace(request, size=6), after)
        for role in after.roles:
            old = next(
                r
                for r in before.roles
                if (r.hardware, r.image, r.services) == (role.hardware, role.image, role.services)
            )
            assert role.count <= old.count

    def test_remove_nodes_below_a_minimum(self) -> None:
        request = hadoop_like(5)
        before = solve(request)
        with pytest.raises(LayoutError) as caught:
            solve_change(request=request, existing=before, remove_nodes=2)
        text = "\n".join(caught.value.reasons)
        assert "cannot remove 2 of 5 nodes without dropping a service below its minimum" in text
        assert "dn is on 4 nodes and needs 3" in text

    def test_remove_nodes_below_template_size(self) -> None:
        request = make_request(["a"], size=3, size_min=2)
        with pytest.raises(LayoutError, match="the requested size is 1"):
            solve_change(request=request, existing=solve(request), remove_nodes=2)

    def test_add_free_service_goes_everywhere(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 5)
        after = solve_change(request=request, existing=solve(request), add_services=("memcached",))
        assert all("memcached" in role.services for role in after.roles)
        assert [role.count for role in after.roles] == [1, 4]

    def test_add_capped_service_prefers_a_whole_role(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 5)
        after = solve_change(request=request, existing=solve(request), add_services=("haproxy",))
        assert after.roles == (
            NodeRole("standard-medium", "ubuntu12", LAMP_DEFAULT | {"haproxy"}, 1),
            NodeRole("standard-medium", "ubuntu12", LAMP_WEB, 4),
        )

    def test_add_service_that_must_coexist_with_existing_ones(self) -> None:
        request = make_request(
            ["a", "b", "c"], size=4, requested=["a", "c"], must=[["a", "b"]], constraints={"a": constraint(1, 1)}
        )
        before = solve(request)
        after = solve_change(request=request, existing=before, add_services=("b",))
        assert after.service_counts()["b"] == after.service_counts()["a"] == 1
        assert {r.services for r in after.roles} == {frozenset({"a", "b", "c"}), frozenset({"c"})}

    def test_add_service_splits_a_role_when_it_must(self) -> None:
        request = make_request(["a", "b"], size=4, requested=["a"], constraints={"b": constraint(1, 1)})
        after = solve_change(request=request, existing=solve(request), add_services=("b",))
        assert role_sets(after) == Counter({frozenset({"a", "b"}): 1, frozenset({"a"}): 3})

    def test_add_service_that_does_not_fit(self) -> None:
        request = make_request(
            ["a", "b"], size=3, requested=["a"], cant=[["a", "b"]], constraints={"b": constraint(1, 1)}
        )
        with pytest.raises(LayoutError) as caught:
            solve_change(request=request, existing=solve(request), add_services=("b",))
        text = caught.value.reasons[0]
        assert "b cannot be added: it needs at least 1 nodes, but only 0 of the cluster's 3 nodes can take it" in text
        assert "can't-coexist [a, b]" in text

    def test_add_service_needing_more_nodes_than_the_cluster_has(self) -> None:
        request = make_request(["a", "b"], size=2, requested=["a"], constraints={"b": constraint(3)})
        with pytest.raises(LayoutError, match=r"b needs at least 3 nodes \(quantities.min\), but the cluster has 2"):
            solve_change(request=request, existing=solve(request), add_services=("b",))

    def test_add_service_with_hardware_the_nodes_lack(self) -> None:
        request = make_request(["a", "b"], size=2, requested=["a"], constraints={"b": constraint(hardware=["large"])})
        with pytest.raises(LayoutError, match="hardware small is not allowed for it"):
            solve_change(request=request, existing=solve(request), add_services=("b",))

    def test_remove_service_merges_roles(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 5)
        after = solve_change(request=request, existing=solve(request), remove_services=("mysql-server",))
        assert after.roles == (NodeRole("standard-medium", "ubuntu12", LAMP_WEB, 5),)

    def test_remove_service_still_required(self, sample_catalog: Any) -> None:
        request = lamp_request(sample_catalog, "rackspace", 2)
        with pytest.raises(LayoutError, match="php requires apache-httpd"):
            solve_change(request=request, existing=solve(request), remove_services=("apache-httpd",))

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"add_nodes": 1, "remove_nodes": 1}, "separate changes"),
            ({"remove_services": ("ghost",)}, "ghost cannot be removed: not on the cluster"),
            ({"add_services": ("a",)}, "a cannot be added: already on the cluster"),
            ({"add_nodes": -1}, "cannot be negative"),
            ({"remove_services": ("a",)}, "the change would leave the cluster without services"),
        ],
    )
    def test_invalid_changes(self, changes: dict[str, Any], message: str) -> None:
        request = make_request(["a"], size=2)
        with pytest.raises(LayoutError, match=message):
            solve_change(request=request, existing=solve(request), **changes)

    def test_removing_a_service_can_leave_a_role_empty(self) -> None:
        request = make_request(
            ["x", "y"], size=3, constraints={"x": constraint(1, 1), "y": constraint(1)}, cant=[["x", "y"]]
        )
        existing = ClusterLayout(
            (NodeRole("small", "centos", frozenset({"x"}), 1), NodeRole("small", "centos", frozenset({"y"}), 2))
        )
        with pytest.raises(LayoutError, match=r"role 1 × small/centos \[\] has no services"):
            solve_change(request=request, existing=existing, remove_services=("x",))
        # Removing a node in the same change takes the emptied one first (the documented choice rule).
        after = solve_change(request=request, existing=existing, remove_services=("x",), remove_nodes=1)
        assert after.roles == (NodeRole("small", "centos", frozenset({"y"}), 2),)

    def test_changes_combine(self) -> None:
        request = make_request(["a", "b", "c"], size=4, requested=["a", "b"], constraints={"b": constraint(1, 1)})
        before = solve(request)
        after = solve_change(request=request, existing=before, remove_services=("b",), add_services=("c",), add_nodes=2)
        assert after.size == 6
        assert after.services == frozenset({"a", "c"})


# --- the exhaustive fallback --------------------------------------------------------------------------------


class TestExactSearch:
    def test_exact_search_finds_what_greedy_misses(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Greedy disabled: the exhaustive search alone must still find a layout where one exists.
        monkeypatch.setattr(solver, "_pack_greedy", lambda *args, **kwargs: None)
        request = make_request(["a", "b", "c"], size=3, cant=[["a", "b"], ["b", "c"], ["a", "c"]])
        assert_valid(request, solve(request))
        with pytest.raises(LayoutError):
            solve(dataclasses.replace(request, size=2))

    def test_search_budget_gives_up_with_a_reason(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(solver, "_pack_greedy", lambda *args, **kwargs: None)
        monkeypatch.setattr(solver, "SEARCH_BUDGET", 1)
        request = make_request(["a", "b", "c"], size=3, cant=[["a", "b"], ["b", "c"], ["a", "c"]])
        with pytest.raises(LayoutError, match="gave up after 1 steps"):
            solve(request)


# --- speed ----------------------------------------------------------------------------------------------------


def test_ten_thousand_nodes_is_fast() -> None:
    request = dataclasses.replace(hadoop_like(10_000), max_size=10_000)
    start = time.perf_counter()
    layout = solve(request)
    assert time.perf_counter() - start < 1.0  # the bench target is 0.1 s; this only catches blow-ups
    assert_valid(request, layout)


# --- properties -----------------------------------------------------------------------------------------------

HARDWARE_NAMES = ("h0", "h1", "h2")
IMAGE_NAMES = ("i0", "i1")


@st.composite
def instances(draw: st.DrawFn, max_services: int = 4, max_size: int = 4) -> LayoutRequest:
    count = draw(st.integers(1, max_services))
    names = [f"s{i}" for i in range(count)]
    hardware = draw(st.lists(st.sampled_from(HARDWARE_NAMES), min_size=1, max_size=3, unique=True))
    costs = draw(st.lists(st.none() | st.sampled_from([0.1, 0.2, 0.5]), min_size=len(hardware), max_size=len(hardware)))
    images = draw(st.lists(st.sampled_from(IMAGE_NAMES), min_size=1, max_size=2, unique=True))
    group = st.frozensets(st.sampled_from(names), min_size=2, max_size=3)
    must = draw(st.lists(group, max_size=2)) if count > 1 else []
    cant = draw(st.lists(group, max_size=3)) if count > 1 else []
    constraints = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True)):
        low = draw(st.integers(0, 3))
        high = draw(st.none() | st.integers(low, 4))
        constraints[name] = ServiceConstraint(
            low,
            high,
            draw(st.frozensets(st.sampled_from(HARDWARE_NAMES), max_size=2)),
            draw(st.frozensets(st.sampled_from(IMAGE_NAMES), max_size=1)),
        )
    requested = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    return make_request(
        names,
        size=draw(st.integers(1, max_size)),
        requested=requested,
        must=must,
        cant=cant,
        constraints=constraints,
        hardware_options=tuple(HardwareOption(n, n, c) for n, c in zip(hardware, costs, strict=True)),
        image_options=tuple(ImageOption(n, n) for n in images),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_solve_is_sound_and_complete_on_small_instances(request: LayoutRequest) -> None:
    try:
        layout = solve(request)
    except LayoutError as error:
        assert error.reasons
        assert not brute_force_exists(request), f"a layout exists but solve said: {error.reasons}"
    else:
        assert_valid(request, layout)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_services=8, max_size=60))
def test_every_returned_layout_is_valid(request: LayoutRequest) -> None:
    try:
        layout = solve(request)
    except LayoutError as error:
        assert error.reasons
    else:
        assert_valid(request, layout)


def _without(layout: ClusterLayout, services: frozenset[str]) -> Counter[tuple[str, str, frozenset[str]]]:
    counts: Counter[tuple[str, str, frozenset[str]]] = Counter()
    for role in layout.roles:
        counts[(role.hardware, role.image, role.services - services)] += role.count
    return counts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_services=5, max_size=8), st.data())
def test_changes_keep_existing_nodes_and_every_constraint(request: LayoutRequest, data: st.DataObject) -> None:
    try:
        before = solve(request)
    except LayoutError:
        assume(False)
        return
    others = sorted(set(request.template.default_services) - before.services)
    change = data.draw(
        st.sampled_from(
            [
                {"add_nodes": data.draw(st.integers(1, 4))},
                {"remove_nodes": data.draw(st.integers(1, 3))},
                {"remove_services": (data.draw(st.sampled_from(sorted(before.services))),)},
                *([{"add_services": (data.draw(st.sampled_from(others)),)}] if others else []),
            ]
        )
    )
    try:
        after = solve_change(request=request, existing=before, **change)
    except LayoutError as error:
        assert error.reasons
        return
    changed = dataclasses.replace(request, size=after.size, requested_services=tuple(sorted(after.services)))
    assert check_layout(changed, after) == []
    assert independent_problems(changed, after) == []
    old, new = _without(before, frozenset()), _without(after, frozenset())
    if "add_nodes" in change:
        assert after.size == before.size + change["add_nodes"]
        assert not old - new  # every existing node is still there, unchanged
    if "remove_nodes" in change:
        assert after.size == before.size - change["remove_nodes"]
        assert not new - old  # survivors are unchanged
    if "remove_services" in change:
        assert new == _without(before, frozenset(change["remove_services"]))
    if "add_services" in change:
        assert _without(after, frozenset(change["add_services"])) == old
