"""diagnostics.probe: the TCP and TLS steps against real aiosmtpd servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from smtp_oauth.diagnostics import Status
from smtp_oauth.diagnostics.probe import SmtpProbe
from smtp_oauth.errors import FailureKind
from smtp_oauth.sandbox.certs import SandboxCertificates, make_certificates
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings


class _Handler:
    """Accepts nothing; only here so aiosmtpd can advertise (or not) AUTH XOAUTH2."""

    def __init__(self, *, xoauth2: bool) -> None:
        if xoauth2:
            self.auth_XOAUTH2 = self._refuse

    async def _refuse(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False, handled=False)


@pytest.fixture
def certificates(tmp_path: Path) -> SandboxCertificates:
    return make_certificates(tmp_path / "tls")


@contextlib.asynccontextmanager
async def _serve(factory: Callable[[], SMTP], *, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int, **smtp: Any) -> Settings:
    monkeypatch.delenv("SMTP_OAUTH_CONFIG", raising=False)
    extra = "".join(f'{key} = "{value}"\n' for key, value in smtp.items())
    path = tmp_path / "probe.toml"
    path.write_text(
        '[identity]\ntenant_id = "t.example"\nclient_id = "c"\nclient_secret = "s"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nusername = "a@example.org"\ntimeout = 5\n{extra}'
    )
    return load_settings(path)


async def _probe(settings: Settings) -> tuple[Any, Any]:
    probe = SmtpProbe(settings)
    try:
        connected = await probe.connect()
        secured = await probe.secure() if connected.passed else None
    finally:
        await probe.close()
    return connected, secured


async def test_server_without_starttls_fails_and_sends_nothing_in_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that offers no STARTTLS fails the TLS step (exit 69) and names smtp.security."""
    async with _serve(lambda: SMTP(_Handler(xoauth2=True), auth_require_tls=False)) as port:
        connected, secured = await _probe(_settings(tmp_path, monkeypatch, port))
    assert connected.status is Status.PASS
    assert secured.status is Status.FAIL
    assert secured.failure is FailureKind.PERMANENT
    assert "does not offer STARTTLS" in secured.detail
    assert 'smtp.security = "tls"' in secured.fix


async def test_server_without_xoauth2_after_tls_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificates: SandboxCertificates
) -> None:
    """STARTTLS works but AUTH lacks XOAUTH2: the TLS step fails and lists what is offered."""
    context = certificates.server_context()
    async with _serve(lambda: SMTP(_Handler(xoauth2=False), tls_context=context)) as port:
        settings = _settings(tmp_path, monkeypatch, port, ca_file=certificates.ca_file)
        _, secured = await _probe(settings)
    assert secured.status is Status.FAIL
    assert "offers no AUTH XOAUTH2" in secured.detail
    assert "LOGIN" in secured.detail


async def test_implicit_tls_passes_with_the_configured_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificates: SandboxCertificates
) -> None:
    """security = "tls": TLS from the first byte, certificate verified against smtp.ca_file, XOAUTH2 seen."""
    context = certificates.server_context()
    async with _serve(lambda: SMTP(_Handler(xoauth2=True), auth_require_tls=False), tls=context) as port:
        settings = _settings(tmp_path, monkeypatch, port, ca_file=certificates.ca_file, security="tls")
        connected, secured = await _probe(settings)
    assert connected.status is Status.PASS
    assert secured.status is Status.PASS, secured.detail
    assert secured.title == "TLS and certificate"
    assert "XOAUTH2" in secured.facts["auth"]


async def test_refused_connection_fails_with_exit_75(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listening: the TCP step fails as temporary (75) and suggests checking with nc."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connected, secured = await _probe(_settings(tmp_path, monkeypatch, port))
    assert connected.status is Status.FAIL
    assert connected.failure is FailureKind.TEMPORARY
    assert f"nc -vz 127.0.0.1 {port}" in connected.fix
    assert secured is None
