"""One message over one SMTP submission session with the stdlib's ``smtplib``: send-mail's fast path.

The dialogue is the Mailer session's (``session.py``), step for step: EHLO with this host's name,
STARTTLS (required, and the certificate verified against ``tls_context``) or implicit TLS, EHLO
again, ``AUTH XOAUTH2`` with the initial response, as Microsoft documents it
(https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth),
MAIL FROM with SIZE / BODY=8BITMIME / SMTPUTF8, RCPT for each recipient (a refused one is
reported, not fatal), DATA in the same wire form (``wire.py``), QUIT. Every failure becomes the
error the Mailer raises for it, through the same rules (``replies.py``); a test runs each failure
through both clients.

Why a second client: ``send-mail`` with a cached token sends one message and exits, and asyncio
with aiosmtplib costs more start-up than the whole dialogue. What this client does not do is left
to the Mailer, and the caller (``cli/send_mail.py``) goes there instead: a refused token (the Mailer
retries once with a fresh one), sessions kept for several messages, big messages streamed from
files, the ``-v`` transcript. Blocking: not for an event loop.
"""

from __future__ import annotations

import io
import smtplib
import ssl
from typing import TYPE_CHECKING, NamedTuple

from smtp_oauth.errors import DeliveryError, MessageError
from smtp_oauth.smtp.replies import (
    Stage,
    all_refused,
    connection_failure,
    from_reply,
    no_smtputf8,
    no_starttls,
    no_xoauth2,
    one_line,
)
from smtp_oauth.smtp.wire import DataEncoder, ehlo_name, flatten, mail_options, measure, needs_smtputf8
from smtp_oauth.smtp.xoauth2 import encode

if TYPE_CHECKING:
    from smtp_oauth.mail.envelope import Envelope

__all__ = ["Delivered", "Submission", "send_one"]

_QUIT_TIMEOUT = 5.0  # a polite QUIT must not hold up the exit when the server is gone
_ACCEPTED = (250, 251)  # RFC 5321 4.2.2: 251 "user not local; will forward" is an acceptance


class Submission(NamedTuple):
    """Where and as whom to submit (from validated settings): ``smtp.host``, ``smtp.port``, ...

    ``context`` holds the ids the errors' hints name (tenant, client, mailbox).
    """

    host: str
    port: int
    implicit_tls: bool  # smtp.security = "tls"; otherwise STARTTLS, never clear text
    timeout: float
    mailbox: str
    context: dict[str, str]

    @property
    def server(self) -> str:
        """``host:port``, as error messages name the server."""
        return f"{self.host}:{self.port}"


class Delivered(NamedTuple):
    """The server's final reply to DATA and the recipients it refused (address -> (code, text))."""

    reply: str
    refused: dict[str, tuple[int, str]]


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message


