"""``loom``: log in with a token, list templates and clusters, create (with a progress bar), show, run day-2
operations, delete, and export or import a catalog.

Exit codes, for scripts: 0 success; 1 the API refused (its error message is printed) or could not be reached;
2 bad usage (wrong arguments, not logged in, an unreadable input file); 3 a job that ``--wait`` followed ended
failed or aborted; 4 ``catalog status`` found something that cannot launch; 5 ``health`` found the cluster not
healthy. ``--json`` prints the API's JSON answer on stdout instead of text (errors stay on stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from . import __version__, config
from .client import ApiError, Client

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_NOT_LAUNCHABLE, EXIT_UNHEALTHY = 0, 1, 2, 3, 4, 5
ENDED = {"completed", "failed", "aborted"}
BAR_WIDTH = 30


class UsageError(Exception):
    """Bad input the API never saw (exit 2)."""


class JobFailed(Exception):
    """A followed job ended failed or aborted (exit 3)."""


# --- output ---------------------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    """``data`` as JSON with ``--json``, else as ``text(data)``."""
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text(data).rstrip("\n") + "\n")


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: Any) -> str:
    """``value`` as text with control characters shown as ``?``: names, descriptions and reasons come from
    a tenant's catalog, and an escape sequence in one must not drive the reader's terminal."""
    return CONTROL_CHARACTERS.sub("?", str(value))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[printable(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)  # fmt: skip


def progress_text(job: dict[str, Any], now: datetime | None = None) -> str:
    """``job 7 create [####------] 40.0% 44/110 tasks  stage 3/8  ETA 1m05s  running``: stage and ETA while it
    runs. The plan's stages are the steps of its critical path (every task's depth in the DAG), so the time
    the finished stages took per stage, times the stages left, estimates what is left of the longest path."""
    progress = job.get("progress") or {}
    percent = float(progress.get("percent") or 0)
    filled = int(BAR_WIDTH * percent / 100)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    text = (f"job {job['id']} {job['operation']} [{bar}] {percent:5.1f}% "
            f"{progress.get('completed', 0)}/{progress.get('total', 0)} tasks")  # fmt: skip
    stage, stages = progress.get("stage"), int(progress.get("stages") or 0)
    if job["status"] not in ENDED and stage is not None and stages:
        text += f"  stage {stage + 1}/{stages}"
        eta = _eta(job.get("started_at"), stage, stages, now or datetime.now(UTC))
        text += f"  ETA {eta}" if eta else ""
    return f"{text}  {job['status']}"


def _eta(started_at: str | None, stage: int, stages: int, now: datetime) -> str:
    """Time left on the critical path at the pace of the stages done so far; empty before the first is done."""
    if not started_at or stage <= 0:
        return ""
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return ""
    left = max(0.0, (now - started).total_seconds() / stage * (stages - stage))
    minutes, seconds = divmod(round(left), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def cluster_text(cluster: dict[str, Any]) -> str:
    job = cluster.get("latest_job") or {}
    lines = [
        f"cluster {cluster['id']} {cluster['name']}: {cluster['status']}"
        + (f" ({cluster['status_message']})" if cluster.get("status_message") else ""),
        f"  template {cluster['template']['name']} v{cluster['template']['version']}, "
        f"provider {cluster['provider']['name']}, {cluster['size']} nodes, owner {cluster['owner']}",
        f"  services: {', '.join(cluster.get('services') or []) or '-'}",
        f"  health: {_health(cluster.get('health'))}",
    ]
    if cluster.get("expires_at"):
        lines.append(f"  expires at {cluster['expires_at']}")
    if job:
        lines.append(f"  latest {progress_text(job)}" + (f": {job['message']}" if job.get("message") else ""))
    nodes = cluster.get("nodes")
    if nodes:
        rows = [(node["number"], node["hostname"], node["status"], (node.get("health") or {}).get("state", "-"),
                 _address(node), ",".join(node.get("services", []))) for node in nodes]  # fmt: skip
        lines.append(table(rows, ["#", "HOSTNAME", "STATUS", "HEALTH", "ADDRESS", "SERVICES"]))
    return "\n".join(lines)


def _health(health: dict[str, Any] | None) -> str:
    if not health:
        return "-"
    checked = f" (checked {health['checked_at']})" if health.get("checked_at") else " (not checked yet)"
    return health["state"] + (f": {health['message']}" if health.get("message") else "") + checked


def health_text(data: dict[str, Any]) -> str:
    lines = [f"health: {_health(data['health'])}"]
    for node in data["nodes"]:
        health = node["health"]
        lines.append(f"  node {node['number']} {node['hostname']}: {health['state']}"
                     + (f" ({health['failures']} sweeps in a row)" if health.get("failures") else ""))  # fmt: skip
        lines += [f"    {line}" for line in (health.get("message") or "").splitlines()[:10]]
    if data["history"]:
        lines.append("history (newest first):")
        for event in data["history"][:10]:
            who = f"node {event['node']}" if event.get("node") is not None else "cluster"
            lines.append(f"  {event['created_at']} {who}: {event['previous']} -> {event['state']}")
    return "\n".join(lines)


def _address(node: dict[str, Any]) -> str:
    addresses = node.get("ipaddresses") or {}
    return str(addresses.get("access_v4") or next(iter(addresses.values()), "-")) if addresses else "-"


# --- waiting for a job ----------------------------------------------------------------------------------------


def follow(client: Client, job: dict[str, Any], *, interval: float, timeout: float | None, quiet: bool) -> dict:
    """Poll the job until it ends, drawing a progress bar on stderr (redrawn in place on a terminal, one line
    per change otherwise); returns the ended job, raises JobFailed when it did not complete."""
    stream: TextIO = sys.stderr
    live = stream.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        if not quiet:
            text = progress_text(job)
            if live:
                stream.write("\r" + text)
            elif text != last:
                stream.write(text + "\n")
            stream.flush()
            last = text
        if job["status"] in ENDED:
            break
        if deadline is not None and time.monotonic() > deadline:
            if live and not quiet:
                stream.write("\n")
            raise ApiError(f"job {job['id']} still {job['status']} after {timeout:g} s (it goes on running)",
                           code="timeout")  # fmt: skip
        time.sleep(interval)
        job = client.get(f"jobs/{job['id']}")
    if live and not quiet:
        stream.write("\n")
    if job["status"] != "completed":
        raise JobFailed(f"job {job['id']} {job['operation']} {job['status']}: {job.get('message') or 'no message'}")
    return job


def operate(args: argparse.Namespace, client: Client, answer: dict[str, Any]) -> int:
    """Print an operation's 202 answer, or with ``--wait`` follow its job and print the cluster at the end."""
    job = answer.get("job")
    if getattr(args, "wait", False) and job:
        try:
            answer = {**answer, "job": follow(client, job, interval=args.interval, timeout=args.timeout,
                                              quiet=args.quiet)}  # fmt: skip
        except JobFailed:
            answer = {
                "cluster": client.get(f"clusters/{answer['cluster']['id']}"),
                "job": client.get(f"jobs/{job['id']}"),
            }
            emit(args, answer, lambda data: cluster_text(data["cluster"]))
            raise
        answer["cluster"] = client.get(f"clusters/{answer['cluster']['id']}")
    emit(args, answer, lambda data: cluster_text(data["cluster"]) if data.get("cluster") else json.dumps(data))
    return EXIT_OK


