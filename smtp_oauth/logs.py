"""Logging set-up: text or one JSON object per line, and a filter that keeps tokens out of logs.

Structured fields go in ``extra={"event": ..., ...}``; the JSON formatter emits them as keys.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["JsonFormatter", "RedactingFilter", "configure_logging", "redact"]

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_EXCEPTION_FORMATTER = logging.Formatter()  # formats tracebacks as every Formatter does by default


@functools.cache
def _secret_patterns() -> tuple[re.Pattern[str], ...]:
    """JWTs (three base64url parts), XOAUTH2 blobs after AUTH, and Bearer tokens.

    Compiled on first use, not at import: a quiet ``send-mail`` run never redacts anything.
    """
    return (
        re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
        re.compile(r"(?i)(auth=Bearer\s+)\S+"),
        re.compile(r"(?i)(\bAUTH\s+(?:XOAUTH2|PLAIN|LOGIN)\s+)\S+"),
        re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    )


def redact(text: str) -> str:
    """``text`` with anything that looks like an access token or SASL blob replaced by [redacted]."""
    for pattern in _secret_patterns():
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class RedactingFilter(logging.Filter):
    """Last line of defence: redact tokens from every record, whoever logged it (msal, aiosmtplib).

    The traceback too: an exception's message can carry what a log message would not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatted here, as Formatter.format would (it reuses exc_text), so it can be redacted.
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            payload["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        ]
        return f"{base} {' '.join(extras)}" if extras else base


def configure_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send smtp_oauth's (and its libraries') logs to stderr in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_smtp_oauth", False):
            root.removeHandler(old)
    handler._smtp_oauth = True  # type: ignore[attr-defined]  # marks our handler for reconfiguration
    root.addHandler(handler)
    logging.getLogger("smtp_oauth").setLevel(level)
    # msal and aiosmtplib talk a lot at INFO/DEBUG; only their warnings unless we debug.
    for noisy in ("msal", "urllib3", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")
    # aiosmtpd's "mail.log" logs every DATA line at DEBUG: message bodies never go to our logs.
    logging.getLogger("mail.log").setLevel("WARNING")
    if root.level > logging.getLevelName(level) or root.level == logging.WARNING:
        root.setLevel(level)
