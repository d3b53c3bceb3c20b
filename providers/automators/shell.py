"""The ``shell`` automator: run the action's script on the node, with the task as JSON beside it.

Per action, over one SSH session:

1. The plugin's live resources are brought up to date under ``~/.loom/shell``: ``scripts`` as files
   (mode 0755), ``archives`` unpacked into a folder named like the resource. A manifest of what is there
   (name, version, checksum) means an unchanged resource is not uploaded again.
2. The task (cluster, service, action, fields, expanded config, this node and its peers) is written to
   ``~/.loom/tasks/<service>.<action>.json`` (mode 0600: the config may hold secrets), and ``loom-config``,
   a small helper, to ``~/.loom/bin``.
3. ``<script> <args>`` runs from the scripts folder (``sudo -n`` when the SSH user is not root) with
   ``LOOM_TASK`` and the ``LOOM_*`` variables of ``ActionRequest.environment`` set.

A script's exit status 0 is success, 75 (EX_TEMPFAIL) a transient failure the engine retries with backoff,
anything else a terminal failure whose message carries the end of the output.
"""

from __future__ import annotations

import hashlib
import shlex
from importlib import resources as package_files

from providers.drivers.base import TerminalError, TransientError

from .base import EX_TEMPFAIL, ActionRequest, Remote

HELPER = package_files.files(__package__).joinpath("loom_config.py").read_bytes()
MANIFEST = "manifest"


_quote = shlex.quote


def remote_home(remote: Remote) -> str:
    """The SSH user's home, as an absolute path: SFTP does not expand ``~``, and under ``sudo`` ``$HOME``
    may be root's."""
    home = remote.run('printf %s "$HOME"', check=False).output.strip()
    if not home.startswith("/"):
        raise TerminalError(f"cannot tell the home folder of {remote.user} on the node (got {home!r})")
    return home


def sync_resources(remote: Remote, request: ActionRequest, root: str) -> list[str]:
    """Upload what changed since the last action on this node; returns the names uploaded."""
    listed = remote.run(f"cat {_quote(root)}/{MANIFEST} 2>/dev/null || true", check=False).output
    present = set(listed.split())
    wanted: list[str] = []
    uploaded: list[str] = []
    for resource in request.resources:
        digest = hashlib.sha256(resource.content).hexdigest()[:16]
        entry = f"{resource.resource_type}/{resource.name}@{resource.version}:{digest}"
        wanted.append(entry)
        if entry in present:
            continue
        if resource.format == "archive":
            package = f"{root}/{resource.resource_type}/.{resource.name}.pkg"
            target = f"{root}/{resource.resource_type}/{resource.name}"
            remote.upload(resource.content, package, mode=0o600)
            unpack = (
                f"rm -rf {_quote(target)} && mkdir -p {_quote(target)} && "
                f"(tar -xf {_quote(package)} -C {_quote(target)} 2>/dev/null || "
                f"python3 -m zipfile -e {_quote(package)} {_quote(target)}) && rm -f {_quote(package)}"
            )
            _checked(remote, unpack, f"unpacking {resource.name}")
        else:
            mode = int(resource.permissions or "0644", 8)
            remote.upload(resource.content, f"{root}/{resource.resource_type}/{resource.name}", mode=mode)
        uploaded.append(resource.name)
    if uploaded or set(wanted) != present:
        remote.upload(("\n".join(wanted) + "\n").encode(), f"{root}/{MANIFEST}", mode=0o600)
    return uploaded


def _checked(remote: Remote, command: str, what: str) -> str:
    result = remote.run(command, check=False)
    if result.exit_status != 0:
        raise TerminalError(f"{what} failed with exit status {result.exit_status}: {result.output[-500:]}")
    return result.output


class ShellAutomator:
    def run(self, remote: Remote, request: ActionRequest) -> str:
        script = str(request.fields.get("script") or "").strip()
        if not script:
            raise TerminalError(f"{request.service}.{request.action}: the shell automator needs a script field")
        if script.startswith("/") or ".." in script.split("/"):
            raise TerminalError(f"script {script!r} must be a path inside the service's scripts or archives")
        home = remote_home(remote)
        base = f"{home}/.loom"
        root = f"{base}/shell"
        _checked(remote, f"mkdir -p {_quote(root)}/scripts {_quote(root)}/archives {_quote(base)}/bin "
                         f"{_quote(base)}/tasks && chmod 700 {_quote(base)}", "preparing ~/.loom")  # fmt: skip
        uploaded = sync_resources(remote, request, root)
        remote.upload(HELPER, f"{base}/bin/loom-config", mode=0o755)
        task_file = f"{base}/tasks/{request.service}.{request.action}.json"
        remote.upload(request.task_json().encode(), task_file, mode=0o600)
        variables = {**request.environment, "LOOM_TASK": task_file}
        exports = " ".join(f"{key}={_quote(value)}" for key, value in sorted(variables.items()))
        args = str(request.fields.get("args") or "")
        located = (
            f"if [ -e {_quote(root)}/scripts/{_quote(script)} ]; then cd {_quote(root)}/scripts; "
            f"elif [ -e {_quote(root)}/archives/{_quote(script)} ]; then cd {_quote(root)}/archives; "
            f"else echo 'script {script} is in no live scripts or archives resource' >&2; exit 127; fi"
        )
        command = f'{located}; export {exports} PATH="{base}/bin:$PATH"; ./{_quote(script)} {args}'
        result = remote.run(f"sh -c {shlex.quote(command)}", sudo=remote.user != "root", check=False)
        header = f"$ {script} {args}".rstrip() + (f"  (uploaded: {', '.join(uploaded)})" if uploaded else "") + "\n"
        output = header + result.output
        if result.exit_status == 0:
            return output
        tail = result.output[-800:]
        message = f"{script} exited with status {result.exit_status}: {tail}"
        if result.exit_status == EX_TEMPFAIL:
            raise TransientError(message)
        raise TerminalError(message)
