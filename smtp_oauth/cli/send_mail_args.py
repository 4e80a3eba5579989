"""The ``send-mail`` command line: its own options plus sendmail's, parsed the way sendmail does.

sendmail's options are single letters in getopt style: clustered (``-ti``), with the value attached
or in the next word (``-fuser@x``, ``-f user@x``), and a family of ``-o<x>`` options
(``-oi``, ``-odb``, ``-oem``). argparse cannot express that, so :func:`normalise_argv` first
rewrites the sendmail words into long options, then argparse parses the result (and writes
``--help``). Options sendmail programs pass that have no meaning here are accepted and ignored, as
Postfix (https://www.postfix.org/sendmail.1.html) and msmtp (https://marlam.de/msmtp/msmtp.html) do.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["SendMailArgs", "UsageError", "build_parser", "parse_args"]

# Letters taking no value. -t/-i/-v mean something; the rest are accepted and ignored.
_FLAGS = {"t": "--read-recipients", "i": "--ignore-dots", "v": "--verbose"}
_IGNORED_FLAGS = frozenset("GUnm")
# Letters taking a value (attached or in the next word).
_WITH_VALUE = {
    "f": "--envelope-from",
    "r": "--envelope-from",
    "F": "--full-name",
    "C": "--config",
    "s": "--subject",
}
# -A (Am/Ac), -B body type, -e error mode, -h hop count, -L syslog tag, -N DSN, -O option=value,
# -R DSN return, -V envelope id, -X log file, -p protocol: accepted and ignored.
_IGNORED_WITH_VALUE = frozenset("ABehLNORVXp")
# Long options that take a value, so that a value starting with '-' is not rewritten.
_LONG_WITH_VALUE = frozenset(
    {
        "--config",
        "--profile",
        "--from",
        "--to",
        "--cc",
        "--bcc",
        "--subject",
        "--body",
        "--body-file",
        "--html",
        "--attach",
        "--header",
        "--reply-to",
        "--envelope-from",
        "--full-name",
    }
)
# Options that only make sense when composing; sendmail mode reads a finished message instead.
COMPOSE_ONLY = ("subject", "body", "body_file", "html", "attach", "header", "reply_to")


class UsageError(Exception):
    """The command line is wrong (exit 64, EX_USAGE)."""


class SendMailArgs(argparse.Namespace):
    """The parsed command line (typed for mypy)."""

    config: str | None
    profile: str | None
    sender: str | None
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str | None
    body: str | None
    body_file: str | None
    html: str | None
    attach: list[str]
    header: list[str]
    reply_to: list[str]
    dry_run: bool
    read_recipients: bool
    ignore_dots: bool
    envelope_from: str | None
    full_name: str | None
    verbose: int
    sendmail_flags: bool
    mode: str  # "deliver", or one of sendmail's other operation modes (sendmail_modes.MODES)
    recipients: list[str]

    @property
    def compose_options(self) -> list[str]:
        """The compose-only options given, as ``--name``."""
        return [f"--{name.replace('_', '-')}" for name in COMPOSE_ONLY if getattr(self, name)]


# The width of the formatters argparse makes only to check each option as it is added.
_CHECK_WIDTH = 78


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises UsageError instead of exiting with 2, and the
    terminal is measured only when help is written.

    argparse builds a formatter for every ``add_argument`` (to check its metavar), and each one asks
    ``shutil.get_terminal_size``; importing shutil (with its compression modules) would cost every
    run, one per message, a few milliseconds for help it never prints.
    """

    _sized = False  # True while --help is being written

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def _get_formatter(self) -> argparse.HelpFormatter:
        if self._sized:
            return super()._get_formatter()
        return self.formatter_class(prog=self.prog, width=_CHECK_WIDTH)  # type: ignore[call-arg]

    def format_help(self) -> str:
        self._sized = True
        try:
            return super().format_help()
        finally:
            self._sized = False


def _o_option(value: str, out: list[str]) -> None:
    """``-oi`` is ``-i``; any other ``-o<x>`` (``-odb``, ``-oem``, ``-om``...) is ignored."""
    out.append("--ignore-dots" if value == "i" else "--sendmail-flag")


# sendmail's -b<x> operation modes (sendmail_modes.py): all but -bm need the relay.
_B_MODES = {"s": "smtp", "p": "queue", "i": "aliases", "v": "verify"}


def _b_option(value: str, out: list[str]) -> None:
    if value == "m":  # -bm, "deliver mail in the usual way": the default
        out.append("--sendmail-flag")
    elif value in _B_MODES:
        out.append(f"--mode={_B_MODES[value]}")
    else:
        raise UsageError(f"unsupported operation mode -b{value} (-bm, -bs, -bp, -bi and -bv are known)")


def _valued_option(letter: str, value: str, out: list[str]) -> None:
    if letter == "o":
        _o_option(value, out)
    elif letter == "b":
        _b_option(value, out)
    elif letter in _WITH_VALUE:
        out.append(f"{_WITH_VALUE[letter]}={value}")
    else:
        out.append("--sendmail-flag")


