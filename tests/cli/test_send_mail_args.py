"""Specification of send-mail's command line, sendmail's option conventions included."""

from __future__ import annotations

import pytest

from smtp_oauth.cli.send_mail_args import UsageError, parse_args


def test_oi_means_ignore_dots() -> None:
    """``-oi`` is sendmail's spelling of ``-i``."""
    assert parse_args(["-oi", "a@x.example"]).ignore_dots


def test_clustered_flags_are_split() -> None:
    """``-ti`` is ``-t -i`` (getopt rules)."""
    args = parse_args(["-ti"])
    assert args.read_recipients
    assert args.ignore_dots


@pytest.mark.parametrize("argv", [["-fme@x.example"], ["-f", "me@x.example"], ["-r", "me@x.example"]])
def test_envelope_sender_value_attached_or_separate(argv: list[str]) -> None:
    """``-f``/``-r`` take the envelope sender attached or as the next word."""
    assert parse_args(argv).envelope_from == "me@x.example"


def test_full_name() -> None:
    """``-F NAME`` sets the sender's full name."""
    assert parse_args(["-F", "Build Bot"]).full_name == "Build Bot"


@pytest.mark.parametrize(
    "argv",
    [
        ["-odi"],
        ["-odb"],
        ["-oem"],
        ["-oee"],
        ["-om"],
        ["-bm"],
        ["-O", "DeliveryMode=b"],
        ["-B", "8BITMIME"],
        ["-N", "never"],
        ["-R", "hdrs"],
        ["-V", "envid"],
        ["-L", "tag"],
        ["-G"],
        ["-U"],
        ["-n"],
        ["-m"],
        ["-h", "17"],
        ["-Am"],
        ["-X", "/dev/null"],
    ],
)
def test_common_sendmail_flags_are_accepted_and_ignored(argv: list[str]) -> None:
    """Flags legacy programs pass are accepted (and mark sendmail mode), not rejected."""
    args = parse_args([*argv, "a@x.example"])
    assert args.sendmail_flags
    assert args.recipients == ["a@x.example"]


@pytest.mark.parametrize("argv", [["-bx"], ["-q1h"], ["-Z"], ["-f"], ["--no-such-option"]])
def test_unsupported_or_unknown_options_are_usage_errors(argv: list[str]) -> None:
    """Modes we do not have, unknown options and missing values raise UsageError (exit 64)."""
    with pytest.raises(UsageError):
        parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "mode"),
    [(["-bs"], "smtp"), (["-bp"], "queue"), (["-q"], "flush"), (["-bi"], "aliases"), (["-bv"], "verify")],
)
def test_sendmail_operation_modes_are_recognised(argv: list[str], mode: str) -> None:
    """-bs, -bp, -q, -bi and -bv select sendmail's other modes instead of composing a message."""
    assert parse_args(argv).mode == mode


def test_plain_sends_are_in_deliver_mode() -> None:
    """Without a mode option a command line delivers a message (-bm is that mode, spelled out)."""
    assert parse_args(["-bm", "a@x.example"]).mode == "deliver"


def test_double_dash_ends_options() -> None:
    """After ``--`` every word is a recipient, even one that looks like an option."""
    assert parse_args(["--", "-t", "a@x.example"]).recipients == ["-t", "a@x.example"]


def test_long_option_value_may_start_with_dash() -> None:
    """``--subject -urgent-`` takes the value as given."""
    assert parse_args(["--subject", "-urgent-"]).subject == "-urgent-"


def test_repeatable_compose_options_accumulate() -> None:
    """--to, --cc, --bcc, --attach and --header may be given several times."""
    args = parse_args(["--to", "a@x.example", "--to", "b@x.example", "--attach", "f1", "--attach", "f2"])
    assert args.to == ["a@x.example", "b@x.example"]
    assert args.attach == ["f1", "f2"]


def test_compose_options_are_listed() -> None:
    """The compose-only options given are named, for the sendmail-mode conflict message."""
    assert parse_args(["-s", "x", "--attach", "f"]).compose_options == ["--subject", "--attach"]


def test_config_from_sendmail_c() -> None:
    """sendmail's ``-C FILE`` names the configuration file."""
    assert parse_args(["-C", "/etc/x.toml"]).config == "/etc/x.toml"


def test_body_and_body_file_exclude_each_other() -> None:
    """--body and --body-file cannot both be given."""
    with pytest.raises(UsageError):
        parse_args(["--body", "x", "--body-file", "f"])
