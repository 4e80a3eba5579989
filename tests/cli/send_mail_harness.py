"""Running the installed ``send-mail`` against a warm sandbox: shared by the send-mail test modules."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox

SEND_MAIL = Path(sys.executable).parent / "send-mail"
_FOREIGN_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "MSAL_FORCE_REGION", "SSL_CERT_FILE")


@dataclass(frozen=True)
class Run:
    """What a finished ``send-mail`` process left behind."""

    returncode: int
    stdout: bytes
    stderr: str


async def run_send_mail(
    *args: str | Path,
    env: dict[str, str],
    stdin: bytes = b"",
    program: Path = SEND_MAIL,
    python_flags: tuple[str, ...] = (),
) -> Run:
    """Run the command (or ``python <flags> -m smtp_oauth.cli.send_mail``) off the event loop."""
    if python_flags:
        command = [sys.executable, *python_flags, "-m", "smtp_oauth.cli.send_mail"]
    else:
        command = [str(program)]
    command += [str(arg) for arg in args]
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        input=stdin,
        capture_output=True,
        env=env,
        cwd=env["XDG_STATE_HOME"].rsplit("/", 1)[0],  # a directory without a stray smtp-oauth.toml
        timeout=60,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


@asynccontextmanager
async def warm_sandbox(directory: Path) -> AsyncIterator[Sandbox]:
    """A running sandbox whose config's token cache holds a token, as after the day's first send.

    Shared by a module's tests: starting a sandbox and fetching the first token cost more than
    the send-mail run a test is about.
    """
    from smtp_oauth.tokens.provider import create_token_provider

    async with Sandbox(directory) as sandbox:
        with pytest.MonkeyPatch.context() as patch:  # module fixtures run before conftest's cleaning
            for name in [*_FOREIGN_ENV, *(n for n in os.environ if n.startswith("SMTP_OAUTH_"))]:
                patch.delenv(name, raising=False)
            await create_token_provider(sandbox.settings()).access_token()
        yield sandbox


def mailbox_of(sandbox: Sandbox) -> str:
    """The sandbox mailbox the configuration authenticates as."""
    return sandbox.settings().smtp.username
