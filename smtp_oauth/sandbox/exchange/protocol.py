"""The SMTP protocol side of the fake Exchange Online: aiosmtpd's ``SMTP``, adjusted to talk like Exchange.

What this subclass changes, and why:

- Long AUTH lines. A real ``AUTH XOAUTH2 <base64>`` line is several KB; stock aiosmtpd answers
  ``500 Command line too long`` above 512 octets. RFC 4954 §4 has servers accept AUTH lines of at
  least 12288 octets; we allow 16384 so an 8 KB token (many group claims) still fits.
  ``command_size_limits`` must be replaced on the instance: the class-level defaultdict falls back to
  the *base* class's limit and ``SMTP.__init__`` clears it. The reader's ``line_length_limit`` is
  raised with it (the reader is created with it in ``SMTP.__init__``), which also lets DATA lines
  longer than RFC 5321's 1000 octets through, as Exchange does.
- Exchange's wording for replies aiosmtpd hard-codes (STARTTLS required, not authenticated, size).
- Hanging up right after a reply (injected ``421``s, the rate limit), and an injected greeting.
- Telling the handler when a connection opens and closes, for the per-mailbox session limit.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import email.utils
import ssl
from typing import Any, AnyStr, Protocol

from aiosmtpd.smtp import SMTP, Session

__all__ = ["AUTH_LINE_LIMIT", "ConnectionObserver", "ExchangeSMTP"]

AUTH_LINE_LIMIT = 16384  # RFC 4954 §4 asks for at least 12288 octets per AUTH line
_READER_LIMIT = 32768  # one line of input (commands, the two-step AUTH blob, DATA lines)

# aiosmtpd's fixed replies -> what Exchange Online says in the same situation.
_EXCHANGE_WORDING = {
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "530 5.7.0 Authentication required": "530 5.7.57 Client not authenticated to send mail.",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
}


class _QuietSession(Session):
    """aiosmtpd's Session without the deprecation warning it logs on every non-LOGIN/PLAIN AUTH.

    ``smtp_AUTH`` always assigns ``login_data``; its setter warns "Session.login_data is deprecated",
    which for XOAUTH2 is noise on every login.
    """

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class ConnectionObserver(Protocol):
    """What the protocol tells its handler about the connection's life."""

    def connection_opened(self, server: ExchangeSMTP) -> None: ...

    def connection_closed(self, server: ExchangeSMTP) -> None: ...

    def greeting(self, server: ExchangeSMTP) -> str | None:
        """An injected greeting to send instead of the banner, or None."""


class ExchangeSMTP(SMTP):
    """One SMTP connection to the fake Exchange Online."""

    line_length_limit = _READER_LIMIT

    def __init__(
        self,
        handler: ConnectionObserver,
        *,
        hostname: str,
        tls_context: ssl.SSLContext,
        max_message_size: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        now = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
        super().__init__(
            handler,
            hostname=hostname,
            ident=f"Microsoft ESMTP MAIL Service ready at {now} (smtp-oauth sandbox, for testing only)",
            tls_context=tls_context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            loop=loop,
        )
        self.command_size_limits: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: SMTP.command_size_limit
        )
        self.command_size_limits["AUTH"] = AUTH_LINE_LIMIT
        self._observer = handler
        self._greeted = False
        self._opened = False
        self._hang_up_after_reply = False

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def hang_up_after_reply(self) -> None:
        """Close the connection once the next reply has been sent (Exchange's ``421`` behaviour)."""
        self._hang_up_after_reply = True

    async def push(self, status: AnyStr) -> None:
        """Send a reply line, in Exchange's words, then hang up if asked to."""
        line: str | bytes = status
        if not self._greeted:
            self._greeted = True
            line = self._observer.greeting(self) or line
        if isinstance(line, str):
            await super().push(_EXCHANGE_WORDING.get(line, line))
        else:
            await super().push(line)
        if self._hang_up_after_reply:
            self._hang_up()

    def _hang_up(self) -> None:
        # As aiosmtpd's own QUIT does: stop reading commands, then close the transport.
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection with the handler (once: STARTTLS calls this again)."""
        super().connection_made(transport)
        if not self._opened:
            self._opened = True
            self._observer.connection_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        """Release whatever the connection held (its session slot)."""
        self._observer.connection_closed(self)
        super().connection_lost(error)

    def close(self) -> None:
        """Drop the connection (server shutdown)."""
        if self.transport is not None:
            self.transport.close()

    def __repr__(self) -> str:
        peer: Any = self.session.peer if self.session is not None else None
        return f"ExchangeSMTP(peer={peer!r})"
