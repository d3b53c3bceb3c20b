"""One action on 50 lab hosts: Loom's automator path next to ``ansible -f 50`` doing the same, in one run.

    python bench/ssh_fanout.py              # 50 lab hosts, 3 rounds: about a minute
    python bench/ssh_fanout.py --quick      # 10 lab hosts, 1 round, to check that it works
    python bench/ssh_fanout.py --hosts 30 --rounds 5

Needs root (lab hosts are network namespaces with their own sshd, ``providers/lab.py``) and ansible-core (in
requirements-dev.txt, for the comparison only). Nothing else: no database, no broker.

What runs. N lab hosts are brought up on a bridge and /24 of this run's own (the ``local`` provider's driver,
owned by this process, so a later run reaps them if this one dies), and each host's key is pinned as a
cluster node's would be. Then, in rounds, the same action on every host, both ways, one after the other:

* **loom**: what a worker does for a service action of a ``shell`` service, on N threads at once: open a
  ``providers.ssh`` Session (the provider's key, the pinned host key) and run the shell automator
  (``ShellAutomator.run``) with a one-line script resource, ``echo ok``: prepare ``~/.loom`` and read the
  manifest, upload what changed (in the first round the script and the ``loom-config`` helper, after that
  only the task), write the task JSON, run the script. Timed from the first connect to the last result.
* **ansible**: ``ansible all -f N -m ansible.builtin.shell -a 'echo ok'`` over an inventory of the N hosts
  (same user, same key; OpenSSH checks the pinned host keys from a known_hosts file; the Python interpreter
  named, so Ansible does not spend a round trip discovering it; otherwise Ansible's defaults). Timed as
  the command's wall-clock time, start-up included: that is what a user of Ansible waits for.

Both must see ``ok`` from every host, or the run stops (exit 2). Round 1 is cold for both (Loom uploads
the script everywhere, Ansible starts from an empty cache); the table shows every round, the ratio uses the
medians. Goal: loom / ansible ≤ 0.2 (exit 1 when missed). Wall-clock times move with the machine's load;
the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL = 0.2
HOSTS, QUICK_HOSTS = 50, 10
ROUNDS, QUICK_ROUNDS = 3, 1
BRING_UP_THREADS = 16
ACTION_TIMEOUT_S = 120.0
SCRIPT = b"#!/bin/sh\necho ok\n"


class HarnessError(RuntimeError):
    """The benchmark could not run (no root, a host that never came up, an action that did not say ok)."""


@dataclass(frozen=True)
class Host:
    name: str
    hostname: str
    address: str
    host_key: str


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/ssh_fanout.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, to check that the benchmark works")
    parser.add_argument("--hosts", type=int, help=f"lab hosts (default {HOSTS}, {QUICK_HOSTS} with --quick)")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {ROUNDS}, {QUICK_ROUNDS} with --quick)")
    arguments = parser.parse_args(argv)
    arguments.hosts = arguments.hosts or (QUICK_HOSTS if arguments.quick else HOSTS)
    arguments.rounds = arguments.rounds or (QUICK_ROUNDS if arguments.quick else ROUNDS)
    if not 1 <= arguments.hosts <= 200 or arguments.rounds < 1:
        parser.error("--hosts must be 1 to 200 and --rounds at least 1")
    return arguments


def setup_django(data_dir: Path) -> None:
    """Loom's settings on a data folder of this run (the provider's SSH key is made there, and goes with it)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "loom_site.settings"
    os.environ["LOOM_DATA_DIR"] = str(data_dir)
    import django

    django.setup()


def network() -> tuple[str, str]:
    """A bridge and /24 of this run's own, derived from the pid (runs side by side differ)."""
    pid = os.getpid()
    return f"loomfan{pid % 65536:x}", f"10.{180 + pid // 256 % 20}.{pid % 256}.0/24"


@contextmanager
def lab_hosts(count: int) -> Iterator[tuple[list[Host], str]]:
    """``count`` reachable lab hosts and the path of the private key that logs in to them as root."""
    from providers.drivers import MachineSpec, NotReady
    from providers.drivers.local import LocalDriver
    from providers.lab import Lab, Owner

    lab = Lab()
    try:
        lab.require()
    except Exception as error:  # the lab's own message says what is missing
        raise HarnessError(str(error)) from None
    lab.reap_abandoned()
    bridge, subnet = network()
    driver = LocalDriver({"bridge": bridge, "subnet": subnet}, provider_key=f"bench-{os.getpid()}", lab=lab,
                         owner=Owner.current())  # fmt: skip
    cluster = f"fanout{os.getpid()}"
    specs = [
        MachineSpec.for_node(cluster_key=cluster, node_key=f"{cluster}-{n}", node_number=n, flavor="lab", image="host")
        for n in range(1, count + 1)
    ]

    def bring_up(spec: MachineSpec) -> Host:
        machine = driver.create(spec)
        deadline = time.monotonic() + 60
        while True:
            try:
                reachable = driver.confirm(spec, machine.machine_id)
                break
            except NotReady as not_ready:
                if time.monotonic() > deadline:
                    raise HarnessError(f"lab host {machine.machine_id} did not come up within 60 s") from None
                time.sleep(not_ready.retry_after)
        assert reachable.host_key
        return Host(machine.machine_id, reachable.hostname, reachable.ip_addresses["access_v4"], reachable.host_key)

    try:
        with ThreadPoolExecutor(max_workers=BRING_UP_THREADS) as pool:
            hosts = list(pool.map(bring_up, specs))
        yield hosts, str(driver.keypair.path)
    finally:
        with ThreadPoolExecutor(max_workers=BRING_UP_THREADS) as pool:
            list(pool.map(driver.delete, [machine.machine_id for machine in driver.list_tagged()]))


