"""The one table from a library error's kind to the sysexits code a command exits with."""

from __future__ import annotations

import pytest

from smtp_oauth.cli.exit_codes import EXIT_CODES, ExitCode, exit_code_of
from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    FailureKind,
    MessageError,
    PermanentDeliveryError,
    SmtpOAuthError,
    StorageFullError,
    TemporaryDeliveryError,
    TokenError,
)
from smtp_oauth.relay.spool.base import SpoolError

# The exit codes the commands promise (the README's send-mail exit codes), one per kind of library error.
PINNED: dict[str, tuple[SmtpOAuthError, int]] = {
    "config": (ConfigurationError("bad key", key="smtp.port"), 78),
    "disk-full": (StorageFullError("no room"), 75),
    "token-refused": (TokenError("refused", error="invalid_client"), 77),
    "token-unreachable": (TokenError("unreachable", temporary=True), 75),
    "temporary-reply": (TemporaryDeliveryError("busy", code=421), 75),
    "permanent-reply": (PermanentDeliveryError("no", code=550), 69),
    "bad-message": (MessageError("no recipients"), 65),
    "auth-refused": (AuthenticationError("refused", code=535), 77),
    "spool-temporary": (SpoolError("locked"), 75),
    "spool-broken": (SpoolError("corrupt", temporary=False), 70),
    "bug": (SmtpOAuthError("unexpected"), 70),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_error_exits_with_its_pinned_code(name: str) -> None:
    """Every library error ends a command with the sysexits code the interface promises."""
    error, code = PINNED[name]
    assert exit_code_of(error) == code


def test_every_kind_has_an_exit_code() -> None:
    """No failure kind is left without an exit status (a new kind must be mapped)."""
    assert set(EXIT_CODES) == set(FailureKind)


def test_no_failure_exits_zero() -> None:
    """No kind of failure maps to success."""
    assert ExitCode.OK not in EXIT_CODES.values()
