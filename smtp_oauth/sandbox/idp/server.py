"""The sandbox IdP's HTTPS server: stdlib ``ThreadingHTTPServer``, one thread per connection.

The TLS handshake happens on the connection's own thread (not in ``accept()``), so a client that
connects and says nothing cannot stall the server. Keep-alive connections are tracked and shut
down on stop, so no handler thread outlives the server for long.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from smtp_oauth.sandbox.idp.pages import HttpReply

__all__ = ["Dispatch", "TlsHandler", "TlsHttpServer"]

log = logging.getLogger("smtp_oauth.sandbox.idp.provider")

# (method, request target, form fields, request headers with lower-case names) -> reply
Dispatch = Callable[[str, str, dict[str, str], dict[str, str]], HttpReply]
_MAX_BODY = 1024 * 1024


class TlsHttpServer(ThreadingHTTPServer):
    """Serves ``dispatch`` over HTTPS; ``serve_forever`` on a thread, ``shutdown`` + ``close`` to stop."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        tls: ssl.SSLContext,
        dispatch: Dispatch,
        *,
        handler: type[BaseHTTPRequestHandler] | None = None,
    ) -> None:
        """``handler`` replaces the form-based request handler (the fake Graph has its own)."""
        self.tls = tls
        self.dispatch = dispatch
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler or _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        connection = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)

    def close(self) -> None:
        """Close the listening socket and drop idle keep-alive connections."""
        self.server_close()
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class TlsHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; the TLS handshake on the connection's own thread."""

    protocol_version = "HTTP/1.1"  # keep-alive, as requests' sessions expect
    timeout = 30
    server: TlsHttpServer

    def handle(self) -> None:
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", self.client_address, exc)
            return
        super().handle()


class _Handler(TlsHandler):
    server_version = "smtp-oauth-sandbox-idp"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
        # The request line's query string can hold codes; log the path only, and only at DEBUG.
        log.debug("%s %s", self.command, urlsplit(self.path).path)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, _MAX_BODY)).decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        basic = self.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            # client_secret_basic (RFC 6749 2.3.1): url-encoded id and secret, base64'd.
            try:
                decoded = base64.b64decode(basic[6:].strip()).decode()
            except ValueError:
                decoded = ""
            client_id, _, secret = decoded.partition(":")
            form.setdefault("client_id", unquote(client_id))
            form.setdefault("client_secret", unquote(secret))
        return form

    def _reply(self, reply: HttpReply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def do_GET(self) -> None:
        self._reply(self.server.dispatch("GET", self.path, {}, self._headers()))

    def do_POST(self) -> None:
        form = self._form()
        self._reply(self.server.dispatch("POST", self.path, form, self._headers()))
