"""The ``ansible`` automator: ``ansible-playbook`` on the worker, against the one node of the task.

Push from the worker, nothing installed on the node but Python 3 (which Ansible needs there). Per action:

1. The plugin's live ``playbooks`` and ``roles`` archives are unpacked into a private temporary folder
   (0700) on the worker: ``playbooks/<name>/...``, ``roles/<name>/...``; every ``roles/<name>`` folder is
   on the roles path. The ``playbook`` field names a file inside a playbooks archive (``web.yml``, or
   ``site/web.yml`` with the archive's name); without one, the ``role`` field is applied by a one-play
   playbook written for it.
2. An inventory of that one node: its address and port, the SSH user, the private key of its credentials
   written to a 0600 file, and ``become`` through sudo when the user is not root. The node's host key, as
   pinned by Loom (the session given to the automator verified it), is the only entry of a known_hosts
   file, and OpenSSH runs with ``StrictHostKeyChecking=yes``: Ansible never trusts a key Loom did not pin.
   The host is in the group ``all`` and in one group per service of the node (``-`` becomes ``_``).
3. Extra vars (a 0600 JSON file, since the config may hold secrets): ``loom``, the task as the shell
   automator's ``LOOM_TASK`` has it (cluster, service, action, fields, config, node, nodes; the ``extra_vars``
   field deep-merged over ``config``), plus ``loom_home`` (the SSH user's home on the node) and the
   ``loom_*`` counterparts of the shell automator's variables (``loom_bind_v4``, ``loom_hostname``, ...).
   Everything sits under ``loom*`` names: ``action`` and friends are reserved words in Ansible.
4. ``ansible-playbook`` runs with a generated ``ansible.cfg`` and a clean environment (nothing of the
   worker's, its secrets included, reaches it); its output is streamed, redacted, to the task's log.

Exit status 0 is success. An unreachable node (status 4) is transient unless the SSH layer refused the
host key or the credentials, which retrying cannot fix; any other failure is terminal, with the output's
tail. The temporary folder, key included, is removed when the action ends, whatever happened. Each Ansible
task opens its own SSH connection (pipelining keeps it to one per task): a ControlMaster connection would
outlive the action, and its socket path can pass the Unix socket length limit in a deep temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from providers.drivers.base import TerminalError, TransientError
from providers.secrets import redact

from .base import ActionRequest, Remote
from .helpers import archive_names, deep_merge, json_object_field, locate, safe_relative_path, task_document, unpack
from .shell import ScriptFailed, ScriptFailedTransient, remote_home

PLAYBOOK_COMMAND = "ansible-playbook"
ANSIBLE_REQUIREMENT = "ansible-core==2.19.14"
DEFAULT_TIMEOUT_S = 1800.0
TAIL_CHARS = 1500
UNREACHABLE = 4
SSH_CONNECT_TIMEOUT_S = 10
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")
# What OpenSSH (through Ansible) prints when the node is not the one Loom pinned, or refuses the key:
# retrying cannot change either, so these are terminal even though Ansible calls the host "unreachable".
_REFUSED = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "Permission denied (publickey")


class PushRemote(Remote, Protocol):
    """What a push automator needs of the session besides running commands: where the node is and how to
    log in there with another SSH client (``providers.ssh.Session`` has all of it)."""

    host: str
    port: int
    host_key: str | None
    command_timeout: float

    @property
    def private_key(self) -> str: ...


def ansible_playbook() -> str:
    """The ``ansible-playbook`` of this worker's Python environment (ansible-core is a requirement of
    Loom's), else the first on ``PATH``; a terminal error saying what to install when there is none."""
    beside = Path(sys.executable).parent / PLAYBOOK_COMMAND
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(PLAYBOOK_COMMAND)
    if found:
        return found
    raise TerminalError(f"ansible-playbook is not installed on this worker: pip install {ANSIBLE_REQUIREMENT}")


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    """The known_hosts entry pinning ``host_key`` (``type base64``) for ``host:port``."""
    key_type, _, rest = host_key.strip().partition(" ")
    blob = rest.split()[0] if rest.split() else ""
    if not key_type or not blob:
        raise TerminalError(f"the node's pinned host key {host_key[:40]!r} is not an OpenSSH public key line")
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key_type} {blob}\n"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a private file: created with ``mode`` from the start, so a key is never readable by others."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


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
        push = _push_remote(remote, request)
        executable = ansible_playbook()
        home = remote_home(remote)
        with tempfile.TemporaryDirectory(prefix="loom-ansible-") as folder:
            work = Path(folder)
            target = self._prepare(work, push, request, located=located, role=role, extra=extra, home=home)
            command = [executable, "-i", str(work / "inventory.json"), "-e", f"@{work / 'vars.json'}"]
            command += ["--tags", tags] if tags else []
            command.append(str(target))
            status, output = _stream(command, work, request, timeout=push.command_timeout or DEFAULT_TIMEOUT_S)
        header = f"$ ansible-playbook {playbook or f'(role {role})'}" + (f" --tags {tags}" if tags else "") + "\n"
        if status == 0:
            if re.search(r"skipping: no hosts matched|Could not match supplied host pattern", output):
                raise ScriptFailed(
                    f"{playbook or role} matched no host: its plays must target 'all' or a group of the node "
                    f"({', '.join(_groups(request))})",
                    output=header + output,
                )
            return header + output
        message = f"ansible-playbook {playbook or role} exited with status {status}: {output[-TAIL_CHARS:]}"
        if status == UNREACHABLE and not any(sign in output for sign in _REFUSED):
            raise ScriptFailedTransient(message, output=header + output)
        raise ScriptFailed(message, output=header + output)

    def _prepare(
        self,
        work: Path,
        remote: PushRemote,
        request: ActionRequest,
        *,
        located: tuple[str, str] | None,
        role: str,
        extra: dict[str, Any],
        home: str,
    ) -> Path:
        """Write everything ``ansible-playbook`` reads into ``work``; returns the playbook to run (``located``
        in the playbooks archives, or one written to apply ``role``)."""
        for resource in request.resources:
            if resource.format == "archive" and resource.resource_type in ("playbooks", "roles"):
                unpack(resource, work / resource.resource_type / resource.name)
        if located is not None:
            target = work / "playbooks" / located[0] / located[1]
        else:
            target = _write(work / "role.json", json.dumps([{"hosts": "all", "roles": [{"role": role}]}]))
        (work / "local").mkdir()
        key = _write(work / "id_node", remote.private_key.rstrip("\n") + "\n")  # OpenSSH wants the final newline
        known_hosts = _write(work / "known_hosts", known_hosts_line(remote.host, remote.port, remote.host_key or ""))
        host = {
            "ansible_host": remote.host,
            "ansible_port": remote.port,
            "ansible_user": remote.user,
            "ansible_ssh_private_key_file": str(key),
            "ansible_python_interpreter": "auto_silent",
        }
        if remote.user != "root":
            host |= {"ansible_become": True, "ansible_become_method": "sudo"}
        name = request.node.hostname or f"node{request.node.number}"
        groups = {group: {"hosts": {name: None}} for group in _groups(request)}
        inventory = {"all": {"hosts": {name: host}, "children": groups}}
        _write(work / "inventory.json", json.dumps(inventory, indent=1))
        task = task_document(request)
        task["config"] = deep_merge(task["config"], extra)
        variables = {"loom": task, "loom_home": home, **{k.lower(): v for k, v in request.environment.items()}}
        _write(work / "vars.json", json.dumps(variables, sort_keys=True))
        ssh_args = " ".join(
            [
                "-o ControlMaster=no -o ControlPath=none",
                f"-o UserKnownHostsFile={shlex.quote(str(known_hosts))} -o GlobalKnownHostsFile=/dev/null",
                "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes",
                f"-o ConnectTimeout={SSH_CONNECT_TIMEOUT_S} -o ServerAliveInterval=30",
            ]
        )
        roles_path = ":".join(str(work / "roles" / archive) for archive in archive_names(request, "roles"))
        config = [
            "[defaults]",
            "host_key_checking = True",
            "retry_files_enabled = False",
            "interpreter_python = auto_silent",
            "remote_tmp = ~/.loom/ansible/tmp",
            f"local_tmp = {work / 'local'}",
            f"roles_path = {roles_path}",
            "nocows = True",
            "deprecation_warnings = False",
            "[ssh_connection]",
            "pipelining = True",
            f"ssh_args = {ssh_args}",
            "",
        ]
        _write(work / "ansible.cfg", "\n".join(config))
        return target


