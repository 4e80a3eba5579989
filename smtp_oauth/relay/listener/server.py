"""The relay's SMTP listener: where legacy senders hand over their mail (aiosmtpd >= 1.4.6).

A session goes::

    EHLO -> [STARTTLS] -> AUTH PLAIN|LOGIN (or a peer in relay.allow_networks) -> MAIL FROM (sender
    rule) -> RCPT TO (<= 500) -> DATA (From: rule, size) -> store() commits -> 250 queued as <id>

This module binds the socket, builds each connection's ``session.RelaySession`` from the current
configuration, reloads users and policy on SIGHUP, and stops gracefully. Before binding it refuses an
open relay (``policy.check_not_open_relay``).

The 250 after DATA is sent only when ``store`` has returned, i.e. the message is durably committed
(the spool's commit); ``store`` runs shielded, so a client hanging up mid-commit cannot cancel it.

With ``incoming_dir`` (the spool's ``incoming/``), a body bigger than ``incoming.SPILL_AT`` is
written there while it arrives and ``store`` gets its path: the spool takes the file over by a
rename. Once ``store`` has finished, the listener removes whatever file is left (a failed store).

Limits (``limits.py``): ``relay.max_connections`` in all and ``relay.max_connections_per_client``
per address (421 4.7.0 beyond them), the disk a client's unfinished transfers may hold, and
``relay.min_free_space`` on the spool's file system (452 4.3.1 at MAIL FROM below it). Sockets are
accepted by ``accept.Acceptor``, which pauses while the process is out of file descriptors and
admits each connection before its session is made. An accept worker (``relay.workers``) is given
``connections`` and ``logins`` that ask the relay's main process, so that the connection limits and
the failed-login limits hold across all workers; in one process they are this listener's own
``connection_limits`` and ``login_guard`` (which the main process also answers the workers from).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.eventloop import wait_event
from smtp_oauth.relay.listener.accept import ACCEPT_BATCH, Acceptor, bind
from smtp_oauth.relay.listener.handler import RelayHandler, login_limits
from smtp_oauth.relay.listener.incoming import SpillGuard
from smtp_oauth.relay.listener.limits import (
    REPLY_LIMITS_UNAVAILABLE,
    ByteCounter,
    ClientBytes,
    ConnectionCounter,
    ConnectionLimits,
    FreeSpace,
    LimitsUnavailable,
)
from smtp_oauth.relay.listener.logins import LoginCounter, LoginGuard
from smtp_oauth.relay.listener.session import (
    JUNK_COMMAND_LIMITS,
    REPLY_SHUTTING_DOWN,
    ListenerTuning,
    Message,
    RelaySession,
)
from smtp_oauth.relay.policy import RelayPolicy, check_not_open_relay, is_loopback_address
from smtp_oauth.settings.models import RelaySettings, parse_listen

__all__ = ["ListenerTuning", "Message", "RelayListener", "build_tls_context", "log_queued"]

log = logging.getLogger("smtp_oauth.relay.listener")
LISTEN_BACKLOG = 512  # the kernel's queue of connections no process has accepted yet (listen(2))


def build_tls_context(relay: RelaySettings) -> ssl.SSLContext | None:
    """The STARTTLS context from relay.tls_certificate/tls_key, or None when TLS is not configured."""
    if relay.tls_certificate is None or relay.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS >= 1.2, no client certs asked
    try:
        context.load_cert_chain(relay.tls_certificate, relay.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load relay.tls_certificate {relay.tls_certificate} with relay.tls_key "
            f"{relay.tls_key}: {exc}",
            key="relay.tls_certificate",
            hint="Both must be PEM files readable by the relay; the key must belong to the certificate.",
        ) from exc
    return context


def log_queued(queue_id: str, message: Message) -> None:
    """The "queued" event, once ``message`` is committed as ``queue_id`` (whichever process took it)."""
    logging.getLogger("smtp_oauth.relay").info(
        "queued %s",
        queue_id,
        extra={
            "event": "queued",
            "queue_id": queue_id,
            "message_id": message.message_id,
            "sender": message.mail_from,
            "recipients": len(message.rcpt_tos),
            "size": message.size,
            "user": message.local_user,
            "peer": message.peer,
            "mailbox": message.mailbox,
        },
    )


@dataclass(frozen=True)
class _Config:
    """What a new connection is set up with; swapped as a whole by reload()."""

    relay: RelaySettings
    policy: RelayPolicy
    tls_context: ssl.SSLContext | None


class RelayListener:
    """Accepts mail from legacy senders on relay.listen and hands it to ``store``."""

    def __init__(
        self,
        relay: RelaySettings,
        *,
        default_mailbox: str,
        profile_mailboxes: Mapping[str, str] | None = None,
        store: Callable[[Message], Awaitable[str]],
        tuning: ListenerTuning | None = None,
        incoming_dir: Path | None = None,
        sessions_changed: Callable[[int], None] | None = None,
        connections: ConnectionCounter | None = None,
        logins: LoginCounter | None = None,
        unfinished: ByteCounter | None = None,
    ) -> None:
        self._sessions_changed = sessions_changed  # the open sessions' number (an accept worker's)
        self._default_mailbox = default_mailbox
        self._profile_mailboxes = dict(profile_mailboxes or {})
        self._store = store
        self.incoming_dir = incoming_dir  # None: bodies stay in memory (a listener without a spool)
        self._tuning = tuning or ListenerTuning()
        self._config = self._load(relay)
        self.login_guard = LoginGuard(login_limits(self._tuning))
        self._handler = RelayHandler(self, self._tuning, logins=logins or self.login_guard)
        self._hostname = socket.gethostname()  # not getfqdn(): a DNS lookup per connection
        self._acceptor: Acceptor | None = None
        self.connection_limits = ConnectionLimits(
            total=relay.max_connections, per_client=relay.max_connections_per_client
        )
        self._connections: ConnectionCounter = connections or self.connection_limits
        self.client_bytes = ClientBytes(
            per_client=self._tuning.unfinished_bytes_per_client or 2 * relay.max_message_size
        )
        self._unfinished: ByteCounter = unfinished or self.client_bytes
        self.free_space = (
            FreeSpace(incoming_dir, minimum=int(relay.min_free_space)) if incoming_dir is not None else None
        )
        self._sessions: set[RelaySession] = set()
        self._all_closed = asyncio.Event()
        self._stores: set[asyncio.Task[str]] = set()
        self.stopping = False
        self.addresses: list[tuple[str, int]] = []
        self._bound: list[socket.socket] = []

    def _load(self, relay: RelaySettings) -> _Config:
        check_not_open_relay(relay)
        policy = RelayPolicy.from_settings(
            relay, default_mailbox=self._default_mailbox, profile_mailboxes=self._profile_mailboxes
        )
        tls_context = build_tls_context(relay)
        if tls_context is None and not is_loopback_address(parse_listen(relay.listen)[0]):
            # Not an error (allow_networks may be all it is for), but otherwise every remote login
            # fails with 538 and nothing in the log would say why.
            log.warning(
                "relay.listen %s accepts other hosts, but without relay.tls_certificate and "
                "relay.tls_key they cannot log in: AUTH is offered only on loopback or after STARTTLS "
                "(only relay.allow_networks peers can send from elsewhere)",
                relay.listen,
            )
        return _Config(relay=relay, policy=policy, tls_context=tls_context)

    @property
    def policy(self) -> RelayPolicy:
        """The users and networks in force now (reload() replaces them)."""
        return self._config.policy

    async def bind_sockets(self, *, reuse_port: bool = False) -> list[socket.socket]:
        """Bind relay.listen (IPv4 or IPv6; port 0 picks a free port, see ``addresses``) without
        accepting: ``start`` here, or in the accept worker processes these sockets are handed to.

        ``reuse_port``: bound with SO_REUSEPORT but not listening: they hold the port, and each
        accept worker listens on a sibling of its own (``accept.listening_sibling``).
        """
        host, port = parse_listen(self._config.relay.listen)
        try:
            sockets = await bind(
                host.strip("[]"), port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port, listen=not reuse_port
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on relay.listen {self._config.relay.listen}: {exc.strerror or exc}",
                key="relay.listen",
                hint="Another program (or another relay) may use that port; pick another one, "
                "or use a port above 1023 when not running as root.",
            ) from exc
        self.addresses = [sock.getsockname()[:2] for sock in sockets]
        self._bound = sockets
        return sockets

    async def start(self, sockets: list[socket.socket] | None = None, *, shared: bool = False) -> None:
        """Accept on relay.listen, or on ``sockets`` already listening (an accept worker's);
        ``shared``: other processes accept on the same sockets."""
        loop = asyncio.get_running_loop()
        inherited = sockets is not None
        if sockets is None:
            sockets = await self.bind_sockets()
        else:
            self.addresses = [sock.getsockname()[:2] for sock in sockets]
        # Sockets shared with other accept processes: one connection per wake-up, so that a worker
        # busy with its sessions leaves the next connections to the idle ones woken with it.
        self._acceptor = Acceptor(
            sockets,
            lambda: self._new_session(loop),
            batch=1 if shared else ACCEPT_BATCH,
            admit=self._admit,
            release=self.release,
        )
        self._acceptor.start()
        log.log(
            logging.DEBUG if inherited else logging.INFO,
            "relay listening on %s",
            ", ".join(f"{h}:{p}" for h, p in self.addresses),
        )

    def close_sockets(self) -> None:
        """Close sockets ``bind_sockets`` made that no acceptor of this process uses."""
        for sock in self._bound:
            sock.close()
        self._bound = []

    async def _admit(self, peer: str) -> str | None:
        """The acceptor's: None to serve a new connection from ``peer``, or the 421 that refuses it."""
        try:
            refusal = await self._connections.admit(peer)
        except LimitsUnavailable as exc:
            return _unavailable(peer, exc)
        if refusal is not None:
            relay = self._config.relay
            log.warning(
                "refused a connection from %s: %s (relay.max_connections %d, "
                "relay.max_connections_per_client %d)",
                peer,
                refusal[10:],
                relay.max_connections,
                relay.max_connections_per_client,
                extra={"event": "connection_refused", "peer": peer},
            )
        return refusal

    def admit(self, peer: str) -> str | None:
        """A session's: its connection was counted when it was accepted (``_admit``), so None."""
        return None

    def release(self, peer: str) -> None:
        """A connection ``admit`` let in has closed."""
        self._connections.release(peer)

    def spill_guard(self, peer: str) -> SpillGuard | None:
        """The disk a body from ``peer`` may use: its share of unfinished bytes, and free space."""
        if self.incoming_dir is None:
            return None
        return _PeerSpillGuard(self._unfinished, peer, self.free_space)

    async def storage_low(self) -> bool:
        """True while the spool's file system has less than relay.min_free_space free."""
        return self.free_space is not None and await self.free_space.low()

    def _new_session(self, loop: asyncio.AbstractEventLoop) -> RelaySession:
        config = self._config
        return RelaySession(
            self._handler,
            self,
            data_size_limit=config.relay.max_message_size,
            tls_context=config.tls_context,
            hostname=self._hostname,
            ident="smtp-oauth relay",
            timeout=self._tuning.idle_timeout,
            auth_require_tls=True,  # relaxed per loopback peer in connection_made
            enable_SMTPUTF8=True,  # RFC 6531: Exchange Online takes UTF-8 addresses, so do we
            command_call_limit=JUNK_COMMAND_LIMITS,
            greet_pause=self._tuning.greet_pause,
            loop=loop,
        )

    def reload(self, relay: RelaySettings) -> None:
        """New users, sender rules, networks, size and TLS for new sessions; open ones stay open.

        A ConfigurationError leaves the running configuration in place.
        """
        config = self._load(relay)
        if parse_listen(relay.listen) != parse_listen(self._config.relay.listen):
            log.warning(
                "relay.listen changed to %s: that takes a restart, still listening on the old address",
                relay.listen,
            )
        self._config = config
        self.connection_limits.total = relay.max_connections
        self.connection_limits.per_client = relay.max_connections_per_client
        if self.free_space is not None:
            self.free_space.minimum = int(relay.min_free_space)
        log.info(
            "relay configuration reloaded: %d users, %d networks",
            len(config.policy.users),
            len(config.policy.networks),
        )

    async def store(self, message: Message) -> str:
        """Run ``store`` shielded: once started, a commit finishes even if the client hangs up."""
        task = asyncio.ensure_future(self._store(message))
        self._stores.add(task)
        task.add_done_callback(functools.partial(self._store_done, message.data))
        return await asyncio.shield(task)

    def _store_done(self, body: bytes | Path, task: asyncio.Task[str]) -> None:
        self._stores.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here too, in case the session that awaited it is gone
        if isinstance(body, Path):  # the spool renamed it away, unless the store failed
            asyncio.get_running_loop().run_in_executor(None, functools.partial(body.unlink, missing_ok=True))

    def session_opened(self, session: RelaySession) -> None:
        self._sessions.add(session)
        self._all_closed.clear()
        if self._sessions_changed is not None:
            self._sessions_changed(len(self._sessions))

    def session_closed(self, session: RelaySession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._all_closed.set()
        if self._sessions_changed is not None:
            self._sessions_changed(len(self._sessions))

    async def stop(self) -> None:
        """Stop accepting; idle sessions get 421, busy ones finish (bounded), stores always complete."""
        self.stopping = True
        if self._acceptor is not None:
            self._acceptor.close()
        self.close_sockets()
        for session in list(self._sessions):
            if not session.busy:
                session.hang_up(REPLY_SHUTTING_DOWN)
        if self._sessions:
            await wait_event(self._all_closed, self._tuning.shutdown_grace)
        for session in list(self._sessions):
            log.warning("closing the session of %s: still busy at shutdown", session.peer_host)
            session.hang_up()
        if self._stores:
            await asyncio.wait(set(self._stores))
        if self._acceptor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acceptor.wait_closed(), timeout=1.0)
        self._handler.verifier.close()
        log.info("relay listener stopped")


def _unavailable(peer: str, reason: LimitsUnavailable) -> str:
    """The connection limits cannot be counted (an accept worker without its main process): 421."""
    log.error(
        "refused a connection from %s: the relay's main process, which counts the connections of "
        "all accept workers, cannot be asked (%s)",
        peer,
        reason,
        extra={"event": "connection_refused", "peer": peer},
    )
    return REPLY_LIMITS_UNAVAILABLE


@dataclass(frozen=True)
class _PeerSpillGuard:
    """``incoming.SpillGuard`` for one client address."""

    held: ByteCounter
    peer: str
    free_space: FreeSpace | None

    async def take(self, size: int) -> None:
        await self.held.reserve(self.peer, size)

    def give_back(self, size: int) -> None:
        self.held.give_back(self.peer, size)

    def check_space(self) -> None:
        if self.free_space is not None:
            self.free_space.check()