def _short_cluster(word: str, following: list[str], out: list[str]) -> None:
    """Rewrite one ``-xyz`` word (getopt rules); may take the next word as a value."""
    letters = word[1:]
    for index, letter in enumerate(letters):
        if letter in _FLAGS:
            out.append(_FLAGS[letter])
            if letter in "ti":
                out.append("--sendmail-flag")
        elif letter in _IGNORED_FLAGS:
            out.append("--sendmail-flag")
        elif letter == "q":
            if letters[index + 1 :]:
                raise UsageError(
                    f"-q{letters[index + 1 :]}: send-mail runs no queue daemon and selects no messages; "
                    "-q alone asks the relay to retry every deferred message now"
                )
            out.append("--mode=flush")
            return
        elif letter in _WITH_VALUE or letter in _IGNORED_WITH_VALUE or letter in "ob":
            rest = letters[index + 1 :]
            if not rest and not following:
                raise UsageError(f"option -{letter} needs a value")
            _valued_option(letter, rest or following.pop(0), out)
            return
        else:
            raise UsageError(f"unknown option -{letter}")


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """sendmail-style words rewritten into the long options :func:`build_parser` knows."""
    pending = list(argv)
    out: list[str] = []
    while pending:
        word = pending.pop(0)
        if word == "--":
            out += ["--", *pending]
            break
        if word.startswith("--"):
            # "--to=-x" so that argparse does not take a value starting with '-' for an option.
            out.append(f"{word}={pending.pop(0)}" if word in _LONG_WITH_VALUE and pending else word)
        elif word.startswith("-") and word != "-":
            _short_cluster(word, pending, out)
        else:
            out.append(word)
    return out


def build_parser(prog: str = "send-mail") -> argparse.ArgumentParser:
    """The parser of the normalised command line; its help is the command's help."""
    parser = _Parser(
        prog=prog,
        add_help=False,  # -h is sendmail's hop count
        description="Send mail through Exchange Online with OAuth 2.0; sendmail-compatible.",
        epilog="Exit status (sysexits): 0 sent, 64 usage, 65 bad message or address, 66 missing "
        "input file, 69 rejected (5xx), 75 try again later (4xx, network, identity provider "
        "unreachable), 77 authentication refused, 78 configuration error.",
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("--config", metavar="PATH", help="configuration file (sendmail: -C PATH)")
    parser.add_argument(
        "--profile", metavar="NAME", help="send as [profiles.NAME] of the configuration ($SMTP_OAUTH_PROFILE)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the message; send nothing")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="show the SMTP dialogue (token redacted)"
    )
    compose = parser.add_argument_group("composing a message")
    compose.add_argument(
        "--from", dest="sender", metavar="ADDR", help="From address (default smtp.from_address)"
    )
    for name in ("to", "cc", "bcc"):
        compose.add_argument(
            f"--{name}",
            action="append",
            default=[],
            metavar="ADDR",
            help=f"{name.title()} (repeatable, comma lists)",
        )
    compose.add_argument("--reply-to", action="append", default=[], metavar="ADDR", help="Reply-To address")
    compose.add_argument("-s", "--subject", help="subject")
    body = compose.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="text body (default: read from stdin)")
    body.add_argument("--body-file", metavar="FILE", help="read the text body from FILE")
    compose.add_argument("--html", metavar="FILE", help="HTML body (multipart/alternative with the text)")
    compose.add_argument(
        "--attach", action="append", default=[], metavar="FILE", help="attach FILE (repeatable)"
    )
    compose.add_argument(
        "--header", action="append", default=[], metavar='"NAME: VALUE"', help="extra header (repeatable)"
    )
    sendmail = parser.add_argument_group(
        "sendmail mode",
        "A finished message is read from stdin; implied by -t, -i/-oi, other sendmail options, or "
        "running as 'sendmail'. Through the relay (smtp-oauth relay): -bs SMTP on stdin/stdout, -bp (or "
        "'mailq') lists its queue, -q retries deferred mail now; -bi ('newaliases') has nothing to do. "
        "Also accepted and ignored: -odi -odb -oem -oee -om -o<x> -bm -O opt=val "
        "-B type -N dsn -R ret -V envid -L tag -h hops -A<x> -X file -G -U -n -m. -f and -F also "
        "apply when composing.",
    )
    sendmail.add_argument(
        "-t", "--read-recipients", action="store_true", help="take recipients from To/Cc/Bcc (Bcc is removed)"
    )
    sendmail.add_argument(
        "-i", "--ignore-dots", action="store_true", help="a line with only '.' does not end the input (-oi)"
    )
    sendmail.add_argument("--envelope-from", metavar="ADDR", help="envelope sender (-f ADDR, -r ADDR)")
    sendmail.add_argument(
        "--full-name", metavar="NAME", help="sender's name for a missing From header (-F NAME)"
    )
    parser.add_argument("--sendmail-flag", action="store_true", dest="sendmail_flags", help=argparse.SUPPRESS)
    parser.add_argument(
        "--mode",
        choices=("deliver", "smtp", "queue", "flush", "aliases", "verify"),
        default="deliver",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("recipients", nargs="*", metavar="RECIPIENT", help="recipient addresses")
    return parser


def parse_args(argv: Sequence[str], *, prog: str = "send-mail") -> SendMailArgs:
    """Parse a ``send-mail``/``sendmail`` command line; raises UsageError."""
    parser = build_parser(prog)
    return parser.parse_args(normalise_argv(argv), namespace=SendMailArgs())
