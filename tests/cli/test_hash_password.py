"""``smtp-oauth hash-password``: as a real subprocess, password on stdin, no configuration file."""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_oauth.cli import hash_password as command
from smtp_oauth.relay.passwords import verify_password


def run_command(tmp_path: Path, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m smtp_oauth.cli.main hash-password`` in an empty directory, no config anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_OAUTH_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return subprocess.run(
        [sys.executable, "-m", "smtp_oauth.cli.main", "hash-password", *args],
        input=stdin,
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )


def test_hash_from_stdin_verifies(tmp_path: Path) -> None:
    """The printed hash verifies the password read from stdin, trailing newline stripped."""
    result = run_command(tmp_path, b"s3cret password\n")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.decode().strip()
    assert hashed.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("s3cret password", hashed)
    assert not verify_password("s3cret password\n", hashed)


def test_only_the_first_line_counts_and_crlf_is_stripped(tmp_path: Path) -> None:
    """A CRLF-terminated first line is the password; later lines are ignored."""
    result = run_command(tmp_path, b"first-line-password\r\nsecond line\n")
    assert verify_password("first-line-password", result.stdout.decode().strip())


def test_stdout_holds_only_the_hash_and_stderr_the_toml_hint(tmp_path: Path) -> None:
    """stdout is one line (the hash); stderr shows a [[relay.users]] snippet with --name."""
    result = run_command(tmp_path, b"a-long-enough-password\n", "--name", "fern")
    stdout_lines = result.stdout.decode().splitlines()
    assert len(stdout_lines) == 1
    stderr = result.stderr.decode()
    assert "[[relay.users]]" in stderr
    assert 'name = "fern"' in stderr
    assert f'password_hash = "{stdout_lines[0]}"' in stderr
    assert "a-long-enough-password" not in stderr


def test_empty_password_is_refused(tmp_path: Path) -> None:
    """An empty stdin hashes nothing and exits 65 (EX_DATAERR)."""
    result = run_command(tmp_path, b"\n")
    assert result.returncode == 65
    assert result.stdout == b""
    assert b"empty" in result.stderr


def test_prompted_passwords_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the password is asked twice; differing entries hash nothing."""
    answers = iter(["first", "second"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    with pytest.raises(command.PasswordInputError, match="differ"):
        command.read_password(sys.stdin, prompt=True)


def test_prompted_password_is_returned_as_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two matching prompted entries give the password's UTF-8 bytes."""
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "pässword")
    assert command.read_password(sys.stdin, prompt=True) == "pässword".encode()


def test_add_arguments_accepts_name() -> None:
    """--name sets the user name shown in the hint (default USER)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args([]).name == "USER"
    assert parser.parse_args(["--name", "scanner"]).name == "scanner"
