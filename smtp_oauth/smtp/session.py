"""One SMTP submission session: connect, TLS, AUTH XOAUTH2, then mail transactions over aiosmtplib.

The steps are taken one by one rather than through ``SMTP.connect(start_tls=..., oauth_token_generator=...)``
so that each failure is known by its stage (a refused AUTH is not a refused message) and the
transcript shows the dialogue in wire order, greeting first. The wire is the same: EHLO, STARTTLS
(required, never skipped when the server leaves it out), EHLO, ``AUTH XOAUTH2 <initial response>``.

aiosmtplib logs nothing of the protocol, so ``send-mail -v`` and DEBUG logs get the dialogue from a
tap on the protocol object; the XOAUTH2 blob and any SASL answer are replaced by ``[redacted]``.
The message after DATA is streamed in bounded chunks (``smtp_stream.py``), from memory or a file.
"""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import aiosmtplib

from smtp_oauth.errors import DeliveryError, MessageError
from smtp_oauth.logs import redact
from smtp_oauth.mail.envelope import Envelope
from smtp_oauth.smtp.errors import Stage, from_exception, one_line
from smtp_oauth.smtp.replies import all_refused, no_smtputf8, no_starttls, no_xoauth2
from smtp_oauth.smtp.stream import StreamingProtocol, encoded_chunks, file_io, measure
from smtp_oauth.smtp.wire import ehlo_name, flatten, mail_options, needs_smtputf8
from smtp_oauth.transport import Transcript

__all__ = ["SmtpSession", "TransactionResult", "Transcript"]

logger = logging.getLogger("smtp_oauth.smtp")

TokenSource = Callable[[], Awaitable[str]]

_QUIT_TIMEOUT = 5.0  # a polite QUIT must not hold up shutdown when the server is gone
_SMTP_FAILURES = (aiosmtplib.SMTPException, OSError)


@dataclass(frozen=True)
class TransactionResult:
    """The server's final reply to DATA and the recipients it refused (address -> (code, text))."""

    reply: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


class _TappedProtocol(StreamingProtocol):
    """The streaming protocol, reporting every line written and read; secrets redacted."""

    _record: Transcript
    _expect: str  # what the next write is: "command", "sasl" (after 334) or "body" (after 354)
    _body_bytes: int  # of the message written since the 354, reported as one line before the reply

    def tap(self, record: Transcript) -> None:
        self._record = record
        self._expect = "command"
        self._body_bytes = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if self._expect == "body":
            self._body_bytes += len(data)
            return
        for raw in data.decode("utf-8", "replace").splitlines():
            self._record("C", _redact_command(raw, sasl=self._expect == "sasl"))

    async def read_response(
        self,
        timeout: float | None = None,  # noqa: ASYNC109  # aiosmtplib's signature, overridden as is
    ) -> aiosmtplib.SMTPResponse:
        if self._body_bytes:
            self._record("C", f"[message: {self._body_bytes} bytes]")
            self._body_bytes = 0
        response = await super().read_response(timeout=timeout)
        lines = response.message.split("\n")  # [""] for an empty message: one line still
        for index, line in enumerate(lines):
            separator = "-" if index < len(lines) - 1 else " "
            self._record("S", redact(f"{response.code}{separator}{line}".rstrip()))
        self._expect = {334: "sasl", 354: "body"}.get(response.code, "command")
        return response


def _redact_command(line: str, *, sasl: bool) -> str:
    """An SMTP command line fit for a transcript: no SASL initial response, no SASL answer."""
    if sasl:
        return "[redacted]" if line.strip() else line
    words = line.split(" ", 2)
    if words[0].upper() == "AUTH" and len(words) == 3:
        return f"{words[0]} {words[1]} [redacted]"
    return redact(line)


