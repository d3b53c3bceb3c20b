"""The ``chef-solo`` automator: ``chef-solo`` on the node with the service's JSON attributes deep-merged into
the cluster config, as the original did.

Per action, over one SSH session (Chef or Cinc must be on the node; it is not packaged by Debian):

1. The live ``cookbooks`` and ``data_bags`` archives and ``roles`` files are brought up to date under
   ``~/.loom/chef`` the way the shell automator syncs its resources: ``cookbooks/<name>/...``,
   ``data_bags/<name>/...``, ``roles/<file>``. An archive holds one or more cookbook (or data bag) folders,
   as the original's did; every ``cookbooks/<name>`` folder is on the cookbook path.
2. ``solo.rb`` points Chef at those folders and keeps its cache and backups under ``~/.loom/chef`` too.
3. The node JSON (0600, since the config may hold secrets): the cluster config with the action's
   ``json_attributes`` deep-merged into it (objects merge key by key, the service's values win: the
   original's 0.9.9 behaviour), then ``loom``, the task (cluster, service, action, fields, config, node,
   nodes; the original's ``coopr`` attributes), and ``run_list``, the ``run_list`` field split at commas.
4. ``chef-solo --no-color -c solo.rb -j <node JSON>`` runs with sudo when the SSH user is not root, from a
   ``PATH`` that also has ``~/.loom/bin``, ``/opt/chef/bin`` and ``/opt/cinc/bin``.

Exit status 0 is success, anything else a terminal failure carrying the end of the output.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from typing import Any

from providers.drivers.base import TerminalError

from .base import REMOTE_ROOT, ActionRequest, Remote
from .helpers import archive_names, deep_merge, json_object_field, task_document
from .shell import ScriptFailed, prepare, sync_resources

NOT_INSTALLED = 127
TAIL_CHARS = 1500
RESERVED = ("loom", "run_list")
_RUN_LIST_ITEM = re.compile(r"^((recipe|role)\[[A-Za-z0-9_.:@-]+\]|[A-Za-z0-9_.:@-]+)$")
_quote = shlex.quote


def run_list(request: ActionRequest) -> list[str]:
    """The ``run_list`` field as a list: comma-separated ``recipe[...]``, ``role[...]`` or bare recipe names,
    whitespace ignored (as the original stripped it). A terminal error names an item that is none of these."""
    items = [item for item in re.sub(r"\s+", "", str(request.fields.get("run_list") or "")).split(",") if item]
    if not items:
        raise TerminalError(f"{request.service}.{request.action}: the chef-solo automator needs a run_list")
    for item in items:
        if not _RUN_LIST_ITEM.fullmatch(item):
            raise TerminalError(
                f"{request.service}.{request.action}: {item!r} in field run_list is not recipe[...], role[...] "
                "or a recipe name"
            )
    return items


def node_attributes(request: ActionRequest) -> dict[str, Any]:
    """What ``chef-solo -j`` gets: the cluster config with ``json_attributes`` deep-merged into it, ``loom`` (the
    task) and ``run_list``. ``json_attributes`` may not set those two: they would be silently replaced."""
    attributes = json_object_field(request, "json_attributes")
    taken = [key for key in RESERVED if key in attributes]
    if taken:
        raise TerminalError(
            f"{request.service}.{request.action}: field json_attributes may not set {', '.join(taken)} "
            "(Loom sets loom to the task and run_list from the run_list field)"
        )
    config = request.config if isinstance(request.config, dict) else {}
    merged: dict[str, Any] = deep_merge(config, attributes)
    for key in RESERVED:
        merged.pop(key, None)  # from the cluster config: Loom's own values follow
    return {**merged, "loom": task_document(request), "run_list": run_list(request)}


def solo_rb(root: str, cookbooks: Sequence[str], data_bags: Sequence[str]) -> str:
    """``solo.rb`` for folders under ``root`` (Ruby string literals are written as JSON strings: the same
    escapes for the characters a path may hold)."""

    def paths(names: Sequence[str], kind: str) -> str:
        return "[" + ", ".join(json.dumps(f"{root}/{kind}/{name}") for name in names) + "]"

    lines = [
        f"cookbook_path {paths(cookbooks, 'cookbooks')}",
        f"role_path {json.dumps(f'{root}/roles')}",
        f"file_cache_path {json.dumps(f'{root}/cache')}",
        f"file_backup_path {json.dumps(f'{root}/backup')}",
        "log_level :info",
    ]
    if data_bags:
        # One folder is a string: older chef-solo releases take no list here.
        bags = json.dumps(f"{root}/data_bags/{data_bags[0]}") if len(data_bags) == 1 else paths(data_bags, "data_bags")
        lines.append(f"data_bag_path {bags}")
    return "\n".join(lines) + "\n"


class ChefSoloAutomator:
    def run(self, remote: Remote, request: ActionRequest) -> str:
        attributes = node_attributes(request)
        folders = ("cookbooks", "data_bags", "roles", "cache", "backup")
        home, present = prepare(remote, "chef", folders)
        base = f"{home}/{REMOTE_ROOT}"
        root = f"{base}/chef"
        solo = solo_rb(root, archive_names(request, "cookbooks"), archive_names(request, "data_bags"))
        uploaded = sync_resources(remote, request, root, present, files={"solo.rb": (solo.encode(), 0o600)})
        node_json = f"{base}/tasks/{request.service}.{request.action}.chef.json"
        remote.upload(json.dumps(attributes, indent=1, sort_keys=True).encode(), node_json, mode=0o600)
        script = (
            f'PATH="{base}/bin:$PATH:/opt/chef/bin:/opt/cinc/bin"; '
            f"command -v chef-solo >/dev/null || {{ echo 'chef-solo is not installed on the node "
            f"(install Chef Infra Client or Cinc)' >&2; exit {NOT_INSTALLED}; }}; "
            f"cd {_quote(root)} && exec chef-solo --no-color -c {_quote(f'{root}/solo.rb')} -j {_quote(node_json)}"
        )
        result = remote.run(script, sudo=remote.user != "root", check=False)
        items = ",".join(attributes["run_list"])
        header = f"$ chef-solo {items}" + (f"  (uploaded: {', '.join(uploaded)})" if uploaded else "") + "\n"
        if result.exit_status == 0:
            return header + result.output
        reason = " (chef-solo is not installed on the node)" if result.exit_status == NOT_INSTALLED else ""
        message = f"chef-solo {items} exited with status {result.exit_status}{reason}: "
        raise ScriptFailed(message + result.output[-TAIL_CHARS:], output=header + result.output)
