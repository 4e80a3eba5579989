"""OAuthSMTPHandler: log records by mail, in the background, never in the application's way."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import AsyncIterator

import pytest

from smtp_oauth.log_handler import OAuthSMTPHandler
from smtp_oauth.sandbox.certs import SandboxCertificates
from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.models import Settings
from tests.smtp.sender_fakes import MAILBOX, SigningTokenProvider, make_settings

pytest_plugins = ["tests.smtp.sender_fixtures"]  # fixtures: certs, exchange, settings, tokens, ...


@pytest.fixture
async def app_logger() -> AsyncIterator[logging.Logger]:
    """A logger of the application under test, detached from the root logger."""
    logger = logging.getLogger("tests.app")
    logger.propagate = False
    yield logger
    logger.propagate = True
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        # close() waits for the worker, which talks to the fake Exchange on this loop: not on the loop.
        await asyncio.to_thread(handler.close)


async def test_error_record_is_mailed(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, app_logger: logging.Logger
) -> None:
    """An ERROR record arrives as a mail with the subject, the recipients and the formatted text."""
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], subject="app failed", token_provider=tokens)
    app_logger.addHandler(handler)
    app_logger.error("disk %s is full", "/var")
    await asyncio.to_thread(handler.flush)
    [delivered] = exchange.delivered()
    assert delivered.rcpt_tos == ["ops@example.test"]
    assert delivered.mail_from == MAILBOX
    assert delivered.message["Subject"] == "app failed"
    assert "disk /var is full" in delivered.message.get_content()


async def test_records_below_the_level_are_not_mailed(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, app_logger: logging.Logger
) -> None:
    """The default level is ERROR: a warning is not mailed."""
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], token_provider=tokens)
    app_logger.addHandler(handler)
    app_logger.warning("just a warning")
    await asyncio.to_thread(handler.flush)
    assert exchange.delivered() == []
    assert tokens.calls == []


async def test_a_burst_goes_out_in_few_mails_over_one_session(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, app_logger: logging.Logger
) -> None:
    """Records queued while a mail is being sent are batched; every record arrives, over one AUTH."""
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], token_provider=tokens)
    app_logger.addHandler(handler)
    for index in range(20):
        app_logger.error("failure %d", index)
    await asyncio.to_thread(handler.flush)
    bodies = "".join(d.message.get_content() for d in exchange.delivered())
    assert {f"failure {index}" for index in range(20)} <= set(bodies.splitlines())
    assert len(exchange.delivered()) < 20
    assert exchange.auth_attempts == 1


async def test_emit_returns_at_once_when_the_server_is_slow(
    certs: SandboxCertificates,
    silent_port: int,
    tokens: SigningTokenProvider,
    app_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Logging never waits for SMTP; a send that cannot finish is reported on stderr, not raised."""
    settings = make_settings(silent_port, certs.ca_file)
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], token_provider=tokens, timeout=0.5)
    app_logger.addHandler(handler)
    started = time.perf_counter()
    for index in range(50):
        app_logger.error("failure %d", index)
    assert time.perf_counter() - started < 0.5
    await asyncio.to_thread(handler.close)
    assert "not mailed within 0.5s" in capsys.readouterr().err


async def test_records_logged_while_sending_are_not_mailed(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """The handler on the root logger does not mail what smtp_oauth logs while sending (no loop)."""
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], token_provider=tokens, level=logging.DEBUG)
    # The fake Exchange runs in this process and logs each session; in real life that is Microsoft's side.
    handler.addFilter(lambda record: not record.name.startswith(("mail.log", "smtp_oauth.sandbox")))
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        logging.getLogger("tests.root_probe").error("the one record")
        await asyncio.to_thread(handler.flush)
        await asyncio.sleep(0.2)  # anything the worker logged would be queued by now
        await asyncio.to_thread(handler.flush)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        await asyncio.to_thread(handler.close)
    [delivered] = exchange.delivered()
    assert "the one record" in delivered.message.get_content()


async def test_close_sends_what_is_queued(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, app_logger: logging.Logger
) -> None:
    """close() (as logging.shutdown calls it) delivers queued records before returning."""
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], token_provider=tokens)
    app_logger.addHandler(handler)
    app_logger.critical("shutting down badly")
    await asyncio.to_thread(handler.close)
    [delivered] = exchange.delivered()
    assert "shutting down badly" in delivered.message.get_content()


async def test_handler_uses_msal_on_the_sandbox(
    smtp_oauth_sandbox: Sandbox, app_logger: logging.Logger
) -> None:
    """With no token provider given the handler's worker gets tokens through MSAL."""
    handler = OAuthSMTPHandler(smtp_oauth_sandbox.settings(), to=["ops@example.test"])
    app_logger.addHandler(handler)
    app_logger.error("from the sandbox")
    await asyncio.to_thread(handler.close)
    [delivered] = smtp_oauth_sandbox.delivered()
    assert "from the sandbox" in delivered.message.get_content()


async def test_worker_survives_a_failed_send_when_stderr_is_closed(
    settings: Settings,
    tokens: SigningTokenProvider,
    exchange: FakeExchange,
    app_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed send whose error report cannot be printed (stderr closed) does not stop later mail."""
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    exchange.inject("MAIL", "554 5.7.1 refused once")
    handler = OAuthSMTPHandler(settings, to=["ops@example.test"], token_provider=tokens)
    app_logger.addHandler(handler)
    app_logger.error("lost: the server refused it")
    await asyncio.to_thread(handler.flush)
    app_logger.error("the next one still goes out")
    await asyncio.to_thread(handler.flush)
    [delivered] = exchange.delivered()
    assert "the next one still goes out" in delivered.message.get_content()
