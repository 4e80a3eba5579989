"""The exit statuses of the commands, and the one table that turns a failure into one.

Library errors say what sort of failure they are (:class:`smtp_oauth.errors.FailureKind`); the
status a command exits with is the command's: the ``sysexits.h`` codes sendmail and msmtp use, so
that a program calling ``send-mail`` can tell "try again later" (75) from "this will never work".
See https://man.freebsd.org/cgi/man.cgi?query=sysexits
"""

from __future__ import annotations

import enum

from smtp_oauth.errors import FailureKind, SmtpOAuthError

__all__ = ["EXIT_CODES", "ExitCode", "exit_code_for", "exit_code_of"]


class ExitCode(enum.IntEnum):
    """sysexits.h codes, as sendmail and msmtp use them (interface: send-mail exit codes)."""

    OK = 0
    USAGE = 64  # EX_USAGE: bad command line
    DATAERR = 65  # EX_DATAERR: bad message or address
    NOINPUT = 66  # EX_NOINPUT: an input file is missing or unreadable
    UNAVAILABLE = 69  # EX_UNAVAILABLE: permanent upstream rejection
    SOFTWARE = 70  # EX_SOFTWARE: a bug of ours
    TEMPFAIL = 75  # EX_TEMPFAIL: try again later
    NOPERM = 77  # EX_NOPERM: authentication/authorization refused
    CONFIG = 78  # EX_CONFIG: configuration error


EXIT_CODES: dict[FailureKind, ExitCode] = {
    FailureKind.TEMPORARY: ExitCode.TEMPFAIL,
    FailureKind.CONFIG: ExitCode.CONFIG,
    FailureKind.PERMANENT: ExitCode.UNAVAILABLE,
    FailureKind.MESSAGE: ExitCode.DATAERR,
    FailureKind.DENIED: ExitCode.NOPERM,
    FailureKind.INPUT: ExitCode.NOINPUT,
    FailureKind.SOFTWARE: ExitCode.SOFTWARE,
}


def exit_code_for(kind: FailureKind) -> int:
    """The exit status for a kind of failure."""
    return int(EXIT_CODES[kind])


def exit_code_of(error: SmtpOAuthError) -> int:
    """The exit status a command ends with when ``error`` stops it."""
    return exit_code_for(error.kind)
