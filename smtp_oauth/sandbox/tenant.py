"""What the sandbox tenant has registered: two apps, one user, fresh random secrets each time.

The tenant id is a random GUID per sandbox, as Entra's tenant ids are; the tenant also answers to
its domain name ``sandbox.test`` (Entra accepts a verified domain wherever a tenant id goes). Every
secret (client secret, certificate key, user password) is generated at start (or, for
``smtp-oauth sandbox``, kept from the last start), lives only in this process and in the sandbox
directory's 0600 files, and never appears in a ``repr``.

Registered, mirroring a real tenant set up for SMTP AUTH with OAuth:
- a confidential app ("smtp-oauth sandbox daemon") with a client secret *and* a certificate
  credential (``app.pem``: private key + certificate), granted the ``SMTP.SendAsApp`` application
  permission and access to the test mailbox, and on Microsoft Graph ``Mail.Send`` and
  ``Mail.ReadWrite`` (large messages go through a draft, which needs the latter);
- a public client app ("smtp-oauth sandbox desktop", "Allow public client flows" on) with the
  ``http://localhost`` redirect URI and consent for the delegated ``SMTP.Send`` permission and
  Graph's delegated ``Mail.Send`` and ``Mail.ReadWrite``;
- a user and mailbox ``sender@sandbox.test`` with a random password;
- the confidential app also trusts tokens of the sandbox's OIDC issuer as a federated identity
  credential (workload identity federation: subject ``system:serviceaccount:mail:sender``,
  audience ``api://AzureADTokenExchange``), and may exchange a user's token for one of its own
  on-behalf-of the user (its API is exposed as ``api://<client id>``, scope ``access_as_user``);
- a second confidential app ("smtp-oauth sandbox scanner", secret only, *no* API permission)
  granted a second mailbox ``scanner@sandbox.test`` through Exchange's SMTP App RBAC
  (``New-ManagementRoleAssignment -Role "Application SMTP.SendAsApp"``): its tokens carry no roles;
- two managed identities (a system-assigned one with the ``SMTP.SendAsApp`` app role and FullAccess
  on ``sender@``, a user-assigned one granted ``sender@`` through RBAC), served by the sandbox's
  App Service-style managed identity endpoint.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from smtp_oauth.files import write_private

__all__ = [
    "FEDERATED_AUDIENCE",
    "FEDERATED_SUBJECT",
    "FederatedCredential",
    "ManagedIdentity",
    "RegisteredApp",
    "SandboxTenant",
    "SandboxUser",
    "make_tenant",
]

TENANT_DOMAIN = "sandbox.test"
# What Entra expects in a federated token's aud for workload identity federation:
# https://learn.microsoft.com/en-us/entra/workload-id/workload-identity-federation
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
FEDERATED_SUBJECT = "system:serviceaccount:mail:sender"  # AKS: system:serviceaccount:<ns>:<sa>
OBO_SCOPE = "access_as_user"
APP_ROLE_SEND_AS_APP = "SMTP.SendAsApp"
DELEGATED_SMTP_SEND = "SMTP.Send"
# Microsoft Graph permissions (same names for the application and the delegated kind).
GRAPH_MAIL_SEND = "Mail.Send"
GRAPH_MAIL_READWRITE = "Mail.ReadWrite"
DEFAULT_GRAPH_PERMISSIONS = (GRAPH_MAIL_SEND, GRAPH_MAIL_READWRITE)
# "Mobile and desktop applications" redirect URIs; for loopback ones Entra ignores the port
# (RFC 8252 section 7.3), which is what MSAL's interactive flow relies on.
NATIVE_REDIRECT_URIS = (
    "http://localhost",
    "http://127.0.0.1",
    "https://login.microsoftonline.com/common/oauth2/nativeclient",
)
_CERTIFICATE_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential: tokens of ``issuer`` for ``subject`` prove the app."""

    issuer: str
    subject: str
    audience: str = FEDERATED_AUDIENCE


