"""The ansible automator against real lab hosts: ``ansible-playbook`` (ansible-core, a requirement of Loom's)
runs on this machine, as on a worker, and reaches the host over OpenSSH with the host key Loom pinned."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.automators.ansible import AnsibleAutomator, known_hosts_line
from providers.drivers.base import TerminalError, TransientError
from providers.ssh import Session
from tests.lab.fixtures import LabHosts, LabNode, processes_mentioning

from .test_automators_common import archive, lab_request, request_with

GREETER = {
    "greeter/defaults/main.yml": "greeting: \"{{ loom.config.greeting | default('hello') }}\"\n",
    "greeter/tasks/main.yml": """\
- name: Write what Loom passed
  ansible.builtin.copy:
    dest: "{{ loom.config.out }}"
    content: |
      {{ greeting }} {{ loom.config.web.port }} {{ loom.config.web.message | default('-') }}
      action={{ loom.action }} service={{ loom.service }} cluster={{ loom.cluster.name }}
      host={{ loom.node.hostname }} bind={{ loom_bind_v4 }} home={{ loom_home }} nodes={{ loom.nodes | length }}
    mode: "0600"
  tags: [write]
- name: Who runs this
  ansible.builtin.command: id -un
  register: who
  changed_when: false
  tags: [who]
- name: Record who
  ansible.builtin.copy:
    dest: "{{ loom.config.out }}.who"
    content: "{{ who.stdout }}"
  tags: [who]
