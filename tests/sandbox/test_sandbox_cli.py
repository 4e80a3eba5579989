"""``smtp-oauth sandbox`` as a user runs it: a real subprocess, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from smtp_oauth.settings.loading import load_settings

READY_LINE = "Press Ctrl-C to stop."


def _clean_env() -> dict[str, str]:
    # A module-scoped process starts before the per-test environment cleaning: clean it here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_OAUTH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(directory: Path) -> Iterator[tuple[subprocess.Popen[str], list[str], Path]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "smtp_oauth.cli.main", "sandbox", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(),
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.strip() == READY_LINE:
            break
    try:
        yield process, lines, directory
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.fixture(scope="module")
def running_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], list[str], Path]]:
    """One sandbox process shared by the tests that only look at it."""
    yield from _start(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str], Path]]:
    """A sandbox process of the test's own, for tests that stop it."""
    yield from _start(tmp_path / "data")


def test_banner_says_testing_only_and_how_to_use_it(
    running_sandbox: tuple[subprocess.Popen[str], list[str], Path],
) -> None:
    """The banner warns it is for testing and shows send-mail, relay and app usage."""
    _, lines, directory = running_sandbox
    text = "\n".join(lines)
    assert "FOR TESTING ONLY" in text
    config = directory.absolute() / "sandbox.toml"
    assert f"send-mail --config {config}" in text
    assert f"smtp-oauth --config {config} relay" in text
    assert f"SMTP_OAUTH_CONFIG={config}" in text
    assert str(directory.absolute() / "mail") in text


def test_written_config_reaches_the_running_idp(
    running_sandbox: tuple[subprocess.Popen[str], list[str], Path],
) -> None:
    """D/sandbox.toml loads, and its authority answers over HTTPS with its CA."""
    _, _, directory = running_sandbox
    settings = load_settings(directory / "sandbox.toml")
    assert settings.identity.ca_file is not None
    response = requests.get(
        f"{settings.identity.authority}/v2.0/.well-known/openid-configuration",
        verify=str(settings.identity.ca_file),
        timeout=10,
    )
    assert response.json()["token_endpoint"].startswith(settings.identity.authority)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_it_cleanly(
    sandbox_process: tuple[subprocess.Popen[str], list[str], Path], signum: signal.Signals
) -> None:
    """SIGTERM and Ctrl-C (SIGINT) stop both services and exit 0."""
    process, _, _ = sandbox_process
    process.send_signal(signum)
    assert process.wait(timeout=10) == 0


def test_taken_port_is_reported(tmp_path: Path) -> None:
    """A port already in use is a one-line error and exit 69, not a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "smtp_oauth.cli.main",
                "sandbox",
                "--dir",
                str(tmp_path),
                "--smtp-port",
                str(port),
            ],
            capture_output=True,
            env=_clean_env(),
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 69
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr
