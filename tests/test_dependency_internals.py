"""Canaries: the private parts of aiosmtplib and aiosmtpd that smtp_oauth relies on are still there.

Each is used because the public API has no way to do what the code needs (neither library has a
protocol-factory or streaming-DATA hook); pyproject.toml pins both libraries to the minor release
tested. When an upgrade removes or changes one of these, its test fails naming the attribute, the
module of ours that uses it, and why, instead of a relay or a Mailer failing somewhere at run time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as ServerSMTP
from aiosmtpd.smtp import Session
from aiosmtplib.protocol import SMTPProtocol

from smtp_oauth.smtp.stream import StreamingProtocol


@dataclass(frozen=True)
class Private:
    """A private attribute of a dependency, and what we use it for."""

    owner: str  # the dependency's class, as its users know it
    attribute: str
    used_by: str  # our module and class or function
    why: str

    def missing(self, detail: str = "is gone") -> str:
        package = self.owner.split(".")[0]
        return (
            f"{self.owner}.{self.attribute} {detail} in {package} {version(package)}: {self.used_by} "
            f"uses it to {self.why}. Adapt that code before widening the pin in pyproject.toml."
        )


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# aiosmtplib: the Mailer's DATA is streamed through a subclass of its protocol.
SWIZZLE = Private(
    "aiosmtplib.SMTP", "protocol", "smtp_oauth.smtp.session.SmtpSession.open",
    "swap the connection's SMTPProtocol for StreamingProtocol (a 35 MiB message is sent in chunks)",
)  # fmt: skip
COMMAND_LOCK = Private(
    "aiosmtplib.protocol.SMTPProtocol", "_command_lock", "smtp_oauth.smtp.stream.StreamingProtocol",
    "hold the command lock while DATA is streamed, as execute_data_command does",
)  # fmt: skip
RESPONSE_PENDING = Private(
    "aiosmtplib.protocol.SMTPProtocol", "_response_pending", "smtp_oauth.smtp.stream.StreamingProtocol",
    "keep a reply the server sends while the message is still being written",
)  # fmt: skip
DRAIN_HELPER = Private(
    "aiosmtplib.protocol.SMTPProtocol", "_drain_helper", "smtp_oauth.smtp.stream.StreamingProtocol._drain",
    "wait for the transport's flow control after each chunk (what StreamWriter.drain awaits)",
)  # fmt: skip

# aiosmtpd: the relay's session streams DATA to the spool and decides AUTH per peer.
CREATE_ENVELOPE = Private(
    "aiosmtpd.smtp.SMTP", "_create_envelope", "smtp_oauth.relay.listener.session.RelaySession",
    "give each transaction a RelayEnvelope (the local user, the body's file)",
)  # fmt: skip
AUTH_REQUIRE_TLS = Private(
    "aiosmtpd.smtp.SMTP", "_auth_require_tls", "smtp_oauth.relay.listener.session.RelaySession",
    "allow cleartext AUTH for loopback peers only (aiosmtpd decides it once per server)",
)  # fmt: skip
READER = Private(
    "aiosmtpd.smtp.SMTP", "_reader", "smtp_oauth.relay.listener.session.RelaySession.smtp_DATA",
    "read DATA lines into the spool file as they arrive instead of into memory",
)  # fmt: skip
RESET_TIMEOUT = Private(
    "aiosmtpd.smtp.SMTP", "_reset_timeout", "smtp_oauth.relay.listener.session.RelaySession.smtp_DATA",
    "keep the idle timeout from cutting off a long message that is still arriving",
)  # fmt: skip
POST_DATA_STATE = Private(
    "aiosmtpd.smtp.SMTP", "_set_post_data_state", "smtp_oauth.relay.listener.session.RelaySession.smtp_DATA",
    "end the transaction after DATA, as aiosmtpd's own smtp_DATA does",
)  # fmt: skip
CALL_HANDLER_HOOK = Private(
    "aiosmtpd.smtp.SMTP", "_call_handler_hook", "smtp_oauth.relay.listener.session.RelaySession.smtp_DATA",
    "call the handler's handle_DATA with the streamed body",
)  # fmt: skip
HANDLE_CLIENT = Private(
    "aiosmtpd.smtp.SMTP", "_handle_client", "smtp_oauth.relay.listener.session.RelaySession._handle_client",
    "refuse a client that talks before the greeting (the greeting pause), then run aiosmtpd's loop",
)  # fmt: skip
TIMEOUT_CB = Private(
    "aiosmtpd.smtp.SMTP", "_timeout_cb", "smtp_oauth.relay.listener.session.RelaySession._timeout_cb",
    "answer 421 before hanging up on an idle client (RFC 5321 4.5.3.2)",
)  # fmt: skip
GETADDR = Private(
    "aiosmtpd.smtp.SMTP", "_getaddr", "smtp_oauth.relay.listener.session.RelaySession._getaddr",
    "read the plain <user@domain> path of MAIL FROM and RCPT TO without aiosmtpd's slow parser",
)  # fmt: skip

# aiosmtpd in the sandbox's fake Exchange Online.
CREATE_SESSION = Private(
    "aiosmtpd.smtp.SMTP", "_create_session", "smtp_oauth.sandbox.exchange.protocol.ExchangeSMTP",
    "use a Session without the deprecation warning aiosmtpd logs on every XOAUTH2 login",
)  # fmt: skip
LOGIN_DATA = Private(
    "aiosmtpd.smtp.Session", "_login_data", "smtp_oauth.sandbox.exchange.protocol._QuietSession",
    "store login_data without the deprecated property's warning",
)  # fmt: skip
HANDLER_COROUTINE = Private(
    "aiosmtpd.smtp.SMTP", "_handler_coroutine", "smtp_oauth.sandbox.exchange.protocol.ExchangeSMTP._hang_up",
    "stop reading commands before closing, as aiosmtpd's QUIT does (Exchange's 421 then hang-up)",
)  # fmt: skip


async def test_aiosmtplib_protocol_can_become_the_streaming_protocol() -> None:
    """aiosmtplib.SMTP keeps its protocol in ``protocol``, an SMTPProtocol whose class can be swapped."""
    assert "protocol" in vars(aiosmtplib.SMTP()), SWIZZLE.missing()
    protocol = SMTPProtocol(loop=asyncio.get_running_loop())
    try:
        protocol.__class__ = StreamingProtocol
    except TypeError as exc:
        pytest.fail(SWIZZLE.missing(f"can no longer change class ({exc})"))


async def test_aiosmtplib_protocol_has_the_command_lock_and_pending_flag() -> None:
    """SMTPProtocol has ``_command_lock`` (a lock once connected) and ``_response_pending``."""
    attributes = vars(SMTPProtocol(loop=asyncio.get_running_loop()))
    assert "_command_lock" in attributes, COMMAND_LOCK.missing()
    assert attributes["_response_pending"] is False, RESPONSE_PENDING.missing("is not a False flag")


def test_aiosmtplib_protocol_has_the_drain_helper() -> None:
    """SMTPProtocol still inherits asyncio's flow-control ``_drain_helper`` coroutine."""
    drain = getattr(SMTPProtocol, DRAIN_HELPER.attribute, None)
    assert drain is not None, DRAIN_HELPER.missing()
    assert inspect.iscoroutinefunction(drain), DRAIN_HELPER.missing("is not a coroutine")
    assert _parameters(drain) == ["self"], DRAIN_HELPER.missing("takes other arguments")


