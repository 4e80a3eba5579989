"""One application's HTTPS connection to Microsoft Graph: the only importer of httpx.

``GraphClient`` is shared by every Graph transport of a process (the relay's per-mailbox workers,
the SMTP fallback), because Graph's limits are per application
(https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits):

- at most 4 concurrent requests per app, whatever the mailbox: a semaphore of 4;
- a 429 (or 503/504) names a ``Retry-After``: until it has passed no request of this app goes out.
  A wait of up to ``inline_wait`` seconds is waited here and the request repeated (at most
  ``MAX_TRIES`` times); a longer one raises GraphTemporaryError with ``retry_after`` at once, so
  the relay defers the message until then and send-mail exits 75 saying how long;
- a 401 is answered once with a freshly issued token, as Mailer does for a 535.

Nothing here blocks the event loop: TLS set-up runs in a thread, httpx is asynchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from smtp_oauth.graph.errors import (
    TEMPORARY_STATUSES,
    GraphReply,
    GraphTemporaryError,
    from_exception,
    from_reply,
)
from smtp_oauth.tls import add_ca_file
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.version import __version__

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tokens.types import TokenProvider

__all__ = ["MAX_CONCURRENT_REQUESTS", "GraphClient", "GraphResponse"]

logger = logging.getLogger("smtp_oauth.graph")

MAX_CONCURRENT_REQUESTS = 4  # "Limits per app ID": 4 concurrent requests (Outlook service limits)
MAX_TRIES = 3
INLINE_WAIT = 5.0
_JITTER = 0.2  # waits are stretched by up to a fifth, so throttled senders do not return in step


class GraphResponse:
    """A successful answer: status, headers and the JSON body (if any)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self.request_id = response.headers.get("request-id")
        self._content = response.content

    def json(self) -> dict[str, Any]:
        import json

        try:
            value = json.loads(self._content) if self._content else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    return add_ca_file(ssl.create_default_context(), ca_file, key="identity.ca_file")


