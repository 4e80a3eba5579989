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

from collections.abc import Mapping

import aiosmtplib

from smtp_oauth.errors import DeliveryError, MessageError, TemporaryDeliveryError
from smtp_oauth.smtp.replies import Stage, connection_failure, from_reply, one_line, reply_error_class

__all__ = ["Stage", "from_exception", "from_reply", "one_line", "reply_error_class"]


def from_exception(
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
    # TLS, timeouts, refused connections, hang-ups (aiosmtplib's are OSError/TimeoutError too).
    failure = connection_failure(exc, server=server, stage=stage, context=context)
    if failure is not None:
        return failure
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return MessageError(f"{server} cannot take this message: {exc}", context=context)
    if isinstance(exc, aiosmtplib.SMTPException):
        detail = f"({stage.value}): {exc}"
        return TemporaryDeliveryError(f"SMTP session with {server} failed {detail}", context=context)
    raise TypeError(f"not an SMTP failure: {exc!r}") from exc
