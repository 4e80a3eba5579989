"""``relay.metrics_listen``: ``/healthz`` and ``/metrics`` (Prometheus text format 0.0.4).

A few lines of HTTP/1.1 over ``asyncio.start_server``: two GET routes, one request per
connection, no keep-alive; enough for a Prometheus scrape and a load balancer's health check
without a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from smtp_oauth.settings.models import parse_listen
from smtp_oauth.tokens.claims import decode_claims, expires_at

if TYPE_CHECKING:
    from smtp_oauth.tokens.types import TokenProvider

__all__ = ["MetricsServer", "TokenWatch", "render_metrics"]

log = logging.getLogger("smtp_oauth.relay")
REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class TokenWatch:
    """Wraps the relay's token provider and notes when the token it last handed out expires.

    That is ``smtp_oauth_relay_token_expiry_timestamp_seconds``: a value that stops moving ahead
    means tokens are no longer being renewed (a secret expired, consent revoked).
    """

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider
        self.expires_at: float | None = None  # Unix time; None before the first token

    async def access_token(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        token = await self._provider.access_token(force_refresh=force_refresh, scopes=scopes)
        try:
            expiry = expires_at(decode_claims(token))
        except ValueError:  # not a JWT: nothing to show, the token still works
            expiry = None
        self.expires_at = expiry.timestamp() if expiry is not None else None
        return token


def render_metrics(
    *,
    queue: Mapping[str, int],
    deliveries: Mapping[str, int],
    accepted: int,
    up: bool,
    token_expires_at: float | None = None,
    spool: Mapping[str, float] | None = None,
    workers: tuple[int, int] | None = None,
) -> str:
    """Prometheus exposition text for the relay's queue depth, delivery outcomes and token expiry.

    ``queue`` counts the whole queue (every relay's, when several share it); ``accepted`` and
    ``deliveries`` are this relay's (``accepted`` summed over its accept workers); ``spool`` adds the
    backend's figures (``spool_<name>``); ``workers`` is (accept workers running, restarts).
    """
    lines = [
        "# HELP smtp_oauth_relay_up 1 when the listener and the spool are working.",
        "# TYPE smtp_oauth_relay_up gauge",
        f"smtp_oauth_relay_up {int(up)}",
        "# HELP smtp_oauth_relay_queue_messages Messages in the relay queue, by state.",
        "# TYPE smtp_oauth_relay_queue_messages gauge",
        *(f'smtp_oauth_relay_queue_messages{{state="{state}"}} {n}' for state, n in sorted(queue.items())),
        "# HELP smtp_oauth_relay_accepted_total Messages accepted from local clients since start.",
        "# TYPE smtp_oauth_relay_accepted_total counter",
        f"smtp_oauth_relay_accepted_total {accepted}",
        "# HELP smtp_oauth_relay_deliveries_total Delivery attempts since start, by result.",
        "# TYPE smtp_oauth_relay_deliveries_total counter",
        *(
            f'smtp_oauth_relay_deliveries_total{{result="{result}"}} {deliveries.get(result, 0)}'
            for result in ("delivered", "deferred", "dead", "bounced")
        ),
        "# HELP smtp_oauth_relay_token_expiry_timestamp_seconds When the access token last used expires.",
        "# TYPE smtp_oauth_relay_token_expiry_timestamp_seconds gauge",
    ]
    if token_expires_at is not None:  # no sample before the first token (nothing sent yet)
        lines.append(f"smtp_oauth_relay_token_expiry_timestamp_seconds {token_expires_at:.0f}")
    for name, value in sorted((spool or {}).items()):
        lines += [f"# TYPE smtp_oauth_relay_{name} gauge", f"smtp_oauth_relay_{name} {value:g}"]
    if workers is not None:
        alive, restarts = workers
        lines += [
            "# HELP smtp_oauth_relay_workers Accept worker processes running (relay.workers).",
            "# TYPE smtp_oauth_relay_workers gauge",
            f"smtp_oauth_relay_workers {alive}",
            "# HELP smtp_oauth_relay_worker_restarts_total Accept workers started again after dying.",
            "# TYPE smtp_oauth_relay_worker_restarts_total counter",
            f"smtp_oauth_relay_worker_restarts_total {restarts}",
        ]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``/healthz`` (200 or 503 from ``health``) and ``/metrics`` (text from ``render``)."""

    def __init__(
        self,
        listen: str,
        *,
        health: Callable[[], Awaitable[bool]],
        render: Callable[[], Awaitable[str]],
    ) -> None:
        self.listen = listen
        self._health = health
        self._render = render
        self._server: asyncio.Server | None = None
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        host, port = parse_listen(self.listen, default_port=9125)
        self._server = await asyncio.start_server(self._serve, host.strip("[]"), port)
        self.addresses = [sock.getsockname()[:2] for sock in self._server.sockets]
        log.info("metrics on %s", ", ".join(f"http://{h}:{p}/metrics" for h, p in self.addresses))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, body, content_type = await self._answer(head[:MAX_REQUEST_BYTES])
            if head.startswith(b"HEAD "):
                body = ""
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        payload = body.encode()
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _answer(self, head: bytes) -> tuple[int, str, str]:
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method not in {"GET", "HEAD"}:
            return 405, "method not allowed\n", "text/plain"
        if path == "/healthz":
            healthy = await self._health()
            return (200, "ok\n", "text/plain") if healthy else (503, "unhealthy\n", "text/plain")
        if path == "/metrics":
            return 200, await self._render(), "text/plain; version=0.0.4; charset=utf-8"
        return 404, "not found\n", "text/plain"
