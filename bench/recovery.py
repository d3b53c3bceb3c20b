"""How long each infrastructure fault costs a running create, measured on real processes.

    python bench/recovery.py            # every fault, outage 10 s: about two minutes
    python bench/recovery.py --quick    # a 3 s outage, to check that it works
    python bench/recovery.py --help     # database option (the database is dropped and re-made)

What runs. A worker process (3 threads, with beat, production intervals: ``LOOM_REDISPATCH_SECONDS`` 300,
``LOOM_JANITOR_SECONDS`` 15) creates a 12-node cluster on the fake provider (1.5 s boots, 0.3 s actions),
so that tasks wait in the broker when the fault hits. Each fault is on a private instance
(``bench/private_services.py``), so nothing else on the machine is disturbed:

* **broker lost (Redis)**: ``kill -9`` of a redis-server without persistence, down ``--outage`` seconds,
  back empty;
* **broker lost (RabbitMQ)**: ``kill -9`` of a RabbitMQ node, down as long, back on a wiped database (a
  replaced node): every queued message is gone.

* **database restarted**: ``pg_ctl restart -m fast`` and ``-m immediate`` of a private PostgreSQL under
  Loom in its production layout (``bench/deployment.py``: gunicorn web, worker and beat from
  ``deploy/loom-serve``), while a 5-node ``demo-web`` create runs and a client polls the clusters list every
  50 ms. Printed: how many of those requests got the 503 (and that none got anything else but 200), the
  seconds from the restart to the job's end, and that no process had to be restarted.

* **worker killed**: ``kill -9`` of the worker while it runs a 5-node create, started again under its own
  name, then (a second create) replaced by a worker of another name: seconds from the kill to the job's end.

Printed per broker fault: *lost*, the tasks whose messages the broker held at the kill (queued, sent, not claimed);
*moving again*, from the broker accepting connections again to the first of those tasks claimed (the figure
the broker marker is for: without it they would wait ``LOOM_REDISPATCH_SECONDS``, 300 s); *all lost claimed*,
to the last of them (they queue for the worker's 3 threads); *job done*, from the broker's return to the
job's end; and whether every node has exactly one machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.private_services import PrivateRabbitMQ, PrivateRedis
from bench.workers import ROOT, HarnessError, database_name, fresh_database, print_table, worker_command

NODES = 12
THREADS = 3
TIMEOUT_S = 180.0


@dataclass
class Outcome:
    fault: str
    lost: int
    moving_s: float
    all_claimed_s: float
    done_s: float
    one_machine_per_node: bool


def _catalog() -> dict[str, list[Any]]:
    action = {"type": "noop", "fields": {"latency_ms": "300"}}
    return {
        "providers": [{"name": "fakecloud", "providertype": "fake",
                       "provisioner": {"latency_ms": "1500", "call_latency_ms": "5", "seed": "16"}}],
        "hardwaretypes": [{"name": "small", "providermap": {"fakecloud": {"flavor": "f1"}}}],
        "imagetypes": [{"name": "debian", "providermap": {"fakecloud": {"image": "deb12", "sshuser": "loom"}}}],
        "services": [
            {"name": "base", "provisioner": {"actions": {"install": action, "configure": action}}},
            {"name": "app", "dependencies": {"install": {"requires": ["base"]}, "runtime": {"requires": ["base"]}},
             "provisioner": {"actions": {"install": action, "configure": action, "start": action}}},
        ],
        "clustertemplates": [{
            "name": "fleet",
            "defaults": {"services": ["base", "app"], "provider": "fakecloud", "hardwaretype": "small",
                         "imagetype": "debian"},
            "compatibility": {"hardwaretypes": ["small"], "imagetypes": ["debian"], "services": ["base", "app"]},
        }],
    }  # fmt: skip


def _use_broker(url: str) -> None:
    """Point this process's Celery app (what ``cluster_create`` publishes through) at ``url``."""
    from loom_site.celery import app

    app.conf.update(broker_url=url, task_always_eager=False)
    app._pool = None
    app.amqp._producer_pool = None


