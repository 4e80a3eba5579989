"""The Mailer: send mail through Exchange Online over one reused, OAuth-authenticated SMTP session.

::

    async with Mailer(settings) as mailer:          # connects on the first send
        result = await mailer.send(message)         # EmailMessage, raw RFC 5322 bytes, or a file

Policy, in the order it matters to a caller:

- STARTTLS is required for ``security = "starttls"`` and implicit TLS is used for ``"tls"``; the
  certificate is always verified (default CAs plus ``smtp.ca_file``). Nothing goes out in clear text.
- A refused token (5xx to AUTH, Exchange's ``535 5.7.3``) is retried exactly once on a new connection
  with a token fetched with ``force_refresh=True``; a second refusal raises AuthenticationError.
- A session the server dropped while idle (421, hang-up) is reopened once and the message resent,
  but only if the failure came before DATA: after that the server may have queued it, and sending
  it again could deliver it twice.
- The envelope sender is the ``sender`` argument, else ``smtp.from_address``, else the mailbox:
  Exchange accepts MAIL FROM only for the authenticated mailbox or an address it may SendAs, so the
  From header is not used for it. Recipients of an EmailMessage come from To, Cc and Bcc; Bcc is
  never transmitted. A missing From, Date or Message-ID is added to a copy, never to the caller's.
- The message goes out in bounded chunks (``smtp_stream.py``). A raw message in a file (a path, or
  a seekable binary file from its current position) is read chunk by chunk and never held whole:
  this is how the relay sends a 35 MiB message from its spool in a few MiB.

Every failure is one of smtp_oauth.errors (TokenError from the token provider passes unchanged).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryError,
    DeliveryTimeoutError,
    MessageError,
    SmtpOAuthError,
    TemporaryDeliveryError,
)
from smtp_oauth.mail.envelope import Envelope, build_envelope
from smtp_oauth.smtp.session import SmtpSession, TransactionResult, Transcript
from smtp_oauth.smtp.stream import MessageFile, file_io, open_message_file, read_header_block

# send_message lives with the seam (it sends through whatever transport settings pick); re-exported here
# for code that imported it from the Mailer's module.
from smtp_oauth.tls import PreloadedTrust, add_ca_file
from smtp_oauth.transport import SendResult, send_message

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tokens.types import TokenProvider

__all__ = ["Mailer", "SendResult", "Transcript", "send_message"]

logger = logging.getLogger("smtp_oauth.smtp.mailer")


def _tls_context(ca_file: str | None, trust: PreloadedTrust | None) -> ssl.SSLContext:
    """The system's trusted CAs (loaded ahead by ``trust``, if given), plus ``smtp.ca_file`` for
    private servers (and the sandbox)."""
    context = trust.take() if trust is not None else None
    return add_ca_file(context or ssl.create_default_context(), ca_file, key="smtp.ca_file")


class Mailer:
    """Sends messages over one authenticated SMTP session, reopened when the server drops it.

    Sends are sequential (one SMTP session carries one transaction at a time); for parallel sending
    use several Mailers (Exchange Online allows 3 concurrent sessions per mailbox). ``trust``: the
    system's CAs already loading on a thread (``send-mail``), else loaded on the first connection.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        token_provider: TokenProvider | None = None,
        mailbox: str | None = None,
        transcript: Transcript | None = None,
        trust: PreloadedTrust | None = None,
    ) -> None:
        self._settings = settings
        self._trust = trust  # the system's CAs, loading since before this Mailer was made
        self._provider = token_provider
        self._mailbox = mailbox or settings.smtp.username
        self._transcript = transcript
        # smtp.from_address belongs to smtp.username; another mailbox (relay user) sends as itself.
        self._default_sender = (
            settings.smtp.sender if self._mailbox == settings.smtp.username else self._mailbox
        )
        self._context = {**settings.hint_context(), "mailbox": self._mailbox}
        self._session: SmtpSession | None = None
        self._tls: ssl.SSLContext | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Mailer(server={self.server!r}, mailbox={self._mailbox!r})"

    @property
    def server(self) -> str:
        """``host:port`` of the submission server, as error messages name it."""
        return f"{self._settings.smtp_host}:{self._settings.smtp.port}"

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _token_provider(self) -> TokenProvider:
        if self._provider is None:
            from smtp_oauth.tokens.provider import create_token_provider  # msal is heavy: only when needed

            self._provider = create_token_provider(self._settings)
        return self._provider

    async def _new_session(self) -> SmtpSession:
        if self._tls is None:
            ca_file = self._settings.smtp.ca_file
            self._tls = await asyncio.to_thread(_tls_context, str(ca_file) if ca_file else None, self._trust)
        smtp = self._settings.smtp
        return SmtpSession(
            host=self._settings.smtp_host,
            port=smtp.port,
            implicit_tls=smtp.security == "tls",
            tls_context=self._tls,
            timeout=smtp.timeout,
            mailbox=self._mailbox,
            context=self._context,
            transcript=self._transcript,
        )

    async def _open(self) -> str:
        """A new authenticated session in ``self._session``; one retry with a fresh token on 5xx to AUTH."""
        provider = self._token_provider()
        session = await self._new_session()
        try:
            reply = await session.open(provider.access_token)
        except AuthenticationError as refused:
            logger.info(
                "%s refused the token (%s); retrying once with a new token", self.server, refused.reply
            )
            session = await self._new_session()
            reply = await session.open(functools.partial(provider.access_token, force_refresh=True))
        self._session = session
        return reply

    def _discard(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    async def verify_login(self) -> str:
        """Connect, secure the connection and authenticate (``smtp-oauth check``); the AUTH reply.

        Always a new session, kept for the sends that follow.
        """
        async with self._lock:
            self._discard()
            return await self._open()

    async def send(
        self,
        message: EmailMessage | bytes | MessageFile,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the public interface: a bound on the whole send
    ) -> SendResult:
        """Send one message and report what the server did with it.

        ``timeout`` bounds the send once its turn on the session comes (connecting, authenticating
        and a reconnect included). A raw message (bytes, or a file: a path or a seekable binary
        file, sent from its current position and left open) is sent as is and needs ``recipients``.
        Raises MessageError for bad addresses, DeliveryError subclasses for the server's refusals,
        TokenError from the token provider, OSError when a message file cannot be read.
        """
        if isinstance(message, EmailMessage | bytes | bytearray):
            return await self._send(message, None, sender, recipients, timeout)
        async with open_message_file(message) as file:
            start, head = await file_io(file, lambda: (file.tell(), read_header_block(file)))
            return await self._send(head, (file, start), sender, recipients, timeout)

    async def _send(
        self,
        message: EmailMessage | bytes,
        file: tuple[BinaryIO, int] | None,
        sender: str | None,
        recipients: Sequence[str] | None,
        timeout: float | None,  # noqa: ASYNC109  # send()'s bound on the whole send
    ) -> SendResult:
        """``send`` once the message is in memory, or ``file`` (and its start) holds the content."""
        envelope, message_id = build_envelope(
            message, sender=sender, recipients=recipients, default_sender=self._default_sender
        )
        limit = self._settings.smtp.preset.max_recipients
        if limit is not None and len(envelope.recipients) > limit:
            # Refused before connecting: the service would take the first `limit` and refuse the rest.
            raise MessageError(
                f"{len(envelope.recipients)} recipients, but smtp.service {self._settings.smtp.service!r} "
                f"takes at most {limit} per message",
                hint=f"Split the message into batches of {limit} recipients.",
                context=self._context,
            )
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    result = await self._send_locked(envelope, file)
            except SmtpOAuthError:
                raise  # ours, already saying what failed (a DeliveryTimeoutError is a TimeoutError too)
            except TimeoutError:
                self._discard()  # cut off mid-dialogue: the session is out of step
                if timeout is None:
                    raise
                raise DeliveryTimeoutError(
                    f"sending through {self.server} took longer than {timeout:g}s", context=self._context
                ) from None
        accepted = [address for address in envelope.recipients if address not in result.refused]
        logger.debug(
            "%s accepted %s for %d recipient(s): %s", self.server, message_id, len(accepted), result.reply
        )
        return SendResult(
            message_id=message_id,
            sender=envelope.sender,
            accepted=accepted,
            refused=result.refused,
            reply=result.reply,
        )

    async def _send_locked(self, envelope: Envelope, file: tuple[BinaryIO, int] | None) -> TransactionResult:
        reused = self._session is not None and self._session.is_open
        if not reused:
            self._discard()
            await self._open()
        assert self._session is not None  # set by _open
        try:
            return await self._session.transmit(envelope, await _rewound(file))
        except DeliveryError as exc:
            session = self._session
            if session.is_open:
                raise  # a refusal on a live session: the server's verdict on this message
            self._discard()
            if not (reused and isinstance(exc, TemporaryDeliveryError) and not session.content_sent):
                raise
            logger.info("%s closed the idle session (%s); reconnecting", self.server, exc)
        await self._open()
        assert self._session is not None
        return await self._session.transmit(envelope, await _rewound(file))

    async def close(self) -> None:
        """QUIT and close the session, if one is open. The Mailer can be used again afterwards."""
        async with self._lock:
            session, self._session = self._session, None
            if session is not None:
                await session.close()


async def _rewound(file: tuple[BinaryIO, int] | None) -> BinaryIO | None:
    """The file back at the message's start (a resend after a reconnect reads it again)."""
    if file is None:
        return None
    body, start = file
    await file_io(body, lambda: body.seek(start))
    return body
