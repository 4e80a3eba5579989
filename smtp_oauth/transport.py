"""The transport seam: how a message leaves smtp_oauth, whatever carries it.

::

    async with create_transport(settings) as transport:     # settings.transport picks the kind
        result = await transport.send(message)              # EmailMessage, bytes or a file

Every place that sends (``send_message``, ``OAuthSMTPHandler``, ``send-mail``, ``demo``,
``check --send-test`` and the relay's delivery) asks ``create_transport`` for one, so a new way
to submit mail is one branch here rather than six call sites. A ``Transport`` authenticates as
one mailbox and is used by one task at a time (sends on one transport are sequential); callers
that want parallel sends open several.

This module is a leaf of the library: it names shapes and imports an implementation only when
``create_transport`` is called, so ``import smtp_oauth.transport`` loads neither aiosmtplib nor
msal.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self

if TYPE_CHECKING:
    from smtp_oauth.graph.client import GraphClient
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tls import PreloadedTrust
    from smtp_oauth.tokens.types import TokenProvider

__all__ = [
    "MessageSource",
    "SendResult",
    "Transcript",
    "Transport",
    "TransportFactory",
    "create_transport",
    "send_message",
    "shared_transports",
]

MessageSource = EmailMessage | bytes | BinaryIO | os.PathLike[str]
"""A message to send: composed, raw RFC 5322 bytes, or a file holding them (a path, or a seekable
binary file read from its current position and left open). Raw messages need ``recipients``."""


Transcript = Callable[[str, str], None]
"""Receives the dialogue with the service, one line at a time: (direction, line), ``"C"`` for what
we sent and ``"S"`` for what the service said, e.g. ``("S", "250 2.1.0 Sender OK")``. Credentials
are already redacted."""


@dataclass(frozen=True)
class SendResult:
    """What the service did with one message: accepted it (for these recipients) or refused some."""

    message_id: str | None
    sender: str
    accepted: list[str]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # address -> (code, text)
    # The service's own words on acceptance, e.g. SMTP's "250 2.6.0 <...> Queued mail for delivery".
    reply: str = ""


class Transport(Protocol):
    """Sends messages as one mailbox; opened lazily, closed by ``close()`` or ``async with``."""

    @property
    def server(self) -> str:
        """Where messages go, as error messages and logs name it (``host:port``, a URL)."""
        ...

    async def send(
        self,
        message: MessageSource,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the public interface: a bound on the whole send
    ) -> SendResult:
        """Send one message; raises the smtp_oauth.errors tree only."""
        ...

    async def close(self) -> None:
        """Release the connection, if any; the transport can be used again afterwards."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


TransportFactory = Callable[[str], Transport]
"""mailbox -> a transport sending as that mailbox (the relay's delivery opens one per worker)."""


def create_transport(
    settings: Settings,
    *,
    mailbox: str | None = None,
    token_provider: TokenProvider | None = None,
    graph_client: GraphClient | None = None,
    transcript: Transcript | None = None,
    profile: str | None = None,
    trust: PreloadedTrust | None = None,
) -> Transport:
    """The transport ``settings`` ask for, sending as ``mailbox`` (default: the configured one).

    ``profile`` sends as that ``[profiles.NAME]`` of the same configuration instead (its identity,
    mailbox and transport), as ``load_settings(profile=...)`` would have made them.

    ``transport = "smtp"`` gives the SMTP ``Mailer``, ``"graph"`` the Microsoft Graph transport;
    ``fallback_transport = "graph"`` wraps the Mailer so that a message refused with 535 5.7.139
    goes through Graph. ``token_provider`` shares one provider (one token per resource, one
    refresh) between several transports, as the relay's per-mailbox workers do; ``graph_client``
    likewise shares Graph's connections, its 4-requests-per-app limit and its Retry-After wait
    (``smtp_oauth.graph.GraphClient``). By default each transport makes its own on first use.
    ``transcript`` receives the SMTP dialogue (``send-mail -v``); ``trust`` hands SMTP the system's
    CAs loaded ahead of time (``smtp_oauth.tls.PreloadedTrust``).
    """
    if profile is not None:
        from smtp_oauth.settings.loading import settings_for_profile

        settings = settings_for_profile(settings, profile)
    if settings.transport == "graph":
        from smtp_oauth.graph.transport import GraphTransport

        return GraphTransport(settings, mailbox=mailbox, token_provider=token_provider, client=graph_client)
    from smtp_oauth.smtp.mailer import Mailer

    mailer = Mailer(
        settings, token_provider=token_provider, mailbox=mailbox, transcript=transcript, trust=trust
    )
    if settings.fallback_transport != "graph":
        return mailer
    from smtp_oauth.graph.client import GraphClient
    from smtp_oauth.graph.fallback import FallbackTransport
    from smtp_oauth.graph.transport import GraphTransport

    client = graph_client or GraphClient(settings, token_provider=token_provider)
    graph = GraphTransport(settings, mailbox=mailbox, client=client, close_client=graph_client is None)
    return FallbackTransport(mailer, graph, client)


def shared_transports(settings: Settings, *, token_provider: TokenProvider) -> TransportFactory:
    """mailbox -> ``create_transport(...)`` for many senders at once (the relay's workers).

    All share ``token_provider`` and, when Graph is configured (``transport`` or
    ``fallback_transport``), one ``GraphClient``: Graph's 4 concurrent requests and its
    Retry-After are per application, whatever the mailbox.
    """
    graph_client: GraphClient | None = None
    if "graph" in (settings.transport, settings.fallback_transport):
        from smtp_oauth.graph.client import GraphClient

        graph_client = GraphClient(settings, token_provider=token_provider)

    def transport_for(mailbox: str) -> Transport:
        return create_transport(
            settings, token_provider=token_provider, mailbox=mailbox, graph_client=graph_client
        )

    return transport_for


def send_message(
    message: EmailMessage | bytes,
    /,
    *,
    settings: Settings | None = None,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> SendResult:
    """Send one message from synchronous code: connect, authenticate, send, QUIT.

    ``settings`` defaults to ``load_settings()`` (the same discovery as the CLI); the transport is
    the one they configure (``create_transport``). Inside a running event loop use
    ``async with create_transport(settings) as transport: await transport.send(...)`` instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "send_message() blocks, so it cannot run inside a running event loop; "
            "use `async with smtp_oauth.transport.create_transport(settings) as transport: "
            "await transport.send(message)`"
        )
    if settings is None:
        from smtp_oauth.settings.loading import load_settings

        settings = load_settings()

    async def send_once(settings: Settings) -> SendResult:
        async with create_transport(settings) as transport:
            return await transport.send(message, sender=sender, recipients=recipients)

    return asyncio.run(send_once(settings))