@pytest.mark.parametrize(
    ("private", "parameters"),
    [
        (CREATE_ENVELOPE, ["self"]),
        (CREATE_SESSION, ["self"]),
        (RESET_TIMEOUT, ["self", "duration"]),
        (POST_DATA_STATE, ["self"]),
        (CALL_HANDLER_HOOK, ["self", "command", "args"]),
        (HANDLE_CLIENT, ["self"]),
        (TIMEOUT_CB, ["self"]),
        (GETADDR, ["self", "arg"]),
    ],
    ids=lambda value: value.attribute if isinstance(value, Private) else "",
)
def test_aiosmtpd_session_methods(private: Private, parameters: list[str]) -> None:
    """The aiosmtpd SMTP methods the relay and the sandbox override or call, with their parameters."""
    method = getattr(ServerSMTP, private.attribute, None)
    assert method is not None, private.missing()
    assert _parameters(method) == parameters, private.missing(f"now takes {_parameters(method)}")
    if private is HANDLE_CLIENT:
        assert inspect.iscoroutinefunction(method), private.missing("is not a coroutine")


async def test_aiosmtpd_session_attributes() -> None:
    """A connected aiosmtpd SMTP has ``_reader``, ``_auth_require_tls`` and ``_handler_coroutine``."""
    seen: dict[str, object] = {}

    class Probe(ServerSMTP):
        async def smtp_NOOP(self, arg: str) -> None:
            seen.update(vars(self))
            await super().smtp_NOOP(arg)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Probe(object()), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # the greeting
        writer.write(b"NOOP\r\n")
        await writer.drain()
        await reader.readline()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(seen.get(READER.attribute), asyncio.StreamReader), READER.missing()
    assert isinstance(seen.get(AUTH_REQUIRE_TLS.attribute), bool), AUTH_REQUIRE_TLS.missing()
    assert isinstance(seen.get(HANDLER_COROUTINE.attribute), asyncio.Task), HANDLER_COROUTINE.missing()


async def test_aiosmtpd_session_keeps_login_data_in_a_private_field() -> None:
    """aiosmtpd's Session keeps ``login_data`` in ``_login_data``."""
    assert "_login_data" in vars(Session(asyncio.get_running_loop())), LOGIN_DATA.missing()


async def test_asyncio_stream_reader_keeps_its_buffer_and_limit() -> None:
    """asyncio.StreamReader has ``_buffer`` (a bytearray of what is not read yet) and ``_limit``:
    the relay's DATA loop (incoming._DataLines.take_buffered) takes the buffered lines together."""
    reader = asyncio.StreamReader(limit=7)
    reader.feed_data(b"a\r\nb")
    buffer, limit = getattr(reader, "_buffer", None), getattr(reader, "_limit", None)
    why = "; without them every DATA line takes the slow path (correct, but slower): adapt take_buffered"
    assert isinstance(buffer, bytearray), f"asyncio.StreamReader._buffer is gone{why}"
    assert bytes(buffer) == b"a\r\nb", f"asyncio.StreamReader._buffer holds something else{why}"
    assert limit == 7, f"asyncio.StreamReader._limit is gone{why}"
