"""The ``shell`` automator against real lab hosts over real SSH sessions (no database, no engine): what a
script sees (environment, ``loom-config``, its task file), resources uploaded once, how exit statuses are
classified, and a non-root SSH user whose scripts run as root through sudo."""

from __future__ import annotations

import io
import socket
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
import redis

from providers.automators.base import ActionRequest, NodeInfo
from providers.automators.shell import ScriptFailed, ScriptFailedTransient, ShellAutomator
from providers.resources import LiveResource
from providers.ssh import Session
from tests.lab.fixtures import LabHosts, LabNode, user_home

from .helpers import STARTER

SHOW = """#!/bin/sh
set -eu
echo "host=$LOOM_HOSTNAME bind=$LOOM_BIND_V4 action=$LOOM_SERVICE.$LOOM_ACTION args=$*"
echo "port=$(loom-config web.port) greeting=$(loom-config web.greeting 'hi there')"
echo "script field=$(loom-config --field script)"
echo "web nodes=$(loom-config --nodes web)"
loom-config --hosts | sed 's/^/hosts: /'
loom-config web.missing 2>&1 || echo "missing key exits $?"
echo "uid=$(id -u) cwd=$(pwd) task mode=$(stat -c %a "$LOOM_TASK")"
"""


def script(name: str, text: str, version: int = 1) -> LiveResource:
    return LiveResource("scripts", name, version, "file", "0755", text.encode())


def archive(name: str, files: Mapping[str, str]) -> LiveResource:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for path, text in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(text.encode()), 0o755
            bundle.addfile(info, io.BytesIO(text.encode()))
    return LiveResource("archives", name, 1, "archive", None, buffer.getvalue())


def node_info(node: LabNode, number: int, services: Sequence[str]) -> NodeInfo:
    addresses = {"access_v4": node.address, "bind_v4": node.address}
    return NodeInfo(number=number, hostname=node.hostname, ip_addresses=addresses, services=tuple(services))


def request(
    lab: LabHosts, resources: Sequence[LiveResource], script_name: str, args: str = "", **config: Any
) -> ActionRequest:
    """An action on ``lab.nodes[1]`` (a web node) of a two-node cluster whose other node is ``lab.nodes[2]``."""
    me = node_info(lab.nodes[1], 1, ["web"])
    return ActionRequest(
        cluster="probe",
        cluster_id=1,
        service="web",
        action="configure",
        fields={"script": script_name, "args": args},
        config={"web": {"port": 8080, **config}},
        node=me,
        nodes=[me, node_info(lab.nodes[2], 2, ["db"])],
        resources=tuple(resources),
    )


@pytest.fixture
def session(lab: LabHosts) -> Iterator[Session]:
    """Root on ``lab.nodes[1]``, with no ``~/.loom/shell`` left by an earlier test. Only the shell automator's
    own folder: lab hosts share the machine's file system, so root's ``~/.loom`` is also where the Puppet,
    Chef and Ansible tests running at the same time in another test process keep their files."""
    with lab.nodes[1].session(command_timeout=30) as session:
        session.run('rm -rf "$HOME/.loom/shell"')
        yield session


def test_a_script_gets_its_task_through_the_environment_and_loom_config(lab: LabHosts, session: Session) -> None:
    output = ShellAutomator().run(session, request(lab, [script("show.sh", SHOW)], "show.sh", "--fast 'two words'"))
    me, other = lab.nodes[1], lab.nodes[2]
    assert output.startswith("$ show.sh --fast 'two words'  (uploaded: show.sh)\n")
    assert f"host={me.hostname} bind={me.address} action=web.configure args=--fast two words\n" in output
    assert "port=8080 greeting=hi there\n" in output
    assert "script field=show.sh\n" in output
    assert f"web nodes={me.address}\n" in output
    assert f"hosts: {me.address} {me.hostname}\nhosts: {other.address} {other.hostname}\n" in output
    assert "loom-config: no key web.missing in the task's config\nmissing key exits 1\n" in output
    assert "uid=0 cwd=/root/.loom/shell/scripts task mode=600\n" in output


