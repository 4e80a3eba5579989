"""``fallback_transport = "graph"``: a message SMTP refuses with ``535 5.7.139`` goes through Graph.

5.7.139 means SMTP AUTH is disabled for the tenant or the mailbox
(``SmtpClientAuthenticationDisabled``, security defaults: https://aka.ms/smtp_auth_disabled).
Graph's sendMail needs no SMTP AUTH, so the same identity can still send. The switch is logged
once per mailbox (at WARNING, with the fix for SMTP) and remembered for an hour in the shared
``GraphClient``: the next messages of that mailbox go to Graph directly instead of logging in to
SMTP only to be refused again; after the hour SMTP is tried again, in case it was enabled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType

from smtp_oauth.errors import AuthenticationError
from smtp_oauth.graph.client import GraphClient
from smtp_oauth.graph.transport import GraphTransport
from smtp_oauth.transport import MessageSource, SendResult, Transport

__all__ = ["SMTP_AUTH_DISABLED", "FallbackTransport"]

logger = logging.getLogger("smtp_oauth.graph")

SMTP_AUTH_DISABLED = "5.7.139"
RETRY_SMTP_AFTER = 3600.0


class FallbackTransport:
    """SMTP first; Graph for a mailbox whose SMTP AUTH is disabled (see the module docstring)."""

    def __init__(self, primary: Transport, fallback: GraphTransport, client: GraphClient) -> None:
        self._primary = primary
        self._fallback = fallback
        self._client = client

    def __repr__(self) -> str:
        return f"FallbackTransport(primary={self._primary!r}, fallback={self._fallback!r})"

    @property
    def server(self) -> str:
        return self._fallback.server if self._on_graph() else self._primary.server

    def _on_graph(self) -> bool:
        until = self._client.smtp_disabled_until.get(self._fallback.mailbox.casefold())
        return until is not None and time.monotonic() < until

    async def send(
        self,
        message: MessageSource,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the public interface: a bound on the whole send
    ) -> SendResult:
        """Send through SMTP, or through Graph when SMTP AUTH is disabled for the mailbox."""
        if not self._on_graph():
            try:
                return await self._primary.send(
                    message, sender=sender, recipients=recipients, timeout=timeout
                )
            except AuthenticationError as refused:
                if refused.enhanced_status != SMTP_AUTH_DISABLED:
                    raise
                self._remember(refused)
        return await self._fallback.send(message, sender=sender, recipients=recipients, timeout=timeout)

    def _remember(self, refused: AuthenticationError) -> None:
        key = self._fallback.mailbox.casefold()
        first = key not in self._client.smtp_disabled_until
        self._client.smtp_disabled_until[key] = time.monotonic() + RETRY_SMTP_AFTER
        if first:
            logger.warning(
                "SMTP AUTH is disabled for %s (%s); sending its mail through Microsoft Graph "
                '(fallback_transport = "graph"). To use SMTP again: %s',
                self._fallback.mailbox,
                refused.reply,
                refused.explain(),
            )

    async def close(self) -> None:
        try:
            await self._primary.close()
        finally:
            await self._fallback.close()

    async def __aenter__(self) -> FallbackTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
