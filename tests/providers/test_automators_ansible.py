"""The ansible automator against real lab hosts: ``ansible-playbook`` (Debian's ansible-core on the lab hosts)
runs on the node itself, connection local, with the playbooks, roles and the task's variables shipped there
over the node's SSH session; nothing of it runs on the worker (tests/security/test_hostile_tenant.py tries)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from providers.automators.ansible import AnsibleAutomator, ansible_config, ensure_ansible, ensure_script, inventory
from providers.automators.base import NodeInfo
from providers.drivers.base import TerminalError
from providers.ssh import Session
from tests.lab.fixtures import LabHosts, LabNode

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


@pytest.fixture
def session_log() -> list[str]:
    """The lines the ``node`` fixture's session streamed (what the engine copies to the task's live log)."""
    return []


@pytest.fixture
def node(lab: LabHosts, session_log: list[str]) -> Iterator[tuple[LabNode, Session, str]]:
    """Lab host 2, a connected session to it, and a file path there for the playbook to write (removed after)."""
    host = lab.nodes[1]
    with host.session(on_line=session_log.append) as session:
        out = f"/root/ansible-test-{uuid.uuid4().hex[:8]}"
        yield host, session, out
        session.run(f"rm -f {out} {out}.who")


def test_a_playbook_runs_on_the_node_with_the_task_as_extra_vars(node, session_log: list[str]) -> None:
    host, session, out = node
    request = lab_request(
        host,
        service="web-ansible",
        fields={"playbook": "web.yml", "extra_vars": json.dumps({"out": out, "web": {"message": "merged"}})},
        config={"web": {"port": 8080, "message": "from config"}, "greeting": "hi"},
        resources=(playbooks(), ROLES),
    )
    output = AnsibleAutomator().run(session, request)

    written = session.run(f"cat {out}").stdout.splitlines()
    assert written == [
        "hi 8080 merged",  # extra_vars deep-merged over the config: web.port kept, web.message replaced
        "action=install service=web-ansible cluster=automators",
        f"host={host.hostname} bind={host.address} home=/root nodes=1",
    ]
    assert session.run(f"cat {out}.who").stdout == "root"
    assert output.startswith("$ ansible-playbook web.yml")
    assert "TASK [greeter : Write what Loom passed]" in output and "failed=0" in output
    assert any("PLAY RECAP" in line for line in session_log), "the output streams to the session's log"
    # The task's variables are a private file on the node; the next action uploads only its variables.
    assert session.run("stat -c %a /root/.loom/tasks/web-ansible.install.vars.json").stdout.strip() == "600"
    again = AnsibleAutomator().run(session, request)
    assert again.startswith("$ ansible-playbook web.yml\n"), "unchanged archives are not uploaded again"


def test_the_role_field_runs_a_role_and_tags_limit_the_tasks(node) -> None:
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
    with pytest.raises(TerminalError, match=r"web\.yml matched no host: .* 'localhost' or a group of the node \(web\)"):
        AnsibleAutomator().run(session, request)


def test_a_failing_playbook_is_a_terminal_error_with_the_output_tail(node) -> None:
    host, session, _ = node
    request = lab_request(host, service="web", fields={"playbook": "broken.yml"}, resources=(playbooks(),))
    with pytest.raises(TerminalError, match="exited with status 2") as error:
        AnsibleAutomator().run(session, request)
    assert "the-playbook-failed-here" in str(error.value)


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


def test_the_inventory_is_the_node_alone_with_connection_local_and_a_group_per_service() -> None:
    request = request_with(node=NodeInfo(3, "web-3", {"access_v4": "10.0.0.3"}, ("base-ansible", "web")))
    assert inventory(request) == {
        "all": {
            "hosts": {"web-3": {"ansible_connection": "local", "ansible_python_interpreter": "auto_silent"}},
            "children": {"base_ansible": {"hosts": {"web-3": None}}, "web": {"hosts": {"web-3": None}}},
        }
    }


def test_every_folder_ansible_writes_is_under_the_nodes_loom_folder() -> None:
    config = ansible_config("/home/u/.loom/ansible", ["common", "site"])
    assert "remote_tmp = /home/u/.loom/ansible/tmp" in config
    assert "local_tmp = /home/u/.loom/ansible/local" in config
    assert "roles_path = /home/u/.loom/ansible/roles/common:/home/u/.loom/ansible/roles/site" in config


def test_the_bootstrap_finds_ansible_core_on_a_node_that_has_it(node) -> None:
    _, session, _ = node
    assert ensure_ansible(session, "/root").strip() == "ansible-core: present (/usr/bin/ansible-playbook)"


def test_the_bootstrap_installs_the_distributions_ansible_core_on_a_node_without_it(node) -> None:
    """A node whose ``PATH`` has no ansible-playbook but has apt-get (a stand-in recording its arguments and
    installing a stand-in playbook command, so the lab's shared /usr is left alone) gets the package."""
    _, session, _ = node
    stub = f"/root/ensure-{uuid.uuid4().hex[:8]}"
    apt_get = f'#!/bin/sh\necho "$@" >> {stub}/apt.log\nprintf "#!/bin/sh\\n" > {stub}/ansible-playbook\nchmod 755 {stub}/ansible-playbook\n'
    session.run(f"mkdir {stub} && ln -s /usr/bin/timeout /bin/sh /bin/chmod {stub}/")
    session.upload(apt_get.encode(), f"{stub}/apt-get", mode=0o755)
    try:
        result = session.run(ensure_script("/root"), env={"PATH": stub}, check=False)
        assert (result.exit_status, result.stdout.strip()) == (0, "ansible-core: installed from the distribution")
        assert "install -y -q --no-install-recommends ansible-core" in session.run(f"cat {stub}/apt.log").stdout
    finally:
        session.run(f"rm -rf {stub}")
