"""``smtp-oauth hash-password``: hash a relay user's password for ``[[relay.users]] password_hash``.

The password comes from stdin when stdin is not a terminal (one line, its newline dropped), so a
script can do ``printf '%s\\n' "$pw" | smtp-oauth hash-password``; on a terminal it is asked for twice
without echo. The hash goes to stdout and a TOML snippet to stderr, so ``> hash.txt`` keeps only the
hash. No configuration file is needed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import BinaryIO, TextIO

from smtp_oauth.cli.exit_codes import ExitCode
from smtp_oauth.relay.passwords import hash_password

__all__ = ["add_arguments", "read_password", "run"]

SHORT_PASSWORD = 12  # below this, warn: these passwords guard sending as a company mailbox


class PasswordInputError(ValueError):
    """The password could not be read: empty, or the two entries differ."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smtp-oauth hash-password``."""
    parser.add_argument(
        "--name",
        metavar="USER",
        default="USER",
        help="the relay user's name, used in the TOML snippet printed on stderr",
    )


def read_password(stdin: TextIO, *, prompt: bool) -> bytes:
    """The password: prompted twice (``prompt``) or the first line of ``stdin``, newline removed."""
    if prompt:
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != first:
            raise PasswordInputError("the two passwords differ; nothing was hashed")
        password = first.encode("utf-8")
    else:
        # Bytes, not text: the hash must match exactly what the SMTP client will send.
        raw: BinaryIO = stdin.buffer
        password = raw.readline().removesuffix(b"\n").removesuffix(b"\r")
    if not password:
        raise PasswordInputError("the password is empty; nothing was hashed")
    return password


def run(args: argparse.Namespace) -> int:
    """Print the hash of the password on stdout and a configuration hint on stderr."""
    try:
        password = read_password(sys.stdin, prompt=sys.stdin.isatty())
    except PasswordInputError as exc:
        print(f"smtp-oauth: {exc}", file=sys.stderr)
        return int(ExitCode.DATAERR)
    hashed = hash_password(password)
    print(hashed)
    if len(password) < SHORT_PASSWORD:
        print(
            f"warning: the password has fewer than {SHORT_PASSWORD} characters; "
            "anyone who guesses it can send mail as the user's mailbox",
            file=sys.stderr,
        )
    print(
        "Add to the configuration file:\n\n"
        "[[relay.users]]\n"
        f"name = {json.dumps(args.name)}\n"
        f'password_hash = "{hashed}"\n'
        '# mailbox = "..."            # default: smtp.username\n'
        '# allowed_senders = ["..."]  # default: [mailbox]',
        file=sys.stderr,
    )
    return int(ExitCode.OK)
