"""``smtp-oauth sandbox`` restarted keeps what is configured against it (real subprocess restarts)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.sandbox.certs import make_certificates

READY_LINE = "Press Ctrl-C to stop."
USER_ADDITIONS = """
[[relay.users]]
name = "printer"
password_hash = "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_OAUTH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(directory: Path) -> list[str]:
    return [sys.executable, "-m", "smtp_oauth.cli.main", "sandbox", "--dir", str(directory)]


@dataclass(frozen=True)
class Start:
    """What one start left behind: its banner and the files a user's configuration points at."""

    banner: str
    config: dict[str, Any]
    ca: bytes
    server_certificate: bytes
    signing_key: bytes


def run_once(directory: Path) -> Start:
    """Start the sandbox, wait for its banner, stop it with SIGTERM; what it wrote."""
    process = subprocess.Popen(
        _command(directory), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip() == READY_LINE:
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)  # a loaded CI machine: stopping takes a while
    assert process.returncode == 0, "".join(lines) + stderr
    with (directory / "sandbox.toml").open("rb") as handle:
        config = tomllib.load(handle)
    tls = directory / "tls"
    return Start(
        banner="".join(lines),
        config=config,
        ca=(tls / "sandbox-ca.pem").read_bytes(),
        server_certificate=(tls / "sandbox-server.pem").read_bytes(),
        signing_key=(directory / "signing-key.pem").read_bytes(),
    )


@pytest.fixture(scope="module")
def restarted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Start, Start]:
    """A first start, the user's additions to sandbox.toml, a second start."""
    directory = tmp_path_factory.mktemp("restart") / "data"
    first = run_once(directory)
    config = directory / "sandbox.toml"
    text = config.read_text()
    text = text.replace("[relay]\n", '[relay]\ntls_certificate = "relay.pem"\ntls_key = "relay.key"\n', 1)
    config.write_text(text + USER_ADDITIONS)
    return first, run_once(directory)


def test_restart_keeps_the_client_secret_and_ids(restarted: tuple[Start, Start]) -> None:
    """The tenant id, client id and client secret in sandbox.toml are the same after a restart."""
    first, second = restarted
    for key in ("tenant_id", "client_id", "client_secret"):
        assert second.config["identity"][key] == first.config["identity"][key]


def test_restart_keeps_the_ca_and_server_certificate(restarted: tuple[Start, Start]) -> None:
    """The CA and server certificate files are not regenerated while they are valid."""
    first, second = restarted
    assert second.ca == first.ca
    assert second.server_certificate == first.server_certificate


def test_restart_keeps_the_token_signing_key(restarted: tuple[Start, Start]) -> None:
    """Tokens cached before a restart still verify: the signing key is kept."""
    first, second = restarted
    assert second.signing_key == first.signing_key


def test_restart_keeps_the_ports(restarted: tuple[Start, Start]) -> None:
    """The identity provider, SMTP, Graph and relay addresses are the same after a restart."""
    first, second = restarted
    assert second.config["identity"]["authority_host"] == first.config["identity"]["authority_host"]
    assert second.config["smtp"]["port"] == first.config["smtp"]["port"]
    assert second.config["graph"]["endpoint"] == first.config["graph"]["endpoint"]
    assert second.config["relay"]["listen"] == first.config["relay"]["listen"]


def test_restart_keeps_the_users_relay_additions(restarted: tuple[Start, Start]) -> None:
    """[[relay.users]] and the relay TLS keys a user added to sandbox.toml survive a restart."""
    _, second = restarted
    relay = second.config["relay"]
    assert [user["name"] for user in relay["users"]] == ["printer"]
    assert relay["tls_certificate"] == "relay.pem"
    assert relay["tls_key"] == "relay.key"


def test_banner_says_the_configuration_is_kept(restarted: tuple[Start, Start]) -> None:
    """The banner no longer says the configuration is regenerated at every start."""
    _, second = restarted
    assert "regenerated" not in second.banner
    assert "kept across restarts" in second.banner


def test_foreign_or_missing_ca_is_replaced(tmp_path: Path) -> None:
    """A CA that did not issue the server certificate is replaced, with a matching new pair."""
    directory = tmp_path / "data"
    first = run_once(directory)
    make_certificates(tmp_path / "other")
    (directory / "tls" / "sandbox-ca.pem").write_bytes((tmp_path / "other" / "sandbox-ca.pem").read_bytes())
    second = run_once(directory)
    assert second.ca != first.ca
    assert second.server_certificate != first.server_certificate
    assert second.config["identity"]["client_secret"] == first.config["identity"]["client_secret"]


def _sandbox_with_its_port_taken(tmp_path: Path) -> tuple[Path, int, socket.socket]:
    """A sandbox's directory, its kept SMTP port, and a socket of ours listening on that port."""
    for attempt in range(5):
        directory = tmp_path / f"data{attempt}"
        port = run_once(directory).config["smtp"]["port"]
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", port))
        except OSError as exc:
            taken.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue  # a parallel test got the freed ephemeral port first: a fresh sandbox, a new port
        taken.listen()
        return directory, port, taken
    pytest.fail("five sandboxes' ports were all taken by other programs before this test could bind them")


def test_kept_port_taken_is_one_line_and_exit_75(tmp_path: Path) -> None:
    """A kept port another program took: one line naming it and the fix, exit 75."""
    directory, port, taken = _sandbox_with_its_port_taken(tmp_path)
    with taken:
        done = subprocess.run(
            _command(directory), capture_output=True, text=True, env=_env(), timeout=60, check=False
        )
    assert done.returncode == 75
    # The services that did start log their INFO lines; the failure is one line of its own.
    [line] = [each for each in done.stderr.splitlines() if each.startswith("smtp-oauth sandbox:")]
    assert "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in line
    assert "--smtp-port 0" in line