class GraphClient:
    """Requests to Graph for one app: token, concurrency limit, Retry-After gate (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        token_provider: TokenProvider | None = None,
        max_concurrent: int = MAX_CONCURRENT_REQUESTS,
        inline_wait: float = INLINE_WAIT,
    ) -> None:
        self._settings = settings
        self._provider = token_provider
        self._scopes = settings.graph_scopes
        self.endpoint = settings.graph_endpoint
        self._max_concurrent = max_concurrent
        self._inline_wait = inline_wait
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._resume_at = 0.0  # time.monotonic() before which no request may go out
        self._http: httpx.AsyncClient | None = None
        self._opening = asyncio.Lock()
        self.requests_sent = 0
        # Mailboxes whose SMTP AUTH refused with 5.7.139, and until when: the fallback's memory.
        self.smtp_disabled_until: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"GraphClient(endpoint={self.endpoint!r}, max_concurrent={self._max_concurrent})"

    @property
    def token_provider(self) -> TokenProvider:
        if self._provider is None:
            from smtp_oauth.tokens.provider import create_token_provider  # msal is heavy: only when needed

            self._provider = create_token_provider(self._settings)
        return self._provider

    async def _client(self) -> httpx.AsyncClient:
        async with self._opening:
            if self._http is None:
                ca_file = self._settings.identity.ca_file
                context = await asyncio.to_thread(_tls_context, str(ca_file) if ca_file else None)
                self._http = httpx.AsyncClient(
                    verify=context,
                    timeout=httpx.Timeout(self._settings.graph.timeout),
                    limits=httpx.Limits(max_connections=self._max_concurrent + 2),
                    headers={"User-Agent": f"smtp-oauth/{__version__}"},
                    follow_redirects=False,
                )
            return self._http

    async def token(self, *, force_refresh: bool = False) -> str:
        return await self.token_provider.access_token(force_refresh=force_refresh, scopes=self._scopes)

    def throttled_for(self) -> float:
        """Seconds until Graph's last Retry-After has passed (0 when not throttled)."""
        return max(0.0, self._resume_at - time.monotonic())

    def _throttle(self, seconds: float) -> float:
        wait = seconds * (1 + random.uniform(0, _JITTER))  # noqa: S311  # jitter, not security
        self._resume_at = max(self._resume_at, time.monotonic() + wait)
        return wait

    async def _wait_for_gate(self, what: str, context: Mapping[str, str]) -> None:
        delay = self.throttled_for()
        if delay <= 0:
            return
        if delay > self._inline_wait:
            raise GraphTemporaryError(
                f"Microsoft Graph is throttling this app; {what} waits {delay:.0f} s before it is tried",
                retry_after=delay,
                hint="The relay sends it again after the wait; other senders of this app wait as well.",
                context=context,
            )
        await asyncio.sleep(delay)

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        context: Mapping[str, str],
        content: bytes | None = None,
        json_body: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        authorized: bool = True,
        draft: bool = False,
        transcript: Callable[[str, str], None] | None = None,
    ) -> GraphResponse:
        """One request, repeated after short Retry-After waits and once after a 401; 2xx or an error.

        ``url`` is relative to ``graph.endpoint`` or absolute (an upload session's URL, which is
        pre-authenticated: ``authorized=False`` sends no token to it). ``transcript`` gets one
        line per request and answer (no token, no body; an upload URL's secret part left out).
        """
        client = await self._client()
        target = url if url.startswith("https://") else f"{self.endpoint}{url}"
        fresh_token = False
        token: str | None = None
        for attempt in range(1, MAX_TRIES + 1):
            await self._wait_for_gate(what, context)
            send_headers = dict(headers or {})
            if content_type is not None:
                send_headers["Content-Type"] = content_type
            if authorized:
                token = await self.token(force_refresh=fresh_token)
                send_headers["Authorization"] = f"Bearer {token}"
            if transcript is not None:
                size = len(content) if content is not None else 0
                shown = (
                    url if not url.startswith("https://") else "(the upload session's pre-authenticated URL)"
                )
                transcript("C", f"{method} {shown}" + (f" ({size} bytes)" if size else ""))
            response = await self._send(
                client,
                method,
                target,
                content=content,
                json_body=json_body,
                headers=send_headers,
                context=context,
            )
            reply = GraphReply(response)
            if transcript is not None:
                transcript(
                    "S",
                    f"{reply.describe()}"
                    if not response.is_success
                    else f"{response.status_code} {response.reason_phrase}"
                    + (f" (request-id {reply.request_id})" if reply.request_id else ""),
                )
            if response.is_success:
                return GraphResponse(response)
            if response.status_code == 401 and authorized and not fresh_token:
                logger.info(
                    "Graph refused the token for %s (%s); retrying once with a new token",
                    what,
                    reply.describe(),
                )
                fresh_token = True
                continue
            if response.status_code in TEMPORARY_STATUSES:
                wait = self._throttle(reply.retry_after or 30.0)
                logger.warning("Graph throttled %s (%s); waiting %.1f s", what, reply.describe(), wait)
                if wait <= self._inline_wait and attempt < MAX_TRIES:
                    continue
                reply.retry_after = wait
            claims = _claims(token)
            raise from_reply(reply, what=what, context=_with_ids(context, claims), claims=claims, draft=draft)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        content: bytes | None,
        json_body: Mapping[str, Any] | None,
        headers: dict[str, str],
        context: Mapping[str, str],
    ) -> httpx.Response:
        async with self._semaphore:
            self.requests_sent += 1
            try:
                if json_body is not None:
                    return await client.request(method, url, json=dict(json_body), headers=headers)
                return await client.request(method, url, content=content, headers=headers)
            except httpx.HTTPError as exc:
                raise from_exception(exc, server=self.endpoint, context=context) from exc

    async def aclose(self) -> None:
        """Close the connections; the client opens new ones if used again."""
        http, self._http = self._http, None
        if http is not None:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await http.aclose()


def _status_line(response: httpx.Response) -> str:
    request_id = response.headers.get("request-id")
    return f"{response.status_code} {response.reason_phrase}" + (
        f" (request-id {request_id})" if request_id else ""
    )


def _claims(token: str | None) -> dict[str, Any]:
    if token is None:
        return {}
    try:
        return decode_claims(token)
    except ValueError:
        return {}


def _with_ids(context: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, str]:
    """The hint context plus the service principal's object id from an app-only token."""
    filled = dict(context)
    oid = claims.get("oid")
    if isinstance(oid, str) and "scp" not in claims:
        filled.setdefault("enterprise_app_object_id", oid)
        filled.setdefault("service_principal_id", oid)
    return filled
