"""``Sandbox``: the fake Entra ID, Exchange Online and Microsoft Graph together, with a ready config file.

FOR TESTING ONLY. ::

    async with Sandbox(tmp_path) as sandbox:
        settings = sandbox.settings()                  # client credentials with the client secret
        ...send mail with smtp_oauth...
        [message] = sandbox.delivered()
        sandbox.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")

What lands in the directory ``D``::

    D/sandbox.toml      the configuration (0600: it holds the client secret)
    D/app.pem           the confidential app's certificate credential (key + certificate, 0600)
    D/tls/              the sandbox CA (sandbox-ca.pem, the ca_file of both services) and server cert
                        (unless ``certificates=`` shares ones made elsewhere)
    D/mail/             delivered messages: one .eml plus its envelope as JSON each
    D/graph-mail/       messages sent through the fake Microsoft Graph, stored the same way
    D/token-cache       where the generated configs put MSAL's token cache
    D/spool/            where they put the relay's spool
    D/federated-token   a workload token of the sandbox's OIDC issuer (workload identity
                        federation), rewritten every half-lifetime as Kubernetes does
    D/managed-identity.env  IDENTITY_ENDPOINT and IDENTITY_HEADER of the fake managed identity
                        endpoint (0600): ``set -a; . D/managed-identity.env`` and msal uses it

The identity provider and Graph run on threads; the fake Exchange runs on the event loop that started the
sandbox, so that loop must keep running: use it from async tests and run blocking clients
(subprocesses, ``smtplib``) with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shlex
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smtp_oauth.files import write_private
from smtp_oauth.sandbox.certs import SandboxCertificates, kept_certificates, make_certificates
from smtp_oauth.sandbox.exchange.server import DeliveredMessage, FakeExchange
from smtp_oauth.sandbox.graph.server import FakeGraph
from smtp_oauth.sandbox.idp.provider import SandboxIdentityProvider
from smtp_oauth.sandbox.kept_state import KeptState, kept_config, kept_signing_key, load_state, save_state
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.sandbox_config import (
    FEDERATED_TOKEN_FILE,
    SandboxEndpoints,
    merge_sections,
    render_toml,
    sandbox_sections,
    write_private_text,
)
from smtp_oauth.sandbox.tenant import DEFAULT_GRAPH_PERMISSIONS, SandboxTenant, make_tenant
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings

__all__ = ["PortInUse", "Sandbox"]

LOOPBACK = "127.0.0.1"
EXCHANGE_MAX_MESSAGE_SIZE = 35 * 1024 * 1024


def _free_port(host: str) -> int:
    # For the relay's listen address in the config: the relay binds it later, in another process
    # perhaps, so the port is only probably still free then. Good enough for a test config.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class PortInUse(Exception):
    """A port kept from the sandbox's last start is taken by another program."""

    def __init__(self, service: str, port: int, fix: str) -> None:
        super().__init__(
            f"port {LOOPBACK}:{port} of the {service}, kept from the last start so that what is "
            f"configured against the sandbox keeps working, is in use by another program: stop it, "
            f"or {fix} (sandbox.toml is rewritten with the new port)"
        )
        self.port = port


