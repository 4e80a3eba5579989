"""The demo's relay step: a legacy program's plain SMTP + AUTH LOGIN, relayed to Exchange with OAuth.

Kept apart from ``demo.py`` because it needs the relay, which a build may leave out: this module
is imported only when ``smtp_oauth.relay.service`` exists. The legacy client is the standard
library's ``smtplib``, as old software would use it, run in a thread so the event loop keeps
serving the relay and the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import smtplib
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtp_oauth.sandbox import Sandbox

__all__ = ["LOCAL_USER", "relay_round_trip"]

LOCAL_USER = "legacy-app"
READY_TIMEOUT = 10.0
SMTP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RelayStepError(OSError):
    """The relay did not start, or refused the legacy client's message."""


def _legacy_submit(host: str, port: int, password: str, message: EmailMessage, recipient: str) -> str:
    """What an old application does: plain SMTP on the LAN/loopback, AUTH LOGIN, send. Returns the reply."""
    sender = str(message["From"])
    with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT) as client:
        client.ehlo("legacy-app.example")
        client.user, client.password = LOCAL_USER, password
        code, text = client.auth("LOGIN", client.auth_login)
        if code != 235:
            raise RelayStepError(f"AUTH LOGIN refused: {code} {text.decode(errors='replace')}")
        client.mail(sender)
        code, text = client.rcpt(recipient)
        if code != 250:
            raise RelayStepError(f"RCPT refused: {code} {text.decode(errors='replace')}")
        code, text = client.data(message.as_bytes())
        if code != 250:
            raise RelayStepError(f"DATA refused: {code} {text.decode(errors='replace')}")
        return f"{code} {text.decode(errors='replace')}"


async def relay_round_trip(
    sandbox: Sandbox,
    *,
    subject: str,
    recipient: str,
    wait_for_delivery: Callable[[], Awaitable[Any]],
) -> str:
    """Run the relay with one local user, submit a message with smtplib, wait until it is delivered.

    Returns the relay's reply to DATA. The relay is stopped (gracefully) before returning.
    """
    from smtp_oauth.relay.passwords import hash_password
    from smtp_oauth.relay.service import RelayService

    password = secrets.token_urlsafe(16)
    settings = sandbox.settings(
        relay={
            "listen": "127.0.0.1:0",
            "spool_dir": str(sandbox.directory / "relay-spool"),
            "messages_per_minute": 0,
            "shutdown_timeout": "5s",
            "users": [{"name": LOCAL_USER, "password_hash": hash_password(password)}],
        }
    )
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()

    def on_ready(addresses: list[tuple[str, int]]) -> None:
        if not ready.done():
            ready.set_result(list(addresses))

    service = RelayService(settings)
    relay = asyncio.create_task(service.run(ready=on_ready))
    try:
        waiting: set[asyncio.Future[Any]] = {relay, ready}
        await asyncio.wait(waiting, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            if relay.done():
                relay.result()  # raises the relay's own error (ConfigurationError, OSError)
            raise RelayStepError(f"the relay did not start listening within {READY_TIMEOUT:.0f} s")
        host, port = ready.result()[0][:2]
        message = EmailMessage()
        message["From"] = settings.smtp.username
        message["To"] = recipient
        message["Subject"] = subject
        message.set_content("Sent by a legacy program with plain SMTP and a local password.\n")
        reply = await asyncio.to_thread(_legacy_submit, host, port, password, message, recipient)
        await wait_for_delivery()
        return reply
    finally:
        # A graceful stop, as SIGTERM would do; its outcome no longer changes what the step showed.
        service.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay, STOP_TIMEOUT)
