"""The embedded mode's data folder fills up (issue 16): ``./scripts/run`` on a small tmpfs of the test's own,
filled to the last byte while a create runs and again before another create is asked for.

A full disk must give a clear error and lose nothing: the request that cannot be saved answers 503 saying
the disk is full (``loom_site.views``) and leaves no half-made cluster; the running job waits (a worker
retries its finish while the database cannot write, ``until_the_database_answers``) and completes once
space returns, as does a create sent again; and the SQLite database passes its integrity check.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .embedded import MACHINES, Embedded

ENDED = ("completed", "failed", "aborted")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 192 MB tmpfs mounted for this test (mounting needs root: scripts/test runs as root or through sudo)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=192m,mode=0755", "tmpfs", str(mount)]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run([*command[: command.index("mount")], "umount", "-l", str(mount)], check=False)


class Filler:
    """Keeps a file system full: writes until no byte is left, and goes on taking every byte the stack frees
    (a consumed broker message, a culled cache file) until ``release``, so the disk stays full while the
    test asks for work, as a disk really filling up would."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "filler"
        self._stop = threading.Event()
        self._full = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)

    def __enter__(self) -> Filler:
        self._thread.start()
        assert self._full.wait(60), "the disk never filled"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _fill(self) -> None:
        with self.path.open("wb", buffering=0) as output:  # unbuffered: nothing left to fail at close
            while not self._stop.is_set():
                for size in (1 << 20, 1 << 12, 1):
                    block = b"\0" * size
                    while True:
                        try:
                            output.write(block)
                        except OSError as error:
                            assert error.errno == errno.ENOSPC, error
                            break
                self._full.set()
                time.sleep(0.01)


@pytest.fixture
def embedded(small_disk: Path) -> Iterator[Embedded]:
    stack = Embedded(small_disk / "data")
    stack.log = small_disk.parent / "run.log"  # the stack's own output stays off the full disk
    try:
        yield stack
    finally:
        stack.stop()


def test_a_full_data_folder_gives_a_clear_error_loses_nothing_and_work_resumes(embedded: Embedded, small_disk):
    embedded.start()
    create = {"name": "before", "clusterTemplate": "demo-web", "numMachines": 3}
    status, answer = embedded.api("POST", "/api/v2/clusters", create)
    assert status == 202, answer
    running = answer["job"]["id"]
    embedded.wait_job(running, until=lambda job: job["progress"]["completed"] >= 1)

    with Filler(small_disk):
        time.sleep(3)  # the running job's next writes now fail
        status, answer = embedded.api("POST", "/api/v2/clusters", {**create, "name": "during"})
        assert status == 503, answer
        assert answer["error"]["code"] == "unavailable" and "disk is full" in answer["error"]["message"], answer
    status, page = embedded.api("GET", "/api/v2/clusters?name=during")
    assert status == 200 and page["count"] == 0, page  # nothing half-made by the refused create
    ended = embedded.wait_job(running, until=lambda job: job["status"] in ENDED)
    assert ended["status"] == "completed", f"{ended}\n{embedded.tail()}"
    status, answer = embedded.api("POST", "/api/v2/clusters", {**create, "name": "during"})
    assert status == 202, answer
    again = embedded.wait_job(answer["job"]["id"], until=lambda job: job["status"] in ENDED)
    assert again["status"] == "completed", again
    for cluster in (ended["cluster"], again["cluster"]):
        nodes, single = (int(value) for value in embedded.shell(MACHINES.format(cluster=cluster)).split()[-2:])
        assert nodes == single == 3, "a machine was duplicated or never made"
    with sqlite3.connect(embedded.data / "loom.sqlite3") as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