@dataclass(frozen=True)
class RegisteredApp:
    """An app registration as the identity provider sees it (secrets hidden from ``repr``)."""

    client_id: str
    display_name: str
    is_public: bool
    service_principal_id: str  # the enterprise app's object id: the ``oid`` of app-only tokens
    redirect_uris: tuple[str, ...] = ()
    app_roles: tuple[str, ...] = ()  # application permissions granted on Exchange Online
    delegated_consent: tuple[str, ...] = ()  # delegated permissions consented on Exchange Online
    graph_app_roles: tuple[str, ...] = ()  # application permissions granted on Microsoft Graph
    graph_delegated_consent: tuple[str, ...] = ()  # delegated permissions consented on Graph
    client_secret: str | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = field(default=None, repr=False)
    # Mutable on purpose: the issuer's URL is known only once the sandbox IdP listens.
    federated_credentials: list[FederatedCredential] = field(default_factory=list, compare=False)

    @property
    def certificate_thumbprint_sha256(self) -> bytes | None:
        """The certificate's SHA-256 thumbprint (``x5t#S256``), if it has one."""
        return self.certificate.fingerprint(hashes.SHA256()) if self.certificate else None

    @property
    def certificate_thumbprint_sha1(self) -> bytes | None:
        """The certificate's SHA-1 thumbprint (``x5t``, what older clients send)."""
        if self.certificate is None:
            return None
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        # SHA-1 is what the x5t header is defined with (RFC 7515 4.1.7), not a security choice here.
        return hashlib.sha1(der, usedforsecurity=False).digest()


@dataclass(frozen=True)
class SandboxUser:
    """The test user, who is also the mailbox mail is sent as."""

    upn: str
    object_id: str
    display_name: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ManagedIdentity:
    """An Azure managed identity: a service principal without credentials of its own."""

    client_id: str
    service_principal_id: str
    display_name: str
    system_assigned: bool
    app_roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxTenant:
    """Everything registered in the sandbox tenant; see the module docstring."""

    tenant_id: str
    domain: str
    app: RegisteredApp  # confidential: client secret, certificate, federated credential
    public_app: RegisteredApp  # public client for device code, interactive and ROPC
    user: SandboxUser
    certificate_path: Path  # app.pem: the confidential app's private key + certificate, 0600
    rbac_app: RegisteredApp  # confidential, secret only, no API permission: SMTP App RBAC
    second_user: SandboxUser  # scanner@: the mailbox rbac_app may send as
    system_identity: ManagedIdentity  # app role SMTP.SendAsApp + FullAccess on user's mailbox
    user_identity: ManagedIdentity  # no app role; RBAC on user's mailbox

    @property
    def mailbox(self) -> str:
        return self.user.upn

    @property
    def users(self) -> tuple[SandboxUser, ...]:
        return (self.user, self.second_user)

    @property
    def mailboxes(self) -> list[str]:
        return [user.upn for user in self.users]

    @property
    def managed_identities(self) -> tuple[ManagedIdentity, ...]:
        return (self.system_identity, self.user_identity)

    def application(self, client_id: str) -> RegisteredApp | None:
        """The app registered with ``client_id`` (case-insensitive, as GUIDs are), if any."""
        for candidate in (self.app, self.public_app, self.rbac_app):
            if candidate.client_id.lower() == client_id.lower():
                return candidate
        return None

    def knows_tenant(self, tenant: str) -> bool:
        """True for the tenant id and the tenant's domain name."""
        return tenant.lower() in {self.tenant_id.lower(), self.domain.lower()}

    def find_user(self, username: str) -> SandboxUser | None:
        for user in self.users:
            if username.lower() == user.upn.lower():
                return user
        return None

    def find_user_by_id(self, object_id: str) -> SandboxUser | None:
        for user in self.users:
            if object_id.lower() == user.object_id.lower():
                return user
        return None

    @property
    def acs_username(self) -> str:
        """The ACS SMTP username bound to the daemon app: ``<resource>|<app id>|<tenant id>``."""
        return f"sandbox-acs|{self.app.client_id}|{self.tenant_id}"

    @property
    def acs_sender(self) -> str:
        """The MailFrom address of the ACS email domain."""
        return f"DoNotReply@{self.domain}"

    def mailbox_permissions(self) -> dict[str, list[str]]:
        """Client id -> mailboxes it has FullAccess on (``Add-MailboxPermission``), the classic model."""
        return {
            self.app.client_id: [self.mailbox],
            self.system_identity.client_id: [self.mailbox],
        }

    def rbac_assignments(self) -> dict[str, list[str]]:
        """Client id -> mailboxes in its ``Application SMTP.SendAsApp`` role assignment's scope."""
        return {
            self.rbac_app.client_id: [self.second_user.upn],
            self.user_identity.client_id: [self.mailbox],
        }


def _new_secret() -> str:
    # Shaped like Entra's secrets ("<3 chars>8Q~<37 chars>"): clients that sanity-check the shape
    # of a secret see something familiar; urlsafe characters need no quoting in TOML or env vars.
    return f"{secrets.token_urlsafe(3)[:3]}8Q~{secrets.token_urlsafe(30)[:37]}"