class Sandbox:
    """A running fake Entra ID + fake Exchange Online, and the settings to use them."""

    def __init__(
        self,
        directory: Path,
        *,
        idp_port: int = 0,
        smtp_port: int = 0,
        access_token_lifetime: int = 3600,
        refresh_in: int | None = None,
        strict_refresh_rotation: bool = False,
        device_code_auto_approve: bool = True,
        max_sessions_per_mailbox: int = 3,
        messages_per_minute: int = 0,
        max_message_size: int = EXCHANGE_MAX_MESSAGE_SIZE,
        relay_listen: str | None = None,
        certificates: SandboxCertificates | None = None,
        signing_key: SigningKey | None = None,
        graph_permissions: tuple[str, ...] = DEFAULT_GRAPH_PERMISSIONS,
        federated_token_lifetime: int = 3600,
        service: str = "exchange",
        persistent: bool = False,
    ) -> None:
        self.directory = Path(directory).absolute()
        # persistent (``smtp-oauth sandbox``): keep ids, secrets, keys, certificates, ports and the
        # user's additions to sandbox.toml across restarts (kept_state.py); tests start afresh.
        self._persistent = persistent
        self._kept = KeptState()
        self.config_path = self.directory / "sandbox.toml"
        self.smtp_host = LOOPBACK
        self._idp_port = idp_port
        self._smtp_port = smtp_port
        self._idp_options: dict[str, Any] = {
            "access_token_lifetime": access_token_lifetime,
            "refresh_in": refresh_in,
            "strict_refresh_rotation": strict_refresh_rotation,
            "device_code_auto_approve": device_code_auto_approve,
        }
        self._exchange_options: dict[str, Any] = {
            "max_sessions_per_mailbox": max_sessions_per_mailbox,
            "messages_per_minute": messages_per_minute,
            "max_message_size": max_message_size,
        }
        self._relay_listen = relay_listen
        self._graph_permissions = tuple(graph_permissions)
        # Making RSA keys is the slow part of a start; a test session may share one CA and key.
        self._given_keys = (certificates, signing_key)
        self._parts: (
            tuple[SandboxCertificates, SandboxTenant, SandboxIdentityProvider, FakeExchange] | None
        ) = None
        self.federated_token_file = self.directory / FEDERATED_TOKEN_FILE
        self._federated_token_lifetime = federated_token_lifetime
        # The submission service the fake SMTP server plays: exchange, hve or acs (exchange/services.py).
        self.service = service
        self._token_refresher: asyncio.Task[None] | None = None
        self._graph: FakeGraph | None = None

    def __repr__(self) -> str:
        state = (
            f"authority_host={self.authority_host!r}, smtp_port={self.smtp_port}"
            if self._parts
            else "stopped"
        )
        return f"Sandbox({str(self.directory)!r}, {state})"

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create keys, certificates and the tenant, start both services, write ``config_path``."""
        if self._parts is not None:
            raise RuntimeError("the sandbox is already running")
        # Key generation and file writes take a moment: keep them off the event loop.
        certificates, key, tenant = await asyncio.to_thread(self._prepare)
        kept_ports = self._kept.ports
        idp_port = self._idp_port or kept_ports.get("idp", 0)
        smtp_port = self._smtp_port or kept_ports.get("smtp", 0)
        idp = SandboxIdentityProvider(
            tenant,
            signing_key=key,
            tls_context=certificates.server_context(),
            host=LOOPBACK,
            port=idp_port,
            **self._idp_options,
        )
        exchange = FakeExchange(
            signing_key=key,
            tls_context=certificates.server_context(),
            store_dir=self.directory / "mail",
            mailboxes=tenant.mailboxes,
            app_grants=tenant.mailbox_permissions(),
            rbac_grants=tenant.rbac_assignments(),
            tenant_id=tenant.tenant_id,
            service=self.service,
            acs_usernames={tenant.acs_username: tenant.app.client_id},
            acs_senders=[tenant.acs_sender],
            host=LOOPBACK,
            port=smtp_port,
            **self._exchange_options,
        )
        graph = FakeGraph(
            signing_key=key,
            tls_context=certificates.server_context(),
            store_dir=self.directory / "graph-mail",
            tenant_id=tenant.tenant_id,
            mailboxes=tenant.mailboxes,
            # One RBAC scope can hold both roles, 'Application SMTP.SendAsApp' and 'Application Mail.Send'.
            rbac_grants=tenant.rbac_assignments(),
            host=LOOPBACK,
            port=kept_ports.get("graph", 0),
        )
        with self._kept_port(
            "identity provider", idp_port, "pass --idp-port 0 for a new one", kept=idp_port != self._idp_port
        ):
            await asyncio.to_thread(idp.start)
        try:
            graph_fix = f"delete {self.directory / 'sandbox-state.json'} for new ports"
            with self._kept_port("fake Microsoft Graph", graph.port, graph_fix, kept=bool(graph.port)):
                await asyncio.to_thread(graph.start)
            smtp_fix = "pass --smtp-port 0 for a new one"
            with self._kept_port(
                "fake Exchange Online SMTP", smtp_port, smtp_fix, kept=smtp_port != self._smtp_port
            ):
                await exchange.start()
        except BaseException:
            await asyncio.to_thread(graph.stop)
            await asyncio.to_thread(idp.stop)
            raise
        self._parts = (certificates, tenant, idp, exchange)
        self._graph = graph
        if self._relay_listen is None:
            kept_relay = kept_ports.get("relay")
            self._relay_listen = f"{LOOPBACK}:{kept_relay or _free_port(LOOPBACK)}"
        await asyncio.to_thread(self._write_identity_files)
        self._token_refresher = asyncio.create_task(self._refresh_federated_token())
        await asyncio.to_thread(self._write_start_files)

    @contextlib.contextmanager
    def _kept_port(self, service: str, port: int, fix: str, *, kept: bool) -> Iterator[None]:
        """A kept port that is taken, said as PortInUse (a port the caller chose stays an OSError)."""
        try:
            yield
        except OSError as exc:
            if not (self._persistent and kept and exc.errno == errno.EADDRINUSE):
                raise
            raise PortInUse(service, port, fix) from exc

    def _write_start_files(self) -> None:
        if not self._persistent:
            self.write_config()
            return
        # The user's keys stay (their [[relay.users]], relay TLS ...); the sandbox's own are rewritten.
        self.write_config(base=kept_config(self.config_path))
        self._kept.ports.update(
            idp=self.idp.port,
            smtp=self.smtp_port,
            graph=self.graph.port,
            relay=int(self.relay_listen.rsplit(":", 1)[1]),
        )
        save_state(self.directory, self._kept)

    def _write_identity_files(self) -> None:
        self.rotate_federated_token()
        lines = [
            f"{name}={shlex.quote(value)}" for name, value in self.managed_identity_environment().items()
        ]
        write_private_text(self.directory / "managed-identity.env", "\n".join(lines) + "\n")

    async def _refresh_federated_token(self) -> None:
        # As the kubelet does with projected service account tokens: renew well before expiry.
        while True:
            await asyncio.sleep(max(1.0, self._federated_token_lifetime / 2))
            await asyncio.to_thread(self.rotate_federated_token)

    def _prepare(self) -> tuple[SandboxCertificates, SigningKey, SandboxTenant]:
        self.directory.mkdir(parents=True, exist_ok=True)
        certificates, signing_key = self._given_keys
        if not self._persistent:
            return (
                certificates or make_certificates(self.directory / "tls"),
                signing_key or SigningKey(),
                make_tenant(self.directory, graph_permissions=self._graph_permissions),
            )
        self._kept = load_state(self.directory)
        tenant = make_tenant(
            self.directory, graph_permissions=self._graph_permissions, kept=self._kept.tenant
        )
        save_state(self.directory, self._kept)  # the secrets are kept even if a port is taken below
        return (
            certificates or kept_certificates(self.directory / "tls"),
            signing_key or kept_signing_key(self.directory),
            tenant,
        )

    async def stop(self) -> None:
        """Stop both services (idempotent); the directory and its files stay for inspection."""
        parts, self._parts = self._parts, None
        if parts is None:
            return
        _, _, idp, exchange = parts
        refresher, self._token_refresher = self._token_refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        graph, self._graph = self._graph, None
        try:
            await exchange.stop()
        finally:
            if graph is not None:
                await asyncio.to_thread(graph.stop)
            await asyncio.to_thread(idp.stop)

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- the running parts ------------------------------------------------------------------------

    def _running(self) -> tuple[SandboxCertificates, SandboxTenant, SandboxIdentityProvider, FakeExchange]:
        if self._parts is None:
            raise RuntimeError("the sandbox is not running: use `async with Sandbox(...)` or `await start()`")
        return self._parts

    @property
    def tenant(self) -> SandboxTenant:
        return self._running()[1]

    @property
    def idp(self) -> SandboxIdentityProvider:
        return self._running()[2]

    @property
    def exchange(self) -> FakeExchange:
        return self._running()[3]

    @property
    def graph(self) -> FakeGraph:
        """The fake Microsoft Graph (``graph.endpoint`` of the generated configs)."""
        self._running()
        assert self._graph is not None  # started with the rest
        return self._graph

    @property
    def ca_file(self) -> Path:
        """The sandbox CA (PEM) that both services' certificates chain to."""
        return self._running()[0].ca_file

    @property
    def authority_host(self) -> str:
        return self.idp.authority_host

    @property
    def smtp_port(self) -> int:
        return self.exchange.port

    @property
    def relay_listen(self) -> str:
        self._running()
        assert self._relay_listen is not None  # set by start()
        return self._relay_listen

    def client_tls_context(self) -> ssl.SSLContext:
        """A verifying TLS client context that trusts the sandbox CA (for SMTP clients)."""
        return self._running()[0].client_context()

    @property
    def mail_dir(self) -> Path:
        return self.exchange.store_dir

    # --- identities without secrets ----------------------------------------------------------------

    def managed_identity_environment(self) -> dict[str, str]:
        """``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``: with these exported, msal's
        ManagedIdentityClient asks the sandbox (App Service form) for managed identity tokens."""
        return self.idp.managed_identity_environment()

    def rotate_federated_token(self, *, revoke_previous: bool = False) -> str:
        """Write a new workload token to ``federated_token_file`` (atomically, as the kubelet does);
        ``revoke_previous`` makes the IdP refuse the tokens written before. Returns the new token."""
        if revoke_previous:
            self.idp.federation.revoke_issued_before(time.time())
            time.sleep(1.0 - time.time() % 1.0)  # the new token's iat (whole seconds) comes after
        token = self.idp.federated_token(lifetime=self._federated_token_lifetime)
        write_private(self.federated_token_file, token)
        return token

    # --- configuration ----------------------------------------------------------------------------

    def write_config(
        self,
        path: Path | None = None,
        *,
        flow: str = "client_credentials",
        credential: str = "secret",
        base: dict[str, Any] | None = None,
        **extra_sections: Any,
    ) -> Path:
        """Write a configuration for ``flow`` (default: ``config_path``, client credentials + secret).

        ``extra_sections`` are merged over the generated ones, table by table, e.g.
        ``relay={"users": [{"name": "app", "password_hash": "..."}]}`` or ``smtp={"timeout": 5}``;
        a value of None removes a key. Delegated flows use the public client app and the test user.
        ``base``: tables the generated ones are merged over (a user's sandbox.toml of a last start).
        """
        endpoints = SandboxEndpoints(
            authority_host=self.authority_host,
            ca_file=self.ca_file,
            smtp_host=self.smtp_host,
            smtp_port=self.smtp_port,
            relay_listen=self.relay_listen,
            token_cache=self.directory / "token-cache",
            spool_dir=self.directory / "spool",
            federated_token_file=self.federated_token_file,
            graph_endpoint=self.graph.endpoint,
            service=self.service,
        )
        sections = sandbox_sections(self.tenant, endpoints, flow=flow, credential=credential)
        if self.service == "acs":
            # ACS: user= is the SMTP username of the daemon app; mail goes out from the domain's sender.
            sections["smtp"].update(username=self.tenant.acs_username, from_address=self.tenant.acs_sender)
        target = self.config_path if path is None else Path(path)
        sections = merge_sections(sections, extra_sections)
        if base:
            # Where the user moved the relay (listen, spool_dir) is theirs; the rest is the sandbox's.
            sections = merge_sections(base, sections)
            sections["relay"] = merge_sections(sections.get("relay", {}), base.get("relay", {}))
        write_private_text(target, render_toml(sections))
        return target

    def settings(self, **overrides: Any) -> Settings:
        """``load_settings(config_path, **overrides)``: the environment still beats the file."""
        return load_settings(self.config_path, **overrides)

    # --- Exchange's side --------------------------------------------------------------------------

    def delivered(self) -> list[DeliveredMessage]:
        """Messages the fake Exchange accepted, oldest first."""
        return self.exchange.delivered()

    def graph_delivered(self) -> list[DeliveredMessage]:
        """Messages the fake Microsoft Graph accepted, oldest first."""
        return self.graph.delivered()

    def inject_graph(
        self,
        operation: str,
        status: int,
        code: str,
        message: str = "",
        *,
        retry_after: str | int | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` Graph ``operation`` requests (sendMail, ...) fail; see FakeGraph.inject."""
        self.graph.inject(operation, status, code, message, retry_after=retry_after, times=times)

    def grant_mailbox(self, client_id: str, mailbox: str, *, model: str = "rbac") -> None:
        """Give an app (or managed identity) a mailbox by SMTP App RBAC or FullAccess (FakeExchange.grant)."""
        self.exchange.grant(client_id, mailbox, model=model)

    def inject(self, command: str, reply: str, *, times: int = 1, disconnect: bool = False) -> None:
        """The next ``times`` ``command`` (AUTH, MAIL, RCPT, DATA) get ``reply``; see FakeExchange.inject."""
        self.exchange.inject(command, reply, times=times, disconnect=disconnect)