def read_json_file(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return json.loads(text)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from error
    except ValueError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from error


# --- commands -------------------------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    candidate = config.Config(url=args.url.rstrip("/"), token=args.token, tenant=args.tenant or "")
    tenants = Client(candidate).get_all("tenants")  # proves the URL and the token before anything is saved
    path = config.save(candidate)
    names = [tenant["name"] for tenant in tenants]
    summary = {"url": candidate.url, "tenant": candidate.tenant, "tenants": names, "config": str(path)}
    emit(
        args,
        summary,
        lambda data: f"logged in to {data['url']} (tenants: {', '.join(names) or 'none'}); saved in {path}",
    )
    return EXIT_OK


def cmd_templates(args: argparse.Namespace, client: Client) -> int:
    templates = client.get_all("clustertemplates")
    emit(args, templates, lambda data: table(
        [(item["name"], _size_range(item), _launchable(item), item.get("description", "")) for item in data],
        ["NAME", "SIZE", "LAUNCHABLE", "DESCRIPTION"]))  # fmt: skip
    return EXIT_OK


def _launchable(item: dict[str, Any]) -> str:
    """``yes``, or ``no:`` and the reasons the server gives (a server without the flag: ``?``)."""
    if "launchable" not in item:
        return "?"
    return "yes" if item["launchable"] else "no: " + "; ".join(item.get("reasons") or [])


def cmd_catalog_status(args: argparse.Namespace, client: Client) -> int:
    """Which templates and providers can launch now, and why the others cannot; exit 4 if any cannot."""
    found = {kind: client.get_all(kind) for kind in ("clustertemplates", "providers")}
    rows = [(kind[:-1].replace("cluster", ""), item["name"], _launchable(item))
            for kind, items in found.items() for item in items]  # fmt: skip
    emit(args, {kind: [{"name": i["name"], "launchable": i.get("launchable"), "reasons": i.get("reasons", [])}
                       for i in items] for kind, items in found.items()},
         lambda data: table(rows, ["KIND", "NAME", "LAUNCHABLE"]))  # fmt: skip
    return (
        EXIT_OK
        if all(item.get("launchable", True) for items in found.values() for item in items)
        else EXIT_NOT_LAUNCHABLE
    )


def _size_range(template: dict[str, Any]) -> str:
    size = ((template.get("constraints") or {}).get("size")) or {}
    low, high = size.get("min"), size.get("max")
    return f"{low or 1}-{high}" if high else (f"{low}+" if low else "any")


def cmd_clusters(args: argparse.Namespace, client: Client) -> int:
    clusters = client.get_all("clusters", status=args.status, live=args.live)
    emit(args, clusters, lambda data: table(
        [(item["id"], item["name"], item["status"], (item.get("health") or {}).get("state", "-"),
          item["template"]["name"], item["size"], item["owner"], _job_summary(item.get("latest_job")))
         for item in data],
        ["ID", "NAME", "STATUS", "HEALTH", "TEMPLATE", "SIZE", "OWNER", "LATEST JOB"]))  # fmt: skip
    return EXIT_OK


def _job_summary(job: dict[str, Any] | None) -> str:
    if not job:
        return "-"
    return f"{job['operation']} {job['status']} {float((job.get('progress') or {}).get('percent') or 0):.0f}%"


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    emit(args, client.get(f"clusters/{args.id}"), cluster_text)
    return EXIT_OK


def cmd_health(args: argparse.Namespace, client: Client) -> int:
    """The cluster's health; exit 5 when it is not healthy, so a script or a cron job can act on it."""
    data = client.get(f"clusters/{args.id}/health")
    emit(args, data, health_text)
    return EXIT_OK if data["health"]["state"] == "healthy" else EXIT_UNHEALTHY


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    """Follow the cluster's latest job (one started elsewhere: the page, another script, the auto-repair
    policy) with the live progress line; exit 3 when it does not complete."""
    cluster = client.get(f"clusters/{args.id}")
    job = cluster.get("latest_job")
    if not job:
        raise UsageError(f"cluster {args.id} has no job to watch")
    args.wait = True
    return operate(args, client, {"cluster": cluster, "job": client.get(f"jobs/{job['id']}")})


def cmd_completion(args: argparse.Namespace) -> int:
    """A bash completion script for ``loom``, from the parser itself (``source <(loom completion bash)``)."""
    print(bash_completion(build_parser()))
    return EXIT_OK


def bash_completion(parser: argparse.ArgumentParser) -> str:
    commands: dict[str, list[str]] = {}
    for action in parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = [o for a in sub._actions for o in a.option_strings]
                for inner in sub._actions:
                    if isinstance(inner, argparse._SubParsersAction):
                        options += list(inner.choices)
                commands[name] = sorted(set(options))
    cases = "\n".join(f'        {name}) words="{" ".join(options)}" ;;' for name, options in sorted(commands.items()))
    return f"""# bash completion for loom: source <(loom completion bash)
_loom() {{
    local current=${{COMP_WORDS[COMP_CWORD]}} words
    if [ "$COMP_CWORD" -eq 1 ]; then
        words="{" ".join(sorted(commands))} --version --help"
    else
        case "${{COMP_WORDS[1]}}" in
{cases}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$current"))
}}
complete -F _loom loom"""


def cmd_inventory(args: argparse.Namespace, client: Client) -> int:
    """The cluster as an Ansible JSON inventory on stdout, so ``loom inventory ID`` (or the two-line script
    ``deploy/loom-inventory``) is an inventory script: ``--list`` is the default, ``--host`` answers ``{}``
    (every host's variables are in ``_meta``). ``--known-hosts FILE`` writes the host keys Loom pinned at
    create to FILE and points every host's SSH at it with strict checking, so Ansible trusts exactly the
    machines Loom made."""
    if args.host:
        print("{}")
        return EXIT_OK
    inventory = client.get(f"clusters/{args.id}/inventory")
    if args.known_hosts:
        lines = []
        for variables in inventory["_meta"]["hostvars"].values():
            if variables.get("loom_host_key") and variables.get("ansible_host"):
                host, port = variables["ansible_host"], int(variables.get("ansible_port") or 22)
                lines.append(f"{host if port == 22 else f'[{host}]:{port}'} {variables['loom_host_key'].strip()}")
                variables["ansible_ssh_common_args"] = (f"-o UserKnownHostsFile={args.known_hosts} "
                                                        "-o StrictHostKeyChecking=yes")  # fmt: skip
        Path(args.known_hosts).write_text("".join(f"{line}\n" for line in lines))
    print(json.dumps(inventory, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_create(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"name": args.name, "clusterTemplate": args.template, "numMachines": args.size}
    for key, value in (("provider", args.provider), ("hardwaretype", args.hardwaretype),
                       ("imagetype", args.imagetype), ("description", args.description),
                       ("initialLeaseDuration", args.lease_ms)):  # fmt: skip
        if value is not None:
            body[key] = value
    if args.services:
        body["services"] = _names(args.services)
    if args.config:
        body["config"] = read_json_file(args.config)
    # A key per invocation: a create retried after a lost answer replays instead of creating a second cluster.
    headers = {"Idempotency-Key": args.idempotency_key or str(uuid.uuid4())}
    return operate(args, client, client.request("POST", "clusters", body=body, headers=headers))


def _names(values: Sequence[str]) -> list[str]:
    """Service names given as separate words, commas, or both."""
    return [name for value in values for name in value.split(",") if name]


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    return operate(args, client, client.delete(f"clusters/{args.id}"))


def day2(path: str, body: Callable[[argparse.Namespace], dict[str, Any]]) -> Callable[..., int]:
    """A day-2 command: POST ``clusters/{id}/<path>`` (``?preview=true`` with --preview), then as ``operate``."""

    def run(args: argparse.Namespace, client: Client) -> int:
        payload = body(args)
        if args.preview:
            emit(args, client.post(f"clusters/{args.id}/{path}", payload, preview="true"),
                 lambda data: json.dumps(data, indent=2))  # fmt: skip
            return EXIT_OK
        return operate(args, client, client.post(f"clusters/{args.id}/{path}", payload))

    return run


def _scale_in_body(args: argparse.Namespace) -> dict[str, Any]:
    if (args.count is None) == (not args.nodes):
        raise UsageError("scale-in: give a COUNT or --nodes, not both")
    return {"count": args.count} if args.count is not None else {"nodes": args.nodes}


def cmd_catalog_export(args: argparse.Namespace, client: Client) -> int:
    catalog = client.get("export")
    text = json.dumps(catalog, indent=2, sort_keys=True) + "\n"
    if args.file == "-":
        sys.stdout.write(text)
        return EXIT_OK
    Path(args.file).write_text(text)
    counts = {kind: len(items) for kind, items in catalog.items() if isinstance(items, list)}
    summary = {"file": args.file, "entities": counts}
    emit(args, summary, lambda data: f"exported {sum(counts.values())} entities to {args.file} "
         + "(" + ", ".join(f"{kind} {n}" for kind, n in counts.items()) + ")")  # fmt: skip
    return EXIT_OK


def cmd_catalog_import(args: argparse.Namespace, client: Client) -> int:
    result = client.post("import", read_json_file(args.file), replace="true" if args.replace else None)

    def text(data: dict[str, Any]) -> str:
        parts = [f"{key} {_entities(data.get(key))}" for key in ("created", "updated", "unchanged", "deleted")]
        warnings = [f"warning: {warning}" for warning in data.get("warnings") or []]
        return "\n".join([f"imported {args.file}: " + ", ".join(parts), *warnings])

    emit(args, result, text)
    return EXIT_OK


def _entities(names_by_kind: Any) -> int:
    """How many entities an import result lists under one heading (kind → names)."""
    if isinstance(names_by_kind, dict):
        return sum(len(names) for names in names_by_kind.values())
    return len(names_by_kind or [])


# --- the parser -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    common.add_argument("--tenant", help="act in this tenant (X-Loom-Tenant); default: the saved one")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument(
        "--wait",
        "--watch",
        action="store_true",
        dest="wait",
        help="follow the job until it ends: a live line with tasks done, stage and ETA",
    )
    waiting.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    waiting.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    waiting.add_argument("--quiet", "-q", action="store_true", help="no progress bar (it goes to stderr)")
    previewing = argparse.ArgumentParser(add_help=False, parents=[common, waiting])
    previewing.add_argument("id", type=int, help="cluster id")
    previewing.add_argument("--preview", action="store_true", help="only show what would be done")

    parser = argparse.ArgumentParser(prog="loom", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Exit codes: 0 ok, 1 API error, 2 usage, 3 job failed, "
                                            "4 not launchable, 5 not healthy.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"loom {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser("login", parents=[common], help="check and save the server URL and token")
    login.add_argument("--url", required=True, help="Loom's address, e.g. https://loom.example.com")
    login.add_argument("--token", required=True, help="an API token (POST /api/v2/tokens)")
    login.set_defaults(run=cmd_login, needs_client=False)

    commands.add_parser("templates", parents=[common], help="list cluster templates").set_defaults(run=cmd_templates)
    listing = commands.add_parser("clusters", parents=[common], help="list clusters")
    listing.add_argument("--status", help="comma list, e.g. active,pending")
    listing.add_argument("--live", choices=["true", "false"], help="only live (or only terminated) clusters")
    listing.set_defaults(run=cmd_clusters)
    show = commands.add_parser("show", parents=[common], help="a cluster with its nodes and latest job")
    show.add_argument("id", type=int)
    show.set_defaults(run=cmd_show)

    create = commands.add_parser("create", parents=[common, waiting], help="create a cluster from a template")
    create.add_argument("name")
    create.add_argument("--template", required=True)
    create.add_argument("--size", type=int, required=True, help="number of nodes")
    create.add_argument("--provider")
    create.add_argument("--hardwaretype")
    create.add_argument("--imagetype")
    create.add_argument("--services", nargs="+", help="services instead of the template's defaults")
    create.add_argument("--config", help="JSON file with the cluster config")
    create.add_argument("--description")
    create.add_argument("--lease-ms", type=int, help="initial lease in milliseconds")
    create.add_argument("--idempotency-key", help="reuse to make a retried create safe (default: a fresh one)")
    create.set_defaults(run=cmd_create)

    delete = commands.add_parser("delete", parents=[common, waiting], help="delete a cluster's machines")
    delete.add_argument("id", type=int)
    delete.set_defaults(run=cmd_delete)

    inventory = commands.add_parser("inventory", parents=[common], help="a cluster as an Ansible JSON inventory")
    inventory.add_argument("id", type=int)
    inventory.add_argument("--list", action="store_true", help="the whole inventory (the default; Ansible asks so)")
    inventory.add_argument("--host", help="one host's variables: {} (they are all in _meta)")
    inventory.add_argument("--known-hosts", help="write the pinned SSH host keys here and make SSH check them")
    inventory.set_defaults(run=cmd_inventory)
    watch = commands.add_parser("watch", parents=[common, waiting], help="follow a cluster's latest job")
    watch.add_argument("id", type=int)
    watch.set_defaults(run=cmd_watch)
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash"])
    completion.set_defaults(run=cmd_completion, needs_client=False)
    health = commands.add_parser("health", parents=[common], help="a cluster's health (exit 5 when not healthy)")
    health.add_argument("id", type=int)
    health.set_defaults(run=cmd_health)
    repair = commands.add_parser("repair", parents=[previewing],
                                 help="replace missing/unreachable nodes, restart failed services")  # fmt: skip
    repair.add_argument("--nodes", nargs="+", help="node numbers or hostnames (default: every unhealthy node)")
    repair.set_defaults(run=day2("repair", lambda a: {"nodes": a.nodes} if a.nodes else {}))
    scale_out = commands.add_parser("scale-out", parents=[previewing], help="add COUNT nodes")
    scale_out.add_argument("count", type=int)
    scale_out.set_defaults(run=day2("scale-out", lambda a: {"count": a.count}))
    scale_in = commands.add_parser("scale-in", parents=[previewing], help="remove COUNT nodes (or --nodes)")
    scale_in.add_argument("count", type=int, nargs="?")
    scale_in.add_argument("--nodes", nargs="+", help="node numbers or hostnames to remove")
    scale_in.set_defaults(run=day2("scale-in", _scale_in_body))
    reconfigure = commands.add_parser("reconfigure", parents=[previewing], help="replace the cluster's config")
    reconfigure.add_argument("--config", required=True, help="JSON file with the whole new config ('-': stdin)")
    reconfigure.add_argument("--no-restart", action="store_true", help="do not stop and start services around it")
    reconfigure.set_defaults(run=day2("config", lambda a: {"config": read_json_file(a.config),
                                                           "restart": not a.no_restart}))  # fmt: skip
    for verb in ("start", "stop", "restart"):
        services = commands.add_parser(verb, parents=[previewing], help=f"{verb} services (none named: all)")
        services.add_argument("services", nargs="*")
        services.set_defaults(run=day2(f"services/{verb}", lambda a: {"services": _names(a.services)}))
    for verb, path in (("add-services", "services"), ("remove-services", "services/remove")):
        change = commands.add_parser(verb, parents=[previewing], help=verb.replace("-", " "))
        change.add_argument("services", nargs="+")
        change.set_defaults(run=day2(path, lambda a: {"services": _names(a.services)}))

    catalog = commands.add_parser("catalog", help="export, import or check the tenant's whole catalog")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True, metavar="export|import|status")
    export = catalog_commands.add_parser("export", parents=[common], help="write the catalog to FILE ('-': stdout)")
    export.add_argument("file")
    export.set_defaults(run=cmd_catalog_export)
    import_ = catalog_commands.add_parser("import", parents=[common], help="import a catalog JSON file")
    import_.add_argument("file")
    import_.add_argument("--replace", action="store_true", help="also delete what the file does not contain")
    import_.set_defaults(run=cmd_catalog_import)
    status = catalog_commands.add_parser(
        "status", parents=[common], help="which templates and providers can launch, and why not (exit 4 if any cannot)"
    )
    status.set_defaults(run=cmd_catalog_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    try:
        if not getattr(args, "needs_client", True):
            return args.run(args)
        settings = config.load()
        if args.tenant:
            settings = config.Config(url=settings.url, token=settings.token, tenant=args.tenant)
        return args.run(args, Client(settings))
    except (UsageError, config.ConfigError) as error:
        print(f"loom: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as error:
        print(f"loom: error: {error.message}", file=sys.stderr)
        if args.json and error.body is not None:
            json.dump(error.body, sys.stdout, indent=2)
            sys.stdout.write("\n")
        return EXIT_API
    except JobFailed as error:
        print(f"loom: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        print("\nloom: interrupted (the job, if any, goes on running)", file=sys.stderr)
        return 130
