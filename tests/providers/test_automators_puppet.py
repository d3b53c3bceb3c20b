"""The puppet automator against real lab hosts: ``puppet apply`` (Puppet 7, Debian's ``puppet-agent``) on the
node, with the task as hiera data and the ``loom_*`` facts, its state kept under the node's ``~/.loom``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from providers.automators.puppet import PuppetAutomator, hiera_config
from providers.drivers.base import TerminalError
from providers.ssh import Session
from tests.lab.fixtures import LabHosts, LabNode

from .test_automators_common import archive, lab_request, request_with

GREET = """\
class greet (String $out = lookup('config.out', String, 'first', '/nowhere')) {
  $port = lookup('config.web.port', Variant[Integer, String], 'first', 8080)
  $message = lookup('config.web.message', String, 'first', '-')
  $task = "${port} ${message} ${lookup('node.hostname')} ${lookup('cluster.name')}"
  $who = "${facts['loom_action']} ${facts['loom_service']} ${facts['loom_bind_v4']} ${facts['loom_home']} ${facts['identity']['user']}"
  file { $out: ensure => file, mode => '0600', content => "${task}\\n${who}\\n" }
}
"""
MODULES = archive("modules", "lib", {"greet/manifests/init.pp": GREET})
MANIFESTS = archive(
    "manifests",
    "site",
    {
        "web.pp": "include greet\n",
        "broken.pp": "exec { 'this command fails': command => '/bin/false' }\n",
        "syntax.pp": "class {\n",
    },
)


@pytest.fixture
def node(lab: LabHosts) -> Iterator[tuple[LabNode, Session, str]]:
    """Lab host 3, a connected session to it, and a file path there for the manifest to write (removed after)."""
    host = lab.nodes[2]
    with host.session() as session:
        out = f"/root/puppet-test-{uuid.uuid4().hex[:8]}"
        yield host, session, out
        session.run(f"rm -f {out}")


def test_a_manifest_applies_with_the_task_as_hiera_data_and_facts(node) -> None:
    host, session, out = node
    log: list[str] = []
    request = lab_request(
        host,
        service="web-puppet",
        action="configure",
        fields={"manifest": "web.pp"},
        config={"out": out, "web": {"port": 8081, "message": "hello"}},
        resources=(MANIFESTS, MODULES),
        log=log,
    )
    with host.session(on_line=log.append) as streaming:  # the engine's session streams to the task's log
        output = PuppetAutomator().run(streaming, request)
    assert output.startswith("$ puppet apply web.pp")
    assert output.endswith("puppet apply: changes applied\n")
    assert session.run(f"cat {out}").stdout.splitlines() == [
        f"8081 hello {host.hostname} automators",
        f"configure web-puppet {host.address} /root root",
    ]
    assert any("Applied catalog" in line for line in log), "the output is streamed as it comes"

    again = PuppetAutomator().run(session, request)
    assert again.endswith("puppet apply: nothing to change\n") and "(uploaded" not in again
    # Puppet's state (reports, caches, ssl) stays in the node's own ~/.loom: lab hosts share the machine's /var.
    assert session.run("test -s /root/.loom/puppet/public/last_run_summary.yaml", check=False).exit_status == 0
    assert session.run("stat -c %a /root/.loom/tasks/web-puppet.configure.json").stdout.strip() == "600"


def test_classes_with_hiera_data_above_the_task(node) -> None:
    host, session, out = node
    request = lab_request(
        host,
        service="web-puppet",
        fields={"classes": "greet", "hiera_data": f'{{"greet::out": "{out}", "config": {{"web": {{"port": 9}}}}}}'},
        config={"out": "/not/used", "web": {"port": 8081, "message": "hello"}},
        resources=(MANIFESTS, MODULES),
    )
    output = PuppetAutomator().run(session, request)
    assert output.startswith("$ puppet apply include greet")
    # greet::out comes from hiera_data (automatic class parameter lookup); the "config" key of hiera_data is
    # found first, so the task's web.message is not reached through it.
    assert session.run(f"head -1 {out}").stdout.strip() == f"9 - {host.hostname} automators"


def test_a_resource_that_fails_is_a_terminal_error_with_the_output_tail(node) -> None:
    host, session, _ = node
    request = lab_request(host, service="web", fields={"manifest": "site/broken.pp"}, resources=(MANIFESTS, MODULES))
    with pytest.raises(TerminalError, match=r"exited with status (4|6) \(some resources failed\)") as error:
        PuppetAutomator().run(session, request)
    assert "this command fails" in str(error.value)


def test_a_manifest_that_does_not_compile_says_so(node) -> None:
    host, session, _ = node
    request = lab_request(host, service="web", fields={"manifest": "syntax.pp"}, resources=(MANIFESTS, MODULES))
    with pytest.raises(TerminalError, match=r"exited with status 1 \(the catalog did not compile\)"):
        PuppetAutomator().run(session, request)


def test_a_non_root_user_applies_through_sudo(lab: LabHosts, sudo_users: dict[str, str]) -> None:
    host = lab.nodes[0]
    out = f"/tmp/puppet-sudo-{uuid.uuid4().hex[:8]}"
    with host.session(user=sudo_users["sudo"]) as session:
        request = lab_request(host, service="web", fields={"manifest": "web.pp"}, config={"out": out},
                              resources=(MANIFESTS, MODULES))  # fmt: skip
        try:
            PuppetAutomator().run(session, request)
            home = session.run('printf %s "$HOME"').stdout
            assert session.run(f"sudo -n cat {out}").stdout.splitlines()[1].endswith(f" {home} root")
        finally:
            session.run(f"sudo -n rm -rf {out} $HOME/.loom/puppet", check=False)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "needs a manifest or classes"),
        ({"classes": "greet, Not-A-Class"}, "'Not-A-Class' in field classes is not a Puppet class name"),
        ({"manifest": "nope.pp"}, r"manifest 'nope\.pp' is in no live manifests archive \(live manifests: site\)"),
        ({"classes": "greet", "hiera_data": "{"}, "field hiera_data is not valid JSON"),
    ],
)
def test_bad_fields_are_terminal_errors_before_the_node_is_touched(fields: dict[str, Any], says: str) -> None:
    request = request_with(fields=fields, resources=(MANIFESTS, MODULES))
    with pytest.raises(TerminalError, match=says):
        PuppetAutomator().run(None, request)  # type: ignore[arg-type] # never reached: no session needed


def test_hiera_config_puts_the_first_layer_first() -> None:
    text = hiera_config([("a", "/x/a.json"), ("task", "/x/t.json")])
    assert '"version": 5' in text and text.index("/x/a.json") < text.index("/x/t.json")
