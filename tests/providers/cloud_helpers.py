"""Test-only plumbing for the libcloud drivers: a moto EC2 server, a tiny misbehaving HTTP server, and the
``LOOM_TEST_CLOUD_HOOK`` callable that points the ``aws`` driver at either.

The two adjustments the lab notes describe for moto live here and nowhere else: the driver is built with
``signature_version="4"`` (with SigV2 moto answers as if it were S3), and its responses are rewritten before
libcloud parses them, because moto writes the EC2 namespace without the trailing slash libcloud expects
(every list would parse empty) and puts it on error documents too (real EC2's have none, and libcloud
finds no error code then). Production code never sees any of this: the hook is only honoured under the
test settings (``providers/drivers/cloud.py``).

The hook reads its endpoint from the environment, so worker processes started by a test reach moto too:
``LOOM_TEST_CLOUD_HOOK=tests.providers.cloud_helpers:ec2_endpoint_hook`` and ``LOOM_TEST_EC2_ENDPOINT``.
"""

from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2Connection, EC2NodeDriver, EC2Response

HOOK = "tests.providers.cloud_helpers:ec2_endpoint_hook"
ENDPOINT_ENV = "LOOM_TEST_EC2_ENDPOINT"
SIGNATURE_ENV = "LOOM_TEST_EC2_SIGNATURE"
MOTO_NAMESPACE = NAMESPACE.rstrip("/")


class MotoEC2Response(EC2Response):
    """EC2 responses as libcloud expects them from real EC2 (see the module docstring)."""

    def parse_body(self) -> Any:
        self.body = self.body.replace(f'xmlns="{MOTO_NAMESPACE}"', f'xmlns="{NAMESPACE}"')
        return super().parse_body()

    def parse_error(self) -> Any:
        self.body = self.body.replace(f' xmlns="{MOTO_NAMESPACE}"', "")
        return super().parse_error()


class MotoEC2Connection(EC2Connection):
    responseCls = MotoEC2Response


class MotoEC2NodeDriver(EC2NodeDriver):
    connectionCls = MotoEC2Connection


def ec2_endpoint_hook(
    provider_type: str, driver_class: type[NodeDriver], arguments: dict[str, Any]
) -> tuple[type[NodeDriver], dict[str, Any]]:
    """``LOOM_TEST_CLOUD_HOOK`` target: send the ``aws`` driver to ``LOOM_TEST_EC2_ENDPOINT`` (plain HTTP)."""
    endpoint = os.environ.get(ENDPOINT_ENV, "")
    if provider_type != "aws" or not endpoint:
        return driver_class, arguments
    parts = urlsplit(endpoint)
    return MotoEC2NodeDriver, {
        **arguments,
        "host": parts.hostname,
        "port": parts.port,
        "secure": False,
        "signature_version": os.environ.get(SIGNATURE_ENV, "4"),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """``moto_server`` on a free loopback port, as a subprocess; yields its URL, stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    executable = Path(sys.executable).with_name("moto_server")
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; its log:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Answer:
    """What the scripted server answers: a status, a body and headers; ``hang`` seconds of silence first."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0


@dataclass
class ScriptedServer:
    """An HTTP server on loopback that answers every request with ``answer`` and records the requests."""

    url: str
    requests: list[str]
    answer: Answer


@contextmanager
def scripted_server(answer: Answer) -> Iterator[ScriptedServer]:
    requests: list[str] = []
    state = ScriptedServer(url="", requests=requests, answer=answer)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            requests.append(f"{self.command} {self.path}")
            if state.answer.hang:
                time.sleep(state.answer.hang)
            body = state.answer.body.encode()
            try:
                self.send_response(state.answer.status)
                for name, value in {"Content-Type": "text/xml", **state.answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout test): nothing to answer

        do_GET = do_POST = do_DELETE = do_PUT = _reply

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def ec2_error(code: str, message: str) -> str:
    """An error document shaped like real EC2's (no namespace, Code then Message)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    )


def wait_until(predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy (no timing is asserted, only a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s")
        time.sleep(interval)


# --- libcloud's own recorded fixtures ---------------------------------------------------------------------------


def libcloud_test_module(name: str) -> ModuleType:
    """One of libcloud's own test modules (shipped in the wheel with ``libcloud/test/compute/fixtures``),
    for its ``MockHttp`` classes that answer with recorded API responses.

    Those modules import ``libcloud.test.secrets``, which the wheel ships only as ``secrets.py-dist`` (the
    template with dummy values their fixtures were recorded against): it is loaded under that name first.
    Their MockHttp needs ``requests_mock`` (requirements-dev.txt).
    """
    if "libcloud.test.secrets" not in sys.modules:
        import libcloud.test

        template = Path(libcloud.test.__file__).with_name("secrets.py-dist")
        loader = SourceFileLoader("libcloud.test.secrets", str(template))
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
        loader.exec_module(module)
        sys.modules[loader.name] = module
    return importlib.import_module(name)


@dataclass(frozen=True)
class Sent:
    """One request the driver sent: method, path (no query) and decoded body."""

    method: str
    path: str
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def recording(base: type) -> type:
    """A subclass of libcloud's ``MockHttp`` class ``base`` that records every request, answers some paths
    differently (``once``: the next request to a path ending so; ``always``: every one) and lets a test edit
    recorded JSON documents before the driver sees them (``edits``, by path ending). Fresh state per call."""

    class Recorder(base):  # type: ignore[misc, valid-type]
        sent: ClassVar[list[Sent]] = []
        once: ClassVar[dict[tuple[str, str], tuple[int, str]]] = {}
        always: ClassVar[dict[str, tuple[int, str]]] = {}
        edits: ClassVar[dict[str, Callable[[Any], None]]] = {}

        def _get_request(self, method: str, url: str, body: Any = None, headers: Any = None) -> Any:
            cls = type(self)
            path = urlsplit(url).path.rstrip("/")
            text = body.decode() if isinstance(body, bytes) else str(body or "")
            cls.sent.append(Sent(method, path, text))
            json_headers = {"content-type": "application/json"}
            for (verb, ending), answer in list(cls.once.items()):
                if verb == method and path.endswith(ending):
                    del cls.once[(verb, ending)]
                    return answer[0], answer[1], json_headers, "scripted"
            for ending, answer in cls.always.items():
                if path.endswith(ending):
                    return answer[0], answer[1], json_headers, "scripted"
            status, reply, reply_headers, reason = super()._get_request(method, url, body, headers)
            for ending, edit in cls.edits.items():
                if path.endswith(ending) and reply:
                    document = json.loads(reply)
                    edit(document)
                    reply = json.dumps(document)
            return status, reply, reply_headers, reason

    Recorder.sent, Recorder.once, Recorder.always, Recorder.edits = [], {}, {}, {}
    Recorder.__name__ = f"Recording{base.__name__}"
    return Recorder
