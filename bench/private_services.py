"""Private instances of the infrastructure Loom runs on, for fault tests and ``bench/recovery.py``: a
redis-server, a RabbitMQ node and a PostgreSQL cluster, each on a free port with its data in a folder of its
own, so that killing one disturbs nothing else on the machine (the shared services of the lab notes stay up).

Each can be killed (``kill -9``: no shutdown, no flush) and started again on the same port, with its data
kept or wiped, and ``stop`` ends it for good. They are context managers; whatever a test or a benchmark
started is stopped when the block ends, even after a failure.

Why these commands: Redis runs in the foreground without persistence, as the lab's does (a kill loses every
message, the case the broker marker exists for). RabbitMQ's Debian wrapper switches to the ``rabbitmq``
user, so its folders are world-writable; its configuration and environment files are its own (the system's
name port 5672, which is taken), and its Erlang distribution port is picked too (the default, node port +
20000, can be the system node's). PostgreSQL is a cluster made by ``initdb`` with trust authentication on
127.0.0.1 only; ``restart`` is ``pg_ctl restart -m fast|immediate``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

READY_TIMEOUT_S = 60.0
SHARED_TMP = "/tmp"
"""Where servers that run as another user keep their folders: ``$TMPDIR`` may be private (``scripts/test``
makes its own, mode 0700), and the ``postgres`` and ``rabbitmq`` users must reach theirs."""


class ServiceError(RuntimeError):
    """A private service would not start or stop; the message says which and shows its log's end."""


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int,
    *,
    timeout: float = READY_TIMEOUT_S,
    log: Path | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until something accepts connections on ``port``; fails at once if ``process`` (the server) ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise ServiceError(f"nothing listens on 127.0.0.1:{port} (waited up to {timeout} s)\n{tail}")


class _Service:
    """A server process on ``port`` with its data under ``root``."""

    name = "service"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def kill(self) -> None:
        """``kill -9`` of the server (``pid``); returns once it no longer accepts connections."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)
        self._wait_closed()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_closed(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)
        raise ServiceError(f"{self.name} still accepts connections on {self.port} after it was killed")

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, log=self.log, process=self.process)


class PrivateRedis(_Service):
    """redis-server with nothing on disk: a kill loses every message."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._spawn([*command, "--dir", str(self.root)])


class PrivateRabbitMQ(_Service):
    """A RabbitMQ node of its own (``loom<port>@localhost``); ``start(wipe=True)`` starts it on an empty
    database, as a node replaced after a crash would. Its folders are in a folder of their own under
    ``SHARED_TMP``, not under ``root`` (the node runs as the ``rabbitmq`` user, which cannot reach
    into pytest's private temporary folders); ``stop`` removes them."""

    name = "rabbitmq"

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(Path(tempfile.mkdtemp(prefix="loom-rabbitmq-", dir=SHARED_TMP)))
        self.root.chmod(0o777)
        self.log = root / "rabbitmq.log"
        self.dist_port = free_port()
        self.node = f"loom{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, *, wipe: bool = False) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise ServiceError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        mnesia = self.root / "mnesia"
        if wipe:
            shutil.rmtree(mnesia, ignore_errors=True)
        for folder in (mnesia, self.root / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.root / "plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        for path in [self.root, *self.root.rglob("*")]:  # the wrapper runs the node as the rabbitmq user
            path.chmod(0o777 if path.is_dir() else 0o666)
        env = {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_MNESIA_BASE": str(mnesia),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": str(self.root / "log" / "erl_crash.dump"),
        }
        (self.root / "pid").unlink(missing_ok=True)
        self._spawn(["rabbitmq-server"], env)

    def pid(self) -> int | None:
        """The Erlang VM's pid (the wrapper's child, under another user), from the node's pid file."""
        try:
            return int((self.root / "pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None and self.process is not None and self.process.poll() is None:
            os.kill(pid, signal.SIGTERM)
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivatePostgres(_Service):
    """A PostgreSQL cluster from ``initdb``, trust authentication on 127.0.0.1. As for RabbitMQ, its folders
    are in a folder of their own under ``SHARED_TMP`` (the server runs as ``postgres`` when
    this runs as root); ``stop`` removes them."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(Path(tempfile.mkdtemp(prefix="loom-postgres-", dir=SHARED_TMP)))
        self.root.chmod(0o755)
        self.data = self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        self._run(_pg_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def _run(self, *command: str) -> None:
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = (_pg_binary(command[0]), *command[1:])
        result = subprocess.run([*user, *command], capture_output=True, text=True, timeout=120, check=False)
        if result.returncode:
            raise ServiceError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._own(self.root)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        self._ctl("start", "-w", "-l", str(self.log))
        wait_for_port(self.port, log=self.log)

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, *args)

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast`` (sessions ended cleanly) or ``-m immediate`` (a crash: recovery on start)."""
        self._ctl("restart", "-w", "-m", mode, "-l", str(self.log))
        wait_for_port(self.port, log=self.log)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-w", "-m", "fast")
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        self._ctl("stop", "-m", "immediate")
        self._wait_closed()

    @staticmethod
    def _own(path: Path) -> None:
        """initdb refuses to run as root, and the data folder must belong to the server's user."""
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")


def _pg_binary(name: str) -> str:
    """A PostgreSQL server program: from PATH, else from Debian's versioned folder (not on PATH there)."""
    if shutil.which(name):
        return name
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda path: int(path.parts[-3]))
    if not found:
        raise ServiceError(f"{name} not found on PATH or under /usr/lib/postgresql (apt-get install postgresql)")
    return str(found[-1])
