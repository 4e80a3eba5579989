"""A throwaway certificate authority for the sandbox: one CA, one server certificate for loopback.

The CA's PEM is written where the generated configuration points (``identity.ca_file``,
``smtp.ca_file``), so clients verify TLS for real instead of switching verification off.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smtp_oauth.files import write_private

__all__ = ["SandboxCertificates", "kept_certificates", "make_certificates"]

_VALIDITY = datetime.timedelta(days=30)
# A kept certificate this close to expiry is replaced at start: a sandbox left running for a day
# must not start failing its clients' handshakes.
_RENEW_BEFORE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class SandboxCertificates:
    """Paths of the CA certificate and of the server's certificate and key (PEM)."""

    ca_file: Path
    server_certificate: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS context for the sandbox's servers."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_certificate, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the sandbox CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smtp-oauth sandbox (for testing only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_certificates(directory: Path) -> SandboxCertificates:
    """Create a CA and a certificate for 127.0.0.1, ::1 and localhost in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name("smtp-oauth sandbox CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            # Clients connect by IP, so the SAN must carry IP:127.0.0.1 (an IP is matched only
            # against iPAddress entries: RFC 2818 section 3.1).
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = SandboxCertificates(
        ca_file=directory / "sandbox-ca.pem",
        server_certificate=directory / "sandbox-server.pem",
        server_key=directory / "sandbox-server.key",
    )
    paths.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        paths.server_key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return paths


def kept_certificates(directory: Path) -> SandboxCertificates:
    """The CA and server certificate already in ``directory`` if they are whole, chain and stay valid
    for a day more; otherwise new ones (:func:`make_certificates`), as at a first start.

    Keeping them lets a client configured with the sandbox CA (a relay's ``smtp.ca_file``, a system
    trust store) keep working across restarts.
    """
    paths = SandboxCertificates(
        ca_file=directory / "sandbox-ca.pem",
        server_certificate=directory / "sandbox-server.pem",
        server_key=directory / "sandbox-server.key",
    )
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_file.read_bytes())
        server = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
        server.verify_directly_issued_by(ca)
        deadline = datetime.datetime.now(datetime.UTC) + _RENEW_BEFORE
        if min(ca.not_valid_after_utc, server.not_valid_after_utc) < deadline:
            return make_certificates(directory)
        paths.server_context()  # the key is there and matches the certificate
    except (OSError, ValueError, TypeError, ssl.SSLError, InvalidSignature):
        return make_certificates(directory)
    return paths
