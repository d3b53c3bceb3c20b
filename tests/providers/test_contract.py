"""The driver contract itself: specs, results, errors and the registry. No database needed."""

from __future__ import annotations

import ast
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from providers.drivers import (
    TAG_CLUSTER,
    TAG_NODE,
    Driver,
    DriverError,
    Machine,
    MachineSpec,
    NotReady,
    Reachable,
    TerminalError,
    TransientError,
    client_token,
    driver_for,
    machine_name,
)
from providers.drivers.fake import FakeDriver

PROVIDERS_DIR = Path(__file__).resolve().parents[2] / "providers"


class TestMachineSpec:
    def test_for_node_derives_a_deterministic_name_token_and_tags(self) -> None:
        first = MachineSpec.for_node(cluster_key="42", node_key="n-7", node_number=3, flavor="s", image="i")
        again = MachineSpec.for_node(cluster_key="42", node_key="n-7", node_number=3, flavor="s", image="i")
        assert first == again
        assert first.name == "loom-42-3"
        assert first.client_token == client_token("42", "n-7") != client_token("42", "n-8")
        assert len(first.client_token) <= 64
        assert dict(first.tags) == {TAG_CLUSTER: "42", TAG_NODE: "n-7"}

    def test_extra_tags_are_kept_and_loom_tags_added(self) -> None:
        made = MachineSpec.for_node(
            cluster_key="c", node_key="n", node_number=1, flavor="s", image="i", tags={"team": "data"}
        )
        assert dict(made.tags) == {"team": "data", TAG_CLUSTER: "c", TAG_NODE: "n"}

    def test_a_contradicting_loom_tag_is_refused(self) -> None:
        with pytest.raises(ValueError, match="loom-node"):
            MachineSpec.for_node(
                cluster_key="c", node_key="n", node_number=1, flavor="s", image="i", tags={TAG_NODE: "other"}
            )

    def test_fields_are_read_only_and_never_in_repr(self) -> None:
        made = MachineSpec.for_node(
            cluster_key="c", node_key="n", node_number=1, flavor="s", image="i", fields={"api_password": "hunter2-x"}
        )
        assert "hunter2-x" not in repr(made)
        with pytest.raises(TypeError):
            made.fields["api_password"] = "changed"  # type: ignore[index]

    @pytest.mark.parametrize(
        ("cluster", "number", "expected"),
        [
            ("17", 1, "loom-17-1"),
            ("My_Cluster.A", 12, "loom-my-cluster-a-12"),
            ("x" * 100, 123, "loom-" + "x" * 54 + "-123"),
        ],
    )
    def test_machine_name_is_dns_safe(self, cluster: str, number: int, expected: str) -> None:
        assert machine_name(cluster, number) == expected
        assert len(machine_name(cluster, number)) <= 63


class TestErrors:
    def test_classification(self) -> None:
        assert TransientError("503").retryable is True
        assert TerminalError("401").retryable is False
        assert isinstance(TransientError("x"), DriverError)
        assert not isinstance(NotReady("booting", retry_after=2.0), DriverError)

    @pytest.mark.parametrize(
        "error",
        [
            TransientError("slow down", retry_after=3.0),
            TerminalError("bad image"),
            NotReady("booting", retry_after=1.5),
        ],
    )
    def test_errors_survive_pickling(self, error: Exception) -> None:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


class TestResults:
    def test_results_are_frozen(self) -> None:
        machine = Machine(machine_id="m", name="n", tags={TAG_NODE: "k"}, state="running", created_at=datetime.now(UTC))
        assert machine.node_key == "k" and machine.cluster_key is None
        reachable = Reachable(machine_id="m", hostname="h", ip_addresses={"access_v4": "1.2.3.4"}, ssh_user="root")
        with pytest.raises(TypeError):
            reachable.ip_addresses["bind_v4"] = "x"  # type: ignore[index]


class TestRegistry:
    def test_unknown_type_is_terminal_and_names_what_exists(self) -> None:
        with pytest.raises(TerminalError, match=r"'vmware-9'.*fake") as raised:
            driver_for("vmware-9", {}, provider_key="p")
        assert raised.value.retryable is False

    @pytest.mark.parametrize("value", [0, 25, 2.5, "40"])
    def test_call_latency_accepts_one_number_for_every_action(self, value: object) -> None:
        driver = driver_for("fake", {"call_latency_ms": value}, provider_key="p")
        assert isinstance(driver, FakeDriver)
        assert set(driver.settings.call_ms.values()) == {float(value)}  # type: ignore[arg-type]

    def test_call_latency_per_action(self) -> None:
        driver = driver_for("fake", {"call_latency_ms": "create=300, delete=100"}, provider_key="p")
        assert isinstance(driver, FakeDriver)
        assert dict(driver.settings.call_ms) == {"create": 300.0, "confirm": 0.0, "delete": 100.0, "list": 0.0}

    def test_fake_type_builds_a_fake_driver(self) -> None:
        driver = driver_for("fake", {"latency_ms": "10"}, provider_key="p1")
        assert isinstance(driver, FakeDriver)
        assert isinstance(driver, Driver)
        assert driver.provider_key == "p1"

    @pytest.mark.parametrize(
        ("fields", "field_name"),
        [
            ({"failure_rate": "1.5"}, "failure_rate"),
            ({"terminal_failure_rate": "-0.1"}, "terminal_failure_rate"),
            ({"latency_ms": "soon"}, "latency_ms"),
            ({"not_found_after_create": "nan"}, "not_found_after_create"),
            ({"call_latency_ms": "create=10,reboot=5"}, "call_latency_ms"),
        ],
    )
    def test_unusable_fake_fields_are_terminal_and_named(self, fields: dict[str, str], field_name: str) -> None:
        with pytest.raises(TerminalError, match=field_name):
            driver_for("fake", fields, provider_key="p")


def test_providers_never_import_clusters() -> None:
    """The dependency rule of the architecture, checked on the source rather than trusted."""
    offenders = []
    for path in PROVIDERS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "clusters"]
    assert offenders == []


def test_the_contract_module_imports_no_django() -> None:
    source = (PROVIDERS_DIR / "drivers" / "base.py").read_text()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert "django" not in imported
