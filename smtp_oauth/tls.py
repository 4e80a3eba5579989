"""TLS contexts for our clients: the system's trusted CAs plus a configured private CA file.

One rule for every client that verifies a server (SMTP submission, Microsoft Graph): the
certificate is always verified (RFC 2818 §3.1); a ``ca_file`` only adds trust anchors, for a
private server or the sandbox, and a file that cannot be loaded is a configuration error naming
the key that points at it.

``ca_directory_context`` is the same trust for a process that makes one connection and exits
(``send-mail``): OpenSSL's hashed CA directory, where it looks up only the issuers a handshake
needs, instead of parsing the whole bundle (about 20 ms, more than the rest of the TLS set-up).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import ssl
import sys
import threading

from smtp_oauth.errors import ConfigurationError

__all__ = ["PreloadedTrust", "add_ca_file", "ca_directory_context", "ssl_error_in"]

# c_rehash / update-ca-certificates names each certificate in the directory <subject hash>.<n>.
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def add_ca_file(context: ssl.SSLContext, ca_file: str | None, *, key: str) -> ssl.SSLContext:
    """``context`` trusting ``ca_file`` too (when set); ``key`` is the setting that names the file."""
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load {key} {ca_file}: {exc}",
                key=key,
                hint=f"Point {key} at a readable PEM file of CA certificates.",
            ) from exc
    return context


class PreloadedTrust:
    """The system's trusted CAs, loaded on a thread from the moment this is made; taken once.

    For a program that sends one message and exits (``send-mail``'s full path):
    ``ssl.create_default_context`` parses the whole CA bundle, tens of milliseconds, and OpenSSL
    releases the GIL meanwhile, so started before the program's remaining imports it is ready by the
    time the connection needs it. Whoever makes one hands it to the Mailer that is to use it
    (``create_transport(trust=...)``); nothing is kept at module level.
    """

    def __init__(self) -> None:
        self._future: concurrent.futures.Future[ssl.SSLContext] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._taken = False
        threading.Thread(target=self._load, name="smtp-oauth-tls-preload", daemon=True).start()

    def _load(self) -> None:
        try:
            self._future.set_result(ssl.create_default_context())
        except BaseException as exc:  # raised in the thread that takes it
            self._future.set_exception(exc)

    def take(self) -> ssl.SSLContext | None:
        """The loaded context (waiting for it) the first time; None after, so that no two clients
        share one context (each adds its own ``ca_file`` to it)."""
        with self._lock:
            if self._taken:
                return None
            self._taken = True
        return self._future.result()


def ca_directory_context() -> ssl.SSLContext | None:
    """A client context trusting the system's CAs through OpenSSL's hashed CA directory, or None.

    Verification is that of ``ssl.create_default_context()`` (certificate required, host name
    checked, TLS 1.2 at least, SSLKEYLOGFILE honoured); only where the trust anchors are read from
    differs. None, and the caller takes ``create_default_context()``, when ``SSL_CERT_FILE`` names a
    bundle (the user's choice) or the directory (``SSL_CERT_DIR``, else OpenSSL's default) has no
    hashed entries (a system that keeps its CAs in a bundle only). A directory that lacks a CA the
    bundle has makes verification fail: callers try ``create_default_context()`` again then.
    """
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env):
        return None
    directory = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    try:
        with os.scandir(directory) as entries:
            if not any(_HASHED_NAME.fullmatch(entry.name) for entry in entries):
                return None
    except OSError:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname, as the default
    context.load_verify_locations(capath=directory)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        context.keylog_filename = keylog  # as create_default_context does, for debugging TLS
    return context


def ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind ``exc``, following its causes: the SMTP clients and httpx wrap it (for
    implicit TLS, for STARTTLS, for HTTPS) in errors of their own, each a different way."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
