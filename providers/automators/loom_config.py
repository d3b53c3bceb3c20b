#!/usr/bin/env python3
"""loom-config: read the task Loom wrote for this action (``$LOOM_TASK``), for shell scripts on a node.

    loom-config KEY [DEFAULT]      a cluster config value; dots walk into objects (web.port)
    loom-config --field KEY [DEF]  a field of the action (script, args, ...)
    loom-config --hosts            "address hostname" per node of the cluster (for /etc/hosts)
    loom-config --nodes SERVICE    bind addresses of the nodes hosting SERVICE, space-separated
    loom-config --json             the whole task

Strings print as they are, anything else as JSON. A missing key without a default exits 1 naming it.
Uploaded to every node by the shell automator; needs only python3 from the node's base system.
"""

import json
import os
import sys


def lookup(document, key):
    value = document
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def show(value):
    print(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def main(argv):
    with open(os.environ["LOOM_TASK"]) as handle:
        task = json.load(handle)
    if argv[:1] == ["--json"]:
        show(task)
        return 0
    if argv[:1] == ["--hosts"]:
        for node in task["nodes"]:
            addresses = node["ip_addresses"]
            address = addresses.get("bind_v4") or addresses.get("access_v4")
            if address and node["hostname"]:
                print(f"{address} {node['hostname']}")
        return 0
    if argv[:1] == ["--nodes"] and len(argv) == 2:
        hosting = [n for n in task["nodes"] if argv[1] in n["services"]]
        print(" ".join(n["ip_addresses"].get("bind_v4", "") for n in sorted(hosting, key=lambda n: n["number"])))
        return 0
    source = task["config"]
    if argv[:1] == ["--field"]:
        source, argv = task["fields"], argv[1:]
    if len(argv) not in (1, 2) or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        show(lookup(source, argv[0]))
    except KeyError:
        if len(argv) == 2:
            show(argv[1])
        else:
            print(
                f"loom-config: no key {argv[0]} in the task's {'fields' if source is task['fields'] else 'config'}",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
