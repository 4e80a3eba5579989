"""The fake Exchange Online's decisions, as aiosmtpd handler hooks: EHLO, AUTH, MAIL, RCPT, DATA, QUIT.

Replies are Exchange Online's own
(https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth,
https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements):
``535 5.7.3`` for any token problem,
``550 5.7.60`` for send-as violations, ``432 4.3.2`` past the concurrent-session limit, ``452 4.5.3``
past 500 recipients. The submission-rate limit answers ``421 4.4.2`` and hangs up instead of
delaying the message (Exchange delays it): a test then sees at once that a client did not pace
itself, without waiting for minutes.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import logging
import uuid
from dataclasses import dataclass
from email.headerregistry import AddressHeader
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session

from smtp_oauth.sandbox.exchange.auth import AuthenticatedMailbox, AuthRejected, TokenVerifier
from smtp_oauth.sandbox.exchange.protocol import ExchangeSMTP
from smtp_oauth.sandbox.exchange.services import ServiceRules
from smtp_oauth.sandbox.faults import FaultInjector
from smtp_oauth.sandbox.limits import SessionSlots, SubmissionRate
from smtp_oauth.sandbox.mail_store import MailStore
from smtp_oauth.smtp import xoauth2

__all__ = ["MAX_RECIPIENTS", "AuthCounters", "ExchangeHandler"]

log = logging.getLogger("smtp_oauth.sandbox.exchange.server")

MAX_RECIPIENTS = 500  # Exchange Online's recipients-per-message limit (To + Cc + Bcc)

SEND_AS_DENIED = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
THREAD_LIMIT = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
RATE_LIMIT = "421 4.4.2 Message submission rate for this client has exceeded the configured limit"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
SERVER_ERROR = "451 4.3.0 Temporary server error. Please try again later"


@dataclass
class AuthCounters:
    """AUTH XOAUTH2 attempts that reached a decision, and how many of them failed."""

    attempts: int = 0
    failures: int = 0


class ExchangeHandler:
    """aiosmtpd handler shared by every connection of one fake Exchange server.

    No attribute of this class may start with ``auth_`` unless it is a SASL mechanism: aiosmtpd
    offers every ``auth_*`` member of the handler as one.
    """

    def __init__(
        self,
        *,
        hostname: str,
        verifier: TokenVerifier,
        store: MailStore,
        faults: FaultInjector,
        slots: SessionSlots,
        rate: SubmissionRate,
        rules: ServiceRules | None = None,
    ) -> None:
        self.hostname = hostname
        self.verifier = verifier
        self.store = store
        self.faults = faults
        self.slots = slots
        self.rate = rate
        self.rules = rules or ServiceRules()
        self.counters = AuthCounters()
        self.connections: set[ExchangeSMTP] = set()

    # Connection life (called by ExchangeSMTP).

    def connection_opened(self, server: ExchangeSMTP) -> None:
        """Track the connection so that ``stop`` can close it."""
        self.connections.add(server)

    def connection_closed(self, server: ExchangeSMTP) -> None:
        """Free the connection's session slot."""
        self.connections.discard(server)
        self.slots.close(server)

    def greeting(self, server: ExchangeSMTP) -> str | None:
        """An injected reply to send instead of the ``220`` banner."""
        return self._injected("CONNECT", server)

    def _injected(self, command: str, server: ExchangeSMTP) -> str | None:
        injected = self.faults.take(command)
        if injected is None:
            return None
        log.info(
            "injected reply to %s: %s%s", command, injected.reply, " (then disconnect)" * injected.disconnect
        )
        if injected.disconnect:
            server.hang_up_after_reply()
        return injected.reply

    # Hooks.

    async def handle_EHLO(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Exchange's EHLO greeting line, plus ENHANCEDSTATUSCODES (every reply carries one)."""
        injected = self._injected("EHLO", server)
        if injected is not None:
            return [injected]
        session.host_name = hostname  # the 5-argument hook must record it itself
        peer = session.peer[0] if session.peer else "unknown"
        return [
            f"250-{self.hostname} Hello [{peer}]",
            *responses[1:-1],
            "250-ENHANCEDSTATUSCODES",
            responses[-1],
        ]

    async def auth_XOAUTH2(self, server: ExchangeSMTP, args: list[str]) -> AuthResult:
        """SASL XOAUTH2, as an initial response or after a bare ``334``; checks the token."""
        if len(args) == 2:
            initial_response = args[1]
        else:
            # Two-step form: aiosmtpd sends "334 ", reads the line, handles "*" and bad base64.
            blob = await server.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
            initial_response = base64.b64encode(blob).decode("ascii")
        self.counters.attempts += 1
        injected = self._injected("AUTH", server)
        if injected is not None:
            self.counters.failures += 1
            return AuthResult(success=False, handled=False, message=injected)
        try:
            identity = self.verifier.verify(xoauth2.decode(initial_response))
        except ValueError:
            # Not the exception's text: a malformed response may carry the token where a key belongs.
            return self._reject("not a well-formed XOAUTH2 response")
        except AuthRejected as exc:
            return self._reject(str(exc))
        refusal = self.rules.auth_refusal(identity.expires_at)
        if refusal is not None:
            self.counters.failures += 1
            log.info("AUTH XOAUTH2 rejected by %s rules: %s", self.rules.name, refusal)
            return AuthResult(success=False, handled=False, message=refusal)
        self.slots.open(identity.mailbox, server)
        log.info("AUTH XOAUTH2 accepted: %s (client %s)", identity.mailbox, identity.client_id or "?")
        return AuthResult(success=True, auth_data=identity)

    def _reject(self, reason: str) -> AuthResult:
        # Exchange gives every token problem the same reply; the reason is for the sandbox's user.
        self.counters.failures += 1
        log.info("AUTH XOAUTH2 rejected: %s", reason)
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.3 Authentication unsuccessful [{self.hostname}]"
        )

    async def handle_MAIL(
        self,
        server: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Sender checks: session limit, rate limit, and that the sender is the mailbox itself."""
        injected = self._injected("MAIL", server)
        if injected is not None:
            return injected
        identity = _identity(session)
        if not self.slots.may_submit(server):
            log.info(
                "MAIL refused: %s has %d sessions open", identity.mailbox, self.slots.count(identity.mailbox)
            )
            return THREAD_LIMIT
        if not self.rate.allows(identity.mailbox):
            log.info("MAIL refused: %s over %d messages a minute", identity.mailbox, self.rate.per_minute)
            server.hang_up_after_reply()
            return RATE_LIMIT
        refusal = self.rules.sender_refusal(identity.mailbox, address, header=False)
        if refusal is not None:
            log.info("MAIL refused: %s may not send as %s", identity.mailbox, address)
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept up to MAX_RECIPIENTS recipients per message."""
        injected = self._injected("RCPT", server)
        if injected is not None:
            return injected
        refusal = self.rules.recipient_refusal(address, len(envelope.rcpt_tos))
        if refusal is not None:
            log.info("RCPT refused: %s (%s)", address, refusal)
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        """Check the From: header, store the message, answer with its Message-ID."""
        injected = self._injected("DATA", server)
        if injected is not None:
            return injected
        identity = _identity(session)
        data = envelope.original_content or b""
        headers = BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        # Every From: address must be the mailbox; a message without From: passes, as the
        # envelope sender was already checked at MAIL FROM.
        senders = _from_addresses(headers.get_all("From", []))
        for sender in senders:
            refusal = self.rules.sender_refusal(identity.mailbox, sender, header=True)
            if refusal is not None:
                log.info("DATA refused: %s may not send as From: %s", identity.mailbox, ", ".join(senders))
                return refusal
        message_id = str(headers.get("Message-ID", "")).strip() or f"<{uuid.uuid4().hex}@{self.hostname}>"
        delivered = await asyncio.to_thread(
            self.store.save,
            auth_user=identity.mailbox,
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=data,
            message_id=message_id,
        )
        self.rate.record(identity.mailbox)
        log.info(
            "delivered %s from %s to %d recipient(s)",
            delivered.path.name,
            identity.mailbox,
            len(envelope.rcpt_tos),
        )
        return (
            f"250 2.6.0 {message_id} [InternalId={delivered.path.stem}, Hostname={self.hostname}] "
            "Queued mail for delivery"
        )

    async def handle_QUIT(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        """Free the session slot now rather than when the TLS shutdown completes."""
        self.slots.close(server)
        return "221 2.0.0 Service closing transmission channel"

    async def handle_exception(self, error: Exception) -> str:
        """A bug of ours: log it, tell the client to retry, reveal nothing."""
        log.error("unexpected error in an SMTP session", exc_info=error)
        return SERVER_ERROR


def _identity(session: Session) -> AuthenticatedMailbox:
    """Who the session authenticated as; aiosmtpd's auth_required keeps unauthenticated ones out."""
    identity: object = session.auth_data
    if not isinstance(identity, AuthenticatedMailbox):
        raise TypeError("a mail command reached the handler without an authenticated mailbox")
    return identity


def _from_addresses(values: list[Any]) -> list[str]:
    """The addr-specs of From: header values (parsed with ``email.policy.default``)."""
    addresses: list[str] = []
    for value in values:
        if isinstance(value, AddressHeader):
            addresses.extend(address.addr_spec for address in value.addresses)
        else:
            addresses.append(str(value))
    return addresses
