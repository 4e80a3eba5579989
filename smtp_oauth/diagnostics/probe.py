"""The transport half of ``check``: TCP connect, then STARTTLS (or implicit TLS), certificate verified.

These two steps are probed here with a few lines of SMTP over asyncio streams rather than through
the Mailer, because a person needs to know *which* of them failed: "nothing listens on that port"
and "the certificate is not trusted" have different fixes. AUTH, the step that needs a token,
goes through the real Mailer afterwards. The TLS context is built as the Mailer builds it: the
system CAs plus ``smtp.ca_file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from smtp_oauth.diagnostics.report import Status, StepResult
from smtp_oauth.errors import FailureKind
from smtp_oauth.settings.models import Settings

__all__ = ["SmtpProbe", "tls_context"]

_EHLO_NAME = "smtp-oauth-check"


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verified TLS: the system's CAs, plus smtp.ca_file when set."""
    context = ssl.create_default_context()
    if settings.smtp.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.smtp.ca_file))
    return context


class _ProtocolError(Exception):
    """The server said something an SMTP server should not (or closed the connection)."""


class SmtpProbe:
    """One SMTP connection, stepped through by ``connect()`` and then ``secure()``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._host = settings.smtp_host
        self._port = settings.smtp.port
        self._timeout = settings.smtp.timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def _endpoint(self) -> str:
        return f"{self._host}:{self._port}"

    async def connect(self) -> StepResult:
        """Open the TCP connection to smtp.host:smtp.port."""
        title = "TCP connection"
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), self._timeout
            )
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            return StepResult(
                "connect",
                title,
                Status.FAIL,
                f"cannot connect to {self._endpoint}: {reason}",
                "Check smtp.host and smtp.port (Exchange Online: smtp.office365.com, port 587 with "
                "STARTTLS), DNS, and that a firewall or proxy lets this machine reach the port "
                f"(try: nc -vz {self._host} {self._port}).",
                FailureKind.TEMPORARY,
            )
        self._reader, self._writer = reader, writer
        peer = writer.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        elapsed = int((time.monotonic() - started) * 1000)
        return StepResult(
            "connect",
            title,
            Status.PASS,
            f"connected to {self._endpoint} ({address}) in {elapsed} ms",
            facts={"address": address, "milliseconds": elapsed},
        )

    async def secure(self) -> StepResult:
        """STARTTLS (or implicit TLS for smtp.security = "tls"), verify the certificate, read EHLO."""
        implicit = self._settings.smtp.security == "tls"
        title = "TLS and certificate" if implicit else "STARTTLS and certificate"
        try:
            if not implicit:
                await self._expect(220)
                extensions = await self._ehlo()
                if "STARTTLS" not in extensions:
                    return self._no_starttls(title)
                await self._command("STARTTLS", 220)
            await self._start_tls()
            if implicit:
                await self._expect(220)
            extensions = await self._ehlo()
        except ssl.SSLCertVerificationError as exc:
            return self._untrusted(title, exc)
        except (ssl.SSLError, OSError, TimeoutError, _ProtocolError) as exc:
            return StepResult(
                "tls",
                title,
                Status.FAIL,
                f"TLS with {self._endpoint} failed: {exc or type(exc).__name__}",
                'Check smtp.security: "starttls" for port 587, "tls" for port 465.',
                FailureKind.TEMPORARY,
            )
        return self._secured(title, extensions)

    def _secured(self, title: str, extensions: dict[str, str]) -> StepResult:
        assert self._writer is not None
        ssl_object = self._writer.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object else "TLS"
        certificate = ssl_object.getpeercert() if ssl_object else {}
        subject = _name(certificate.get("subject", ())) if certificate else "?"
        issuer = _name(certificate.get("issuer", ())) if certificate else "?"
        mechanisms = extensions.get("AUTH", "").split()
        facts = {"tls_version": version, "subject": subject, "issuer": issuer, "auth": mechanisms}
        detail = f"{version}, certificate {subject} issued by {issuer}, verified"
        if "XOAUTH2" not in (mechanism.upper() for mechanism in mechanisms):
            return StepResult(
                "tls",
                title,
                Status.FAIL,
                f"{detail}; but the server offers no AUTH XOAUTH2 (AUTH: {' '.join(mechanisms) or 'none'})",
                "smtp.host is not an Exchange Online submission endpoint, or SMTP AUTH is turned off "
                "there. Use smtp.office365.com port 587.",
                FailureKind.PERMANENT,
                facts,
            )
        return StepResult("tls", title, Status.PASS, f"{detail}; AUTH {' '.join(mechanisms)}", facts=facts)

    def _no_starttls(self, title: str) -> StepResult:
        return StepResult(
            "tls",
            title,
            Status.FAIL,
            f"{self._endpoint} does not offer STARTTLS; smtp-oauth never sends a token in clear text",
            "Exchange Online offers STARTTLS on smtp.office365.com port 587. For a server that "
            'speaks TLS from the first byte (port 465) set smtp.security = "tls".',
            FailureKind.PERMANENT,
        )

    def _untrusted(self, title: str, exc: ssl.SSLCertVerificationError) -> StepResult:
        ca_file = self._settings.smtp.ca_file
        trusted = f"the system CAs and smtp.ca_file = {ca_file}" if ca_file else "the system CAs"
        reason = exc.verify_message or exc.reason or str(exc)
        fix = f"The certificate of {self._host} is not signed by a CA in {trusted}. " + (
            f"smtp.ca_file ({ca_file}) does not hold the CA that signed this server's certificate: "
            "point smtp.ca_file at the right PEM bundle, or remove it for Exchange Online."
            if ca_file
            else "If a TLS-inspecting proxy or a private server sits in between, put its CA "
            "certificate in a PEM file and set smtp.ca_file to it; for Exchange Online, check "
            "smtp.host and the system CA bundle (ca-certificates)."
        )
        return StepResult(
            "tls",
            title,
            Status.FAIL,
            f"the certificate of {self._endpoint} is not trusted: {reason}",
            fix,
            FailureKind.CONFIG,  # trust is configured (smtp.ca_file): retrying will not help
            {"ca_file": str(ca_file) if ca_file else None},
        )

    async def close(self) -> None:
        """QUIT politely when possible, then close."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        with contextlib.suppress(Exception):
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(writer.drain(), 2)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)

    async def _start_tls(self) -> None:
        assert self._writer is not None
        # Parsing the system's CA bundle takes tens of milliseconds: not on the event loop.
        context = await asyncio.to_thread(tls_context, self._settings)
        await asyncio.wait_for(self._writer.start_tls(context, server_hostname=self._host), self._timeout)

    async def _ehlo(self) -> dict[str, str]:
        lines = await self._command(f"EHLO {_EHLO_NAME}", 250)
        extensions: dict[str, str] = {}
        for line in lines[1:]:
            keyword, _, params = line.partition(" ")
            extensions[keyword.upper()] = params
        return extensions

    async def _command(self, command: str, expected: int) -> list[str]:
        assert self._writer is not None
        self._writer.write(command.encode("ascii") + b"\r\n")
        await asyncio.wait_for(self._writer.drain(), self._timeout)
        return await self._expect(expected)

    async def _expect(self, expected: int) -> list[str]:
        code, lines = await asyncio.wait_for(self._read_reply(), self._timeout)
        if code != expected:
            raise _ProtocolError(f"expected {expected}, got {code} {' '.join(lines)}".strip())
        return lines

    async def _read_reply(self) -> tuple[int, list[str]]:
        assert self._reader is not None
        lines: list[str] = []
        while True:
            raw = await self._reader.readline()
            if not raw:
                raise _ProtocolError("the server closed the connection")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise _ProtocolError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines


def _name(rdns: tuple[tuple[tuple[str, str], ...], ...]) -> str:
    """``CN=smtp.office365.com`` from ssl's nested subject tuples."""
    parts = [f"{key if key != 'commonName' else 'CN'}={value}" for rdn in rdns for key, value in rdn]
    common = [part for part in parts if part.startswith("CN=")]
    return (common or parts or ["?"])[0]
