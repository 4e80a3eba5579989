"""The relay's submission socket: local programs hand their mail to the relay, as with Postfix's sendmail.

``send-mail`` with ``[send_mail] via = "relay"`` connects to a Unix stream socket
(``relay.submission_socket``) and speaks ESMTP (RFC 5321) to it::

    S: 220 <host> smtp-oauth relay
    C: EHLO localhost                         S: 250-... PIPELINING ... SMTPUTF8 ... ETRN
    C: MAIL FROM:<a@x> / RCPT TO:<b@y> / DATA S: 250 / 250 / 354      (one pipelined write)
    C: <message, dot-stuffed> CRLF . CRLF     S: 250 2.0.0 Ok: queued as <id>   (after the commit)
    C: ETRN                                   S: 250 2.0.0 <n> deferred message(s) will be sent now
    C: XQUEUE                                 S: 250-<one JSON object per queued message> ... 250 <n>

Why SMTP rather than a protocol of our own: the relay already has a hardened SMTP listener (its
limits, the DATA rules, the From: check, the 250 only after the spool's commit), ``sendmail -bs``
becomes a byte pipe between stdin/stdout and this socket, the client is a hundred lines of stdlib
``socket``, and any SMTP tool can talk to it (``swaks --socket``). ``ETRN`` is RFC 1985's "start
the queue" (``sendmail -q``); ``XQUEUE`` is ours (``sendmail -bp``, ``mailq``).

Who submits is what the kernel says (``SO_PEERCRED``: the connecting process's uid), never a
password: no AUTH is offered, and nothing is hashed. Who may connect at all is the socket's file
mode (0660) and group (the relay's: the systemd unit's ``Group=``). A submitter sends with the
senders send-mail itself uses (``smtp.from_address`` and ``smtp.username``), as the mailbox of the
identity they belong to: the top level's, or a ``[profiles.NAME]``'s (``send-mail --profile NAME``
sends as that profile's sender; ``profiles.MailboxRoutes.local_sender``). A ``[[relay.users]]`` entry
named like the local account (its password is not used here) gives that account its own mailbox and
``allowed_senders`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import secrets
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import syntax

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.eventloop import wait_event
from smtp_oauth.relay.listener.handler import RelayHandler
from smtp_oauth.relay.listener.incoming import SpillGuard
from smtp_oauth.relay.listener.session import (
    REPLY_SHUTTING_DOWN,
    ListenerState,
    ListenerTuning,
    RelayEnvelope,
    RelaySession,
)
from smtp_oauth.relay.passwords import ScryptHash
from smtp_oauth.relay.policy import LocalUser, RelayPolicy
from smtp_oauth.relay.spool.base import Message

__all__ = ["QueueControl", "QueueEntry", "SubmissionListener"]

log = logging.getLogger("smtp_oauth.relay.submission")

SOCKET_MODE = 0o660  # owner and group may connect (connect(2) on a Unix socket needs write permission)
DIRECTORY_MODE = 0o700  # a directory the relay creates itself: only its own user submits
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path is 108 bytes on Linux, with the terminating NUL
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7))
# Local submitters never log in; a hash of nothing anybody knows keeps LocalUser's shape.
_NO_PASSWORD = ScryptHash(log2_n=14, r=8, p=1, salt=secrets.token_bytes(16), digest=secrets.token_bytes(32))
REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many local connections, try again later"
# MAIL FROM address -> (the mailbox to send as, the senders that mailbox's identity may use).
LocalSenders = Callable[[str], tuple[str, frozenset[str]]]
REPLY_NO_CREDENTIALS = "421 4.7.0 Cannot tell who is connecting (no peer credentials), closing connection"


@dataclass(frozen=True)
class QueueEntry:
    """One message waiting in the queue, as ``XQUEUE`` reports it (``sendmail -bp``)."""

    id: str
    state: str
    size: int
    created_at: float
    mail_from: str
    rcpt_tos: list[str]
    attempts: int
    next_attempt_at: float
    last_reply: str
    local_user: str


class QueueControl(Protocol):
    """What the queue verbs need from the relay: the waiting messages, and "retry deferred now"."""

    async def waiting(self) -> list[QueueEntry]: ...

    async def retry_deferred(self) -> int: ...


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), or None."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    _, uid, _ = _PEERCRED.unpack(raw)
    return int(uid)


def account_name(uid: int) -> str:
    """The login name of ``uid`` (may consult NSS: call it off the event loop), or ``uid<n>``."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class SubmissionSession(RelaySession):
    """A local connection: the kernel's peer uid instead of AUTH; the queue verbs."""

    def __init__(self, handler: SubmissionHandler, listener: ListenerState, **kwargs: Any) -> None:
        super().__init__(handler, listener, **kwargs)
        self.uid: int | None = None
        self.account: str | None = None  # the uid's login name, looked up at the first MAIL
        self.local_user: LocalUser | None = None  # whom the current transaction sends as
        self._queue = handler.queue

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.uid = peer_uid(transport)
        super().connection_made(transport)
        self.peer_host = f"uid {self.uid}" if self.uid is not None else "local"
        if self.uid is None:
            self.hang_up(REPLY_NO_CREDENTIALS)

    @syntax("ETRN [node]")
    async def smtp_ETRN(self, arg: str | None) -> None:
        """RFC 1985's queue start, here for the whole queue: every deferred message is due now."""
        if await self.check_helo_needed():
            return
        count = await self._queue.retry_deferred()
        log.info("%s asked for a queue run: %d deferred messages due now", self.peer_host, count)
        await self.push(f"250 2.0.0 {count} deferred message(s) will be sent now")

    @syntax("XQUEUE")
    async def smtp_XQUEUE(self, arg: str | None) -> None:
        """The messages still in the queue, one JSON object per reply line (``sendmail -bp``)."""
        if await self.check_helo_needed():
            return
        entries = await self._queue.waiting()
        for entry in entries:
            await self.push("250-" + json.dumps(entry.__dict__, separators=(",", ":")))
        await self.push(f"250 2.0.0 {len(entries)} message(s) in the queue")


