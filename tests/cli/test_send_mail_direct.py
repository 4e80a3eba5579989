"""Specification of send-mail's stdlib path: a direct send with a cached token, and where it declines.

The probe runs ``main`` in a subprocess and prints the modules it loaded, so each test can tell
which path sent the message: the stdlib one loads no asyncio, the full one does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from smtp_oauth.cli.exit_codes import ExitCode
from smtp_oauth.cli.send_mail_direct import FAST_PATH_MAX_BYTES
from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import run_program

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBE = """
import sys
from smtp_oauth.cli.send_mail import main
code = main(sys.argv[1:])
print(" ".join(sorted(sys.modules)))
sys.exit(code)
"""
# (Not dataclasses: coverage, measuring the subprocess under the test suite, imports it itself.)
HEAVY = {"pydantic", "pydantic_settings", "msal", "asyncio", "aiosmtplib", "aiosmtpd"}


async def probe(*args: str | Path, env: dict[str, str], stdin: bytes = b"") -> tuple[int, set[str], str]:
    """Exit code, the top-level packages a send-mail run loaded, and what it printed on stderr."""
    code, stdout, stderr = await run_program(
        sys.executable, "-c", PROBE, *args, env=env, cwd=env["HOME"], stdin=stdin
    )
    loaded = {name.split(".")[0] for name in stdout.decode().split()}
    return code, loaded, stderr.decode(errors="replace")


async def test_cached_direct_send_imports_no_pydantic_msal_asyncio_or_aiosmtplib(
    sandbox: Sandbox, env: dict[str, str]
) -> None:
    """Once the snapshot and a cached token exist, a direct send loads none of the heavy packages."""
    args: list[str | Path] = ["--config", sandbox.config_path, "--body", "x", "alice@example.test"]
    for _ in range(2):  # the first run validates fully and writes the snapshot the second one reads
        code, loaded, _ = await probe(*args, env=env)
        assert code == ExitCode.OK
    assert loaded & HEAVY == set()
    assert len(sandbox.delivered()) == 2


async def test_sendmail_mode_takes_the_stdlib_path(sandbox: Sandbox, env: dict[str, str]) -> None:
    """`sendmail -t` input goes the stdlib way too, and arrives with its recipients from the headers."""
    message = b"To: bob@example.test\nSubject: cron\n\nbackup done\n"
    for _ in range(2):
        code, loaded, _ = await probe("--config", sandbox.config_path, "-t", "-i", env=env, stdin=message)
        assert code == ExitCode.OK
    assert "asyncio" not in loaded
    assert [d.rcpt_tos for d in sandbox.delivered()] == [["bob@example.test"]] * 2
    assert b"backup done" in sandbox.delivered()[1].data


async def test_a_big_message_goes_the_full_way(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Above FAST_PATH_MAX_BYTES the Mailer (which streams) sends it; it arrives all the same."""
    body = ("x" * 76 + "\n") * (FAST_PATH_MAX_BYTES // 77 + 10)
    args: list[str | Path] = ["--config", sandbox.config_path, "-s", "big", "alice@example.test"]
    await probe(*args, env=env, stdin=b"small")  # the snapshot
    code, loaded, _ = await probe(*args, env=env, stdin=body.encode())
    assert code == ExitCode.OK
    assert "asyncio" in loaded
    assert len(sandbox.delivered()[-1].data) > FAST_PATH_MAX_BYTES


async def test_no_cached_token_goes_the_full_way(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """With an empty token cache MSAL fetches the token and the Mailer sends: delivered, no error."""
    config = sandbox.write_config(tmp_path / "cold.toml", identity={"token_cache": str(tmp_path / "cache")})
    code, loaded, _ = await probe("--config", config, "--body", "x", "alice@example.test", env=env)
    assert code == ExitCode.OK
    assert "msal" in loaded
    assert len(sandbox.delivered()) == 1


async def test_a_failure_on_the_stdlib_path_is_reported_as_the_full_path_does(
    sandbox: Sandbox, env: dict[str, str]
) -> None:
    """550 5.7.60 on the stdlib path: exit 69 with the send-as hint, and no heavy package loaded."""
    args: list[str | Path] = [
        "--config",
        sandbox.config_path,
        "--from",
        "stranger@sandbox.test",
        "--body",
        "x",
        "a@example.test",
    ]
    await probe("--config", sandbox.config_path, "--body", "x", "a@example.test", env=env)  # the snapshot
    code, loaded, stderr = await probe(*args, env=env)
    assert code == ExitCode.UNAVAILABLE
    assert "asyncio" not in loaded
    assert "5.7.60" in stderr
    assert "hint: " in stderr
