"""What the ansible, puppet and chef-solo automators share (``providers/automators/helpers.py``), and the
helpers their tests share: archives made in memory, and an ``ActionRequest`` for a lab host."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Mapping
from typing import Any

import pytest

from providers.automators.base import ActionRequest, NodeInfo
from providers.automators.helpers import (
    archive_names,
    deep_merge,
    json_object_field,
    locate,
    safe_relative_path,
)
from providers.drivers.base import TerminalError
from providers.resources import LiveResource
from tests.lab.fixtures import LabNode


def tar_archive(files: Mapping[str, str | bytes], *, mode: int = 0o644) -> bytes:
    """A tar.gz of ``files`` (path → content), as an admin would upload it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_archive(files: Mapping[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, content in sorted(files.items()):
            archive.writestr(path, content)
    return buffer.getvalue()


def archive(resource_type: str, name: str, files: Mapping[str, str | bytes], version: int = 1) -> LiveResource:
    return LiveResource(resource_type, name, version, "archive", None, tar_archive(files))


def node_info(node: LabNode, number: int = 1, services: tuple[str, ...] = ("web",)) -> NodeInfo:
    return NodeInfo(
        number=number,
        hostname=node.hostname,
        ip_addresses={"access_v4": node.address, "bind_v4": node.address},
        services=services,
    )


def lab_request(
    node: LabNode,
    *,
    service: str,
    action: str = "install",
    fields: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    resources: tuple[LiveResource, ...] = (),
    services: tuple[str, ...] = ("web",),
    log: list[str] | None = None,
) -> ActionRequest:
    """The request the engine would build for ``service``.``action`` on lab host ``node`` (node number 1 of a
    one-node cluster ``automators``)."""
    me = node_info(node, services=services)
    collected = log if log is not None else []
    return ActionRequest(
        cluster="automators",
        cluster_id=7,
        service=service,
        action=action,
        fields=dict(fields or {}),
        config=dict(config or {}),
        node=me,
        nodes=[me],
        resources=resources,
        log=collected.append,
    )


def request_with(**changes: Any) -> ActionRequest:
    """A request that never reaches a node (for the checks made before connecting)."""
    values: dict[str, Any] = {
        "cluster": "c",
        "cluster_id": 1,
        "service": "web",
        "action": "configure",
        "fields": {},
        "config": {},
        "node": NodeInfo(1, "h1", {"access_v4": "10.0.0.1"}, ("web",)),
        "nodes": [],
    }
    return ActionRequest(**{**values, **changes})


class TestDeepMerge:
    def test_objects_merge_key_by_key_and_the_override_wins_elsewhere(self) -> None:
        base = {"web": {"port": 8080, "message": "hi", "tags": ["a"]}, "cache": {"port": 6379}, "x": 1}
        override = {"web": {"port": 9090, "tags": ["b"]}, "x": {"now": "an object"}, "new": True}
        assert deep_merge(base, override) == {
            "web": {"port": 9090, "message": "hi", "tags": ["b"]},
            "cache": {"port": 6379},
            "x": {"now": "an object"},
            "new": True,
        }
        assert base["web"]["port"] == 8080, "the arguments are not changed"

    def test_a_non_object_replaces(self) -> None:
        assert deep_merge({"a": 1}, [1, 2]) == [1, 2]
        assert deep_merge("text", {"a": 1}) == {"a": 1}


class TestJsonObjectField:
    @pytest.mark.parametrize("value", [None, "", "  "])
    def test_unset_is_empty(self, value: Any) -> None:
        assert json_object_field(request_with(fields={"extra_vars": value}), "extra_vars") == {}

    def test_text_is_parsed_and_an_object_taken_as_it_is(self) -> None:
        assert json_object_field(request_with(fields={"f": '{"a": {"b": 1}}'}), "f") == {"a": {"b": 1}}
        assert json_object_field(request_with(fields={"f": {"a": 1}}), "f") == {"a": 1}

    @pytest.mark.parametrize(
        ("value", "says"),
        [("{nope", "field f is not valid JSON"), ("[1, 2]", "field f must be a JSON object, got list"), (3, "int")],
    )
    def test_anything_else_is_a_terminal_error_naming_the_field(self, value: Any, says: str) -> None:
        with pytest.raises(TerminalError, match=r"web\.configure: field f") as error:
            json_object_field(request_with(fields={"f": value}), "f")
        assert says in str(error.value)


class TestLocate:
    resources = (
        archive("playbooks", "site", {"web.yml": "-", "roles/x/tasks/main.yml": "-", "common.yml": "-"}),
        archive("playbooks", "extra", {"common.yml": "-", "db.yml": "-"}),
        archive("roles", "site", {"web.yml": "-"}),
        LiveResource("playbooks", "notes.txt", 1, "file", None, b"web.yml"),
    )

    def test_a_path_found_in_one_archive(self) -> None:
        assert locate(self.resources, "playbooks", "web.yml", what="playbook") == ("site", "web.yml")
        assert locate(self.resources, "playbooks", "./db.yml", what="playbook") == ("extra", "db.yml")

    def test_the_archive_name_in_front_chooses(self) -> None:
        assert locate(self.resources, "playbooks", "extra/common.yml", what="playbook") == ("extra", "common.yml")

    def test_in_several_archives_is_an_error_listing_the_choices(self) -> None:
        with pytest.raises(TerminalError, match=r"name one of extra/common\.yml, site/common\.yml"):
            locate(self.resources, "playbooks", "common.yml", what="playbook")

    def test_in_none_names_the_live_archives(self) -> None:
        with pytest.raises(TerminalError, match=r"playbook 'nope.yml' is in no live playbooks archive .*: extra, site"):
            locate(self.resources, "playbooks", "nope.yml", what="playbook")

    @pytest.mark.parametrize("path", ["/etc/passwd", "../x.yml", "a/../../x", ""])
    def test_paths_leaving_the_archive_are_refused(self, path: str) -> None:
        with pytest.raises(TerminalError, match="must be a relative path inside its resource"):
            locate(self.resources, "playbooks", path, what="playbook")

    def test_zip_archives_too(self) -> None:
        resources = (LiveResource("manifests", "z", 1, "archive", None, zip_archive({"dir/site.pp": "x"})),)
        assert locate(resources, "manifests", "dir/site.pp", what="manifest") == ("z", "dir/site.pp")

    def test_archive_names(self) -> None:
        assert archive_names(request_with(resources=self.resources), "playbooks") == ["extra", "site"]


def test_safe_relative_path_normalises() -> None:
    assert safe_relative_path("./a//b.yml", what="x") == "a/b.yml"