class SubmissionHandler(RelayHandler):
    """The relay's hooks, with the submitting account taken from the socket's peer credentials."""

    def __init__(
        self,
        listener: ListenerState,
        tuning: ListenerTuning,
        *,
        queue: QueueControl,
        senders: LocalSenders,
    ) -> None:
        super().__init__(listener, tuning)
        self.queue = queue
        self._senders = senders

    async def handle_EHLO(
        self, server: RelaySession, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's extensions plus PIPELINING (RFC 2920: aiosmtpd reads commands in order) and ETRN."""
        session.host_name = hostname  # aiosmtpd leaves this to a handler with its own EHLO hook
        *extensions, last = responses
        return [*extensions, "250-PIPELINING", "250-ETRN", last]

    def local_user(self, name: str, policy: RelayPolicy, address: str) -> LocalUser:
        """``name``'s [[relay.users]] entry if there is one, else the identity ``address`` belongs to."""
        configured = policy.user(name)
        if configured is not None:
            return configured
        mailbox, senders = self._senders(address)
        return LocalUser(name=name, password=_NO_PASSWORD, mailbox=mailbox, allowed_senders=senders)

    async def handle_MAIL(
        self, server: RelaySession, session: Any, envelope: RelayEnvelope, address: str, options: list[str]
    ) -> str:
        if isinstance(server, SubmissionSession) and server.uid is not None:
            if server.account is None:
                server.account = await asyncio.to_thread(account_name, server.uid)
            server.local_user = self.local_user(server.account, self._listener.policy, address)
        return await super().handle_MAIL(server, session, envelope, address, options)

    def _sender_user(self, server: RelaySession, session: Any) -> LocalUser | None:
        return server.local_user if isinstance(server, SubmissionSession) else None


class _Shared(Protocol):
    """What the submission socket shares with the relay's TCP listener."""

    @property
    def policy(self) -> RelayPolicy: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def incoming_dir(self) -> Path | None: ...

    def spill_guard(self, peer: str) -> SpillGuard | None: ...

    async def storage_low(self) -> bool: ...

    async def store(self, message: Message) -> str: ...


class SubmissionListener:
    """Accepts local submissions on a Unix socket; policy, spool and store are the TCP listener's."""

    def __init__(
        self,
        path: Path,
        *,
        shared: _Shared,
        queue: QueueControl,
        senders: LocalSenders,
        max_message_size: Callable[[], int],
        max_connections: Callable[[], int],
        tuning: ListenerTuning | None = None,
        required: bool = True,
    ) -> None:
        self.path = path
        self._shared = shared
        self._tuning = tuning or ListenerTuning()
        self._handler = SubmissionHandler(self, self._tuning, queue=queue, senders=senders)
        self._max_message_size = max_message_size
        self._max_connections = max_connections
        self._required = required  # an explicitly configured socket must work; the default may not
        self._server: asyncio.Server | None = None
        self._sessions: set[RelaySession] = set()
        self._all_closed = asyncio.Event()
        self._hostname = socket.gethostname()

    # ListenerState, for the sessions
    @property
    def policy(self) -> RelayPolicy:
        return self._shared.policy

    @property
    def stopping(self) -> bool:
        return self._shared.stopping

    @property
    def incoming_dir(self) -> Path | None:
        return self._shared.incoming_dir

    async def store(self, message: Message) -> str:
        return await self._shared.store(message)

    def spill_guard(self, peer: str) -> SpillGuard | None:
        return self._shared.spill_guard(peer)

    async def storage_low(self) -> bool:
        return await self._shared.storage_low()

    def admit(self, peer: str) -> str | None:
        """Local connections share relay.max_connections among themselves (all have the same peer "")."""
        if len(self._sessions) >= self._max_connections():
            log.warning("refused a local submission: relay.max_connections local connections are open")
            return REPLY_TOO_MANY_CONNECTIONS
        return None

    def release(self, peer: str) -> None:
        """Counted by session_opened/session_closed instead."""

    def session_opened(self, session: RelaySession) -> None:
        self._sessions.add(session)
        self._all_closed.clear()

    def session_closed(self, session: RelaySession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._all_closed.set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Bind the socket (mode 0660). A default path that cannot be used is a warning, not fatal."""
        try:
            await asyncio.to_thread(_prepare_path, self.path)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: self._new_session(loop), str(self.path), backlog=256
            )
            os.chmod(self.path, SOCKET_MODE)
        except ConfigurationError as error:
            self._unavailable(error)
            return
        except OSError as exc:
            self._unavailable(
                ConfigurationError(
                    f"cannot listen on the submission socket {self.path}: {exc.strerror or exc}",
                    key="relay.submission_socket",
                    hint="Set relay.submission_socket to a path in a directory the relay may write "
                    "(the systemd unit's RuntimeDirectory=smtp-oauth gives /run/smtp-oauth).",
                )
            )
            return
        log.info("relay accepting local submissions on %s", self.path)

    def _unavailable(self, error: ConfigurationError) -> None:
        """A configured socket must work (78); without one, the relay runs on and says why once."""
        if self._required:
            raise error
        log.warning('no submission socket, send-mail with via = "relay" will not work: %s', error)

    def _new_session(self, loop: asyncio.AbstractEventLoop) -> SubmissionSession:
        return SubmissionSession(
            self._handler,
            self,
            data_size_limit=self._max_message_size(),
            hostname=self._hostname,
            ident="smtp-oauth relay",
            timeout=self._tuning.idle_timeout,
            enable_SMTPUTF8=True,  # send-mail delivers UTF-8 addresses directly; so does this path
            auth_require_tls=True,  # never true here (no TLS on a local socket): AUTH is not offered
            loop=loop,
        )

    async def stop(self) -> None:
        """Stop accepting and remove the socket; idle sessions get 421, busy ones finish (bounded)."""
        if self._server is None:
            return
        self._server.close()
        for session in list(self._sessions):
            if not session.busy:
                session.hang_up(REPLY_SHUTTING_DOWN)
        if self._sessions:
            await wait_event(self._all_closed, self._tuning.shutdown_grace)
        for session in list(self._sessions):
            session.hang_up()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = None


def _prepare_path(path: Path) -> None:
    """Create the socket's directory if needed; remove a socket a dead relay left; refuse a live one."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"relay.submission_socket {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket "
            "path may have",
            key="relay.submission_socket",
            hint="Choose a shorter path, e.g. /run/smtp-oauth/submit.sock.",
        )
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=DIRECTORY_MODE)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(
            f"relay.submission_socket {path} exists and is not a socket",
            key="relay.submission_socket",
            hint="Remove it or choose another path.",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: left behind by a relay that was killed
        return
    except OSError:
        return  # let bind report it
    finally:
        probe.close()
    raise ConfigurationError(
        f"another relay is accepting local submissions on {path}",
        key="relay.submission_socket",
        hint="Stop it, or give this relay its own relay.submission_socket.",
    )