class SmtpSession:
    """One authenticated connection to the submission server; not safe for concurrent use."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
        timeout: float,
        mailbox: str,
        context: Mapping[str, str],
        transcript: Transcript | None = None,
    ) -> None:
        self.server = f"{host}:{port}"
        self._mailbox = mailbox
        self._context = dict(context)
        self._implicit_tls = implicit_tls
        self._transcript = transcript
        # start_tls=False: the upgrade is done below, explicitly and unconditionally.
        self._smtp = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            use_tls=implicit_tls,
            start_tls=False,
            tls_context=tls_context,
            timeout=timeout,
            local_hostname=ehlo_name(),
        )
        self.content_sent = False  # True once DATA began: resending after that could duplicate mail

    @property
    def is_open(self) -> bool:
        """Still connected (aiosmtplib closes on 421, a timeout or the server hanging up)."""
        return self._smtp.is_connected

    def _record(self, direction: str, line: str) -> None:
        if self._transcript is not None:
            self._transcript(direction, line)
        logger.debug("%s: %s", direction, line)

    def _fail(self, exc: BaseException, stage: Stage, subject: str | None = None) -> DeliveryError:
        return from_exception(exc, server=self.server, stage=stage, context=self._context, subject=subject)

    async def open(self, token_source: TokenSource) -> str:
        """Connect, secure the connection, and AUTH XOAUTH2; returns the AUTH reply (``235 2.7.0 ...``).

        The token is asked for only once the server has shown it offers XOAUTH2, as aiosmtplib does.
        Raises DeliveryError (AuthenticationError for a refused token); TokenError passes through.
        """
        smtp = self._smtp
        stage = Stage.CONNECT
        try:
            greeting = await smtp.connect()
            assert smtp.protocol is not None  # connect() succeeded
            # aiosmtplib has no protocol factory: its protocol object becomes our subclass, which adds
            # the streamed DATA (and, when tapped, only records).
            smtp.protocol.__class__ = StreamingProtocol
            if self._transcript is not None or logger.isEnabledFor(logging.DEBUG):
                smtp.protocol.__class__ = _TappedProtocol
                protocol: _TappedProtocol = smtp.protocol  # type: ignore[assignment]
                protocol.tap(self._record)
                self._record("S", f"{greeting.code} {one_line(greeting.message)}")
            if not self._implicit_tls:
                stage = Stage.TLS
                await smtp.ehlo()
                self._require("starttls")
                await smtp.starttls()
            stage = Stage.AUTH
            await smtp.ehlo()
            self._require("xoauth2")
            token = await token_source()
            response = await smtp.auth_xoauth2(self._mailbox, token)
        except _SMTP_FAILURES as exc:
            self.abort()
            subject = f"for {self._mailbox}" if stage is Stage.AUTH else None
            raise self._fail(exc, stage, subject) from exc
        except BaseException:
            self.abort()
            raise
        logger.debug("authenticated to %s as %s", self.server, self._mailbox)
        return f"{response.code} {one_line(response.message)}"

    def _require(self, feature: str) -> None:
        """Refuse to go on without STARTTLS, or without XOAUTH2 once the connection is secure."""
        smtp = self._smtp
        if feature == "starttls" and not smtp.supports_extension("starttls"):
            raise no_starttls(server=self.server, context=self._context)
        if feature == "xoauth2" and "xoauth2" not in smtp.server_auth_methods:
            raise no_xoauth2(smtp.server_auth_methods, server=self.server, context=self._context)

    def _encode(self, envelope: Envelope, utf8: bool) -> bytes:
        """The bytes to send after DATA; an EmailMessage is flattened for this server's extensions."""
        if isinstance(envelope.message, bytes):
            return envelope.message
        return flatten(envelope.message, utf8=utf8, eight_bit=self._smtp.supports_extension("8bitmime"))

    async def _mail_options(self, body: BinaryIO, utf8: bool) -> list[str]:
        # RFC 1870: octets as transmitted, CRLF included; counted in one pass, nothing copied.
        size, is_ascii = await file_io(body, lambda: measure(body))
        return mail_options(size, is_ascii=is_ascii, utf8=utf8, supports=self._smtp.supports_extension)

    async def _data(self, body: BinaryIO) -> aiosmtplib.SMTPResponse:
        """DATA with ``body`` streamed in chunks (``smtp_stream``), as ``SMTP.data`` would send it."""
        protocol = self._smtp.protocol
        if not isinstance(protocol, StreamingProtocol):
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        try:
            return await protocol.execute_data_stream(encoded_chunks(body), timeout=self._smtp.timeout)
        except aiosmtplib.SMTPResponseException:
            raise  # the server's reply: the dialogue is still in step
        except BaseException:
            # Cut off mid-message (server gone, timeout, the file unreadable): the server still
            # waits for the final dot, so the connection is out of step. SMTP.data closes too.
            self._smtp.close()
            raise

    async def transmit(self, envelope: Envelope, body: BinaryIO | None = None) -> TransactionResult:
        """One mail transaction (MAIL, RCPT..., DATA). Some recipients refused is a result, not an error.

        The content is ``body`` from its current position when given (a seekable binary file; it is
        read in chunks, never whole), else the envelope's message. Raises DeliveryError; after a
        refusal the envelope is reset (RSET) so the session stays usable.
        """
        smtp = self._smtp
        self.content_sent = False
        utf8 = needs_smtputf8(envelope.sender, envelope.recipients)
        if utf8 and not smtp.supports_extension("smtputf8"):
            raise no_smtputf8(server=self.server, context=self._context)
        encoding = "utf-8" if utf8 else "ascii"
        if body is None:
            body = io.BytesIO(self._encode(envelope, utf8))  # shares the bytes, no copy
        options = await self._mail_options(body, utf8)  # OSError (unreadable file) is not the server's
        stage = Stage.MAIL
        refused: dict[str, tuple[int, str]] = {}
        reply: aiosmtplib.SMTPResponse | None = None
        try:
            await smtp.mail(envelope.sender, options=options, encoding=encoding)
            stage = Stage.RCPT
            refused = await self._recipients(envelope.recipients, encoding)
            if len(refused) < len(envelope.recipients):
                stage = Stage.DATA
                self.content_sent = True
                reply = await self._data(body)
        except _SMTP_FAILURES as exc:
            await self._reset()
            subject = f"<{envelope.sender}>" if stage is Stage.MAIL else None
            raise self._fail(exc, stage, subject) from exc
        except ValueError as exc:  # aiosmtplib refuses an address it cannot put on a command line
            await self._reset()
            raise MessageError(f"cannot send to {self.server}: {exc}", context=self._context) from exc
        except BaseException:
            self.abort()  # cancelled mid-transaction: the dialogue is out of step
            raise
        if reply is None:
            await self._reset()
            raise all_refused(refused, server=self.server, context=self._context)
        return TransactionResult(reply=f"{reply.code} {one_line(reply.message)}", refused=refused)

    async def _recipients(self, recipients: Sequence[str], encoding: str) -> dict[str, tuple[int, str]]:
        refused: dict[str, tuple[int, str]] = {}
        for address in recipients:
            try:
                await self._smtp.rcpt(address, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                if exc.code == 421 or not self._smtp.is_connected:
                    raise  # the session ended; that is not a verdict on this address
                refused[address] = (exc.code, one_line(exc.message))
        return refused

    async def _reset(self) -> None:
        """RSET after a refusal; a session that cannot even do that is closed."""
        if not self._smtp.is_connected:
            return
        try:
            await self._smtp.rset()
        except _SMTP_FAILURES:
            self.abort()

    async def close(self) -> None:
        """QUIT politely (bounded), then drop the connection whatever the server says."""
        if self._smtp.is_connected:
            try:
                await self._smtp.quit(timeout=_QUIT_TIMEOUT)
            except _SMTP_FAILURES:
                logger.debug("QUIT to %s failed; closing anyway", self.server)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (no QUIT)."""
        self._smtp.close()
