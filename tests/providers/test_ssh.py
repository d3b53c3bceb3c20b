"""providers/ssh.py against real lab hosts (network namespaces with their own sshd; needs root)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from providers.credentials import (
    SshCredentials,
    generate_ed25519,
    keystore_keypair,
    public_key_of,
    register_resolver,
    ssh_credentials,
)
from providers.drivers import TerminalError, TransientError
from providers.secrets import register_secrets
from providers.ssh import (
    AuthenticationFailed,
    CommandFailed,
    CommandFailedTransient,
    CommandTimeout,
    ConnectFailed,
    ConnectionLost,
    HostKeyMismatch,
    Session,
    SudoPasswordRequired,
    UploadFailed,
    fingerprint,
    open_session,
    parse_host_key,
)
from tests.lab.fixtures import LabHosts, LabNode, processes_mentioning, wait_until


@pytest.fixture
def node(lab: LabHosts) -> LabNode:
    return lab.nodes[0]


@pytest.fixture
def session(node: LabNode) -> Iterator[Session]:
    with node.session(connect_timeout=5, command_timeout=30) as session:
        yield session


class TestRun:
    def test_runs_on_the_host_with_status_and_separate_streams(self, session: Session, node: LabNode) -> None:
        result = session.run("hostname; echo problem >&2")
        assert result.ok and result.exit_status == 0
        assert result.stdout == f"{node.hostname}\n"
        assert result.stderr == "problem\n"
        assert sorted(result.output.splitlines()) == sorted([node.hostname, "problem"])

    def test_list_commands_are_quoted(self, session: Session) -> None:
        result = session.run(["printf", "%s|", "a b", "$HOME", "it's", "; rm -rf /"])
        assert result.stdout == "a b|$HOME|it's|; rm -rf /|"

    def test_environment_and_stdin(self, session: Session) -> None:
        result = session.run('echo "$GREETING"; cat', env={"GREETING": "hello 'world'"}, stdin=b"from stdin\n")
        assert result.stdout == "hello 'world'\nfrom stdin\n"

    def test_bad_environment_name_is_refused(self, session: Session) -> None:
        with pytest.raises(TerminalError, match="environment variable name"):
            session.run("true", env={"A;B": "x"})

    def test_output_is_streamed_line_by_line_while_the_command_runs(self, session: Session) -> None:
        # The command waits for a file that only the callback creates once it saw the first line: if lines
        # were delivered only at the end, the command would never finish (and time out).
        marker = Path(f"/tmp/loom-ssh-stream-{uuid.uuid4().hex}")  # /tmp is shared with the lab hosts
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            if line == "waiting":
                marker.touch()

        try:
            result = session.run(
                f"echo waiting; while [ ! -e {marker} ]; do sleep 0.05; done; echo done", timeout=20, on_line=on_line
            )
        finally:
            marker.unlink(missing_ok=True)
        assert lines == ["waiting", "done"]
        assert result.stdout == "waiting\ndone\n"

    def test_utf8_output_is_decoded(self, session: Session) -> None:
        result = session.run("printf 'h\\303\\251llo \\342\\234\\223\\n'")
        assert result.stdout == "héllo ✓\n"

    def test_session_reuses_one_connection(self, session: Session) -> None:
        first = session.run("echo $SSH_CONNECTION").stdout
        second = session.run("echo $SSH_CONNECTION").stdout
        assert first == second and first.strip()

    def test_secrets_are_redacted_in_results_and_stream(self, node: LabNode) -> None:
        known, own = f"known-secret-{uuid.uuid4().hex[:8]}", f"session-secret-{uuid.uuid4().hex[:8]}"
        register_secrets([known])
        lines: list[str] = []
        with node.session(on_line=lines.append, secrets=[own]) as session, pytest.raises(CommandFailed) as raised:
            session.run(f"echo {known}; echo {own} >&2; exit 1")
        text = str(raised.value) + repr(raised.value.result) + "".join(lines)
        assert known not in text and own not in text
        assert raised.value.result.stdout == "***\n" and raised.value.result.stderr == "***\n"
        assert lines and all(line == "***" for line in lines)


class TestExitAndTimeouts:
    def test_non_zero_exit_is_terminal_and_carries_the_result(self, session: Session) -> None:
        with pytest.raises(CommandFailed) as raised:
            session.run("echo partial; echo 'disk full' >&2; exit 3")
        error = raised.value
        assert isinstance(error, TerminalError) and error.retryable is False
        assert error.result.exit_status == 3 and error.result.stdout == "partial\n"
        assert "status 3" in str(error) and "disk full" in str(error)

    def test_listed_exit_status_is_transient(self, session: Session) -> None:
        with pytest.raises(CommandFailedTransient) as raised:
            session.run("exit 75", transient_exit_statuses={75})
        assert isinstance(raised.value, TransientError) and raised.value.retryable is True

    def test_check_false_returns_the_failure(self, session: Session) -> None:
        assert session.run("exit 4", check=False).exit_status == 4

    def test_command_that_outlives_its_timeout_is_killed_and_transient(self, session: Session) -> None:
        marker = f"{uuid.uuid4().int % 10**6 + 1000}.5"  # an unusual sleep length to recognise the process
        with pytest.raises(CommandTimeout) as raised:
            session.run(f"echo started; sleep {marker}", timeout=1)
        assert raised.value.retryable is True
        assert "did not finish within 1 s" in str(raised.value)
        assert raised.value.result.stdout == "started\n"
        assert processes_mentioning(f"sleep {marker}") == []  # killed on the node, not left running
        assert session.run("echo still usable").stdout == "still usable\n"

    def test_background_process_does_not_hold_the_command(self, session: Session) -> None:
        # Plain ssh would wait until the background job closes its output; the session returns.
        marker = f"{uuid.uuid4().int % 10**6 + 1000}.25"
        result = session.run(f"(sleep {marker}; echo late) & echo early", timeout=20)
        assert result.stdout == "early\n"
        for pid in processes_mentioning(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)


class TestConnectionLoss:
    def test_connection_lost_mid_command_is_transient_and_the_session_reconnects(self, lab: LabHosts) -> None:
        node = lab.nodes[3]
        host = lab.lab.get(node.machine_id)
        marker = f"{uuid.uuid4().int % 10**6 + 1000}.5"

        def cut_the_connection() -> None:
            # What a node crash or a network cut looks like from here: every sshd process serving the
            # connection dies (the listener stays, so the host is reachable again).
            wait_until("the command to run", lambda: processes_mentioning(f"sleep {marker}"))
            for pid in set(lab.lab.pids(node.machine_id)) - {lab.lab.sshd_pid(host)}:
                # Killing the connection's first process can end the others before they are reached.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        with node.session() as session:
            cutter = threading.Thread(target=cut_the_connection)
            cutter.start()
            try:
                with pytest.raises(ConnectionLost) as raised:
                    session.run(f"sleep {marker}", timeout=30)
            finally:
                cutter.join()
            assert raised.value.retryable is True
            wait_until("the client to notice", lambda: not session.connected)
            assert session.run("echo again").stdout == "again\n"  # reconnected on its own

    def test_command_killed_by_a_signal_is_a_failure_not_a_lost_connection(self, session: Session) -> None:
        with pytest.raises(CommandFailed, match="was killed by a signal"):
            session.run("kill -KILL $$")


class TestHostKeys:
    def test_first_contact_records_the_key_the_driver_reported(self, node: LabNode) -> None:
        with node.session(host_key=None) as session:
            assert session.first_contact
            assert session.host_key == node.host_key

    def test_pinned_key_is_verified(self, node: LabNode) -> None:
        with node.session() as session:
            assert not session.first_contact
            assert session.host_key == node.host_key

    def test_a_different_key_is_refused_naming_both(self, lab: LabHosts) -> None:
        node, other = lab.nodes[0], lab.nodes[1]
        with pytest.raises(HostKeyMismatch) as raised:
            node.session(host_key=other.host_key).connect()
        assert raised.value.retryable is False
        assert fingerprint(parse_host_key(other.host_key)[1]) in str(raised.value)
        assert fingerprint(parse_host_key(node.host_key)[1]) in str(raised.value)

    def test_a_pinned_key_of_another_type_is_refused(self, node: LabNode) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rsa_line = public_key_of(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ).decode()
        )
        with pytest.raises(HostKeyMismatch, match="no longer offers a ssh-rsa host key"):
            node.session(host_key=rsa_line).connect()


def _private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


class TestAuthentication:
    def test_rsa_ecdsa_and_ed25519_keys_from_strings(self, lab: LabHosts) -> None:
        node = lab.nodes[2]
        keys = [
            _private(rsa.generate_private_key(public_exponent=65537, key_size=2048), serialization.PrivateFormat.PKCS8),
            _private(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.OpenSSH),
            _private(ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.TraditionalOpenSSL),
            generate_ed25519()[0],
        ]
        provider_key = lab.driver.keypair.public_key
        lab.lab.authorize(node.machine_id, "root", "\n".join([provider_key, *map(public_key_of, keys)]))
        try:
            for private in keys:
                with Session(node.address, user="root", private_key=private, host_key=node.host_key) as session:
                    assert session.run("id -u").stdout == "0\n"
        finally:
            lab.lab.authorize(node.machine_id, "root", provider_key)

    def test_unknown_key_is_terminal(self, node: LabNode) -> None:
        stranger = generate_ed25519()[0]
        with pytest.raises(AuthenticationFailed) as raised:
            Session(node.address, user="root", private_key=stranger, host_key=node.host_key).connect()
        assert raised.value.retryable is False and "refused the key for user root" in str(raised.value)

    def test_user_without_authorized_keys_is_refused(self, node: LabNode) -> None:
        with pytest.raises(AuthenticationFailed):
            node.session(user="nobody").connect()

    def test_unreadable_private_key_is_terminal_and_not_echoed(self, node: LabNode) -> None:
        garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n"
        with pytest.raises(TerminalError, match="private key cannot be read") as raised:
            Session(node.address, user="root", private_key=garbage).connect()
        assert "bm90IGEga2V5" not in str(raised.value)

    def test_unknown_credentials_reference_is_terminal(self, node: LabNode) -> None:
        with pytest.raises(TerminalError, match="known scheme"):
            open_session(node.address, user="root", credentials_ref="vault:nope")

    def test_missing_keystore_key_is_terminal(self, node: LabNode) -> None:
        with pytest.raises(TerminalError, match="not in this installation's data folder"):
            open_session(node.address, user="root", credentials_ref="keystore:no-such-key")


class TestCredentials:
    def test_keystore_key_is_made_once_even_when_asked_concurrently(self, tmp_path: Path) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            pairs = list(pool.map(lambda _: keystore_keypair("provider-x", folder=tmp_path), range(16)))
        assert len({(pair.ref, pair.public_key) for pair in pairs}) == 1
        path = pairs[0].path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert sorted(p.name for p in path.parent.iterdir()) == ["provider-x"]  # no temporary files left
        assert public_key_of(path.read_text()) == pairs[0].public_key

    def test_reference_resolves_to_the_key_which_stays_out_of_repr(self) -> None:
        name = f"test-{uuid.uuid4().hex[:12]}"
        pair = keystore_keypair(name)
        try:
            credentials = ssh_credentials(pair.ref, user="deploy")
            assert credentials.user == "deploy" and public_key_of(credentials.private_key) == pair.public_key
            assert "PRIVATE" not in repr(credentials)
        finally:
            pair.path.unlink()

    def test_other_key_sources_plug_in_by_scheme(self) -> None:
        private, _ = generate_ed25519()
        register_resolver("test-pool", lambda rest, user: SshCredentials(user=f"{user}-{rest}", private_key=private))
        assert ssh_credentials("test-pool:h1", user="ops") == SshCredentials(user="ops-h1", private_key=private)

    @pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
    def test_keystore_names_cannot_leave_the_folder(self, name: str, tmp_path: Path) -> None:
        with pytest.raises(TerminalError, match="keystore key name"):
            keystore_keypair(name, folder=tmp_path)


@contextmanager
def tcp_server(behaviour: str) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts and then stays silent ("silent") or hangs up ("close")."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if behaviour == "close":
                connection.close()
            else:
                held.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()
        for connection in held:
            connection.close()


class TestConnectErrors:
    def test_refused_is_transient(self, node: LabNode) -> None:
        with pytest.raises(ConnectFailed, match="connection refused") as raised:
            node.session(port=2222, connect_timeout=2).connect()
        assert raised.value.retryable is True

    def test_no_banner_is_transient(self, node: LabNode) -> None:
        with tcp_server("silent") as port, pytest.raises(ConnectFailed, match="handshake") as raised:
            Session(
                "127.0.0.1", port=port, user="root", private_key=generate_ed25519()[0], connect_timeout=0.5
            ).connect()
        assert raised.value.retryable is True

    def test_hang_up_during_handshake_is_transient(self) -> None:
        with tcp_server("close") as port, pytest.raises(ConnectFailed) as raised:
            Session("127.0.0.1", port=port, user="root", private_key=generate_ed25519()[0], connect_timeout=2).connect()
        assert raised.value.retryable is True

    def test_unreachable_address_is_transient(self, node: LabNode) -> None:
        # An address of the lab subnet that no host has: nobody answers ARP, the connect cannot complete.
        unused = node.address.rsplit(".", 1)[0] + ".254"
        with pytest.raises(ConnectFailed) as raised:
            Session(unused, user="root", private_key=generate_ed25519()[0], connect_timeout=0.5).connect()
        assert raised.value.retryable is True


class TestSudo:
    def test_root_needs_no_sudo(self, session: Session) -> None:
        assert session.run("id -u", sudo=True).stdout == "0\n"

    def test_passwordless_sudo_user(self, lab: LabHosts, sudo_users: dict[str, str]) -> None:
        with lab.nodes[0].session(user=sudo_users["sudo"]) as session:
            assert session.run("id -un").stdout == f"{sudo_users['sudo']}\n"
            assert session.run("id -u", sudo=True).stdout == "0\n"
            assert session.run('echo "$X"', sudo=True, env={"X": "kept"}).stdout == "kept\n"

    def test_sudo_that_needs_a_password_is_a_clear_terminal_error(
        self, lab: LabHosts, sudo_users: dict[str, str]
    ) -> None:
        with (
            lab.nodes[0].session(user=sudo_users["nopw"]) as session,
            pytest.raises(SudoPasswordRequired, match="NOPASSWD") as raised,
        ):
            session.run("id -u", sudo=True)
        assert raised.value.retryable is False

    def test_upload_as_root_through_sudo(self, lab: LabHosts, sudo_users: dict[str, str], tmp_path: Path) -> None:
        target = f"/root/sudo-upload-{uuid.uuid4().hex[:8]}"
        tree = tmp_path / "tree"
        (tree / "bin").mkdir(parents=True)
        (tree / "bin" / "tool").write_text("#!/bin/sh\necho tool ran as $(id -u)\n")
        (tree / "bin" / "tool").chmod(0o755)
        with lab.nodes[0].session(user=sudo_users["sudo"]) as session:
            with pytest.raises(UploadFailed, match="sudo=True"):
                session.upload(b"x", f"{target}.txt")
            session.upload(b"as root\n", f"{target}.txt", mode=0o640, sudo=True)
            assert session.upload_tree(tree, target, sudo=True) == 1
            listing = session.run(f"stat -c '%U %a' {target}.txt; {target}/bin/tool", sudo=True).stdout
            leftovers = session.run("ls -a /tmp | grep -c '^.loom-upload-' || true").stdout
        assert listing == "root 640\ntool ran as 0\n"
        assert leftovers == "0\n"


class TestUpload:
    def test_bytes_and_files_with_modes(self, session: Session, tmp_path: Path) -> None:
        local = tmp_path / "config.ini"
        local.write_text("[main]\nport = 80\n")
        folder = f"/root/upload-{uuid.uuid4().hex[:8]}"
        session.run(["mkdir", folder])
        session.upload(b"secret\n", f"{folder}/key", mode=0o600)
        session.upload(local, f"{folder}/config.ini")
        session.upload(b"replaced\n", f"{folder}/key", mode=0o600)  # replaces atomically, no temp file left
        listing = session.run(f"cd {folder} && stat -c '%n %a' * && ls -A | wc -l && cat key config.ini").stdout
        assert listing == "config.ini 644\nkey 600\n2\nreplaced\n[main]\nport = 80\n"

    def test_tree_keeps_modes_folders_and_links(self, session: Session, tmp_path: Path) -> None:
        tree = tmp_path / "scripts"
        (tree / "lib" / "deep").mkdir(parents=True)
        (tree / "run.sh").write_text('#!/bin/sh\n. "$(dirname "$0")/lib/deep/common.sh"\necho "run $VALUE"\n')
        (tree / "run.sh").chmod(0o755)
        (tree / "lib" / "deep" / "common.sh").write_text("VALUE=42\n")
        (tree / "current").symlink_to("run.sh")
        remote = f"/root/tree-{uuid.uuid4().hex[:8]}/scripts"
        assert session.upload_tree(tree, remote) == 2
        assert session.run(f"{remote}/current").stdout == "run 42\n"
        assert session.run(f"stat -c %a {remote}/run.sh {remote}/lib/deep/common.sh").stdout == "755\n644\n"

    def test_missing_folder_is_terminal(self, session: Session) -> None:
        with pytest.raises(UploadFailed, match="No such file") as raised:
            session.upload(b"x", "/no/such/folder/file")
        assert raised.value.retryable is False

    def test_a_string_is_neither_bytes_nor_a_path(self, session: Session) -> None:
        with pytest.raises(TypeError, match="bytes or a path"):
            session.upload("/etc/hostname", "/root/x")  # type: ignore[arg-type]


class TestThreads:
    def test_many_sessions_from_many_threads(self, lab: LabHosts) -> None:
        def work(index: int) -> tuple[str, str]:
            node = lab.nodes[index % len(lab.nodes)]
            with node.session() as session:
                return node.hostname, session.run(f"hostname; echo {index}").stdout

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(work, range(32)))
        assert [output for _, output in results] == [f"{host}\n{i}\n" for i, (host, _) in enumerate(results)]

    def test_one_session_shared_by_threads(self, session: Session) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            outputs = list(pool.map(lambda i: session.run(f"echo {i}").stdout, range(24)))
        assert outputs == [f"{i}\n" for i in range(24)]
