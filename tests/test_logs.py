"""Logging set-up: a token never reaches a log line, not even through an exception's traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from smtp_oauth.logs import configure_logging

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """configure_logging changes the root logger and library loggers' levels: put them back."""
    names = ("", "smtp_oauth", "msal", "urllib3", "aiosmtplib", "mail.log")
    root = logging.getLogger()
    handlers, levels = list(root.handlers), {name: logging.getLogger(name).level for name in names}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _log_failure(fmt: str) -> str:
    stream = io.StringIO()
    configure_logging("INFO", fmt, stream=stream)
    failure = RuntimeError(f"server said: auth=Bearer {TOKEN}")
    logging.getLogger("smtp_oauth.test_logs").error("sending failed", exc_info=failure)
    return stream.getvalue()


@pytest.mark.usefixtures("restore_root_logging")
def test_text_log_redacts_a_token_in_a_traceback() -> None:
    """A token in a logged exception's message is redacted in the text traceback."""
    output = _log_failure("text")
    assert "RuntimeError: server said: auth=Bearer [redacted]" in output
    assert TOKEN not in output


@pytest.mark.usefixtures("restore_root_logging")
def test_json_log_redacts_a_token_in_a_traceback() -> None:
    """A token in a logged exception's message is redacted in the JSON exception field."""
    output = _log_failure("json")
    record = json.loads(output.splitlines()[-1])
    assert record["exception"].endswith("RuntimeError: server said: auth=Bearer [redacted]")
    assert TOKEN not in output
