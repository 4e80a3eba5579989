"""A pytest plugin: run the smtp-oauth sandbox (fake Entra ID + fake Exchange Online) in your tests.

Enable it with ``pytest_plugins = ["smtp_oauth.testing"]`` in your conftest.py (or through the
package's ``pytest11`` entry point where registered). Needs pytest-asyncio.

``smtp_oauth_sandbox`` is an async, function-scoped fixture yielding a started ``Sandbox`` in a
temporary directory. Options go in a marker::

    @pytest.mark.smtp_oauth_sandbox(access_token_lifetime=5, strict_refresh_rotation=True)
    async def test_reconnects_with_a_new_token(smtp_oauth_sandbox):
        settings = smtp_oauth_sandbox.settings()
        ...
        assert smtp_oauth_sandbox.delivered()

The fake Exchange runs on the test's event loop: write the test as ``async def`` and run blocking
clients (subprocesses, ``smtplib``) through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from smtp_oauth.sandbox.certs import SandboxCertificates, make_certificates
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.runner import Sandbox

__all__ = ["SandboxKeys", "smtp_oauth_sandbox", "smtp_oauth_sandbox_keys"]

MARKER = "smtp_oauth_sandbox"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(**options): keyword arguments for the Sandbox of the smtp_oauth_sandbox fixture"
    )


@dataclass(frozen=True)
class SandboxKeys:
    """A CA with a server certificate, and a token signing key, for several sandboxes."""

    certificates: SandboxCertificates
    signing_key: SigningKey


@pytest.fixture(scope="session")
def smtp_oauth_sandbox_keys(tmp_path_factory: pytest.TempPathFactory) -> SandboxKeys:
    """Made once per session: RSA key generation is most of a sandbox's start-up time.

    Tenants, apps, secrets and users are still new for every sandbox, so tokens of one sandbox
    are refused by another (other tenant id, other client ids).
    """
    return SandboxKeys(make_certificates(tmp_path_factory.mktemp("smtp-oauth-sandbox-tls")), SigningKey())


@pytest_asyncio.fixture
async def smtp_oauth_sandbox(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    smtp_oauth_sandbox_keys: SandboxKeys,
) -> AsyncIterator[Sandbox]:
    """A running sandbox in a fresh temporary directory; stopped after the test."""
    marker = request.node.get_closest_marker(MARKER)
    options = {
        "certificates": smtp_oauth_sandbox_keys.certificates,
        "signing_key": smtp_oauth_sandbox_keys.signing_key,
        **(marker.kwargs if marker else {}),
    }
    async with Sandbox(tmp_path_factory.mktemp("smtp-oauth-sandbox"), **options) as sandbox:
        yield sandbox
