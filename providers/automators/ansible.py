"""The ``ansible`` automator: ``ansible-playbook`` on the node, against the node itself (connection local).

Ansible evaluates everything it is given: Jinja expressions, lookups (``lookup('pipe', ...)``), filter,
lookup, callback and module plugins shipped inside roles, ``delegate_to: localhost``, ``local_action``.
All of that is tenant content, so none of it may run on a worker (whose data folder holds the key that
decrypts every tenant's secrets). Like Puppet and Chef-solo, the run happens where the tenant's content is
allowed to act: on the tenant's node. "localhost" in a play is the node. Per action, over one SSH session:

1. The live ``playbooks`` and ``roles`` archives are brought up to date under ``~/.loom/ansible`` the way
   the shell automator syncs its resources (only what changed is uploaded, unpacked on the node):
   ``playbooks/<name>/...``, ``roles/<name>/...``; every ``roles/<name>`` folder is on the roles path. The
   ``playbook`` field names a file inside a playbooks archive (``web.yml``, or ``site/web.yml`` with the
   archive's name); without one, the ``role`` field is applied by a one-play playbook written for it.
2. An inventory of the node alone, ``ansible_connection: local``, in the group ``all`` and in one group per
   service of the node (``-`` becomes ``_``), and an ``ansible.cfg`` keeping every folder Ansible writes
   under ``~/.loom/ansible``. Both change only with the node's services, so they are uploaded once.
3. Extra vars (``~/.loom/tasks/<service>.<action>.vars.json``, 0600: the config may hold secrets): ``loom``,
   the task as the shell automator's ``LOOM_TASK`` has it (the ``extra_vars`` field deep-merged over
   ``config``), ``loom_home`` (the SSH user's home) and the ``loom_*`` counterparts of the shell automator's
   variables (``loom_bind_v4``, ``loom_hostname``, ...). Everything sits under ``loom*`` names: ``action``
   and friends are reserved words in Ansible.
4. ``ansible-playbook`` runs on the node, as root (``sudo -n`` when the SSH user is not), found in
   ``~/.loom/ansible/venv`` (a pinned ansible-core the bootstrap may install) or else on the node's
   ``PATH`` (the distribution's ``ansible-core``). Its output streams to the task's log through the session.

Exit status 0 is success; 127 means ansible-core is not on the node; anything else is a terminal failure
carrying the output's tail. The worker only copies bytes: it never unpacks, templates or runs any of it.
"""

from __future__ import annotations

import json
import re
import shlex

from providers.drivers.base import TerminalError

from .base import REMOTE_ROOT, ActionRequest, Remote
from .helpers import archive_names, deep_merge, json_object_field, locate, safe_relative_path, task_document
from .shell import ScriptFailed, prepare, sync_resources

ANSIBLE_REQUIREMENT = "ansible-core==2.19.14"
"""What the bootstrap installs into ``~/.loom/ansible/venv`` on a node without the distribution's package."""
VENV = "venv"
"""Under ``~/.loom/ansible``: the node's own ansible-core, preferred over one on ``PATH``."""
NOT_INSTALLED = 127
TAIL_CHARS = 1500
FOLDERS = ("playbooks", "roles", "generated", "tmp", "local")
_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")
_NO_HOST = re.compile(r"skipping: no hosts matched|Could not match supplied host pattern")
_quote = shlex.quote


def inventory(request: ActionRequest) -> dict[str, object]:
    """Ansible's JSON inventory of the node alone: connection local, one group per service."""
    name = request.node.hostname or f"node{request.node.number}"
    host = {"ansible_connection": "local", "ansible_python_interpreter": "auto_silent"}
    groups = {group: {"hosts": {name: None}} for group in groups_of(request)}
    return {"all": {"hosts": {name: host}, "children": groups}}


def ansible_config(root: str, roles: list[str]) -> str:
    """``ansible.cfg`` for a run under ``root`` (``~/.loom/ansible`` on the node): every folder Ansible
    writes is there, so two nodes sharing a machine never share state."""
    roles_path = ":".join(f"{root}/roles/{name}" for name in roles)
    lines = [
        "[defaults]",
        "retry_files_enabled = False",
        "interpreter_python = auto_silent",
        f"remote_tmp = {root}/tmp",
        f"local_tmp = {root}/local",
        f"roles_path = {roles_path}",
        "nocows = True",
        "deprecation_warnings = False",
        "",
    ]
    return "\n".join(lines)


ENSURE_SCRIPT = """\
venv=$1 requirement=$2
if [ -x "$venv/bin/ansible-playbook" ]; then echo "ansible-core: present in $venv"; exit 0; fi
found=$(command -v ansible-playbook) && { echo "ansible-core: present ($found)"; exit 0; }
if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    install() { apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends ansible-core </dev/null; }
    install || { apt-get -o DPkg::Lock::Timeout=300 update -q </dev/null && install; }
    if command -v ansible-playbook >/dev/null; then echo "ansible-core: installed from the distribution"; exit 0; fi
fi
if python3 -m venv "$venv" && "$venv/bin/pip" install -q "$requirement"; then
    echo "ansible-core: installed into $venv"
    exit 0
fi
echo "cannot install ansible-core on the node: no apt-get package, and no python3 venv with pip" >&2
exit 1
"""
"""The bootstrap's script making sure ``ansible-playbook`` is on the node (as root): nothing when it is there
(the node's own venv, or on ``PATH``); else the distribution's ``ansible-core`` through apt-get; else a venv
under ``~/.loom/ansible`` with the pinned ``ANSIBLE_REQUIREMENT`` from PyPI."""