class _Dialogue:
    """One session's steps; each failure raised as ours, naming the stage it happened in."""

    def __init__(self, submission: Submission) -> None:
        self._to = submission
        self.server = submission.server
        self.smtp: smtplib.SMTP | None = None

    def refused(
        self, reply: tuple[int, bytes | str], stage: Stage, subject: str | None = None
    ) -> DeliveryError:
        code, text = reply
        return from_reply(
            code, _text(text), server=self.server, stage=stage, context=self._to.context, subject=subject
        )

    def failed(self, exc: OSError, stage: Stage, subject: str | None = None) -> DeliveryError:
        """smtplib's exceptions are OSErrors; a greeting other than 220 is its SMTPConnectError."""
        if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 400:
            return self.refused((exc.smtp_code, exc.smtp_error), stage, subject)
        if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, OSError):
            exc = exc.__context__  # smtplib reports a read that timed out or failed as a hang-up
        failure = connection_failure(exc, server=self.server, stage=stage, context=self._to.context)
        if failure is None:  # unreachable: every OSError is a connection failure
            raise TypeError(f"not an SMTP failure: {exc!r}") from exc
        return failure

    def open(self, token: str, tls_context: ssl.SSLContext) -> smtplib.SMTP:
        """Connect, secure the connection and log in; raises DeliveryError."""
        to = self._to
        stage = Stage.CONNECT
        try:
            if to.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    to.host, to.port, local_hostname=ehlo_name(), timeout=to.timeout, context=tls_context
                )
            else:
                smtp = smtplib.SMTP(to.host, to.port, local_hostname=ehlo_name(), timeout=to.timeout)
            self.smtp = smtp
            if not to.implicit_tls:
                stage = Stage.TLS
                self._ehlo(stage)
                if not smtp.has_extn("starttls"):
                    raise no_starttls(server=self.server, context=to.context)
                reply = smtp.starttls(context=tls_context)  # wraps the socket on 220, else returns
                if reply[0] != 220:
                    raise self.refused(reply, stage)
            stage = Stage.AUTH
            self._ehlo(stage)
            offered = smtp.esmtp_features.get("auth", "").lower().split()
            if "xoauth2" not in offered:
                raise no_xoauth2(offered, server=self.server, context=to.context)
            reply = smtp.docmd("AUTH", f"XOAUTH2 {encode(to.mailbox, token)}")
            if reply[0] == 334:  # an error challenge (RFC 4954 4): an empty line asks for the final reply
                reply = smtp.docmd("")
            if reply[0] != 235:
                raise self.refused(reply, stage, f"for {to.mailbox}")
        except DeliveryError:
            raise  # already ours (and our temporary errors may be OSErrors too)
        except OSError as exc:
            raise self.failed(exc, stage, f"for {to.mailbox}" if stage is Stage.AUTH else None) from exc
        return smtp

    def _ehlo(self, stage: Stage) -> None:
        assert self.smtp is not None
        reply = self.smtp.ehlo()
        if reply[0] != 250:
            raise self.refused(reply, stage)

    def transmit(self, envelope: Envelope) -> Delivered:
        """MAIL, RCPT for each recipient, DATA; raises DeliveryError (MessageError for the message)."""
        smtp, to = self.smtp, self._to
        assert smtp is not None
        utf8 = needs_smtputf8(envelope.sender, envelope.recipients)
        if utf8 and not smtp.has_extn("smtputf8"):
            raise no_smtputf8(server=self.server, context=to.context)
        smtp.command_encoding = "utf-8" if utf8 else "ascii"
        message = envelope.message
        data = (
            message
            if isinstance(message, bytes)
            else flatten(message, utf8=utf8, eight_bit=smtp.has_extn("8bitmime"))
        )
        size, is_ascii = measure(io.BytesIO(data))
        options = mail_options(size, is_ascii=is_ascii, utf8=utf8, supports=smtp.has_extn)
        stage = Stage.MAIL
        refused: dict[str, tuple[int, str]] = {}
        try:
            reply = smtp.docmd("MAIL", " ".join([f"FROM:<{envelope.sender}>", *options]))
            if reply[0] != 250:
                raise self.refused(reply, stage, f"<{envelope.sender}>")
            stage = Stage.RCPT
            for address in envelope.recipients:
                code, text = smtp.docmd("RCPT", f"TO:<{address}>")
                if code == 421:
                    raise self.refused((code, text), stage)  # the session ended: no verdict on the address
                if code not in _ACCEPTED:
                    refused[address] = (code, one_line(_text(text)))
            if len(refused) == len(envelope.recipients):
                raise all_refused(refused, server=self.server, context=to.context)
            stage = Stage.DATA
            reply = smtp.docmd("DATA")
            if reply[0] != 354:
                raise self.refused(reply, stage)
            encoder = DataEncoder()
            smtp.send(encoder.encode(data) + encoder.finish())
            code, text = smtp.getreply()
            if code != 250:
                raise self.refused((code, text), stage)
        except DeliveryError:
            raise
        except OSError as exc:
            raise self.failed(exc, stage, f"<{envelope.sender}>" if stage is Stage.MAIL else None) from exc
        except ValueError as exc:  # an address smtplib will not put on a command line (CR, LF, non-ASCII)
            raise MessageError(f"cannot send to {self.server}: {exc}", context=to.context) from exc
        return Delivered(f"{code} {one_line(_text(text))}", refused)

    def close(self) -> None:
        """QUIT politely (bounded), then drop the connection whatever the server says."""
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(_QUIT_TIMEOUT)
                smtp.quit()
        except OSError:
            pass
        finally:
            smtp.close()


def send_one(
    submission: Submission, envelope: Envelope, *, token: str, tls_context: ssl.SSLContext
) -> Delivered:
    """Send ``envelope`` (its message already prepared: Bcc gone, From/Date/Message-ID set) over a
    new session authenticated with ``token``, then QUIT.

    Raises AuthenticationError when the token is refused (nothing was sent: a caller may retry with
    a new token), other DeliveryError subclasses for the server's refusals and for connection
    failures, MessageError when the message or an address cannot be sent as it is.
    """
    dialogue = _Dialogue(submission)
    try:
        dialogue.open(token, tls_context)
        return dialogue.transmit(envelope)
    finally:
        dialogue.close()
