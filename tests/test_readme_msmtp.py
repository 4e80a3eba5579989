"""The README's msmtp account, ``passwordeval`` line included, works as printed: real msmtp, the sandbox.

msmtp runs ``passwordeval`` through ``/bin/sh -c`` without the caller's shell: not its PATH (here
/usr/bin:/bin only, no virtual environment), not its directory (here one without a configuration
file). The test takes the account from README.md, so the README cannot drift from what works; only
what names a particular installation is put where this test has it: the server (the fake Exchange
Online, whose CA msmtp is told to trust), the mailbox, and the command's program and ``--config``
file. Every other line, and the command's other words, run as printed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env, run_program

README = Path(__file__).resolve().parent.parent / "README.md"
MSMTP = shutil.which("msmtp")

pytestmark = pytest.mark.skipif(MSMTP is None, reason="msmtp is not installed (apt-get install msmtp)")


def readme_msmtprc() -> list[str]:
    """The lines of the README's ``~/.msmtprc`` block, comments left out."""
    blocks = re.findall(r"```\n(# ~/\.msmtprc.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README shows one ~/.msmtprc"
    return [line for line in str(blocks[0]).splitlines() if line and not line.startswith("#")]


def installed_here(command: str, *, config: Path) -> str:
    """The README's command with its program and ``--config`` file where this checkout has them."""
    argv = shlex.split(command)
    assert Path(argv[0]).is_absolute(), f"msmtp has no PATH to find {argv[0]!r} on"
    assert "--config" in argv, "msmtp runs it in no particular directory: the file must be named"
    argv[0] = str(Path(sys.executable).with_name(Path(argv[0]).name))
    argv[argv.index("--config") + 1] = str(config)
    return shlex.join(argv)


def for_sandbox(lines: list[str], sandbox: Sandbox) -> str:
    """The README's account pointed at the sandbox: its server, CA, mailbox and configuration."""
    mailbox = sandbox.tenant.mailbox
    here = {"host": "127.0.0.1", "port": str(sandbox.smtp_port), "user": mailbox, "from": mailbox}
    out = []
    for line in lines:
        key, _, value = line.partition(" ")
        if key in here:
            value = here[key]
        elif key == "passwordeval":
            command = installed_here(value.strip('"'), config=sandbox.config_path)
            value = f'"{command}"'
        out.append(f"{key} {value}")
        if key == "tls":
            out.append(f"tls_trust_file {sandbox.ca_file}")  # Exchange Online's CA is in the system's store
    return "\n".join(out) + "\n"


async def test_msmtp_sends_with_the_readme_account(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """msmtp with the README's account (no venv on PATH, no config in its directory) sends, twice."""
    sandbox = smtp_oauth_sandbox
    rc = tmp_path / "msmtprc"
    rc.write_text(for_sandbox(readme_msmtprc(), sandbox), encoding="utf-8")
    rc.chmod(0o600)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = clean_env(tmp_path, PATH="/usr/bin:/bin")
    message = f"From: {sandbox.tenant.mailbox}\nTo: ops@example.test\nSubject: msmtp\n\nhello\n"
    assert MSMTP is not None
    argv = (MSMTP, "-C", rc, "-t")
    replies = [await run_program(*argv, env=env, cwd=workdir, stdin=message.encode()) for _ in range(2)]
    assert [code for code, _, _ in replies] == [0, 0], [err.decode() for _, _, err in replies]
    # The second run uses the cached token and prints nothing: msmtp passes stderr on (to cron mail).
    assert replies[1][2].decode() == ""
    assert [(d.auth_user, d.rcpt_tos) for d in sandbox.delivered()] == [
        (sandbox.tenant.mailbox, ["ops@example.test"])
    ] * 2
