"""What keeps ``send-mail`` quick to start: lazy package names, CAs loaded ahead, no DNS for EHLO.

The figures themselves are in bench/bench_send_mail.py; these tests pin the mechanisms.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from email.message import EmailMessage

import pytest

import smtp_oauth
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.smtp.mailer import Mailer
from smtp_oauth.tls import PreloadedTrust


def _modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    probe = f"import sys; {statement}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_importing_send_mail_loads_neither_pydantic_nor_aiosmtplib() -> None:
    """`import smtp_oauth.cli.send_mail` defers pydantic, aiosmtplib and asyncio until a send needs them."""
    loaded = _modules_after("import smtp_oauth.cli.send_mail")
    heavy = {"pydantic", "pydantic_settings", "aiosmtplib", "asyncio", "msal", "smtp_oauth.log_handler"}
    assert loaded & heavy == set()


def test_settings_snapshot_does_not_load_openssl() -> None:
    """The snapshot's SHA-256 fingerprint uses CPython's own module: the relay path loads no libcrypto."""
    # Without the coverage hook of a test run's subprocesses: coverage itself imports hashlib.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE_", "COVERAGE_"))}
    probe = "import sys, smtp_oauth.settings.snapshot, smtp_oauth.cli.send_mail; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) & {"_hashlib", "ssl", "_ssl", "coverage"} == set()


def test_public_names_load_on_first_use() -> None:
    """smtp_oauth.Mailer imports the sender module when first asked for, and is the same class."""
    loaded = _modules_after("import smtp_oauth; smtp_oauth.Mailer")
    assert "smtp_oauth.smtp.mailer" in loaded
    assert "smtp_oauth.log_handler" not in loaded
    assert smtp_oauth.Mailer is Mailer


def test_unknown_package_attribute_is_an_attribute_error() -> None:
    """A name the package does not export raises AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = smtp_oauth.no_such_name  # type: ignore[attr-defined]


def _note() -> EmailMessage:
    message = EmailMessage()
    message["To"] = "alice@example.test"
    message["Subject"] = "start-up"
    message.set_content("Sent by a start-up test.\n")
    return message


async def test_preloaded_context_still_trusts_smtp_ca_file(smtp_oauth_sandbox: Sandbox) -> None:
    """A Mailer that takes the preloaded CAs adds smtp.ca_file to them: the sandbox's certificate verifies."""
    async with Mailer(smtp_oauth_sandbox.settings(), trust=PreloadedTrust()) as mailer:
        result = await mailer.send(_note())
    assert result.accepted == ["alice@example.test"]
    assert len(smtp_oauth_sandbox.delivered()) == 1


async def test_ehlo_names_this_host_without_asking_dns(
    smtp_oauth_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EHLO carries gethostname(), as Postfix's myhostname; socket.getfqdn (a DNS look-up) is never called."""

    def no_dns() -> str:
        raise AssertionError("socket.getfqdn() was called")

    monkeypatch.setattr(socket, "getfqdn", no_dns)
    sent: list[str] = []

    def transcript(direction: str, line: str) -> None:
        if direction == "C":
            sent.append(line)

    async with Mailer(smtp_oauth_sandbox.settings(), transcript=transcript) as mailer:
        await mailer.send(_note())
    assert f"EHLO {socket.gethostname()}" in sent


def test_main_leaves_the_garbage_collector_as_it_found_it(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """send-mail runs without cyclic GC, and an in-process caller gets the collector back enabled."""
    from smtp_oauth.cli.send_mail import main

    assert gc.isenabled()
    code = main(["--dry-run", "--from", "a@example.test", "--body", "x", "b@example.test"], prog="send-mail")
    assert code == 0
    assert b"To: b@example.test" in capsysbinary.readouterr().out
    assert gc.isenabled()
