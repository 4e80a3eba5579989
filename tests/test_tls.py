"""The one rule for the CA file our clients trust beside the system's CAs."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.sandbox.certs import SandboxCertificates, make_certificates
from smtp_oauth.tls import PreloadedTrust, add_ca_file, ca_directory_context


def test_unreadable_ca_file_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    """A CA file that cannot be loaded names the setting that points at it and how to fix it."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError) as caught:
        add_ca_file(ssl.create_default_context(), str(missing), key="smtp.ca_file")
    assert caught.value.key == "smtp.ca_file"
    assert str(missing) in str(caught.value)
    assert "readable PEM file" in (caught.value.hint or "")


def test_no_ca_file_leaves_the_context_as_it_was() -> None:
    """Without a CA file the context keeps verifying against the system's CAs only."""
    context = ssl.create_default_context()
    assert add_ca_file(context, None, key="smtp.ca_file") is context
    assert context.verify_mode is ssl.CERT_REQUIRED


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A real TLS handshake between the two contexts over memory BIOs; raises the client's error."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def hashed_ca_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SandboxCertificates:
    """SSL_CERT_DIR holding the sandbox CA under its subject hash, as c_rehash names it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to compute a subject hash")
    certs = make_certificates(tmp_path / "certs")
    subject_hash = subprocess.run(
        [openssl, "x509", "-noout", "-subject_hash", "-in", str(certs.ca_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    directory = tmp_path / "ca-dir"
    directory.mkdir()
    (directory / f"{subject_hash}.0").write_bytes(certs.ca_file.read_bytes())
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    return certs


def test_ca_directory_context_verifies_against_the_directory(hashed_ca_dir: SandboxCertificates) -> None:
    """A server whose CA is in the hashed directory verifies; a wrong host name still fails."""
    context = ca_directory_context()
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    server = hashed_ca_dir.server_context()
    _handshake(context, server, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, server, "not-the-server.example")


def test_ca_directory_context_trusts_nothing_else(hashed_ca_dir: SandboxCertificates, tmp_path: Path) -> None:
    """A server signed by another CA (even one of the same name) is refused."""
    other = make_certificates(tmp_path / "other").server_context()
    context = ca_directory_context()
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, other, "localhost")


def test_a_bundle_named_by_ssl_cert_file_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SSL_CERT_FILE set: no directory context, the caller loads the bundle as OpenSSL would."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "bundle.pem"))
    assert ca_directory_context() is None


def test_a_directory_without_hashed_entries_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A CA directory holding no <hash>.<n> entries (a bundle-only system): None."""
    (tmp_path / "ca-bundle.crt").write_text("")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert ca_directory_context() is None


def test_preloaded_trust_is_taken_once() -> None:
    """The CAs loaded ahead go to one client only (each adds its own ca_file); later takers get None."""
    trust = PreloadedTrust()
    context = trust.take()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert trust.take() is None
