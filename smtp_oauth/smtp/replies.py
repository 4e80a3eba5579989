"""SMTP replies as smtp-oauth's delivery errors: one set of rules for every SMTP client we have.

Pure (no aiosmtplib, no asyncio), so that the Mailer (through ``smtp/errors.py``), the stdlib
client of ``send-mail`` (``smtp/stdlib_client.py``), the relay's submission client and any other
client map the same reply, or the same failure of the connection, to the same error::

    4xx reply                                       -> TemporaryDeliveryError
    5xx reply that Exchange lifts by itself         -> TemporaryDeliveryError (quotas, see below)
    5xx reply                                       -> PermanentDeliveryError
    5xx reply to AUTH                               -> AuthenticationError
    every recipient refused                         -> the class of the least severe refusal
    TLS failure                                     -> TemporaryDeliveryError
    timeout                                         -> DeliveryTimeoutError (also a TimeoutError)
    refused or unreachable connection, hang-up      -> DeliveryConnectionError (also a ConnectionError)
    no STARTTLS, no XOAUTH2 offered                 -> TemporaryDeliveryError, with a hint

Every message names the server (``smtp.office365.com:587 refused the message: 554 5.2.0 ...``),
so a person reading one line of a log knows which hop said no.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    MessageError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)

__all__ = [
    "Stage",
    "all_refused",
    "connection_failure",
    "from_reply",
    "no_smtputf8",
    "no_starttls",
    "no_xoauth2",
    "one_line",
    "reply_error_class",
]


class Stage(enum.Enum):
    """The step of the SMTP session a failure happened in: it chooses the wording and the class."""

    CONNECT = "connect"
    TLS = "TLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"


_WHAT_WAS_REFUSED = {
    Stage.CONNECT: "refused the connection",
    Stage.TLS: "refused STARTTLS",
    Stage.AUTH: "refused the XOAUTH2 login",
    Stage.MAIL: "refused the sender",
    Stage.RCPT: "refused all recipients",
    Stage.DATA: "refused the message",
}


def one_line(text: str) -> str:
    """A multi-line SMTP reply text as one line (aiosmtplib joins continuation lines with LF)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def from_reply(
    code: int,
    text: str,
    *,
    server: str,
    stage: Stage,
    context: Mapping[str, str],
    recipients: Mapping[str, tuple[int, str]] | None = None,
    subject: str | None = None,
) -> DeliveryError:
    """The error for a negative reply ``code text`` received at ``stage``.

    ``subject`` names what was refused when it helps (the sender address, the mailbox).
    """
    text = one_line(text)
    what = _WHAT_WAS_REFUSED[stage]
    if subject:
        what = f"{what} {subject}"
    message = f"{server} {what}: {code} {text}".rstrip()
    if not 400 <= code < 600:
        # A reply outside 4xx/5xx where a success was due: the server is confused; later may work.
        message = f"{server} gave an unexpected reply at {stage.value}: {code} {text}"
    error_class = reply_error_class(code, auth=stage is Stage.AUTH, text=text)
    return _with_hint(error_class(message, code=code, text=text, recipients=recipients, context=context))


def _with_hint(error: DeliveryError) -> DeliveryError:
    """``error`` with the cause and fix Exchange's reply is known to mean (smtp/hints.py), if any."""
    # On a refusal only: a message that goes through never loads the table (send-mail's start-up).
    from smtp_oauth.smtp.hints import reply_hint

    error.hint = reply_hint(error.code, error.enhanced_status, error.text)
    return error


# Exchange Online answers quota conditions with 5xx codes although they clear by themselves: the
# 10,000 recipients/day limit (554 5.2.0 ...SubmissionQuotaExceededException) within 24 hours, a
# full mailbox (554 5.2.2 ...QuotaExceededException; SMTP AUTH mail is saved in Sent Items) once
# someone cleans up. Treating them as permanent would throw mail away that goes through tomorrow.
_SELF_CLEARING_5XX = ("QuotaExceededException",)


def reply_error_class(code: int, *, auth: bool = False, text: str = "") -> type[DeliveryError]:
    """The class for a negative reply: 4xx temporary, 5xx permanent, 5xx to AUTH an auth failure.

    Exchange's quota replies are 5xx but temporary (``_SELF_CLEARING_5XX``).
    """
    if 500 <= code < 600:
        if auth:
            return AuthenticationError
        if any(marker.lower() in text.lower() for marker in _SELF_CLEARING_5XX):
            return TemporaryDeliveryError
        return PermanentDeliveryError
    return TemporaryDeliveryError


