"""The relay's aiosmtpd hooks for AUTH, MAIL, RCPT and DATA, and their replies.

Each hook returns aiosmtpd's full status line. The hooks consult the listener's *current* policy
(``ListenerState.policy``), so a SIGHUP reload applies to the next command; what a transaction was
accepted for at MAIL FROM (its local user) stays with its envelope until DATA. The 250 after DATA
comes only once ``store`` has committed the message.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import TLSSetupException

from smtp_oauth.mail.headers import read_file_headers, read_headers
from smtp_oauth.relay.listener.accept import QuietLog
from smtp_oauth.relay.listener.incoming import SPILL_AT
from smtp_oauth.relay.listener.limits import REPLY_INSUFFICIENT_STORAGE, LimitsUnavailable
from smtp_oauth.relay.listener.logins import (
    REPLY_AUTH_THROTTLED,
    LoginAttempt,
    LoginCounter,
    LoginGuard,
    LoginLimits,
)
from smtp_oauth.relay.listener.sasl import SaslCredentials, read_login, read_plain
from smtp_oauth.relay.listener.session import (
    REPLY_SHUTTING_DOWN,
    ListenerState,
    ListenerTuning,
    Message,
    RelayEnvelope,
    RelaySession,
)
from smtp_oauth.relay.listener.verifier import PasswordVerifier
from smtp_oauth.relay.passwords import parse_hash
from smtp_oauth.relay.policy import NULL_SENDER, LocalUser

__all__ = ["RelayHandler", "login_limits"]

log = logging.getLogger("smtp_oauth.relay.listener")

REPLY_AUTH_OK = "235 2.7.0 Authentication successful"
REPLY_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many failed authentication attempts, closing connection"
REPLY_SENDER_OK = "250 2.1.0 Ok"
REPLY_SENDER_REFUSED = "550 5.7.1 Sender <{sender}> not allowed for user <{user}>"
REPLY_RECIPIENT_OK = "250 2.1.5 Ok"
REPLY_BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
REPLY_BAD_SENDER = "501 5.1.7 Bad sender address syntax"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
REPLY_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
REPLY_LOCAL_ERROR = "451 4.3.0 Requested action aborted: local error in processing"

# Parsing the header of a big message without a blank line is the one slow step; off the loop then.
_HEADER_PARSE_INLINE_LIMIT = SPILL_AT
# A hash of random bytes nobody knows: unknown users cost as much as known ones (no user probing).
_DUMMY_HASH = parse_hash(
    "$scrypt$ln=14,r=8,p=1$q49z2m8Osc8C5QrAMW89nw$FPSXa/sQwlXbRSL/OWRjbwYVi6nUBZZw2WVz2V5Cw/8"
)


def _clean_address(address: str) -> bool:
    """No CR, LF or NUL (a command smuggled upstream), no undecodable bytes (SMTPUTF8 is UTF-8)."""
    return not any(c in "\r\n\0" or "\udc80" <= c <= "\udcff" for c in address)


def login_limits(tuning: ListenerTuning) -> LoginLimits:
    """The failed-login numbers of ``tuning``."""
    return LoginLimits(
        delay=tuning.auth_failure_delay,
        delay_max=tuning.auth_failure_delay_max,
        window=tuning.auth_failure_window,
        user_failure_limit=tuning.auth_user_failure_limit,
        user_attempt_interval=tuning.auth_user_attempt_interval,
    )


class RelayHandler:
    """aiosmtpd hooks; each returns the full status line. Shared by all sessions of a listener."""

    def __init__(
        self, listener: ListenerState, tuning: ListenerTuning, *, logins: LoginCounter | None = None
    ) -> None:
        self._listener = listener
        self._tuning = tuning
        self.logins = logins or LoginGuard(login_limits(tuning))  # an accept worker's: the main process
        self._quiet = QuietLog(log)
        self.verifier = PasswordVerifier()  # bounded: scrypt's 16 MiB per check, given back after bursts

    async def handle_EHLO(
        self, server: RelaySession, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's extensions plus PIPELINING (RFC 2920: aiosmtpd reads commands in order)."""
        session.host_name = hostname  # aiosmtpd leaves this to a handler with its own EHLO hook
        *extensions, last = responses
        return [*extensions, "250-PIPELINING", last]

    async def handle_AUTH(
        self, server: RelaySession, session: Any, envelope: Any, args: list[str]
    ) -> str | None:
        """AUTH PLAIN / LOGIN (aiosmtpd already refused unknown mechanisms and AUTH before TLS)."""
        reader = read_plain if args[0].upper() == "PLAIN" else read_login
        credentials = await reader(server, args)
        if credentials is None:
            return None  # the reader already answered (501 bad base64, 501 aborted)
        peer = server.peer_host
        try:
            async with self.logins.attempt(credentials.login, peer) as attempt:  # the address's turn
                return await self._check(server, session, credentials, attempt)
        except LimitsUnavailable:
            self._quiet.log(
                logging.ERROR,
                "auth_unavailable",
                "cannot check logins: the relay's main process, which counts failed logins for all "
                "accept workers, does not answer; logins get 454 until it does",
            )
            return REPLY_AUTH_THROTTLED

    async def _check(
        self, server: RelaySession, session: Any, credentials: SaslCredentials, attempt: LoginAttempt
    ) -> str | None:
        """The password check, in the address's turn (the failure delay included)."""
        peer = server.peer_host
        if attempt.refused:
            self._quiet.log(
                logging.WARNING,
                f"auth_throttled {credentials.login}",
                "too many failed logins for user %r: logins from new addresses (now %s) get 454 "
                "for a while; addresses it logged in from before are not affected",
                credentials.login,
                peer,
            )
            # A refusal checks no password but still counts toward the session's limit: otherwise
            # one connection could loop on AUTH for free, taking each new-address slot the moment
            # it opens and keeping it from the user's real new address.
            return self._count_session_failure(server, REPLY_AUTH_THROTTLED)
        user = self._listener.policy.user(credentials.login)
        # Verify against a dummy hash for unknown names, so timing does not reveal which users exist.
        hashed = user.password if user is not None else _DUMMY_HASH
        matches = await self.verifier.verify(credentials.password, hashed)
        if user is not None and matches:
            await attempt.succeeded(user.name)
            session.authenticated = True
            session.auth_data = user.name
            log.info("%s authenticated as %r", peer, user.name)
            return REPLY_AUTH_OK
        return await self._login_failed(server, credentials, attempt)

    async def _login_failed(
        self, server: RelaySession, credentials: SaslCredentials, attempt: LoginAttempt
    ) -> str | None:
        """Log with the peer, wait the growing delay, and hang up after too many tries in a session."""
        count, delay = await attempt.failed()
        log.warning(
            "authentication failed for user %r from %s (%d failures from this address, reply delayed %.1f s)",
            credentials.login,
            server.peer_host,
            count,
            delay,
            extra={"event": "auth_failed", "peer": server.peer_host, "user": credentials.login},
        )
        await asyncio.sleep(delay)
        return self._count_session_failure(server, REPLY_AUTH_FAILED)

    def _count_session_failure(self, server: RelaySession, reply: str) -> str | None:
        """``reply``, or ``reply`` then 421 and a close once the session has used up its tries."""
        server.auth_failures += 1
        if server.auth_failures >= self._tuning.auth_failures_per_session:
            server.hang_up(reply, REPLY_TOO_MANY_AUTH_FAILURES)
            return None
        return reply

    def _sender_user(self, server: RelaySession, session: Any) -> LocalUser | None:
        """Who this session sends as: its AUTH user (if still configured) or its network's user."""
        policy = self._listener.policy
        if session.authenticated:
            return policy.user(session.auth_data)  # None if a reload removed the user
        return policy.network_user(server.peer_host)

    async def handle_MAIL(
        self, server: RelaySession, session: Any, envelope: RelayEnvelope, address: str, options: list[str]
    ) -> str:
        """MAIL FROM: who the session sends as (530 if nobody), and whether it may use this sender."""
        if self._listener.stopping:
            # aiosmtpd pushes our reply right after we return; close only once it is written.
            asyncio.get_running_loop().call_soon(server.hang_up)
            return REPLY_SHUTTING_DOWN
        if not _clean_address(address):
            return REPLY_BAD_SENDER
        user = self._sender_user(server, session)
        if user is None:
            return REPLY_AUTH_REQUIRED
        if not user.may_send_as(address):
            return self._refuse_sender(server, user, address, "MAIL FROM")
        if await self._listener.storage_low():
            # Postfix's queue_minfree: refuse before anything is written, the client tries later.
            self._quiet.log(
                logging.WARNING,
                "storage_low",
                "refusing new mail: the spool's file system has less than relay.min_free_space free",
            )
            return REPLY_INSUFFICIENT_STORAGE
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.user = user
        return REPLY_SENDER_OK

    def _refuse_sender(self, server: RelaySession, user: LocalUser, address: str, where: str) -> str:
        log.warning(
            "refused sender <%s> in %s for user %r from %s: not in allowed_senders",
            address.strip("<>"),
            where,
            user.name,
            server.peer_host,
            extra={"event": "sender_refused", "peer": server.peer_host, "user": user.name},
        )
        return REPLY_SENDER_REFUSED.format(sender=address.strip("<>"), user=user.name)

    async def handle_RCPT(
        self, server: RelaySession, session: Any, envelope: RelayEnvelope, address: str, options: list[str]
    ) -> str:
        """RCPT TO: any recipient (Exchange decides), at most max_recipients per message."""
        if address == NULL_SENDER or not _clean_address(address):
            return REPLY_BAD_RECIPIENT
        if len(envelope.rcpt_tos) >= self._tuning.max_recipients:
            return REPLY_TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return REPLY_RECIPIENT_OK

    async def handle_DATA(self, server: RelaySession, session: Any, envelope: RelayEnvelope) -> str:
        """End of DATA: check the From: header(s), store durably, and only then say 250."""
        user, data, mail_from = envelope.user, envelope.body, envelope.mail_from
        if user is None or data is None or mail_from is None:  # handle_MAIL and smtp_DATA set all three
            raise RuntimeError("DATA without an accepted MAIL FROM")
        if isinstance(data, Path):
            headers = await asyncio.to_thread(read_file_headers, data)
        elif len(data) > _HEADER_PARSE_INLINE_LIMIT:
            headers = await asyncio.to_thread(read_headers, data)
        else:
            headers = read_headers(data)
        for address in headers.from_addresses:
            if not user.may_send_as(address):
                return self._refuse_sender(server, user, address, "From:")
        message = Message(
            local_user=user.name,
            mailbox=user.mailbox,
            mail_from="" if mail_from == NULL_SENDER else mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=data,
            size=envelope.body_size,
            peer=server.peer_host,
            message_id=headers.message_id,
        )
        envelope.body_stored = True
        try:
            queue_id = await self._listener.store(message)
        except Exception:
            log.exception("could not store a message from user %r (%s)", user.name, server.peer_host)
            return REPLY_LOCAL_ERROR
        # No log line here: the store (RelayService._store) logs the "queued" event with these fields.
        return REPLY_QUEUED.format(queue_id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        """Any bug or I/O trouble in a session: a retryable 451, internals only in our log."""
        if isinstance(error, TLSSetupException):
            # Scanners and clients with old TLS stacks do this all day: no traceback for it.
            log.warning("STARTTLS handshake failed: %s", error.__cause__ or error)
        else:
            log.error("internal error in an SMTP session", exc_info=error)
        return REPLY_LOCAL_ERROR
