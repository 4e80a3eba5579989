"""A pytest plugin: run the smtp-oauth sandbox (fake Entra ID + fake Exchange Online) in your tests.

Installing smtp-oauth registers it through the package's ``pytest11`` entry point, so it loads in
every pytest session of that environment, including projects that never use it. It therefore
imports only pytest at import time: the sandbox is imported when a fixture is first used, and
pytest-asyncio (which the async fixture needs, and which smtp-oauth does not require) only when it
is installed. Without pytest-asyncio, requesting ``smtp_oauth_sandbox`` fails the test with a
message saying so; nothing else changes.

``smtp_oauth_sandbox`` is an async, function-scoped fixture yielding a started ``Sandbox`` in a
temporary directory. Options go in a marker::

    @pytest.mark.smtp_oauth_sandbox(access_token_lifetime=5, strict_refresh_rotation=True)
    async def test_reconnects_with_a_new_token(smtp_oauth_sandbox):
        settings = smtp_oauth_sandbox.settings()
        ...
        assert smtp_oauth_sandbox.delivered()

The fake Exchange runs on the test's event loop: write the test as ``async def`` (with
``@pytest.mark.asyncio`` unless pytest-asyncio runs in auto mode) and run blocking clients
(subprocesses, ``smtplib``) through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from smtp_oauth.sandbox.certs import SandboxCertificates
    from smtp_oauth.sandbox.keys import SigningKey
    from smtp_oauth.sandbox.runner import Sandbox

__all__ = ["SandboxKeys", "smtp_oauth_sandbox", "smtp_oauth_sandbox_keys"]

MARKER = "smtp_oauth_sandbox"
NEEDS_PYTEST_ASYNCIO = (
    "the smtp_oauth_sandbox fixture is async and needs pytest-asyncio, which is not installed: "
    "pip install pytest-asyncio (and mark the test @pytest.mark.asyncio, or set asyncio_mode = 'auto')"
)


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
    from smtp_oauth.sandbox.certs import make_certificates
    from smtp_oauth.sandbox.keys import SigningKey

    return SandboxKeys(make_certificates(tmp_path_factory.mktemp("smtp-oauth-sandbox-tls")), SigningKey())


async def _running_sandbox(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    smtp_oauth_sandbox_keys: SandboxKeys,
) -> AsyncIterator[Sandbox]:
    """A running sandbox in a fresh temporary directory; stopped after the test."""
    from smtp_oauth.sandbox.runner import Sandbox

    marker = request.node.get_closest_marker(MARKER)
    options = {
        "certificates": smtp_oauth_sandbox_keys.certificates,
        "signing_key": smtp_oauth_sandbox_keys.signing_key,
        **(marker.kwargs if marker else {}),
    }
    async with Sandbox(tmp_path_factory.mktemp("smtp-oauth-sandbox"), **options) as sandbox:
        yield sandbox


def _sandbox_unavailable() -> NoReturn:
    """Stands in for smtp_oauth_sandbox where pytest-asyncio is missing: says so in the failure."""
    pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)


# pytest-asyncio is a test-time extra, not a dependency of smtp-oauth: only an environment that has
# it gets the async fixture (an installed pytest-asyncio is itself a pytest11 plugin, so it is active).
if find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    smtp_oauth_sandbox = pytest_asyncio.fixture(_running_sandbox, name="smtp_oauth_sandbox")
else:  # pragma: no cover - exercised in a fresh virtual environment by tests/test_pytest_plugin.py
    smtp_oauth_sandbox = pytest.fixture(_sandbox_unavailable, name="smtp_oauth_sandbox")