def test_resources_are_uploaded_once_and_again_when_they_change(lab: LabHosts, session: Session) -> None:
    tools = archive("tools", {"run.sh": "#!/bin/sh\necho from the archive\n"})
    shell = ShellAutomator()
    first = shell.run(session, request(lab, [script("show.sh", SHOW), tools], "tools/run.sh"))
    assert first.startswith("$ tools/run.sh  (uploaded: show.sh, tools)\nfrom the archive\n")
    again = shell.run(session, request(lab, [script("show.sh", SHOW), tools], "tools/run.sh"))
    assert again == "$ tools/run.sh\nfrom the archive\n"
    changed = shell.run(session, request(lab, [script("show.sh", "#!/bin/sh\necho v2\n", 2), tools], "show.sh"))
    assert changed == "$ show.sh  (uploaded: show.sh)\nv2\n"


@pytest.mark.parametrize(
    ("status", "error"), [(75, ScriptFailedTransient), (3, ScriptFailed), (1, ScriptFailed)], ids=str
)
def test_exit_75_is_transient_any_other_failure_terminal(
    lab: LabHosts, session: Session, status: int, error: type[Exception]
) -> None:
    text = f"#!/bin/sh\nseq 1 500 | sed 's/^/line /'\necho 'it went wrong' >&2\nexit {status}\n"
    with pytest.raises(error) as raised:
        ShellAutomator().run(session, request(lab, [script("fail.sh", text)], "fail.sh"))
    message = str(raised.value)
    assert message.startswith(f"fail.sh exited with status {status}; its output ends with:\n")
    assert message.endswith("line 500\nit went wrong\n") and "line 1\n" not in message
    assert "line 1\n" in raised.value.output and raised.value.output.endswith("line 500\nit went wrong\n")


def test_a_script_in_no_live_resource_is_a_terminal_failure_naming_it(lab: LabHosts, session: Session) -> None:
    with pytest.raises(ScriptFailed, match="exited with status 127") as raised:
        ShellAutomator().run(session, request(lab, [script("show.sh", SHOW)], "absent.sh"))
    assert "script absent.sh is in no live scripts or archives resource" in str(raised.value)


def test_a_non_root_user_runs_scripts_as_root_through_sudo(lab: LabHosts, sudo_users: dict[str, str]) -> None:
    # sudo_users may log in to lab.nodes[0] only; their home is the machine's /tmp (see tests/lab/fixtures.py).
    who = '#!/bin/sh\necho "uid=$(id -u) task=$LOOM_TASK port=$(loom-config web.port)"\n'
    node = lab.nodes[0]
    with node.session(user=sudo_users["sudo"], command_timeout=30) as session:
        try:
            action = request(lab, [script("who.sh", who)], "who.sh")
            output = ShellAutomator().run(session, action)
            task = user_home(sudo_users["sudo"]) / ".loom/tasks/web.configure.json"
            assert f"uid=0 task={task} port=8080\n" in output
            assert session.run(f"stat -c '%U %a' {task}").stdout == (f"{sudo_users['sudo']} 600\n")
        finally:  # other sudo tests use this user's home at the same time (see ``session``): only what this made
            session.run('rm -rf "$HOME/.loom/shell" "$HOME/.loom/tasks/web.configure.json"')


def test_the_starter_redis_script_with_a_password(lab: LabHosts, session: Session) -> None:
    """``cache.password`` (with characters redis's config quoting must escape) is required from clients, and
    the script's own health checks pass it without putting it on a command line."""
    password = 'pa"ss\\w$rd'
    redis_sh = script("redis.sh", (STARTER / "resources/automatortypes/shell/scripts/redis.sh").read_text())
    shell = ShellAutomator()

    def act(action: str) -> str:
        return shell.run(session, replace(request(lab, [redis_sh], "redis.sh", action), config=config))

    config = {"cache": {"port": 16379, "password": password}}
    address = lab.nodes[1].address
    try:
        for action in ("install", "configure", "start"):
            act(action)
        assert redis.Redis(host=address, port=16379, password=password, socket_timeout=5).ping() is True
        with socket.create_connection((address, 16379), timeout=5) as plain:  # no client library retries
            plain.sendall(b"PING\r\n")
            assert plain.recv(100).startswith(b"-NOAUTH")
        assert password not in session.run("ps -eo args").stdout
    finally:
        act("stop")
        act("remove")
    with pytest.raises(ConnectionRefusedError):  # stopped
        socket.create_connection((address, 16379), timeout=5).close()
