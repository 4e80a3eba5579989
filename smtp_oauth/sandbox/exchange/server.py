"""A fake Exchange Online SMTP submission endpoint (``smtp.office365.com:587``) for offline tests.

It behaves, as far as a client can tell, like Exchange Online's SMTP AUTH client submission:
STARTTLS required; AUTH offered only after STARTTLS and only XOAUTH2 (one-line or after ``334``,
tokens of several KB); tokens verified against the sandbox identity provider's key and the tenant's
mailboxes and app grants; the authenticated mailbox is the only allowed sender; 3 sessions per
mailbox may submit at once; an optional messages-per-minute limit (answered ``421 4.4.2`` and a
hang-up, where Exchange would delay: a test sees an unpaced client at once); SIZE; 500 recipients.
Accepted mail lands in ``store_dir`` (see ``mail_store``); ``inject`` queues failure replies.

    exchange = FakeExchange(
        signing_key=key, tls_context=certs.server_context(), store_dir=path, tenant_id=tenant_id,
        mailboxes=["sender@sandbox.test"], app_grants={client_id: ["sender@sandbox.test"]},
    )
    await exchange.start()          # on the running loop; exchange.port is then set
    ...
    await exchange.stop()
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

from smtp_oauth.sandbox.exchange.auth import TokenVerifier
from smtp_oauth.sandbox.exchange.handler import ExchangeHandler
from smtp_oauth.sandbox.exchange.protocol import ExchangeSMTP
from smtp_oauth.sandbox.exchange.services import ServiceRules
from smtp_oauth.sandbox.faults import FaultInjector
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.limits import SessionSlots, SubmissionRate
from smtp_oauth.sandbox.mail_store import DeliveredMessage, MailStore

__all__ = ["DEFAULT_HOSTNAME", "DeliveredMessage", "FakeExchange"]

# Shaped like an Exchange Online front end's name; .test is reserved (RFC 2606), so never real.
DEFAULT_HOSTNAME = "SN2PR00CA0018.sandbox.outlook.test"


class FakeExchange:
    """The fake Exchange Online SMTP server: start it on the running loop, stop it when done."""

    def __init__(
        self,
        *,
        signing_key: SigningKey,
        tls_context: ssl.SSLContext,
        store_dir: Path,
        mailboxes: Iterable[str],
        app_grants: Mapping[str, Iterable[str]],
        tenant_id: str,
        rbac_grants: Mapping[str, Iterable[str]] | None = None,
        service: str = "exchange",
        acs_usernames: Mapping[str, str] | None = None,
        acs_senders: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        max_sessions_per_mailbox: int = 3,
        messages_per_minute: int = 0,
        max_message_size: int = 35 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.hostname = DEFAULT_HOSTNAME
        self._tls_context = tls_context
        self._max_message_size = max_message_size
        self._store = MailStore(store_dir)
        self._faults = FaultInjector()
        self._handler = ExchangeHandler(
            hostname=self.hostname,
            verifier=TokenVerifier(
                signing_key=signing_key,
                tenant_id=tenant_id,
                mailboxes=mailboxes,
                app_grants=app_grants,
                rbac_grants=rbac_grants,
                acs_usernames=acs_usernames if service == "acs" else None,
            ),
            store=self._store,
            faults=self._faults,
            slots=SessionSlots(max_sessions_per_mailbox),
            rate=SubmissionRate(messages_per_minute),
            rules=ServiceRules.of(service, mailboxes=mailboxes, senders=acs_senders),
        )
        self.service = service
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"FakeExchange(host={self.host!r}, port={self.port}, store_dir={str(self._store.directory)!r})"

    @property
    def store_dir(self) -> Path:
        """The folder delivered messages are written to."""
        return self._store.directory

    async def start(self) -> None:
        """Listen on ``host``:``port`` (port 0: a free one, then in ``self.port``)."""
        if self._server is not None:
            raise RuntimeError("the fake Exchange is already running")
        await asyncio.to_thread(self._store.prepare)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _new_connection(self) -> ExchangeSMTP:
        return ExchangeSMTP(
            self._handler,
            hostname=self.hostname,
            tls_context=self._tls_context,
            max_message_size=self._max_message_size,
            loop=asyncio.get_running_loop(),
        )

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Server.wait_closed waits for open connections (Python >= 3.12): close them first.
        for connection in list(self._handler.connections):
            connection.close()
        await server.wait_closed()

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def grant(self, client_id: str, mailbox: str, *, model: str = "rbac") -> None:
        """Let app ``client_id`` send as ``mailbox``: ``"rbac"`` (``New-ManagementRoleAssignment
        -Role "Application SMTP.SendAsApp"`` with a scope holding it; tokens need no role) or
        ``"fullaccess"`` (``Add-MailboxPermission``; tokens need the SMTP.SendAsApp role)."""
        if model not in {"rbac", "fullaccess"}:
            raise ValueError(f"model must be 'rbac' or 'fullaccess', not {model!r}")
        self._handler.verifier.grant(client_id, mailbox, model=model)

    def inject(self, command: str, reply: str, *, times: int = 1, disconnect: bool = False) -> None:
        """Answer the next ``times`` ``command``s with ``reply``; thread-safe.

        ``command`` is CONNECT (the greeting), EHLO, AUTH, MAIL, RCPT or DATA (the reply after the
        message content); ``reply`` a full 4xx/5xx line such as ``"535 5.7.139 Authentication
        unsuccessful, SmtpClientAuthentication is disabled for the Tenant."``. With
        ``disconnect=True`` the server closes the connection right after the reply.
        """
        self._faults.inject(command, reply, times=times, disconnect=disconnect)

    def pending_injections(self, command: str) -> int:
        """How many injected replies for ``command`` have not been used yet."""
        return self._faults.pending(command)

    def clear_injections(self) -> None:
        """Drop injected replies that have not been used."""
        self._faults.clear()

    def delivered(self) -> list[DeliveredMessage]:
        """Messages accepted since start (or the last ``clear``), oldest first."""
        return self._store.delivered()

    def clear(self) -> None:
        """Forget delivered messages and delete their files."""
        self._store.clear()

    @property
    def sessions_peak(self) -> dict[str, int]:
        """Mailbox -> the most authenticated sessions it had open at once."""
        return dict(self._handler.slots.peak)

    @property
    def auth_attempts(self) -> int:
        """AUTH XOAUTH2 commands answered (accepted, refused or given an injected reply)."""
        return self._handler.counters.attempts

    @property
    def auth_failures(self) -> int:
        """AUTH XOAUTH2 commands refused (bad token or injected reply)."""
        return self._handler.counters.failures
