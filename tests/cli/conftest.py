"""Fixtures of the send-mail test modules: a clean subprocess environment and one warm sandbox per module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env
from tests.cli.send_mail_harness import warm_sandbox


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment for the subprocess, HOME and XDG dirs under tmp_path."""
    return clean_env(tmp_path)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    """One warm sandbox for this module."""
    async with warm_sandbox(tmp_path_factory.mktemp("send-mail-sandbox")) as started:
        yield started


@pytest.fixture
def sandbox(shared_sandbox: Sandbox) -> Sandbox:
    """The shared sandbox with no delivered mail and no pending injected replies."""
    shared_sandbox.exchange.clear()
    shared_sandbox.exchange.clear_injections()
    return shared_sandbox
