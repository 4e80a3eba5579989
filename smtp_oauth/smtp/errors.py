"""Turn what aiosmtplib raises, and the replies it hands back, into smtp-oauth's delivery errors.

This is the one boundary where aiosmtplib's exceptions stop (style: errors of a dependency are
converted where it is called, ``raise OurError(...) from exc``)::

    4xx reply, timeout, network error, disconnect   -> TemporaryDeliveryError
    5xx reply that Exchange lifts by itself         -> TemporaryDeliveryError (quotas, see below)
    5xx reply                                       -> PermanentDeliveryError
    5xx reply to AUTH                               -> AuthenticationError
    unusable address                                -> MessageError

Every message names the server (``smtp.office365.com:587 refused the message: 554 5.2.0 ...``),
so a person reading one line of a log knows which hop said no.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping

import aiosmtplib

from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryError,
    MessageError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)

__all__ = ["Stage", "from_exception", "from_reply", "one_line", "reply_error_class"]

_TLS_HINT = (
    "The server's TLS certificate is not trusted. For a private or test server, set smtp.ca_file to "
    "the PEM bundle of the CA that signed it; check that smtp.host matches the certificate's name."
)


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
    return error_class(message, code=code, text=text, recipients=recipients, context=context)


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


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind ``exc`` (aiosmtplib wraps it for implicit TLS, not for STARTTLS)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def from_exception(  # noqa: PLR0911  # one return per kind of failure reads best
    exc: BaseException,
    *,
    server: str,
    stage: Stage,
    context: Mapping[str, str],
    subject: str | None = None,
) -> DeliveryError:
    """The error for an exception aiosmtplib (or the TLS layer under it) raised at ``stage``."""
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
        return from_reply(exc.code, exc.message, server=server, stage=stage, context=context, subject=subject)
    tls = _tls_failure(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or tls.reason or str(tls)
        return TemporaryDeliveryError(
            f"TLS with {server} failed: {reason}",
            hint=_TLS_HINT if isinstance(tls, ssl.SSLCertVerificationError) else None,
            context=context,
        )
    if isinstance(exc, TimeoutError):
        return TemporaryDeliveryError(f"{server} did not answer in time ({stage.value})", context=context)
    # SMTPConnectError is a ConnectionError too: test it before the generic disconnect.
    if isinstance(exc, aiosmtplib.SMTPConnectError) or (stage is Stage.CONNECT and isinstance(exc, OSError)):
        detail = str(exc.__cause__ or exc)
        return TemporaryDeliveryError(f"cannot connect to {server}: {detail}", context=context)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | OSError):
        return TemporaryDeliveryError(f"{server} closed the connection ({stage.value})", context=context)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return MessageError(f"{server} cannot take this message: {exc}", context=context)
    if isinstance(exc, aiosmtplib.SMTPException):
        detail = f"({stage.value}): {exc}"
        return TemporaryDeliveryError(f"SMTP session with {server} failed {detail}", context=context)
    raise TypeError(f"not an SMTP failure: {exc!r}") from exc