def ensure_script(home: str) -> str:
    """``ENSURE_SCRIPT`` as one command for the node, with the venv of the SSH user whose home is ``home``."""
    venv = f"{home}/{REMOTE_ROOT}/ansible/{VENV}"
    return f"sh -c {_quote(ENSURE_SCRIPT)} ensure {_quote(venv)} {_quote(ANSIBLE_REQUIREMENT)}"


def ensure_ansible(remote: Remote, home: str, *, timeout: float = 900.0) -> str:
    """Run ``ensure_script`` on the node (as root); its output, or a terminal error with the output's tail."""
    result = remote.run(ensure_script(home), sudo=remote.user != "root", timeout=timeout, check=False)
    if result.exit_status != 0:
        raise ScriptFailed(
            f"installing ansible-core on the node failed with exit status {result.exit_status}: "
            f"{result.output[-TAIL_CHARS:]}",
            output=result.output,
        )
    return result.output


def groups_of(request: ActionRequest) -> list[str]:
    return sorted({_GROUP_CHARS.sub("_", service) for service in request.node.services})


class AnsibleAutomator:
    def run(self, remote: Remote, request: ActionRequest) -> str:
        playbook = str(request.fields.get("playbook") or "").strip()
        role = str(request.fields.get("role") or "").strip()
        if not playbook and not role:
            raise TerminalError(f"{request.service}.{request.action}: the ansible automator needs a playbook or role")
        located = locate(request.resources, "playbooks", playbook, what="playbook") if playbook else None
        if not playbook:
            safe_relative_path(role, what="role")
        extra = json_object_field(request, "extra_vars")
        tags = ",".join(tag.strip() for tag in str(request.fields.get("tags") or "").split(",") if tag.strip())
        home, present = prepare(remote, "ansible", FOLDERS)
        base = f"{home}/{REMOTE_ROOT}"
        root = f"{base}/ansible"
        action = f"{request.service}.{request.action}"
        files: dict[str, tuple[bytes, int]] = {
            "generated/inventory.json": (json.dumps(inventory(request), indent=1).encode(), 0o600),
            "generated/ansible.cfg": (ansible_config(root, archive_names(request, "roles")).encode(), 0o600),
        }
        if located is not None:
            target = f"{root}/playbooks/{located[0]}/{located[1]}"
        else:
            target = f"{root}/generated/{action}.role.json"
            play = [{"hosts": "all", "roles": [{"role": role}]}]
            files[f"generated/{action}.role.json"] = (json.dumps(play).encode(), 0o600)
        uploaded = sync_resources(remote, request, root, present, files=files)
        task = task_document(request)
        task["config"] = deep_merge(task["config"], extra)
        variables = {"loom": task, "loom_home": home, **{k.lower(): v for k, v in request.environment.items()}}
        vars_file = f"{base}/tasks/{action}.vars.json"
        remote.upload(json.dumps(variables, sort_keys=True).encode(), vars_file, mode=0o600)
        arguments = f"-i {_quote(f'{root}/generated/inventory.json')} -e {_quote('@' + vars_file)}"
        arguments += f" --tags {_quote(tags)}" if tags else ""
        venv = f"{root}/{VENV}/bin/ansible-playbook"
        script = (
            f"if [ -x {_quote(venv)} ]; then run={_quote(venv)}; "
            "elif command -v ansible-playbook >/dev/null; then run=ansible-playbook; "
            f"else echo 'ansible-core is not installed on the node (apt-get install ansible-core, or "
            f"pip install {ANSIBLE_REQUIREMENT} into {root}/{VENV})' >&2; exit {NOT_INSTALLED}; fi; "
            f'cd {_quote(root)} && exec "$run" {arguments} {_quote(target)}'
        )
        environment = {"ANSIBLE_CONFIG": f"{root}/generated/ansible.cfg", "ANSIBLE_NOCOLOR": "1",
                       "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        result = remote.run(script, env=environment, sudo=remote.user != "root", check=False)
        shown = playbook or f"(role {role})"
        header = f"$ ansible-playbook {shown}" + (f" --tags {tags}" if tags else "")
        header += (f"  (uploaded: {', '.join(uploaded)})" if uploaded else "") + "\n"
        output = header + result.output
        if result.exit_status == 0:
            if _NO_HOST.search(result.output):
                raise ScriptFailed(
                    f"{playbook or role} matched no host: its plays must target 'all', 'localhost' or a group "
                    f"of the node ({', '.join(groups_of(request))})",
                    output=output,
                )
            return output
        reason = " (ansible-core is not installed on the node)" if result.exit_status == NOT_INSTALLED else ""
        message = f"ansible-playbook {playbook or role} exited with status {result.exit_status}{reason}: "
        raise ScriptFailed(message + result.output[-TAIL_CHARS:], output=output)
