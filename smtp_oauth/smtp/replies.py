"""SMTP replies as smtp-oauth's delivery errors: one set of rules for every SMTP client we have.

Pure (no aiosmtplib, no asyncio), so that the Mailer (through ``smtp/errors.py``), the relay's
submission client and any other client map the same reply to the same error::

    4xx reply                                       -> TemporaryDeliveryError
    5xx reply that Exchange lifts by itself         -> TemporaryDeliveryError (quotas, see below)
    5xx reply                                       -> PermanentDeliveryError
    5xx reply to AUTH                               -> AuthenticationError

Every message names the server (``smtp.office365.com:587 refused the message: 554 5.2.0 ...``),
so a person reading one line of a log knows which hop said no.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)

__all__ = ["Stage", "from_reply", "one_line", "reply_error_class"]


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
