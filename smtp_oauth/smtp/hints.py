"""What to do about a reply Exchange Online is known to send: the table, and one pure look-up.

Sources: https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements,
https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
and the replies themselves. Each hint is a template: ``{mailbox}``, ``{client_id}`` and the other
ids are filled in when the error is shown (``SmtpOAuthError.explain()``).

Standard library only (no aiosmtplib), so every SMTP client of ours (the Mailer, send-mail's stdlib
client, the relay's submission client) attaches the same hint to the same reply:
``smtp/replies.py`` calls ``reply_hint(code, enhanced_status, text)`` where it makes the error.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["REPLY_HINTS", "ReplyHint", "reply_hint"]


class ReplyHint(NamedTuple):
    """One row: a reply matches when its code, enhanced status and text (each when given) all do."""

    code: int | None
    enhanced_status: str | None
    text_contains: str | None  # compared without regard to case
    hint: str

    def matches(self, code: int | None, enhanced_status: str | None, text: str) -> bool:
        """Whether the reply ``code enhanced_status text`` is the one this row is about."""
        if self.code is not None and self.code != code:
            return False
        if self.enhanced_status is not None and self.enhanced_status != enhanced_status:
            return False
        return self.text_contains is None or self.text_contains.lower() in text.lower()


# First match wins: the specific rows come before the general ones (552 with any status last).
REPLY_HINTS: tuple[ReplyHint, ...] = (
    ReplyHint(
        code=535,
        enhanced_status="5.7.139",
        text_contains=None,
        hint=(
            "SMTP AUTH is disabled for this mailbox or tenant (5.7.139). Enable it in Exchange Online "
            "PowerShell: Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false "
            "(tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false). Security "
            "defaults or a Conditional Access policy blocking legacy authentication can also cause it. "
            "See https://aka.ms/smtp_auth_disabled . Microsoft Graph does not use SMTP AUTH: transport = "
            '"graph" sends every message through it, fallback_transport = "graph" only the ones SMTP '
            "refuses like this (the app needs the Graph permission Mail.Send)."
        ),
    ),
    ReplyHint(
        code=535,
        enhanced_status="5.7.3",
        text_contains=None,
        hint=(
            "Exchange Online refused the token (5.7.3). Check that smtp.username is the mailbox the token"
            " may send as; for client credentials that the service principal is registered "
            "(New-ServicePrincipal -AppId {client_id} -ObjectId {enterprise_app_object_id}) and has "
            "Add-MailboxPermission -Identity {mailbox} -User {service_principal_id} -AccessRights "
            "FullAccess; and that the token's audience is Exchange Online (see `smtp-oauth token "
            "--claims`)."
        ),
    ),
    ReplyHint(
        code=550,
        enhanced_status="5.7.60",
        text_contains=None,
        hint=(
            "The mailbox {mailbox} may not send as this sender (5.7.60). Send from {mailbox} itself, or "
            "grant it SendAs: Add-RecipientPermission -Identity <sender> -Trustee {mailbox} -AccessRights"
            " SendAs."
        ),
    ),
    ReplyHint(
        code=None,
        enhanced_status=None,
        text_contains="SendAsDenied",
        hint=(
            "The mailbox {mailbox} may not send as this sender (SendAsDenied). Send from {mailbox} "
            "itself, or grant it SendAs: Add-RecipientPermission -Identity <sender> -Trustee {mailbox} "
            "-AccessRights SendAs."
        ),
    ),
    ReplyHint(
        code=None,
        enhanced_status=None,
        text_contains="MapiExceptionLogonFailed",
        hint=(
            "Exchange Online could not log on to mailbox {mailbox} for this app "
            "(MapiExceptionLogonFailed): grant the service principal access: Add-MailboxPermission "
            "-Identity {mailbox} -User {service_principal_id} -AccessRights FullAccess."
        ),
    ),
    ReplyHint(
        code=535,
        enhanced_status="5.7.142",
        text_contains=None,
        hint=(
            "The server refused the token because it expires within minutes (5.7.142); smtp-oauth asked "
            "for a new one and retried. If it keeps happening, check this machine's clock (NTP); with "
            'smtp.service = "hve" tokens are replaced 20 minutes before they expire.'
        ),
    ),
    ReplyHint(
        code=501,
        enhanced_status="5.5.127",
        text_contains=None,
        hint=(
            "The server says the token will expire soon (501 5.5.127): a new token is fetched and the "
            "message retried. If it persists, check this machine's clock (NTP)."
        ),
    ),
    ReplyHint(
        code=535,
        enhanced_status="5.7.143",
        text_contains=None,
        hint=(
            "The token had expired when the server checked it (5.7.143): check this machine's clock "
            "(NTP); a new token is fetched on the next attempt."
        ),
    ),
    ReplyHint(
        code=535,
        enhanced_status="5.7.144",
        text_contains=None,
        hint=(
            "The app lacks the permission High Volume Email requires (5.7.144): give app {client_id} the "
            "Office 365 Exchange Online application permission Mail.Send with admin consent, and allow it"
            " on the HVE account: Add-HVEAppAccess -Identity {mailbox} -AppIds {client_id}."
        ),
    ),
    ReplyHint(
        code=550,
        enhanced_status="5.7.240",
        text_contains=None,
        hint=(
            "App {client_id} is not allowed to use the HVE account {mailbox} (5.7.240): Add-HVEAppAccess "
            "-Identity {mailbox} -AppIds {client_id} (up to 10 apps; takes about 5 minutes)."
        ),
    ),
    ReplyHint(
        code=550,
        enhanced_status="5.7.62",
        text_contains=None,
        hint=(
            "High Volume Email sends only as the HVE account itself (5.7.62): the envelope sender (MAIL "
            "FROM, send-mail -f) must be {mailbox}."
        ),
    ),
    ReplyHint(
        code=550,
        enhanced_status="5.6.241",
        text_contains=None,
        hint=(
            "High Volume Email requires the From: header to be the HVE account {mailbox} (5.6.241): "
            "rewrite From: to {mailbox}, or send from another service."
        ),
    ),
    ReplyHint(
        code=550,
        enhanced_status="5.5.105",
        text_contains=None,
        hint=(
            "High Volume Email delivers only to recipients inside your organization (5.5.105): send "
            "external mail through Exchange Online or Azure Communication Services (smtp.service = "
            '"acs").'
        ),
    ),
    ReplyHint(
        code=432,
        enhanced_status="4.3.2",
        text_contains=None,
        hint=(
            "Exchange Online allows 3 concurrent SMTP sessions per mailbox (432 4.3.2); this one was over"
            " the limit. Retry later, or send through `smtp-oauth relay`, which keeps within it."
        ),
    ),
    ReplyHint(
        code=554,
        enhanced_status="5.2.0",
        text_contains="SubmissionQuotaExceeded",
        hint=(
            "The mailbox reached Exchange Online's limit of 10,000 recipients per day "
            "(SubmissionQuotaExceededException). Wait up to 24 hours, or spread sending over several "
            "mailboxes."
        ),
    ),
    ReplyHint(
        code=554,
        enhanced_status="5.2.2",
        text_contains=None,
        hint=(
            "The sending mailbox is full (5.2.2): mail sent with SMTP AUTH is saved in Sent Items. Clean "
            "up {mailbox} or raise its quota."
        ),
    ),
    ReplyHint(
        code=550,
        enhanced_status="5.7.30",
        text_contains=None,
        hint=(
            "Basic authentication is not supported for client submission any more (5.7.30). smtp-oauth "
            "uses OAuth; if you see this, a program is still sending with a password directly: point it "
            "at `smtp-oauth relay` or `send-mail`."
        ),
    ),
    ReplyHint(
        code=530,
        enhanced_status="5.7.57",
        text_contains=None,
        hint=(
            "The server requires authentication before MAIL FROM (5.7.57): the session was not "
            "authenticated. Check that AUTH XOAUTH2 succeeded (run `smtp-oauth check`)."
        ),
    ),
    ReplyHint(
        code=None,
        enhanced_status=None,
        text_contains="Token will expire soon",
        hint=(
            "The server rejected a token close to its expiry; smtp-oauth refreshes tokens 10 minutes "
            "early, so check the machine's clock."
        ),
    ),
    ReplyHint(
        code=552,
        enhanced_status=None,
        text_contains=None,
        hint=("The message is larger than the server accepts. Send smaller attachments or a link."),
    ),
)


def reply_hint(code: int | None, enhanced_status: str | None, text: str) -> str | None:
    """The cause and fix for the reply ``code enhanced_status text`` (a template), or None."""
    return next((row.hint for row in REPLY_HINTS if row.matches(code, enhanced_status, text)), None)
