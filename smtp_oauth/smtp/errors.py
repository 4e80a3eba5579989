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

import ssl
from collections.abc import Mapping

import aiosmtplib

from smtp_oauth.errors import DeliveryError, MessageError, TemporaryDeliveryError
from smtp_oauth.smtp.replies import Stage, from_reply, one_line, reply_error_class

__all__ = ["Stage", "from_exception", "from_reply", "one_line", "reply_error_class"]

_TLS_HINT = (
    "The server's TLS certificate is not trusted. For a private or test server, set smtp.ca_file to "
    "the PEM bundle of the CA that signed it; check that smtp.host matches the certificate's name."
)


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
