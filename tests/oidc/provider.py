"""A real OpenID Connect provider for the single sign-on tests: ``provider.mjs`` (the npm ``oidc-provider``
package) run with Node, on a free port of this machine, for one test.

``scripts/test`` installs Node and the package (``npm ci`` here). Either missing fails the test that needs
the provider instead of skipping it, so CI cannot pass without single sign-on being exercised.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CLIENT_ID = "loom"
CLIENT_SECRET = "a-test-client-secret-of-reasonable-length"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OpenIdProvider:
    """One provider process. ``accounts`` maps a login to its claims (``groups`` among them); change them
    with ``set_accounts``, as the provider's admin would, and the next sign-in sees the change."""

    def __init__(
        self,
        folder: Path,
        redirect_uris: list[str],
        accounts: dict[str, dict[str, Any]],
        *,
        other_clients: tuple[dict[str, Any], ...] = (),
    ) -> None:
        node = shutil.which("node")
        if node is None or not (HERE / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("Node and tests/oidc/node_modules are needed: scripts/test installs them (npm ci)")
        self.port = _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.config = folder / "oidc-provider.json"
        self.clients = [
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris},
            *other_clients,
        ]
        self.set_accounts(accounts)
        self.log = folder / "oidc-provider.log"
        self.process = subprocess.Popen(
            [node, str(HERE / "provider.mjs"), str(self.config), str(self.port)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("wb"),
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it listens, or ends if it dies
        if not line.startswith("ready "):
            self.stop()
            pytest.fail(f"the OpenID provider did not start: {line!r} {self.log.read_text()[-2000:]}")

    def set_accounts(self, accounts: dict[str, dict[str, Any]]) -> None:
        document = {"issuer": self.issuer, "clients": self.clients, "accounts": accounts}
        partial = self.config.with_suffix(".part")
        partial.write_text(json.dumps(document))
        partial.replace(self.config)  # the provider reads it at every sign-in: never half a file

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def settings(self) -> dict[str, Any]:
        """The Loom settings that point at this provider."""
        return {
            "LOOM_OIDC_ISSUER": self.issuer,
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "LOOM_OIDC_NAME": "Test IdP",
        }


@contextmanager
def serving(
    folder: Path, settings: Any, redirect_uris: list[str], accounts: dict[str, Any], **kwargs: Any
) -> Iterator[OpenIdProvider]:
    """A provider for one test, with Loom's settings (pytest-django's ``settings``) pointing at it."""
    from tenants import sso

    provider = OpenIdProvider(folder, redirect_uris, accounts, **kwargs)
    for name, value in provider.settings().items():
        setattr(settings, name, value)
    sso.forget_provider_metadata()
    try:
        yield provider
    finally:
        sso.forget_provider_metadata()
        provider.stop()
