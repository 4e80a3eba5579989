"""``send-mail``'s stdlib path: a direct send with the cached token, no pydantic, msal or asyncio.

``send-mail`` runs once per message, and for the common case (cron mail, a cached token, SMTP)
the full path's start-up (pydantic, asyncio, aiosmtplib) costs several times the dialogue itself.
This path reads the settings snapshot's direct part (``settings/snapshot.py``), the token from the
cache file (``tokens/fastpath.py``) and sends with the stdlib client (``smtp/stdlib_client.py``),
which keeps the Mailer's dialogue and error rules. It declines (returns None, and the full path
sends) whatever it cannot do as the Mailer would: no valid cached token, too many recipients for
the service (the Mailer's error names the limit), a message big enough to be worth streaming. A
token the server refuses is replaced once, through MSAL, and the message sent again on a new
connection: the Mailer's rule, so both paths make the same two attempts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtp_oauth.errors import AuthenticationError

if TYPE_CHECKING:
    from collections.abc import Callable
    from email.message import EmailMessage

    from smtp_oauth.mail.envelope import Envelope
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.settings.snapshot import DirectView, SendMailView
    from smtp_oauth.smtp.stdlib_client import Delivered

__all__ = ["FAST_PATH_MAX_BYTES", "send_direct"]

# Above this the message goes through the Mailer, which streams it in chunks; the stdlib client
# holds it, and its wire form, whole. Cron and monitoring mail is a few KiB.
FAST_PATH_MAX_BYTES = 4 * 1024 * 1024


def _approximate_size(message: EmailMessage | bytes) -> int:
    """The message's size without flattening it: its parts' encoded payloads (headers aside)."""
    if isinstance(message, bytes):
        return len(message)
    return sum(len(str(part.get_payload())) for part in message.walk() if not part.is_multipart())


def _send(direct: DirectView, view: SendMailView, envelope: Envelope, token: str) -> Delivered:
    """One send; the system's CAs looked up in their directory, else (or if that fails) the bundle."""
    import ssl

    from smtp_oauth.errors import DeliveryError
    from smtp_oauth.smtp.stdlib_client import Submission, send_one
    from smtp_oauth.tls import add_ca_file, ca_directory_context

    context = {**view.hint_context, "mailbox": direct.mailbox}
    submission = Submission(
        direct.host, direct.port, direct.implicit_tls, direct.timeout, direct.mailbox, context
    )
    trust = ca_directory_context()
    if trust is not None:
        try:
            tls = add_ca_file(trust, direct.ca_file, key="smtp.ca_file")
            return send_one(submission, envelope, token=token, tls_context=tls)
        except DeliveryError as error:
            if not isinstance(error.__cause__, ssl.SSLCertVerificationError):
                raise
            # The directory may lack a CA the bundle has (nothing was sent): the bundle decides.
    tls = add_ca_file(ssl.create_default_context(), direct.ca_file, key="smtp.ca_file")
    return send_one(submission, envelope, token=token, tls_context=tls)


def _fresh_token(settings: Settings) -> str:
    """A new token from MSAL (``force_refresh``), as the Mailer asks for one after a refusal."""
    import asyncio

    from smtp_oauth.tokens.provider import create_token_provider

    provider = create_token_provider(settings)
    return asyncio.run(provider.access_token(force_refresh=True, scopes=settings.token_scopes()))


def send_direct(
    direct: DirectView,
    view: SendMailView,
    message: EmailMessage | bytes,
    *,
    sender: str,
    recipients: list[str],
    settings: Callable[[], Settings],
) -> Delivered | None:
    """Send ``message`` with the cached token; None when only the full path can send it.

    ``settings`` gives the validated settings, loaded only if the server refuses the cached token.
    Raises what the Mailer would raise for the same failure.
    """
    if direct.max_recipients is not None and len(recipients) > direct.max_recipients:
        return None
    if _approximate_size(message) > FAST_PATH_MAX_BYTES:
        return None
    from smtp_oauth.tokens.fastpath import read_token

    token = read_token(direct.token)
    if token is None:
        return None  # none cached, or expiring: MSAL gets one on the full path
    from smtp_oauth.mail.envelope import build_envelope

    envelope, _ = build_envelope(message, sender=sender, recipients=recipients, default_sender=view.sender)
    try:
        return _send(direct, view, envelope, token)
    except AuthenticationError as refused:
        import logging

        validated = settings()
        logging.getLogger("smtp_oauth.smtp").info(
            "%s:%s refused the token (%s); retrying once with a new token",
            direct.host,
            direct.port,
            refused.reply,
        )
        return _send(direct, view, envelope, _fresh_token(validated))