def _make_app_certificate(client_id: str, path: Path) -> x509.Certificate:
    """A self-signed certificate credential, as ``New-SelfSignedCertificate`` would make one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"smtp-oauth sandbox app {client_id}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERTIFICATE_VALIDITY)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    write_private(path, pem)
    return certificate


def _kept_app_certificate(client_id: str, path: Path) -> x509.Certificate | None:
    """The app's certificate already in ``path`` when it is this app's and valid a day more."""
    try:
        data = path.read_bytes()
        certificate = x509.load_pem_x509_certificate(data)
        serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError):
        return None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    fresh = certificate.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    mine = bool(names) and names[0].value == f"smtp-oauth sandbox app {client_id}"
    return certificate if fresh and mine else None


def make_tenant(
    directory: Path,
    *,
    graph_permissions: tuple[str, ...] = DEFAULT_GRAPH_PERMISSIONS,
    kept: dict[str, str] | None = None,
) -> SandboxTenant:
    """A new tenant with random ids and secrets; writes the app's certificate to ``directory/app.pem``.

    ``graph_permissions`` are the Microsoft Graph permissions both apps hold (application and
    delegated); a test leaves one out to see how a missing grant is reported. ``kept`` holds ids
    and secrets of an earlier start (``smtp-oauth sandbox`` restarted): those are used again, the
    missing ones are drawn and added to it, and a valid ``app.pem`` of the same app is kept.
    """
    directory.mkdir(parents=True, exist_ok=True)
    values = {} if kept is None else kept

    def drawn(name: str, new: str) -> str:
        return values.setdefault(name, new)

    def new_id(name: str) -> str:
        return drawn(name, str(uuid.uuid4()))

    app_id = new_id("app.client_id")
    certificate_path = directory / "app.pem"
    certificate = _kept_app_certificate(app_id, certificate_path) if kept is not None else None
    app = RegisteredApp(
        client_id=app_id,
        display_name="smtp-oauth sandbox daemon",
        is_public=False,
        service_principal_id=new_id("app.service_principal_id"),
        redirect_uris=NATIVE_REDIRECT_URIS,
        app_roles=(APP_ROLE_SEND_AS_APP,),
        delegated_consent=(DELEGATED_SMTP_SEND,),
        graph_app_roles=graph_permissions,
        graph_delegated_consent=graph_permissions,
        client_secret=drawn("app.client_secret", _new_secret()),
        certificate=certificate or _make_app_certificate(app_id, certificate_path),
    )
    public_app = RegisteredApp(
        client_id=new_id("public_app.client_id"),
        display_name="smtp-oauth sandbox desktop",
        is_public=True,
        service_principal_id=new_id("public_app.service_principal_id"),
        redirect_uris=NATIVE_REDIRECT_URIS,
        delegated_consent=(DELEGATED_SMTP_SEND,),
        graph_delegated_consent=graph_permissions,
    )
    user = SandboxUser(
        upn=f"sender@{TENANT_DOMAIN}",
        object_id=new_id("user.object_id"),
        display_name="Sandbox Sender",
        password=drawn("user.password", secrets.token_urlsafe(18)),
    )
    rbac_app = RegisteredApp(
        client_id=new_id("rbac_app.client_id"),
        display_name="smtp-oauth sandbox scanner",
        is_public=False,
        service_principal_id=new_id("rbac_app.service_principal_id"),
        client_secret=drawn("rbac_app.client_secret", _new_secret()),
    )
    second_user = SandboxUser(
        upn=f"scanner@{TENANT_DOMAIN}",
        object_id=new_id("second_user.object_id"),
        display_name="Sandbox Scanner",
        password=drawn("second_user.password", secrets.token_urlsafe(18)),
    )
    return SandboxTenant(
        tenant_id=new_id("tenant_id"),
        domain=TENANT_DOMAIN,
        app=app,
        public_app=public_app,
        user=user,
        certificate_path=certificate_path,
        rbac_app=rbac_app,
        second_user=second_user,
        system_identity=ManagedIdentity(
            client_id=new_id("system_identity.client_id"),
            service_principal_id=new_id("system_identity.service_principal_id"),
            display_name="smtp-oauth-sandbox-vm",
            system_assigned=True,
            app_roles=(APP_ROLE_SEND_AS_APP,),
        ),
        user_identity=ManagedIdentity(
            client_id=new_id("user_identity.client_id"),
            service_principal_id=new_id("user_identity.service_principal_id"),
            display_name="id-smtp-oauth-sandbox",
            system_assigned=False,
        ),
    )