def _push_remote(remote: Remote, request: ActionRequest) -> PushRemote:
    """``remote`` as a ``PushRemote``, or a terminal error: the session must say where the node is and what
    its pinned host key is (a session that has connected knows both)."""
    missing = [name for name in ("host", "port", "host_key", "private_key") if not getattr(remote, name, None)]
    if missing:
        raise TerminalError(
            f"{request.service}.{request.action}: the ansible automator needs the node's address, port, host key "
            f"and credentials from its SSH session; missing: {', '.join(missing)}"
        )
    return remote  # type: ignore[return-value]


def _groups(request: ActionRequest) -> list[str]:
    return sorted({_GROUP_CHARS.sub("_", service) for service in request.node.services})


def _stream(command: list[str], work: Path, request: ActionRequest, *, timeout: float) -> tuple[int, str]:
    """Run ``command`` in ``work`` with a clean environment, handing each output line (redacted) to the
    request's log as it comes; kill it (and the ssh processes it started) after ``timeout`` seconds."""
    environment = {
        "PATH": f"{Path(sys.executable).parent}:{_PATH}",
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        command,
        cwd=work,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    lines: deque[str] = deque(maxlen=5000)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = redact(raw.rstrip("\n"))
            lines.append(line)
            request.log(line)
        status = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            kill()
            process.wait()
    output = "\n".join(lines) + "\n"
    if expired.is_set():
        raise TransientError(f"ansible-playbook did not finish within {timeout:g} s: {output[-TAIL_CHARS:]}")
    return status, output
