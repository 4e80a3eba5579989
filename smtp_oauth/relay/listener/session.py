"""One SMTP connection of the relay: aiosmtpd's ``SMTP`` with streamed DATA and per-peer AUTH rules.

What aiosmtpd already does here: RFC 5321 command limits (512 octets), STARTTLS enforced (1.4.6),
SIZE advertised and checked at MAIL FROM (552), the idle timeout. DATA is read by our
``smtp_DATA`` (``incoming.py``), aiosmtpd 1.4.6's loop and rules streamed to the spool instead of
collected in memory: 1000-octet text lines (500), only CRLF.CRLF ends DATA (CVE-2024-27305: a
bare-LF "smuggled" second message stays data), the size limit (552 after the final dot).

The hooks that decide what to answer (AUTH, MAIL, RCPT, the stored DATA) are in ``handler.py``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiosmtpd.smtp import MISSING, SMTP, Envelope, syntax

from smtp_oauth.relay.listener.incoming import (
    NO_SPACE_ERRNOS,
    BodyWriter,
    DataState,
    SpillGuard,
    receive_data,
)
from smtp_oauth.relay.policy import LocalUser, RelayPolicy, cleartext_auth_allowed
from smtp_oauth.relay.spool.base import Message  # what store() takes: the spool's one message type

if TYPE_CHECKING:
    from smtp_oauth.relay.listener.handler import RelayHandler

__all__ = ["REPLY_SHUTTING_DOWN", "ListenerState", "ListenerTuning", "Message", "RelaySession"]

log = logging.getLogger("smtp_oauth.relay.listener")

REPLY_SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
REPLY_LOCAL_ERROR_CLOSING = "421 4.3.0 Local error in processing, closing connection"
REPLY_TIMEOUT = "421 4.4.2 Error: timeout exceeded, closing connection"  # Postfix's wording
REPLY_PREGREETING = "554 5.5.1 Error: SMTP protocol synchronization (you talked before the greeting)"
REPLY_BAD_DOMAIN = "501 5.5.4 Invalid domain name"
# Postfix's smtpd_junk_command_limit (100) for the commands that reset the idle timer and cost
# nothing; aiosmtpd answers "421 4.7.0 <command> sent too many times" and closes past them.
JUNK_COMMAND_LIMITS = {"NOOP": 100, "RSET": 100, "VRFY": 20, "EXPN": 20, "HELP": 20, "*": 10**9}
_CONTROL = frozenset("\r\n\0")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# RFC 5321 4.1.2's Path in its common form: "<" dot-atom "@" domain ">" [SP parameters].
_PLAIN_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(.*))?", re.DOTALL
)


def _write_and_close(transport: asyncio.BaseTransport, text: str) -> None:
    """Write ``text`` (ASCII reply lines) on a stream transport, then close it once flushed.

    Not ``isinstance(transport, asyncio.WriteTransport)``: uvloop's transports (the relay runs on
    uvloop when it is installed) have the methods without subclassing asyncio's classes, so such a
    check sent no 421 and closed nothing there.
    """
    stream = cast("asyncio.WriteTransport", transport)
    if not stream.is_closing():
        if text:
            stream.write(text.encode("ascii"))
        stream.close()


@dataclass(frozen=True)
class ListenerTuning:
    """Limits that are not in the configuration file (tests shorten the delays)."""

    idle_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: a server waits at least 5 minutes for a command
    max_recipients: int = 500  # Exchange Online's per-message limit
    auth_failure_delay: float = 1.0  # first failed login from an address: 1 s before the 535
    auth_failure_delay_max: float = 16.0  # doubling per failure from that address, up to this
    auth_failure_window: float = 900.0  # failures older than this are forgotten
    auth_failures_per_session: int = 3  # then 421 and hang up, as Postfix's smtpd_hard_error_limit
    auth_user_failure_limit: int = 5  # failures of one user in the window: then it is under attack...
    auth_user_attempt_interval: float = 5.0  # ...and new addresses may try it once per this (454)
    # Silence before the greeting: a client that talks during it is refused (an early talker:
    # spam software pipelining blind). Postfix's postscreen pregreet test, shorter.
    greet_pause: float = 0.3
    shutdown_grace: float = 30.0  # stop(): how long busy sessions may take to finish
    # Disk one client address may hold in unfinished DATA transfers; 0: twice max_message_size.
    unfinished_bytes_per_client: int = 0


class ListenerState(Protocol):
    """What a session needs from its listener (``server.RelayListener``)."""

    @property
    def policy(self) -> RelayPolicy: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def incoming_dir(self) -> Path | None:
        """Where big bodies are written while they arrive (the spool's ``staging_dir``; None: in memory)."""
        ...

    def spill_guard(self, peer: str) -> SpillGuard | None:
        """What limits the disk a body from ``peer`` may use while it arrives."""
        ...

    async def store(self, message: Message) -> str: ...

    def admit(self, peer: str) -> str | None:
        """None to serve a new connection from ``peer``, or the reply refusing it."""
        ...

    def release(self, peer: str) -> None: ...

    async def storage_low(self) -> bool: ...

    def session_opened(self, session: RelaySession) -> None: ...

    def session_closed(self, session: RelaySession) -> None: ...


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus the local user the transaction was accepted for at MAIL FROM."""

    def __init__(self) -> None:
        super().__init__()
        self.user: LocalUser | None = None
        self.body: bytes | Path | None = None  # set at the final dot, instead of original_content
        self.body_size = 0
        self.body_stored = False  # handed to store(): from then on the listener cleans up the file


class RelaySession(SMTP):
    """One client connection. Decides per peer whether AUTH may be offered without TLS."""

    def __init__(
        self, handler: RelayHandler, listener: ListenerState, *, greet_pause: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self._greet_pause = greet_pause
        self.listener = listener
        self.auth_failures = 0
        self.peer_host = ""
        self._admitted = False  # counted by the listener's connection limits, until released
        self._refused = False  # over a limit: answered 421 in connection_made, no SMTP session
        # aiosmtpd keeps command_size_limits on the class and EHLO adds SIZE's 26 octets to it, so
        # concurrent sessions would keep raising each other's MAIL limit: give each its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """MAIL FROM's and RCPT TO's path and parameters, as aiosmtpd's ``_getaddr`` returns them.

        aiosmtpd 1.4 defines a ``typing.Protocol`` class on every call and parses the path with
        the email package's header parser: together a tenth of the CPU a small message costs. The
        plain form (``<dot-atom@domain>`` then parameters, nearly every path) is taken as it is;
        anything else still goes through aiosmtpd (tests/relay pins that both agree).
        """
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None or self.local_part_limit:
            return super()._getaddr(arg)
        return plain.group(1), plain.group(2) or ""

    @property
    def busy(self) -> bool:
        """Inside a mail transaction (between MAIL FROM and the reply to DATA)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    async def _handle_client(self) -> None:
        if self._greet_pause > 0:
            try:
                early = await asyncio.wait_for(self._reader.read(1), timeout=self._greet_pause)
            except TimeoutError:
                early = None  # silence: a well-behaved client waits for the 220
            if early is not None:
                if early:
                    log.warning(
                        "%s sent data before the greeting; connection refused",
                        self.peer_host,
                        extra={"event": "pregreeting", "peer": self.peer_host},
                    )
                    self.hang_up(REPLY_PREGREETING)
                else:
                    self.hang_up()
                return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        """Say why before hanging up on an idle client (RFC 5321 4.5.3.2: 421 then close)."""
        log.info("closing the idle connection of %s", self.peer_host)
        self.hang_up(REPLY_TIMEOUT)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and _CONTROL & set(hostname):
            await self.push(REPLY_BAD_DOMAIN)
            return
        await super().smtp_EHLO(hostname)

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and _CONTROL & set(hostname):
            await self.push(REPLY_BAD_DOMAIN)
            return
        await super().smtp_HELO(hostname)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        # SASL mechanism names are case-insensitive (RFC 4422 section 3.1); aiosmtpd looks them up
        # exactly, which would answer "AUTH plain" from an old client with 504.
        mechanism, separator, rest = (arg or "").partition(" ")
        await super().smtp_AUTH(mechanism.upper() + separator + rest)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        peer = transport.get_extra_info("peername")
        peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if first:
            refusal = self.listener.admit(peer_host)
            if refusal is not None:  # over a connection limit: no session, just the 421
                _write_and_close(transport, f"{refusal}\r\n")
                self._refused = True
                return
            self._admitted = True
        super().connection_made(transport)  # also called again after STARTTLS, with a fresh session
        self.peer_host = peer_host
        # aiosmtpd only knows "AUTH needs TLS" globally; we allow cleartext AUTH for loopback peers.
        self._auth_require_tls = not cleartext_auth_allowed(
            self.peer_host, tls_active=transport.get_extra_info("ssl_object") is not None
        )
        if first:
            self.listener.session_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd never started
        super().connection_lost(error)
        if self._admitted:  # once, though aiosmtpd calls this twice after a failed STARTTLS
            self._admitted = False
            self.listener.release(self.peer_host)
        self.listener.session_closed(self)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA, streamed: aiosmtpd 1.4.6's ``smtp_DATA`` with its checks and replies, but the lines
        go to a ``BodyWriter`` (memory, then a file in the spool) instead of a list joined at the end.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, RelayEnvelope)  # _create_envelope
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = BodyWriter(self.listener.incoming_dir, guard=self.listener.spill_guard(self.peer_host))
        try:
            try:
                state = await receive_data(
                    self._reader,
                    body,
                    size_limit=self.data_size_limit,
                    line_length_limit=self.line_length_limit,
                    # aiosmtpd times the whole command: idle must mean no data, not a long message.
                    progress=self._reset_timeout,
                )
                if state is DataState.COMPLETE:
                    envelope.body = await body.finish()
                    envelope.body_size = body.size
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self.hang_up()
                raise
            except OSError as exc:  # finish() after the final dot: the stream is in step
                body.error = exc
                state = DataState.NO_SPACE if exc.errno in NO_SPACE_ERRNOS else DataState.WRITE_FAILED
            except Exception:
                # Where in the client's data we are is unknown: never read what follows as commands.
                log.exception("internal error during DATA from %s; closing the connection", self.peer_host)
                self.hang_up(REPLY_LOCAL_ERROR_CLOSING)
                return
            if state is not DataState.COMPLETE:
                if body.error is not None:
                    log.warning(
                        "could not take a message from %s: %s",
                        self.peer_host,
                        body.error.strerror or body.error,
                        extra={"event": "receive_failed", "peer": self.peer_host},
                    )
                self._set_post_data_state()  # type: ignore[no-untyped-call]  # unannotated in aiosmtpd
                if state.closes:
                    self.hang_up(state.value)
                    return
                await self.push(state.value)
                return
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # unannotated in aiosmtpd
            await self.push("250 OK" if status is MISSING else status)
        finally:
            body.release()  # stored or not, the transfer no longer holds the client's share
            if not envelope.body_stored:
                body.discard()  # refused, failed or cut off: nothing of it stays on disk

    def hang_up(self, *replies: str) -> None:
        """Write ``replies`` (if any), then close once they have been flushed."""
        if self.transport is not None:
            _write_and_close(self.transport, "".join(f"{reply}\r\n" for reply in replies))