def loom_round(hosts: Sequence[Host], key: str) -> float:
    """The shell automator on every host at once, each over its own Session; seconds until the last is done."""
    from providers.automators.base import ActionRequest, NodeInfo
    from providers.automators.shell import ShellAutomator
    from providers.resources import LiveResource
    from providers.ssh import Session

    private_key = Path(key).read_text()
    script = LiveResource("scripts", "ok.sh", 1, "file", "0755", SCRIPT)
    nodes = [NodeInfo(n, h.hostname, {"access_v4": h.address, "bind_v4": h.address}, ("fanout",))
             for n, h in enumerate(hosts, 1)]  # fmt: skip
    automator = ShellAutomator()

    def act(number: int) -> str:
        host = hosts[number]
        request = ActionRequest(cluster="fanout", cluster_id=1, service="fanout", action="configure",
                                fields={"script": "ok.sh"}, config={}, node=nodes[number], nodes=nodes,
                                resources=(script,))  # fmt: skip
        with Session(host.address, user="root", private_key=private_key, host_key=host.host_key,
                     command_timeout=ACTION_TIMEOUT_S) as session:  # fmt: skip
            return automator.run(session, request)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        outputs = list(pool.map(act, range(len(hosts))))
    elapsed = time.monotonic() - started
    said_ok = sum(1 for output in outputs if "ok" in output.splitlines()[1:])
    if said_ok != len(hosts):
        raise HarnessError(f"loom: {said_ok} of {len(hosts)} hosts said ok; first output:\n{outputs[0]}")
    return elapsed


def ansible_files(hosts: Sequence[Host], key: str, folder: Path) -> Path:
    """Inventory, known_hosts and ansible.cfg for the hosts, in ``folder``; returns the inventory."""
    (folder / "known_hosts").write_text("".join(f"{h.address} {h.host_key}\n" for h in hosts))
    inventory = {
        "all": {
            "hosts": {h.hostname: {"ansible_host": h.address} for h in hosts},
            "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": key,
                     "ansible_python_interpreter": "/usr/bin/python3"},
        }
    }  # fmt: skip
    (folder / "inventory.json").write_text(json.dumps(inventory))
    (folder / "ansible.cfg").write_text(
        "[defaults]\nhost_key_checking = True\nretry_files_enabled = False\n"
        f"local_tmp = {folder}/tmp\n[ssh_connection]\n"
        f"ssh_args = -o UserKnownHostsFile={folder}/known_hosts -o StrictHostKeyChecking=yes\n"
    )
    return folder / "inventory.json"


def ansible_round(hosts: Sequence[Host], key: str, folder: Path) -> float:
    """``ansible all -f N -m shell -a 'echo ok'``; seconds from start to exit."""
    executable = Path(sys.executable).parent / "ansible"
    if not executable.exists():
        found = shutil.which("ansible")
        if found is None:
            raise HarnessError("ansible is not installed: pip install -r requirements-dev.txt (ansible-core)")
        executable = Path(found)
    inventory = ansible_files(hosts, key, folder)
    command = [str(executable), "all", "-i", str(inventory), "-f", str(len(hosts)), "-m", "ansible.builtin.shell",
               "-a", "echo ok"]  # fmt: skip
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LANG": "C.UTF-8",
                   "ANSIBLE_CONFIG": str(folder / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, check=False)
    elapsed = time.monotonic() - started
    lines = result.stdout.splitlines()
    said_ok = sum(1 for number, line in enumerate(lines[:-1]) if "rc=0 >>" in line and lines[number + 1] == "ok")
    if result.returncode != 0 or said_ok != len(hosts):
        raise HarnessError(
            f"ansible: exit {result.returncode}, {said_ok} of {len(hosts)} hosts said ok:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    with tempfile.TemporaryDirectory(prefix="loom-fanout-") as folder:
        work = Path(folder)
        setup_django(work / "data")
        print(
            f"ssh_fanout: `echo ok` on {arguments.hosts} lab hosts, {arguments.rounds} round(s), both ways each round"
        )
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        try:
            started = time.monotonic()
            with lab_hosts(arguments.hosts) as (hosts, key):
                print(f"lab hosts up in {time.monotonic() - started:.1f} s")
                rows = []
                for number in range(1, arguments.rounds + 1):
                    ours = loom_round(hosts, key)
                    theirs = ansible_round(hosts, key, work)
                    rows.append((ours, theirs))
                    print(f"round {number}: loom {ours:.2f} s, ansible {theirs:.2f} s")
        except HarnessError as error:
            print(f"harness error: {error}", file=sys.stderr)
            return 2
    loom = statistics.median(row[0] for row in rows)
    ansible = statistics.median(row[1] for row in rows)
    ratio = loom / ansible
    print(f"loom (shell automator, {arguments.hosts} threads): {loom:.2f} s median")
    print(f"ansible -f {arguments.hosts}: {ansible:.2f} s median")
    print(f"loom / ansible: {ratio:.3f} (goal ≤ {GOAL}: {'met' if ratio <= GOAL else 'MISSED'})")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
