"""The Mailer: send mail through Exchange Online over one reused, OAuth-authenticated SMTP session.

::

    async with Mailer(settings) as mailer:          # connects on the first send
        result = await mailer.send(message)         # EmailMessage or raw RFC 5322 bytes

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

Every failure is one of smtp_oauth.errors (TokenError from the token provider passes unchanged).
"""

from __future__ import annotations

import asyncio
import copy
import email.parser
import email.policy
import email.utils
import functools
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import TYPE_CHECKING

from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    MessageError,
    TemporaryDeliveryError,
)
from smtp_oauth.smtp_session import Envelope, SmtpSession, TransactionResult, Transcript

if TYPE_CHECKING:
    from smtp_oauth.settings import Settings
    from smtp_oauth.tokens import TokenProvider

__all__ = ["Mailer", "SendResult", "Transcript", "send_message"]

logger = logging.getLogger("smtp_oauth.sender")

_ADDRESS = re.compile(r"^[^\s@<>\"]+@[^\s@<>\"]+$")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_RECIPIENT_HEADERS = ("To", "Cc", "Bcc")


@dataclass(frozen=True)
class SendResult:
    """What the server did with one message."""

    message_id: str | None
    sender: str
    accepted: list[str]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # address -> (code, text)
    reply: str = ""  # the final reply to DATA, e.g. "250 2.6.0 <...> Queued mail for delivery"


def _bare_address(text: str, *, what: str) -> str:
    """``Name <a@b>`` or ``a@b`` as ``a@b``; MessageError for anything that is not one address."""
    _, address = email.utils.parseaddr(text)
    address = address or text.strip()
    if not _ADDRESS.match(address):
        raise MessageError(f"invalid {what} address {text!r}")
    return address


def _unique(addresses: Sequence[str]) -> list[str]:
    """Addresses once each, in order; the domain is case-insensitive, so is the comparison."""
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.casefold(), address)
    return list(seen.values())


def _header_recipients(message: EmailMessage) -> list[str]:
    found: list[str] = []
    for name in _RECIPIENT_HEADERS:
        values = [str(value) for value in message.get_all(name, [])]
        for _display, address in email.utils.getaddresses(values):
            if address:  # an empty group ("undisclosed-recipients:;") names nobody
                found.append(_bare_address(address, what=f"{name}:"))
    return found


def _prepared_message(message: EmailMessage, sender: str) -> EmailMessage:
    """A copy without Bcc, with From, Date and Message-ID filled in when missing."""
    prepared = copy.deepcopy(message)  # a shallow copy shares the header list: adding to it would leak back
    del prepared["Bcc"]
    del prepared["Resent-Bcc"]
    if prepared["From"] is None:
        prepared["From"] = sender
    if prepared["Date"] is None:
        prepared["Date"] = email.utils.formatdate(localtime=True)
    if prepared["Message-ID"] is None:
        prepared["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    return prepared


def _raw_message_id(data: bytes) -> str | None:
    """The Message-ID of a raw message, reading only its header block."""
    end = _HEADER_END.search(data)
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        data[: end.end()] if end else data
    )
    value = headers.get("Message-ID")
    return str(value).strip() if value else None


def build_envelope(
    message: EmailMessage | bytes,
    *,
    sender: str | None,
    recipients: Sequence[str] | None,
    default_sender: str,
) -> tuple[Envelope, str | None]:
    """The envelope to send and the message's Message-ID. Raises MessageError for bad addresses."""
    envelope_sender = _bare_address(sender or default_sender, what="sender")
    if isinstance(message, bytes | bytearray):
        raw = bytes(message)
        targets = list(recipients or [])
        message_id = _raw_message_id(raw)
        body: EmailMessage | bytes = raw
    elif isinstance(message, EmailMessage):
        targets = list(recipients) if recipients is not None else _header_recipients(message)
        body = _prepared_message(message, envelope_sender)
        message_id = str(body["Message-ID"]).strip()
    else:
        raise TypeError(f"message must be an EmailMessage or bytes, not {type(message).__name__}")
    addresses = _unique([_bare_address(target, what="recipient") for target in targets])
    if not addresses:
        raise MessageError("the message has no recipients (give recipients= or To/Cc/Bcc headers)")
    return Envelope(sender=envelope_sender, recipients=addresses, message=body), message_id


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``smtp.ca_file`` for private servers (and the sandbox)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load smtp.ca_file {ca_file}: {exc}",
                key="smtp.ca_file",
                hint="Point smtp.ca_file at a readable PEM file of CA certificates.",
            ) from exc
    return context


class Mailer:
    """Sends messages over one authenticated SMTP session, reopened when the server drops it.

    Sends are sequential (one SMTP session carries one transaction at a time); for parallel sending
    use several Mailers (Exchange Online allows 3 concurrent sessions per mailbox).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        token_provider: TokenProvider | None = None,
        mailbox: str | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self._settings = settings
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
            from smtp_oauth.tokens import create_token_provider  # msal is heavy: only when needed

            self._provider = create_token_provider(self._settings)
        return self._provider

    async def _new_session(self) -> SmtpSession:
        if self._tls is None:
            ca_file = self._settings.smtp.ca_file
            self._tls = await asyncio.to_thread(_tls_context, str(ca_file) if ca_file else None)
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
        message: EmailMessage | bytes,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the public interface: a bound on the whole send
    ) -> SendResult:
        """Send one message; ``timeout`` bounds the whole send (connecting and authenticating included).

        A raw message (bytes) is sent as is and needs ``recipients``. Raises MessageError for bad
        addresses, DeliveryError subclasses for the server's refusals, TokenError from the provider.
        """
        envelope, message_id = build_envelope(
            message, sender=sender, recipients=recipients, default_sender=self._default_sender
        )
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    result = await self._send_locked(envelope)
            except TimeoutError:
                self._discard()
                raise TemporaryDeliveryError(
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

    async def _send_locked(self, envelope: Envelope) -> TransactionResult:
        reused = self._session is not None and self._session.is_open
        if not reused:
            self._discard()
            await self._open()
        assert self._session is not None  # set by _open
        try:
            return await self._session.transmit(envelope)
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
        return await self._session.transmit(envelope)

    async def close(self) -> None:
        """QUIT and close the session, if one is open. The Mailer can be used again afterwards."""
        async with self._lock:
            session, self._session = self._session, None
            if session is not None:
                await session.close()


def send_message(
    message: EmailMessage | bytes,
    /,
    *,
    settings: Settings | None = None,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> SendResult:
    """Send one message from synchronous code: connect, authenticate, send, QUIT.

    ``settings`` defaults to ``load_settings()`` (the same discovery as the CLI). Inside a running
    event loop use ``async with Mailer(settings) as mailer: await mailer.send(...)`` instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "send_message() blocks, so it cannot run inside a running event loop; "
            "use `async with smtp_oauth.Mailer(settings) as mailer: await mailer.send(message)`"
        )
    if settings is None:
        from smtp_oauth.settings import load_settings

        settings = load_settings()

    async def send_once(settings: Settings) -> SendResult:
        async with Mailer(settings) as mailer:
            return await mailer.send(message, sender=sender, recipients=recipients)

    return asyncio.run(send_once(settings))
