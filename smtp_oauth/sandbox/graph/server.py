"""``FakeGraph``: the fake Microsoft Graph over HTTPS on 127.0.0.1, on a thread. FOR TESTING ONLY.

The same CA and server certificate as the fake Entra ID and Exchange; the decisions are in
``api.py``. Bodies up to the request limit are read; a larger one is read and thrown away in
chunks (so the connection stays usable) and answered 413, as Graph's front door does.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smtp_oauth.sandbox.graph.api import MAX_CONCURRENT, REQUEST_LIMIT, GraphApi, GraphRequest
from smtp_oauth.sandbox.graph.faults import GraphFault, GraphFaults
from smtp_oauth.sandbox.idp.pages import HttpReply
from smtp_oauth.sandbox.idp.server import TlsHandler, TlsHttpServer
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.mail_store import DeliveredMessage, MailStore

__all__ = ["FakeGraph", "GraphRequest"]

log = logging.getLogger("smtp_oauth.sandbox.graph")

_UPLOAD_LIMIT = 64 * 1024 * 1024  # one upload-session PUT (Graph allows up to 60 MiB)
_DISCARD_CHUNK = 1024 * 1024


class _GraphHandler(TlsHandler):
    server_version = "smtp-oauth-sandbox-graph"
    server: _GraphServer

    def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
        log.debug("%s %s", self.command, urlsplit(self.path).path)

    def _body(self, limit: int) -> bytes | None:
        """The request body, or None (read and dropped) when it is longer than ``limit``."""
        length = int(self.headers.get("Content-Length") or 0)
        if length <= limit:
            return self.rfile.read(length)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, _DISCARD_CHUNK))
            if not chunk:
                break
            remaining -= len(chunk)
        return None

    def _answer(self) -> None:
        api = self.server.api
        limit = _UPLOAD_LIMIT if self.command == "PUT" else api.request_limit
        body = self._body(limit)
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._reply(api.dispatch(self.command, self.path, headers, body))

    def _reply(self, reply: HttpReply) -> None:
        self.send_response(reply.status)
        if reply.body or reply.status not in {202, 204}:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class _GraphServer(TlsHttpServer):
    api: GraphApi


class FakeGraph:
    """The fake Graph: ``start()`` serves it on a thread; the attributes below are test hooks."""

    def __init__(
        self,
        *,
        signing_key: SigningKey,
        tls_context: ssl.SSLContext,
        store_dir: Path,
        tenant_id: str,
        mailboxes: Iterable[str],
        rbac_grants: Mapping[str, Iterable[str]] | None = None,
        send_as: Mapping[str, Iterable[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrent: int = MAX_CONCURRENT,
        request_limit: int = REQUEST_LIMIT,
    ) -> None:
        self.store = MailStore(store_dir)
        self.faults = GraphFaults()
        self.api = GraphApi(
            signing_key=signing_key,
            tenant_id=tenant_id,
            mailboxes=mailboxes,
            store=self.store,
            faults=self.faults,
            rbac_grants=rbac_grants,
            send_as=send_as,
            max_concurrent=max_concurrent,
            request_limit=request_limit,
        )
        self._tls = tls_context
        self._address = (host, port)
        self._server: _GraphServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def __repr__(self) -> str:
        return f"FakeGraph(endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """``https://127.0.0.1:<port>``: what ``graph.endpoint`` points at."""
        return f"https://{self._address[0]}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.store.directory

    def start(self) -> None:
        """Bind and serve on a daemon thread; ``port`` is the real one afterwards."""
        self.store.prepare()
        server = _GraphServer(self._address, self._tls, lambda *_: HttpReply(500, b""), handler=_GraphHandler)
        server.api = self.api
        self._server = server
        self.port = server.server_address[1]
        self.api.base_url = self.endpoint
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-graph", daemon=True
        )
        self._thread.start()
        log.info("sandbox Microsoft Graph listening on %s", self.endpoint)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- test hooks ------------------------------------------------------------------------------

    def delivered(self) -> list[DeliveredMessage]:
        """Messages Graph accepted and "sent", oldest first."""
        return self.store.delivered()

    def inject(
        self,
        operation: str,
        status: int,
        code: str,
        message: str = "",
        *,
        retry_after: str | int | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` ``operation`` requests get ``status`` with Graph error ``code``."""
        fault = GraphFault(status, code, message or code, None if retry_after is None else str(retry_after))
        self.faults.inject(operation, fault, times=times)

    def requests(self, operation: str | None = None) -> list[GraphRequest]:
        """The requests answered so far (of one operation, or all), oldest first."""
        return self.api.requests_for(operation) if operation else list(self.api.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests of one app that were being answered at the same time."""
        return self.api.max_in_flight
