"""The ``puppet`` automator: ``puppet apply`` on the node, with the task as hiera data and facts.

Per action, over one SSH session (Puppet itself must be on the node: ``puppet-agent`` from Debian):

1. The live ``manifests`` and ``modules`` archives are brought up to date under ``~/.loom/puppet`` the way
   the shell automator syncs its resources (a manifest of name, version and checksum; only what changed is
   uploaded): ``manifests/<name>/...``, ``modules/<name>/...``. Every ``modules/<name>`` folder is on the
   module path, so an archive holds one or more module folders.
2. The task (``ActionRequest.task_json``) is written to ``~/.loom/tasks/<service>.<action>.json`` (0600) and
   is the bottom layer of a hiera 5 hierarchy made for the action; the ``hiera_data`` field, when given, is
   a layer above it. Manifests look the task up with dotted keys: ``lookup('config.web.port')``,
   ``lookup('node.hostname')``, ``lookup('nodes')``. The shell automator's variables are facts too
   (``$facts['loom_bind_v4']``, ``loom_hostname``, ``loom_action``, ...), with ``loom_home`` (the SSH user's
   home) and ``loom_task`` (the task file).
3. ``puppet apply --detailed-exitcodes`` runs the ``manifest`` field's file (inside a manifests archive,
   ``web.pp`` or ``site/web.pp``), or a manifest that includes the ``classes`` field's classes, with
   sudo when the SSH user is not root. Every folder Puppet writes (vardir, confdir, codedir, ssldir,
   logdir, rundir, publicdir) is under ``~/.loom/puppet``, so nodes sharing a machine never share state.

Exit status 0 (nothing changed) and 2 (changes applied) are success; anything else is a terminal failure
carrying the end of the output (4 and 6: some resources failed; 1: the catalog did not compile).
"""

from __future__ import annotations

import json
import re
import shlex

from providers.drivers.base import TerminalError

from .base import REMOTE_ROOT, ActionRequest, Remote
from .helpers import archive_names, json_object_field, locate
from .shell import ScriptFailed, prepare, sync_resources

SUCCESS = (0, 2)
NOT_INSTALLED = 127
TAIL_CHARS = 1500
PUPPET_DIRS = {"vardir": "var", "confdir": "etc", "codedir": "code", "ssldir": "ssl", "logdir": "log",
               "rundir": "var/run", "publicdir": "public"}  # fmt: skip
"""Puppet's settings for where it writes → folders under ``~/.loom/puppet``."""
_CLASS = re.compile(r"^(::)?[a-z][a-z0-9_]*(::[a-z][a-z0-9_]*)*$")
_quote = shlex.quote


def class_names(request: ActionRequest) -> list[str]:
    """The ``classes`` field as a list of class names; a terminal error naming a name that is not one."""
    names = [name.strip() for name in str(request.fields.get("classes") or "").split(",") if name.strip()]
    for name in names:
        if not _CLASS.fullmatch(name):
            raise TerminalError(
                f"{request.service}.{request.action}: {name!r} in field classes is not a Puppet class name "
                "(lower-case words of letters, digits and '_', joined by '::')"
            )
    return names


def hiera_config(layers: list[tuple[str, str]]) -> str:
    """A hiera 5 ``hiera.yaml`` over JSON data files, the first layer winning (JSON is YAML, so it is valid)."""
    hierarchy = [{"name": name, "data_hash": "json_data", "path": path} for name, path in layers]
    return json.dumps({"version": 5, "hierarchy": hierarchy}, indent=1) + "\n"


class PuppetAutomator:
    def run(self, remote: Remote, request: ActionRequest) -> str:
        manifest = str(request.fields.get("manifest") or "").strip()
        classes = class_names(request)
        if not manifest and not classes:
            raise TerminalError(f"{request.service}.{request.action}: the puppet automator needs a manifest or classes")
        hiera_data = json_object_field(request, "hiera_data")
        located = locate(request.resources, "manifests", manifest, what="manifest") if manifest else None
        home, present = prepare(remote, "puppet", ("manifests", "modules", "generated", *PUPPET_DIRS.values()))
        base = f"{home}/{REMOTE_ROOT}"
        root = f"{base}/puppet"
        action = f"{request.service}.{request.action}"
        task_file = f"{base}/tasks/{action}.json"
        # The action's own files, kept with the resources: uploaded again only when they change.
        layers = [("task", task_file)]
        files: dict[str, tuple[bytes, int]] = {}
        if hiera_data:
            files[f"generated/{action}.data.json"] = (json.dumps(hiera_data).encode(), 0o600)
            layers.insert(0, ("hiera_data field", f"{root}/generated/{action}.data.json"))
        files[f"generated/{action}.hiera.yaml"] = (hiera_config(layers).encode(), 0o600)
        if located is not None:
            target = f"{root}/manifests/{located[0]}/{located[1]}"
        else:
            target = f"{root}/generated/{action}.pp"
            files[f"generated/{action}.pp"] = ("".join(f"include {name}\n" for name in classes).encode(), 0o600)
        uploaded = sync_resources(remote, request, root, present, files=files)
        remote.upload(request.task_json().encode(), task_file, mode=0o600)
        module_path = ":".join(f"{root}/modules/{name}" for name in archive_names(request, "modules"))
        options = " ".join(f"--{setting} {_quote(f'{root}/{folder}')}" for setting, folder in PUPPET_DIRS.items())
        options += f" --hiera_config {_quote(f'{root}/generated/{action}.hiera.yaml')}"
        options += f" --modulepath {_quote(module_path)}" if module_path else ""
        facts = {f"FACTER_{key.lower()}": value for key, value in request.environment.items()}
        facts |= {"FACTER_loom_home": home, "FACTER_loom_task": task_file}
        script = (
            'PATH="$PATH:/opt/puppetlabs/bin"; '
            f"command -v puppet >/dev/null || {{ echo 'puppet is not installed on the node "
            f"(apt-get install puppet-agent)' >&2; exit {NOT_INSTALLED}; }}; "
            f"cd {_quote(root)} && exec puppet apply --detailed-exitcodes --color=false {options} {_quote(target)}"
        )
        result = remote.run(script, env=facts, sudo=remote.user != "root", check=False)
        shown = manifest or f"include {', '.join(classes)}"
        header = f"$ puppet apply {shown}" + (f"  (uploaded: {', '.join(uploaded)})" if uploaded else "") + "\n"
        if result.exit_status in SUCCESS:
            changed = "changes applied" if result.exit_status == 2 else "nothing to change"
            return f"{header}{result.output}puppet apply: {changed}\n"
        reason = {
            NOT_INSTALLED: "puppet is not installed on the node",
            1: "the catalog did not compile",
            4: "some resources failed",
            6: "some resources failed",
        }.get(result.exit_status, "failed")
        message = f"puppet apply {shown} exited with status {result.exit_status} ({reason}): "
        raise ScriptFailed(message + result.output[-TAIL_CHARS:], output=header + result.output)
