"""``smtp-oauth demo``: the whole chain on the local sandbox, in one command, with nothing configured.

Starts the sandbox (fake Entra ID over HTTPS + fake Exchange Online SMTP) in a fresh directory and
walks what a deployment does: a token by client credentials, a message through the ``Mailer``
library, the installed ``send-mail`` command as a separate process, and, when the relay is
installed, a legacy program's plain SMTP + AUTH LOGIN through ``smtp-oauth relay`` to "Exchange".
Each step says what it proves. Nothing leaves 127.0.0.1; no Microsoft account is needed.
The directory is kept so the delivered messages can be read afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.errors import SmtpOAuthError

if TYPE_CHECKING:
    from smtp_oauth.sandbox import Sandbox

__all__ = ["add_arguments", "run"]

RECIPIENT = "someone@example.org"
DELIVERY_WAIT = 15.0  # seconds for the relay to hand a message to the fake Exchange
SUBPROCESS_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smtp-oauth demo``."""
    parser.add_argument(
        "--dir",
        metavar="D",
        type=Path,
        help="where the sandbox keeps its config, certificates and delivered mail (default: a new temp dir)",
    )


class StepFailed(Exception):
    """A demo step did not show what it should; the message says what was seen instead."""


class _Demo:
    """Numbered steps, each printed PASS/FAIL with what it proves; the first failure stops the run."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.exit_code = int(ExitCode.OK)

    async def step(self, title: str, proves: str, action: Callable[[], Awaitable[str]]) -> bool:
        self.number += 1
        started = time.monotonic()
        try:
            outcome = await action()
        except Exception as error:  # a self-test: any failure is reported as the step's FAIL
            self.exit_code = exit_code_of(error) if isinstance(error, SmtpOAuthError) else 1
            print(f"[{self.number}/{self.total}] FAIL  {title}: {error}", flush=True)
            hint = error.explain() if isinstance(error, SmtpOAuthError) else None
            if hint:
                print(f"             hint: {hint}", flush=True)
            return False
        elapsed = time.monotonic() - started
        print(f"[{self.number}/{self.total}] PASS  {title} ({elapsed:.1f} s): {outcome}", flush=True)
        print(f"             proves: {proves}", flush=True)
        return True


def _relay_available() -> bool:
    return importlib.util.find_spec("smtp_oauth.relay.service") is not None


def _demo_message(sender: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = RECIPIENT
    message["Subject"] = subject
    message.set_content(body)
    return message


def _send_mail_command() -> list[str]:
    """The installed ``send-mail``: next to this interpreter (a venv), else on PATH, else -m."""
    beside = Path(sys.executable).with_name("send-mail")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("send-mail")
    if found:
        return [found]
    return [sys.executable, "-m", "smtp_oauth.cli.send_mail"]


async def _wait_for_delivery(sandbox: Sandbox, subject: str) -> Any:
    deadline = time.monotonic() + DELIVERY_WAIT
    while time.monotonic() < deadline:
        for delivered in sandbox.delivered():
            if delivered.message["Subject"] == subject:
                return delivered
        await asyncio.sleep(0.05)
    raise StepFailed(
        f"no message with subject {subject!r} reached the fake Exchange within {DELIVERY_WAIT:.0f} s"
    )


async def _token_step(sandbox: Sandbox) -> str:
    from smtp_oauth.tokens.claims import decode_claims
    from smtp_oauth.tokens.provider import create_token_provider

    settings = sandbox.settings()
    token = await create_token_provider(settings).access_token()
    claims = decode_claims(token)
    return (
        f"aud {claims.get('aud')}, roles {', '.join(claims.get('roles', []))}, "
        f"from {settings.identity.authority}"
    )


async def _mailer_step(sandbox: Sandbox) -> str:
    from smtp_oauth.transport import create_transport

    settings = sandbox.settings()
    subject = f"smtp-oauth demo: Mailer {secrets.token_hex(4)}"
    message = _demo_message(settings.smtp.sender, subject, "Sent with smtp_oauth.Mailer.\n")
    async with create_transport(settings) as transport:
        result = await transport.send(message)
    delivered = await _wait_for_delivery(sandbox, subject)
    return f"{result.reply}; stored as {delivered.path.name}"


async def _graph_step(sandbox: Sandbox) -> str:
    """The same app through Microsoft Graph sendMail, as with transport = "graph" (no SMTP AUTH)."""
    from smtp_oauth.settings.loading import load_settings
    from smtp_oauth.transport import create_transport

    path = sandbox.write_config(sandbox.directory / "graph.toml", transport="graph")
    settings = load_settings(path)
    subject = f"smtp-oauth demo: Graph {secrets.token_hex(4)}"
    message = _demo_message(settings.smtp.sender, subject, "Sent through Microsoft Graph sendMail.\n")
    async with create_transport(settings) as transport:
        result = await transport.send(message)
    [delivered] = [d for d in sandbox.graph_delivered() if d.message["Subject"] == subject]
    return f"{result.reply}; stored as {delivered.path.name} in {delivered.path.parent.name}/ ({path.name})"


async def _send_mail_step(sandbox: Sandbox) -> str:
    subject = f"smtp-oauth demo: send-mail {secrets.token_hex(4)}"
    command = [
        *_send_mail_command(),
        "--config",
        str(sandbox.config_path),
        "--to",
        RECIPIENT,
        "--subject",
        subject,
    ]
    # An asyncio subprocess, so this loop keeps serving the sandbox while send-mail talks to it.
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    body = b"Sent by the send-mail command, as cron or a script would.\n"
    _, stderr = await asyncio.wait_for(process.communicate(body), SUBPROCESS_TIMEOUT)
    if process.returncode != 0:
        raise StepFailed(f"send-mail exited {process.returncode}: {stderr.decode(errors='replace').strip()}")
    delivered = await _wait_for_delivery(sandbox, subject)
    shown = f"{Path(command[0]).name} --config {sandbox.config_path.name} ..."
    return f"`{shown}` exited 0; stored as {delivered.path.name}"


async def _relay_step(sandbox: Sandbox) -> str:
    from smtp_oauth.cli.demo_relay import relay_round_trip

    subject = f"smtp-oauth demo: legacy app via relay {secrets.token_hex(4)}"
    delivered: list[Any] = []

    async def wait() -> None:
        delivered.append(await _wait_for_delivery(sandbox, subject))

    reply = await relay_round_trip(sandbox, subject=subject, recipient=RECIPIENT, wait_for_delivery=wait)
    return f"the relay answered {reply!r}, then delivered it upstream as {delivered[0].path.name}"


async def _demo(directory: Path) -> int:
    from smtp_oauth.sandbox import Sandbox

    with_relay = _relay_available()
    demo = _Demo(total=6 if with_relay else 5)
    print(f"smtp-oauth demo: a local sandbox in {directory} (fake Microsoft services, for testing only)\n")
    sandbox = Sandbox(directory)

    async def start() -> str:
        await sandbox.start()
        return (
            f"fake Entra ID at {sandbox.authority_host}, fake Exchange Online at "
            f"{sandbox.smtp_host}:{sandbox.smtp_port}, config {sandbox.config_path}"
        )

    steps: list[tuple[str, str, Callable[[], Awaitable[str]]]] = [
        ("start the sandbox", "the demo needs nothing but this package: no tenant, no network", start),
        (
            "get a token with client credentials",
            "MSAL over verified HTTPS gets an app-only token with the SMTP.SendAsApp role",
            lambda: _token_step(sandbox),
        ),
        (
            "send through the Mailer library",
            "STARTTLS + AUTH XOAUTH2 with that token, then delivery, as a Python application would",
            lambda: _mailer_step(sandbox),
        ),
        (
            "send with the send-mail command",
            "the sendmail-compatible command sends from a separate process, reusing the cached token",
            lambda: _send_mail_step(sandbox),
        ),
        (
            "send through Microsoft Graph",
            'transport = "graph": the same app and token cache, a Graph token, sendMail over HTTPS, '
            "for tenants with SMTP AUTH disabled",
            lambda: _graph_step(sandbox),
        ),
    ]
    if with_relay:
        steps.append(
            (
                "submit through the relay like a legacy app",
                "a program that only knows plain SMTP + AUTH LOGIN with a local password gets mail "
                "to Exchange Online via OAuth, through the store-and-forward relay",
                lambda: _relay_step(sandbox),
            )
        )
    delivered: tuple[int, Path | None] = (0, None)
    try:
        for title, proves, action in steps:
            if not await demo.step(title, proves, action):
                break
    finally:
        delivered = _delivered(sandbox)
        await sandbox.stop()
    _summary(delivered, directory, demo, with_relay)
    return demo.exit_code


def _delivered(sandbox: Sandbox) -> tuple[int, Path | None]:
    """How many messages the fake Exchange stored, and where (read before the sandbox stops)."""
    try:
        return len(sandbox.delivered()), sandbox.mail_dir
    except RuntimeError:  # the sandbox did not start
        return 0, None


def _summary(delivered: tuple[int, Path | None], directory: Path, demo: _Demo, with_relay: bool) -> None:
    count, mail_dir = delivered
    print()
    if mail_dir is not None:
        print(f"Delivered messages ({count}, each an .eml with its envelope in a .json): {mail_dir}")
    print(f"Sandbox directory (kept): {directory}")
    if not with_relay:
        print("The relay is not installed in this build: its step was left out.")
    if demo.exit_code:
        print("The demo FAILED at the step above.")
    else:
        print(
            f"All {demo.number} steps passed. Next: `smtp-oauth sandbox` to keep it running, "
            "or `smtp-oauth config --example` to set up Exchange Online."
        )


def _hermetic_environment() -> list[str]:
    """Drop this shell's SMTP_OAUTH_* settings from the process (and the send-mail it starts).

    The environment beats configuration files, so an exported SMTP_OAUTH_SMTP__PORT meant for the
    real Exchange would point the demo's clients away from the sandbox.
    """
    ignored = [
        name for name in os.environ if name.startswith("SMTP_OAUTH_") or name == "CREDENTIALS_DIRECTORY"
    ]
    for name in ignored:
        del os.environ[name]
    return sorted(ignored)


def run(args: argparse.Namespace) -> int:
    """Run the demo in ``--dir`` or a new temporary directory (kept afterwards)."""
    ignored = _hermetic_environment()
    if ignored:
        print(f"(ignoring {', '.join(ignored)}: the demo uses only the sandbox's settings)")
    directory: Path = args.dir or Path(tempfile.mkdtemp(prefix="smtp-oauth-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_demo(directory))