_SYNTAX_CODES = frozenset({501, 553})  # RFC 5321: syntax error in parameters / mailbox name not allowed


def all_refused(
    refused: Mapping[str, tuple[int, str]], *, server: str, context: Mapping[str, str]
) -> DeliveryError:
    """The error when the server refused every recipient (address -> (code, text)), so nothing was sent.

    One temporary refusal makes it temporary (worth trying again later); only syntax refusals make
    it a MessageError (the addresses themselves are wrong).
    """
    listing = ", ".join(f"{address} ({code} {text})" for address, (code, text) in refused.items())
    code, text = next(iter(refused.values()))
    codes = [code for code, _ in refused.values()]
    error_class = reply_error_class(min(codes))
    if all(code in _SYNTAX_CODES for code in codes):
        error_class = MessageError
    message = f"{server} refused all recipients: {listing}"
    return _with_hint(error_class(message, code=code, text=text, recipients=dict(refused), context=context))


_TLS_HINT = (
    "The server's TLS certificate is not trusted. For a private or test server, set smtp.ca_file to "
    "the PEM bundle of the CA that signed it; check that smtp.host matches the certificate's name."
)


def connection_failure(
    exc: BaseException, *, server: str, stage: Stage, context: Mapping[str, str]
) -> DeliveryError | None:
    """The error for a failure of the connection itself at ``stage``, or None when ``exc`` is not one.

    TLS (an untrusted certificate gets the smtp.ca_file hint), a timeout, a refused or unreachable
    connection, the server hanging up: all temporary, the message was not taken.
    """
    import ssl  # on a failure only: the relay's submission client maps replies here and has no TLS

    from smtp_oauth.tls import ssl_error_in

    tls = ssl_error_in(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or tls.reason or str(tls)
        return TemporaryDeliveryError(
            f"TLS with {server} failed: {reason}",
            hint=_TLS_HINT if isinstance(tls, ssl.SSLCertVerificationError) else None,
            context=context,
        )
    if isinstance(exc, TimeoutError):
        return DeliveryTimeoutError(f"{server} did not answer in time ({stage.value})", context=context)
    if stage is Stage.CONNECT and isinstance(exc, OSError):
        detail = str(exc.__cause__ or exc)
        return DeliveryConnectionError(f"cannot connect to {server}: {detail}", context=context)
    if isinstance(exc, OSError):
        return DeliveryConnectionError(f"{server} closed the connection ({stage.value})", context=context)
    return None


_STARTTLS_HINT = (
    "The server did not offer STARTTLS, so nothing was sent (credentials never go in clear text). "
    "Check smtp.host and smtp.port (Exchange Online: smtp.office365.com:587 with security = "
    '"starttls"), or whether something on the path strips STARTTLS.'
)
_XOAUTH2_HINT = (
    "The server does not offer AUTH XOAUTH2 on this connection. Exchange Online offers it after "
    "STARTTLS on smtp.office365.com:587; check smtp.host, smtp.port and smtp.security."
)


def no_starttls(*, server: str, context: Mapping[str, str]) -> DeliveryError:
    """STARTTLS is required: a server that does not offer it gets nothing, not even the login."""
    return TemporaryDeliveryError(
        f"{server} does not offer STARTTLS; refusing to authenticate in clear text",
        hint=_STARTTLS_HINT,
        context=context,
    )


def no_xoauth2(offered: list[str], *, server: str, context: Mapping[str, str]) -> DeliveryError:
    """The secured connection offers no AUTH XOAUTH2 (``offered``: the AUTH mechanisms it does offer)."""
    listing = " ".join(offered).upper() or "none"
    return TemporaryDeliveryError(
        f"{server} does not offer AUTH XOAUTH2 (offers: {listing})", hint=_XOAUTH2_HINT, context=context
    )


def no_smtputf8(*, server: str, context: Mapping[str, str]) -> MessageError:
    """A non-ASCII address needs SMTPUTF8 (RFC 6531), which the server does not offer."""
    return MessageError(
        f"{server} does not support SMTPUTF8, needed for a non-ASCII address", context=context
    )