""",
}


def playbooks(*, hosts: str = "all", extra: str = "") -> Any:
    return archive(
        "playbooks",
        "site",
        {
            "web.yml": f"- hosts: {hosts}\n  gather_facts: false\n  roles: [greeter]\n",
            "broken.yml": "- hosts: all\n  gather_facts: false\n  tasks:\n"
            "    - name: Fail on purpose\n      ansible.builtin.fail:\n        msg: the-playbook-failed-here\n",
            **({"extra.yml": extra} if extra else {}),
        },
    )


ROLES = archive("roles", "common", GREETER)


@dataclasses.dataclass
class Elsewhere:
    """The real session, but telling the automator another host key or port than the node has (what a
    rebuilt machine or a dead port looks like to Ansible)."""

    session: Session
    host_key: str | None = None
    port: int = 22

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


@pytest.fixture
def node(lab: LabHosts) -> Iterator[tuple[LabNode, Session, str]]:
    """Lab host 2, a connected session to it, and a file path there for the playbook to write (removed after)."""
    host = lab.nodes[1]
    with host.session() as session:
        out = f"/root/ansible-test-{uuid.uuid4().hex[:8]}"
        yield host, session, out
        session.run(f"rm -f {out} {out}.who")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's temporary folder for this test, to see what the automator leaves there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_playbook_runs_against_the_node_with_the_task_as_extra_vars(node, private_tmp) -> None:
    host, session, out = node
    log: list[str] = []
    request = lab_request(
        host,
        service="web-ansible",
        fields={"playbook": "web.yml", "extra_vars": json.dumps({"out": out, "web": {"message": "merged"}})},
        config={"web": {"port": 8080, "message": "from config"}, "greeting": "hi"},
        resources=(playbooks(), ROLES),
        log=log,
    )
    output = AnsibleAutomator().run(session, request)

    written = session.run(f"cat {out}").stdout.splitlines()
    assert written == [
        "hi 8080 merged",  # extra_vars deep-merged over the config: web.port kept, web.message replaced
        "action=install service=web-ansible cluster=automators",
        f"host={host.hostname} bind={host.address} home=/root nodes=1",
    ]
    assert session.run(f"cat {out}.who").stdout == "root"
    assert output.startswith("$ ansible-playbook web.yml\n")
    assert "TASK [greeter : Write what Loom passed]" in output and "failed=0" in output
    assert any("PLAY RECAP" in line for line in log), "the output is streamed to the request's log"
    # Nothing is left on the worker: no key, no known_hosts, no unpacked resources, no SSH master connection.
    assert list(private_tmp.iterdir()) == []
    assert processes_mentioning(str(private_tmp)) == []


def test_the_role_field_runs_a_role_and_tags_limit_the_tasks(node, private_tmp) -> None:
    host, session, out = node
    request = lab_request(
        host,
        service="web-ansible",
        fields={"role": "greeter", "tags": " who ", "extra_vars": {"out": out}},
        config={"web": {"port": 1}},
        resources=(playbooks(), ROLES),
    )
    output = AnsibleAutomator().run(session, request)
    assert "(role greeter) --tags who" in output.splitlines()[0]
    assert session.run(f"cat {out}.who").stdout == "root"
    assert session.run(f"test -e {out}", check=False).exit_status == 1, "the untagged task did not run"


def test_a_play_may_target_a_group_named_after_a_service_of_the_node(node) -> None:
    host, session, out = node
    request = lab_request(
        host,
        service="web-ansible",
        fields={"playbook": "site/web.yml", "extra_vars": {"out": out}},
        config={"web": {"port": 2}},
        resources=(playbooks(hosts="web_ansible"), ROLES),
        services=("base-ansible", "web-ansible"),
    )
    AnsibleAutomator().run(session, request)
    assert session.run(f"head -1 {out}").stdout.strip() == "hello 2 -"


def test_a_play_that_matches_no_host_fails_instead_of_doing_nothing(node) -> None:
    host, session, _ = node
    request = lab_request(
        host, service="web", fields={"playbook": "web.yml"}, resources=(playbooks(hosts="dbservers"), ROLES)
    )
    with pytest.raises(TerminalError, match=r"web\.yml matched no host: .* group of the node \(web\)"):
        AnsibleAutomator().run(session, request)


def test_a_failing_playbook_is_a_terminal_error_with_the_output_tail(node, private_tmp) -> None:
    host, session, _ = node
    request = lab_request(host, service="web", fields={"playbook": "broken.yml"}, resources=(playbooks(),))
    with pytest.raises(TerminalError, match="exited with status 2") as error:
        AnsibleAutomator().run(session, request)
    assert "the-playbook-failed-here" in str(error.value)
    assert list(private_tmp.iterdir()) == []


def test_a_host_key_other_than_the_pinned_one_is_refused(lab: LabHosts, node) -> None:
    host, session, out = node
    other = lab.nodes[2].host_key
    request = lab_request(host, service="web", fields={"playbook": "web.yml", "extra_vars": {"out": out}},
                          config={"web": {"port": 1}}, resources=(playbooks(), ROLES))  # fmt: skip
    with pytest.raises(TerminalError, match="exited with status 4") as error:
        AnsibleAutomator().run(Elsewhere(session, host_key=other), request)
    assert "Host key verification failed" in str(error.value) or "IDENTIFICATION HAS CHANGED" in str(error.value)
    assert session.run(f"test -e {out}", check=False).exit_status == 1


def test_an_unreachable_node_is_a_transient_error(node) -> None:
    host, session, _ = node
    request = lab_request(host, service="web", fields={"playbook": "web.yml"}, config={"web": {"port": 1}, "out": "/x"},
                          resources=(playbooks(), ROLES))  # fmt: skip
    with pytest.raises(TransientError, match="exited with status 4"):
        AnsibleAutomator().run(Elsewhere(session, host_key=host.host_key, port=2), request)


def test_a_non_root_user_becomes_root_through_sudo(lab: LabHosts, sudo_users: dict[str, str]) -> None:
    host = lab.nodes[0]
    out = f"/tmp/ansible-sudo-{uuid.uuid4().hex[:8]}"
    with host.session(user=sudo_users["sudo"]) as session:
        request = lab_request(host, service="web", fields={"playbook": "web.yml", "extra_vars": {"out": out}},
                              config={"web": {"port": 3}}, resources=(playbooks(), ROLES))  # fmt: skip
        try:
            AnsibleAutomator().run(session, request)
            assert session.run(f"sudo -n cat {out}.who").stdout == "root"
            assert f"home={session.run('printf %s $HOME').stdout} " in session.run(f"sudo -n cat {out}").stdout
        finally:
            session.run(f"sudo -n rm -rf {out} {out}.who $HOME/.loom/ansible", check=False)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "needs a playbook or role"),
        (
            {"playbook": "missing.yml"},
            r"playbook 'missing\.yml' is in no live playbooks archive \(live playbooks: site\)",
        ),
        ({"playbook": "../web.yml"}, "must be a relative path inside its resource"),
        ({"role": "greeter", "extra_vars": "[1]"}, "field extra_vars must be a JSON object"),
    ],
)
def test_bad_fields_are_terminal_errors_before_the_node_is_touched(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(TerminalError, match=says):
        AnsibleAutomator().run(None, request_with(fields=fields, resources=(playbooks(),)))  # type: ignore[arg-type]


def test_known_hosts_lines() -> None:
    assert known_hosts_line("10.0.0.5", 22, "ssh-ed25519 AAAAC3 comment") == "10.0.0.5 ssh-ed25519 AAAAC3\n"
    assert known_hosts_line("10.0.0.5", 2222, "ssh-ed25519 AAAAC3") == "[10.0.0.5]:2222 ssh-ed25519 AAAAC3\n"
    with pytest.raises(TerminalError, match="not an OpenSSH public key line"):
        known_hosts_line("10.0.0.5", 22, "")
