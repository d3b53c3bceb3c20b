"""The ``shell`` automator: run the action's script on the node, with the task as JSON beside it.

Per action, over one SSH session, in three steps (each a round trip or two; on a cloud each costs latency):

1. ``prepare``: one command makes ``~/.loom`` (0700) and its folders and prints the SSH user's home and the
   manifest of what earlier actions left under ``~/.loom/shell`` (path, version, checksum per line).
2. Uploads (SFTP, each atomic): what changed since then among the plugin's live resources (``scripts`` as
   files with their mode, ``archives`` unpacked into a folder named like the resource) and ``loom-config``
   (a small helper, ``~/.loom/shell/bin``), the manifest when anything did, and the task (cluster,
   service, action, fields, expanded config, this node and its peers) as
   ``~/.loom/tasks/<service>.<action>.json`` (mode 0600: the config may hold secrets). An unchanged
   resource is never uploaded again, so a node's later actions upload only their task.
3. ``<script> <args>`` runs from its folder (``sudo -n`` when the SSH user is not root) with ``LOOM_TASK``
   and the ``LOOM_*`` variables of ``ActionRequest.environment`` set, ``loom-config`` on ``PATH``. ``args``
   is a shell word list, as in the original (``install``, ``--port 80``).

A script's exit status 0 is success, 75 (EX_TEMPFAIL) a transient failure the engine retries with backoff,
anything else a terminal failure. A failure carries the script's whole output (``ScriptFailed.output``, kept
in the attempt's log by the runner) and names the script, its status and the last lines in its message.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from importlib import resources as package_files

from providers.drivers.base import TerminalError, TransientError

from .base import EX_TEMPFAIL, REMOTE_ROOT, ActionRequest, Remote

HELPER = package_files.files(__package__).joinpath("loom_config.py").read_bytes()
HELPER_PATH = "bin/loom-config"
MANIFEST = "manifest"
TAIL_CHARS = 800
"""How much of a failed script's output its error message quotes (the attempt's log has all of it)."""
_HOME_MARK = "LOOM-HOME:"

_quote = shlex.quote


class ScriptFailed(TerminalError):
    """The action's script exited with a status other than 0 and 75; ``output`` is all it printed."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output


class ScriptFailedTransient(TransientError):
    """The action's script exited with 75 (EX_TEMPFAIL): try again later; ``output`` is all it printed."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output


def remote_home(remote: Remote) -> str:
    """The SSH user's home, as an absolute path: SFTP does not expand ``~``, and under ``sudo`` ``$HOME``
    may be root's."""
    return _home_of(remote.run('printf %s "$HOME"', check=False).output.strip(), remote)


def _home_of(text: str, remote: Remote) -> str:
    if not text.startswith("/"):
        raise TerminalError(f"cannot tell the home folder of {remote.user} on the node (got {text[:80]!r})")
    return text


def _checked(remote: Remote, command: str, what: str) -> str:
    result = remote.run(command, check=False)
    if result.exit_status != 0:
        raise TerminalError(f"{what} failed with exit status {result.exit_status}: {result.output[-500:]}")
    return result.output


def prepare(remote: Remote, plugin: str, folders: Sequence[str]) -> tuple[str, set[str]]:
    """In one round trip: make ``~/.loom`` (0700), ``~/.loom/tasks`` and ``~/.loom/<plugin>/<folder>`` for
    each of ``folders``, and read the plugin's manifest. Returns the SSH user's home and the manifest's
    entries (what ``sync_resources`` left there before), for ``sync_resources(..., present=...)``."""
    base = f'"$HOME"/{REMOTE_ROOT}'
    made = " ".join([f"{base}/tasks", *(f"{base}/{_quote(plugin)}/{_quote(folder)}" for folder in folders)])
    command = (
        f"mkdir -p {made} && chmod 700 {base} && printf '%s%s\\n' {_HOME_MARK} \"$HOME\" && "
        f"{{ cat {base}/{_quote(plugin)}/{MANIFEST} 2>/dev/null || true; }}"
    )
    result = remote.run(command, check=False)
    lines = result.output.splitlines()
    # The mark, not the first line: a login shell may print something first (a noisy .bashrc).
    marks = [number for number, line in enumerate(lines) if line.startswith(_HOME_MARK)]
    if result.exit_status != 0 or not marks:
        raise TerminalError(
            f"preparing ~/{REMOTE_ROOT} for {remote.user} failed with exit status {result.exit_status}: "
            f"{result.output[-500:]}"
        )
    home = _home_of(lines[marks[-1]].removeprefix(_HOME_MARK), remote)
    return home, set(" ".join(lines[marks[-1] + 1 :]).split())