def broker_lost(kind: str, *, outage: float, work: Path, database_url: str, data_dir: Path) -> Outcome:
    from collections import Counter

    from bench.workers import bench_tenant
    from clusters.models import Job, Node, Task, TaskAttempt
    from clusters.services.lifecycle import cluster_create
    from clusters.services.preview import PreviewRequest
    from providers.models import FakeMachine, Provider
    from providers.services import provider_key

    broker = PrivateRedis(work / "redis") if kind == "redis" else PrivateRabbitMQ(work / "rabbit")
    with broker:
        _use_broker(broker.url)
        user, tenant = bench_tenant(name=f"recovery-{kind}", workers=0, catalog=_catalog())
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "loom_site.settings",
            "LOOM_DATA_DIR": str(data_dir),
            "LOOM_DATABASE_URL": database_url,
            "LOOM_BROKER_URL": broker.url,
            "LOOM_CELERY_EAGER": "false",
            "LOOM_LOG_LEVEL": "WARNING",
        }
        log = work / f"worker-{kind}.log"
        command = worker_command(name=f"recovery-{kind}@%h", concurrency=THREADS, beat_schedule=work / f"beat-{kind}")
        with log.open("a") as output:
            worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
        try:
            time.sleep(3)  # the worker connects and starts consuming
            cluster, job = cluster_create(user=user, tenant=tenant, request=PreviewRequest(f"r{kind}", "fleet", NODES))
            tasks = Task.objects.filter(job=job)
            in_broker = tasks.filter(status=Task.Status.QUEUED, dispatched_at__isnull=False)
            deadline = time.monotonic() + TIMEOUT_S
            while not (tasks.filter(status=Task.Status.RUNNING).exists() and in_broker.count() >= 3):
                if time.monotonic() > deadline:
                    raise HarnessError(f"no work ever waited in the broker\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
            broker.kill()
            lost = set(in_broker.values_list("pk", flat=True))
            time.sleep(outage)
            if isinstance(broker, PrivateRabbitMQ):
                broker.start(wipe=True)
            else:
                broker.start()
            from django.utils import timezone

            back = timezone.now()
            deadline = time.monotonic() + TIMEOUT_S
            while True:
                job.refresh_from_db()
                if job.status != Job.Status.RUNNING:
                    break
                if time.monotonic() > deadline:
                    counts = dict(Counter(tasks.values_list("status", flat=True)))
                    raise HarnessError(f"job still running after {TIMEOUT_S} s: {counts}\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            if job.status != Job.Status.COMPLETED:
                raise HarnessError(f"job {job.status}: {job.message}")
            firsts = [
                TaskAttempt.objects.filter(task_id=pk).order_by("number").values_list("started_at", flat=True).first()
                for pk in lost
            ]
            delays = sorted((first - back).total_seconds() for first in firsts if first is not None)
            nodes = list(Node.objects.filter(cluster=cluster).values_list("node_key", flat=True))
            provider = Provider.objects.get(tenant=tenant, name="fakecloud")
            made = Counter(
                FakeMachine.objects.filter(provider_key=provider_key(provider=provider), node_key__in=nodes)
                .values_list("node_key", flat=True)
            )  # fmt: skip
            return Outcome(
                fault=f"broker lost ({'Redis' if kind == 'redis' else 'RabbitMQ'}), back empty",
                lost=len(lost),
                moving_s=max(0.0, delays[0]) if delays else 0.0,
                all_claimed_s=max(0.0, delays[-1]) if delays else 0.0,
                done_s=(job.finished_at - back).total_seconds(),
                one_machine_per_node=made == Counter({key: 1 for key in nodes}),
            )
        finally:
            os.killpg(worker.pid, 15)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait()


@dataclass
class DatabaseOutcome:
    mode: str
    requests: int
    unavailable: int
    other_errors: list[str]
    restart_s: float
    done_s: float
    job_status: str
    one_machine_per_node: bool
    processes_alive: bool


_MACHINES = """
from collections import Counter
from clusters.models import Node
from providers.models import FakeMachine
keys = list(Node.objects.filter(cluster_id={cluster}).values_list("node_key", flat=True))
made = Counter(FakeMachine.objects.filter(node_key__in=keys).values_list("node_key", flat=True))
live = FakeMachine.objects.filter(node_key__in=keys, deleted_at__isnull=True).count()
print(len(keys), sum(1 for key in keys if made[key] == 1), live)
"""


def machines_of(deployment: Any, cluster: int) -> tuple[int, int, int]:
    """(nodes, nodes with exactly one machine, machines not deleted) of a cluster, read in the database."""
    nodes, single, live = deployment.shell(_MACHINES.format(cluster=int(cluster))).split()[-3:]
    return int(nodes), int(single), int(live)


def wait_job(deployment: Any, job: int, *, until: Any, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until ``until(job)``; a 503 (the database away) is waited through."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = deployment.api("GET", f"/api/v2/jobs/{job}")
        if status == 200 and until(body):
            return body
        if status not in (200, 503) or time.monotonic() > deadline:
            raise HarnessError(f"job {job}: {status} {body}\n{deployment.logs()}")
        time.sleep(0.1)


def database_restart(deployment: Any, mode: str) -> DatabaseOutcome:
    """One 5-node create with the database restarted under it (``mode``: fast or immediate); see the module
    docstring. The caller asserts or prints what comes back."""
    import threading

    status, answer = deployment.api(
        "POST", "/api/v2/clusters", {"name": f"db-{mode}", "clusterTemplate": "demo-web", "numMachines": 5}
    )
    if status != 202:
        raise HarnessError(f"create answered {status}: {answer}")
    job, cluster = answer["job"]["id"], answer["cluster"]["id"]
    wait_job(deployment, job, until=lambda body: body["progress"]["completed"] >= 2)
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            answers.append(deployment.api("GET", "/api/v2/clusters"))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(0.3)
    started = time.monotonic()
    deployment.postgres.restart(mode)
    restart_s = time.monotonic() - started
    ended = wait_job(deployment, job, until=lambda body: body["status"] in ("completed", "failed", "aborted"))
    done_s = time.monotonic() - started
    time.sleep(0.3)
    stop.set()
    poller.join()
    unavailable = [body for code, body in answers if code == 503]
    other = [f"{code} {str(body)[:200]}" for code, body in answers if code not in (200, 503)]
    other += [f"503 in another shape: {str(body)[:200]}" for body in unavailable
              if not (isinstance(body, dict) and body.get("error", {}).get("code") == "unavailable")]  # fmt: skip
    nodes, single, _ = machines_of(deployment, cluster)
    return DatabaseOutcome(
        mode=mode,
        requests=len(answers),
        unavailable=len(unavailable),
        other_errors=other,
        restart_s=restart_s,
        done_s=done_s,
        job_status=ended["status"],
        one_machine_per_node=nodes == single == 5,
        processes_alive=not deployment.dead(),
    )


@dataclass
class WorkerOutcome:
    how: str
    done_s: float
    job_status: str
    one_machine_per_node: bool


def worker_killed(deployment: Any, *, same_name: bool) -> WorkerOutcome:
    """A 5-node create whose worker is killed (``kill -9``) while it runs tasks and started again, under its
    own name (it takes its tasks back at once) or as a replacement under another (the janitor takes them back
    after ``LOOM_HEARTBEAT_TIMEOUT``); returns the seconds from the kill to the job's end."""
    name = "same" if same_name else "replaced"
    status, answer = deployment.api(
        "POST", "/api/v2/clusters", {"name": f"w-{name}", "clusterTemplate": "demo-web", "numMachines": 5}
    )
    if status != 202:
        raise HarnessError(f"create answered {status}: {answer}")
    job, cluster = answer["job"]["id"], answer["cluster"]["id"]
    wait_job(deployment, job, until=lambda body: body["progress"]["tasks"].get("running", 0) > 0)
    started = time.monotonic()
    deployment.kill("worker")
    deployment.start("worker", **({} if same_name else {"LOOM_WORKER_NAME": f"replacement-{cluster}@%h"}))
    ended = wait_job(deployment, job, until=lambda body: body["status"] in ("completed", "failed", "aborted"))
    nodes, single, _ = machines_of(deployment, cluster)
    return WorkerOutcome(
        how="started again under its name" if same_name else "replaced by a worker of another name",
        done_s=time.monotonic() - started,
        job_status=ended["status"],
        one_machine_per_node=nodes == single == 5,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recovery.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 3 s outage, to check that it works")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds each service stays down (default 10)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LOOM_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loom_bench_recovery"),
        help="PostgreSQL database to DROP, create and migrate; its name must contain 'bench'",
    )
    arguments = parser.parse_args(argv)
    outage = 3.0 if arguments.quick else arguments.outage
    database_name(arguments.database_url)
    work = Path(tempfile.mkdtemp(prefix="loom-recovery-"))
    data_dir = work / "data"
    data_dir.mkdir()
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "loom_site.settings", "LOOM_DATA_DIR": str(data_dir),
        "LOOM_DATABASE_URL": arguments.database_url, "LOOM_CELERY_EAGER": "false", "LOOM_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    try:
        import django
        from django.core.management import call_command

        fresh_database(arguments.database_url)
        django.setup()
        call_command("migrate", verbosity=0)
        outcomes = [
            broker_lost(kind, outage=outage, work=work, database_url=arguments.database_url, data_dir=data_dir)
            for kind in ("redis", "rabbitmq")
        ]
        from bench.deployment import PrivateDeployment

        with PrivateDeployment(work / "deployment", env={"LOOM_RETRY_BACKOFF_SECONDS": "0.5"}) as deployment:
            restarts = [database_restart(deployment, mode) for mode in ("fast", "immediate")]
            kills = [worker_killed(deployment, same_name=same) for same in (True, False)]
    except HarnessError as error:
        print(f"bench/recovery.py: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{NODES}-node create, {THREADS} worker threads, outage {outage:.0f} s, LOOM_REDISPATCH_SECONDS 300")
    rows = [["fault", "lost tasks", "moving again", "all lost claimed", "job done", "one machine per node"]]
    rows += [
        [
            o.fault,
            str(o.lost),
            f"{o.moving_s:.1f} s",
            f"{o.all_claimed_s:.1f} s",
            f"{o.done_s:.1f} s",
            "yes" if o.one_machine_per_node else "NO",
        ]
        for o in outcomes
    ]
    print_table(rows)
    print("moving again / redispatch interval: " + ", ".join(f"{o.moving_s / 300:.3f}" for o in outcomes))
    print()
    print("database restarted under web + worker + beat (gunicorn, loom-serve), 5-node create, polling every 50 ms")
    rows = [["pg_ctl restart", "restart took", "requests", "503", "other errors", "job", "done after", "one machine",
             "no process restarted"]]  # fmt: skip
    rows += [
        [
            f"-m {r.mode}",
            f"{r.restart_s:.2f} s",
            str(r.requests),
            str(r.unavailable),
            str(len(r.other_errors)),
            r.job_status,
            f"{r.done_s:.1f} s",
            "yes" if r.one_machine_per_node else "NO",
            "yes" if r.processes_alive else "NO",
        ]
        for r in restarts
    ]
    print_table(rows)
    for restart in restarts:
        for error in restart.other_errors[:5]:
            print(f"  -m {restart.mode}: {error}")
    print()
    print("worker killed (kill -9) while it runs a 5-node create, LOOM_HEARTBEAT_TIMEOUT 60 s, janitor every 15 s")
    rows = [["worker", "job", "done after the kill", "one machine per node"]]
    rows += [[k.how, k.job_status, f"{k.done_s:.1f} s", "yes" if k.one_machine_per_node else "NO"] for k in kills]
    print_table(rows)
    healthy = all(k.one_machine_per_node and k.job_status == "completed" for k in kills)
    healthy = (
        healthy
        and all(o.one_machine_per_node for o in outcomes)
        and all(
            r.one_machine_per_node and r.processes_alive and not r.other_errors and r.job_status == "completed"
            for r in restarts
        )
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
