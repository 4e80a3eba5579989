"""Running the installed ``smtp-oauth`` command in tests: a clean environment and a subprocess.

Asynchronous runs use ``asyncio.create_subprocess_exec`` so the sandbox, which serves on the
test's event loop, keeps answering while the command talks to it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Variables of this machine that would change what the command does.
_FOREIGN = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "MSAL_FORCE_REGION", "SSL_CERT_FILE", "DISPLAY")


def smtp_oauth_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("smtp-oauth")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "smtp_oauth.cli.main"]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without SMTP_OAUTH_* and CA overrides, with XDG dirs under ``home``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SMTP_OAUTH_") and name not in _FOREIGN and name != "CREDENTIALS_DIRECTORY"
    }
    env.update(
        XDG_STATE_HOME=str(home / "state"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_RUNTIME_DIR=str(home / "run"),
        HOME=str(home),
        WAYLAND_DISPLAY="",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Completed:
    """Exit code and decoded output of one run."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str], cwd: Path, stdin: str | None = None) -> Completed:
    """Run ``smtp-oauth ARGS`` to completion (for commands that need no running sandbox)."""
    done = subprocess.run(
        [*smtp_oauth_command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return Completed(done.returncode, done.stdout, done.stderr)


async def run_program(
    *argv: str | Path, env: dict[str, str], cwd: str | Path, stdin: bytes | None = None, limit: float = 60
) -> tuple[int, bytes, bytes]:
    """Run a program to completion while this event loop keeps serving; (exit code, stdout, stderr).

    Killed when it outlives ``limit`` seconds, so a hung child fails the test instead of outliving it.
    """
    process = await asyncio.create_subprocess_exec(
        *map(str, argv),
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def run_cli_async(*args: str, env: dict[str, str], cwd: Path, limit: float = 60) -> Completed:
    """Run ``smtp-oauth ARGS`` while this event loop keeps serving (the sandbox runs on it)."""
    code, stdout, stderr = await run_program(*smtp_oauth_command(), *args, env=env, cwd=cwd, limit=limit)
    return Completed(code, stdout.decode(), stderr.decode())