def sync_resources(
    remote: Remote,
    request: ActionRequest,
    root: str,
    present: set[str] | None = None,
    *,
    files: Mapping[str, tuple[bytes, int]] | None = None,
) -> list[str]:
    """Bring the plugin's live resources under ``root`` (``<home>/.loom/<plugin>``) up to date; returns the
    names uploaded. ``present`` is the manifest as ``prepare`` read it (read here when None); ``files``
    are more files to keep there the same way, by path under ``root`` → (content, mode)."""
    if present is None:
        present = set(remote.run(f"cat {_quote(root)}/{MANIFEST} 2>/dev/null || true", check=False).output.split())
    wanted: list[str] = []
    uploaded: list[str] = []
    for path, (content, mode) in sorted((files or {}).items()):
        entry = f"{path}:{hashlib.sha256(content).hexdigest()[:16]}"
        wanted.append(entry)
        if entry not in present:
            remote.upload(content, f"{root}/{path}", mode=mode)
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
    if set(wanted) != present:
        remote.upload(("\n".join(wanted) + "\n").encode(), f"{root}/{MANIFEST}", mode=0o600)
    return uploaded


class ShellAutomator:
    def run(self, remote: Remote, request: ActionRequest) -> str:
        script = str(request.fields.get("script") or "").strip()
        if not script:
            raise TerminalError(f"{request.service}.{request.action}: the shell automator needs a script field")
        if script.startswith("/") or ".." in script.split("/"):
            raise TerminalError(f"script {script!r} must be a path inside the service's scripts or archives")
        home, present = prepare(remote, "shell", ("scripts", "archives", "bin"))
        base = f"{home}/{REMOTE_ROOT}"
        root = f"{base}/shell"
        uploaded = sync_resources(remote, request, root, present, files={HELPER_PATH: (HELPER, 0o755)})
        task_file = f"{base}/tasks/{request.service}.{request.action}.json"
        remote.upload(request.task_json().encode(), task_file, mode=0o600)
        variables = {**request.environment, "LOOM_TASK": task_file}
        exports = " ".join(f"{key}={_quote(value)}" for key, value in sorted(variables.items()))
        args = str(request.fields.get("args") or "")
        located = (
            f"if [ -e {_quote(root)}/scripts/{_quote(script)} ]; then cd {_quote(root)}/scripts; "
            f"elif [ -e {_quote(root)}/archives/{_quote(script)} ]; then cd {_quote(root)}/archives; "
            f"else echo {_quote(f'script {script} is in no live scripts or archives resource')} >&2; exit 127; fi"
        )
        command = f'{located}; export {exports} PATH={_quote(root)}/bin:"$PATH"; ./{_quote(script)} {args}'
        result = remote.run(command, sudo=remote.user != "root", check=False)
        shown = f"{script} {args}".rstrip()
        header = f"$ {shown}" + (f"  (uploaded: {', '.join(uploaded)})" if uploaded else "") + "\n"
        output = header + result.output
        if result.exit_status == 0:
            return output
        ended = f"exited with status {result.exit_status}" if result.exit_status >= 0 else "was killed"
        message = f"{shown} {ended}; its output ends with:\n{result.output[-TAIL_CHARS:]}"
        if result.exit_status == EX_TEMPFAIL:
            raise ScriptFailedTransient(message, output=output)
        raise ScriptFailed(message, output=output)
