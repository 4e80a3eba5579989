"""Specification of the installed ``send-mail`` command against the sandbox: composing, exit codes.

Every test runs the real console script in a subprocess (``asyncio.to_thread``, since the fake
Exchange serves on this test's event loop).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtp_oauth.cli.exit_codes import ExitCode
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.smtp.xoauth2 import encode
from tests.cli.send_mail_harness import mailbox_of, run_send_mail

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_sends_a_composed_message(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Exit 0 and the message arrives with subject, body, Date and Message-ID."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-s", "Grüße aus Köln", "--body", "Hallo Welt",
        "to@example.com", env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    message = delivered.message
    assert message["Subject"] == "Grüße aus Köln"
    assert message["Date"]
    assert message["Message-ID"]
    assert message["To"] == "to@example.com"
    assert delivered.rcpt_tos == ["to@example.com"]
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "Hallo Welt"


async def test_body_is_read_from_stdin(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Without --body or --body-file the text body comes from stdin."""
    run = await run_send_mail(
        "--config",
        sandbox.config_path,
        "-s",
        "s",
        "to@example.com",
        env=env,
        stdin=b"from stdin\n",
    )
    assert run.returncode == ExitCode.OK, run.stderr
    assert b"from stdin" in sandbox.delivered()[0].data


async def test_bcc_gets_the_mail_but_no_header(sandbox: Sandbox, env: dict[str, str]) -> None:
    """--bcc addresses are on the envelope only; comma lists and --cc work too."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "--body", "x",
        "--to", "a@example.com,b@example.com", "--cc", "c@example.com", "--bcc", "hidden@example.com",
        env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert sorted(delivered.rcpt_tos) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "hidden@example.com",
    ]
    assert b"hidden@example.com" not in delivered.data
    assert "Bcc" not in delivered.message


async def test_recipient_headers_given_with_header_get_the_mail(
    sandbox: Sandbox, env: dict[str, str]
) -> None:
    """--header "Cc: ..." / "Bcc: ..." work as --cc / --bcc: their addresses receive it, Bcc stays hidden."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "--body", "x", "--to", "a@example.com",
        "--header", "Cc: boss@example.com", "--header", "Bcc: hidden@example.com", env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert sorted(delivered.rcpt_tos) == ["a@example.com", "boss@example.com", "hidden@example.com"]
    assert delivered.message["Cc"] == "boss@example.com"
    assert b"hidden@example.com" not in delivered.data


async def test_extra_headers_and_reply_to_arrive(sandbox: Sandbox, env: dict[str, str]) -> None:
    """--header adds a header, --reply-to sets Reply-To, --from sets a display name."""
    mailbox = mailbox_of(sandbox)
    run = await run_send_mail(
        "--config", sandbox.config_path, "--from", f"Build Bot <{mailbox}>", "--reply-to", "team@example.com",
        "--header", "X-Build: 1234", "--body", "x", "to@example.com", env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    message = sandbox.delivered()[0].message
    assert message["X-Build"] == "1234"
    assert message["Reply-To"] == "team@example.com"
    assert message["From"].addresses[0].display_name == "Build Bot"


async def test_non_ascii_recipient_goes_with_smtputf8(sandbox: Sandbox, env: dict[str, str]) -> None:
    """An internationalised address is sent as is (SMTPUTF8, RFC 6531)."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-v", "--body", "x", "Jörg <jörg@bücher.example>", env=env
    )
    assert run.returncode == ExitCode.OK, run.stderr
    assert "SMTPUTF8" in run.stderr
    (delivered,) = sandbox.delivered()
    assert delivered.rcpt_tos == ["jörg@bücher.example"]
    assert "To: Jörg <jörg@bücher.example>\r\n".encode() in delivered.data  # UTF-8 header (RFC 6532)


async def test_attachment_round_trips_byte_for_byte(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """A 1 MB random binary attachment arrives identical, with its name."""
    payload = os.urandom(1024 * 1024)
    attachment = tmp_path / "random.bin"
    attachment.write_bytes(payload)
    run = await run_send_mail(
        "--config", sandbox.config_path, "--body", "see attached", "--attach", attachment,
        "to@example.com", env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    (part,) = sandbox.delivered()[0].message.iter_attachments()
    assert part.get_filename() == "random.bin"
    assert part.get_content() == payload


async def test_html_makes_multipart_alternative(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """--html adds an HTML alternative to the text body."""
    html = tmp_path / "body.html"
    html.write_text("<p>Hello <b>world</b></p>", encoding="utf-8")
    run = await run_send_mail(
        "--config", sandbox.config_path, "--body", "Hello world", "--html", html, "to@example.com",
        env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    message = sandbox.delivered()[0].message
    assert message.get_content_type() == "multipart/alternative"
    html_part = message.get_body(("html",))
    assert html_part is not None
    assert "<b>world</b>" in html_part.get_content()


async def test_dry_run_prints_and_sends_nothing(sandbox: Sandbox, env: dict[str, str]) -> None:
    """--dry-run writes the message to stdout, the envelope to stderr, and sends nothing."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "--dry-run", "-s", "preview", "--body", "x",
        "--bcc", "hidden@example.com", "to@example.com", env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    assert b"Subject: preview" in run.stdout
    assert b"hidden@example.com" not in run.stdout
    assert "<hidden@example.com>" in run.stderr
    assert sandbox.delivered() == []


async def test_verbose_shows_dialogue_without_token(sandbox: Sandbox, env: dict[str, str]) -> None:
    """-v prints the SMTP dialogue; neither the token nor the XOAUTH2 blob appears anywhere."""
    run = await run_send_mail("--config", sandbox.config_path, "-v", "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.OK, run.stderr
    assert "EHLO" in run.stderr
    assert "STARTTLS" in run.stderr
    assert "AUTH XOAUTH2" in run.stderr
    assert "235" in run.stderr
    assert "RCPT TO:<to@example.com>" in run.stderr
    from smtp_oauth.tokens.provider import cached_access_token

    token = cached_access_token(sandbox.settings())
    assert token
    output = run.stderr + run.stdout.decode("utf-8", "replace")
    assert token not in output
    assert encode(mailbox_of(sandbox), token) not in output
    assert "eyJ" not in output


async def test_cached_token_needs_no_identity_provider_nor_msal(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """The first send fetches a token; the next uses the cache: no token request, msal never imported."""
    config = sandbox.write_config(tmp_path / "cold.toml", identity={"token_cache": str(tmp_path / "cache")})
    requests_at_start = sum(sandbox.idp.token_requests.values())
    first = await run_send_mail("--config", config, "--body", "1", "a@example.com", env=env)
    assert first.returncode == ExitCode.OK, first.stderr
    assert sum(sandbox.idp.token_requests.values()) == requests_at_start + 1
    second = await run_send_mail(
        "--config", config, "--body", "2", "a@example.com", env=env, python_flags=("-X", "importtime")
    )
    assert second.returncode == ExitCode.OK, second.stderr
    assert sum(sandbox.idp.token_requests.values()) == requests_at_start + 1
    imported = {line.rsplit("|", 1)[-1].strip() for line in second.stderr.splitlines() if "|" in line}
    assert "msal" not in imported
    assert not {"aiosmtpd", "smtp_oauth.relay", "smtp_oauth.sandbox"} & imported
    assert len(sandbox.delivered()) == 2


async def test_refused_cached_token_is_replaced(sandbox: Sandbox, env: dict[str, str]) -> None:
    """A cached token refused once (535) is replaced by a fresh one from the identity provider."""
    sandbox.inject("AUTH", "535 5.7.3 Authentication unsuccessful [SN2PR00CA0018.sandbox.outlook.test]")
    requests_before = sum(sandbox.idp.token_requests.values())
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.OK, run.stderr
    assert sum(sandbox.idp.token_requests.values()) == requests_before + 1
    assert len(sandbox.delivered()) == 1


# --- exit codes -------------------------------------------------------------------------------


async def test_unknown_flag_exits_64(env: dict[str, str]) -> None:
    """An unknown option is a usage error: exit 64, one line naming it."""
    run = await run_send_mail("-Z", "to@example.com", env=env)
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.startswith("send-mail: unknown option -Z")


async def test_no_recipients_exits_65(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Nobody to send to: exit 65."""
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", env=env)
    assert run.returncode == ExitCode.DATAERR
    assert "no recipients" in run.stderr


async def test_unparsable_address_exits_65(sandbox: Sandbox, env: dict[str, str]) -> None:
    """An address that is not one: exit 65 naming it, nothing sent."""
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "not-an-address", env=env)
    assert run.returncode == ExitCode.DATAERR
    assert "not-an-address" in run.stderr
    assert sandbox.delivered() == []


async def test_missing_attachment_exits_66(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    """A missing --attach file: exit 66 naming the file."""
    missing = tmp_path / "nope.pdf"
    run = await run_send_mail(
        "--config",
        sandbox.config_path,
        "--body",
        "x",
        "--attach",
        missing,
        "to@example.com",
        env=env,
    )
    assert run.returncode == ExitCode.NOINPUT
    assert str(missing) in run.stderr


async def test_rejected_at_data_exits_69(sandbox: Sandbox, env: dict[str, str]) -> None:
    """A 5xx to DATA: exit 69, the reply on the first line."""
    sandbox.inject("DATA", "554 5.6.0 Corrupt message content; STOREDRV.Submission.Exception")
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.UNAVAILABLE
    first = run.stderr.splitlines()[0]
    assert first.startswith("send-mail: ")
    assert "554 5.6.0" in first


async def test_daily_quota_exceeded_exits_75_with_hint(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Exchange's 554 5.2.0 SubmissionQuotaExceeded clears within a day: exit 75 and the quota hint."""
    sandbox.inject(
        "DATA", "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process"
    )
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.TEMPFAIL
    first, *rest = run.stderr.splitlines()
    assert "554 5.2.0" in first
    assert any(line.startswith("hint: ") and "10,000" in line for line in rest)


async def test_send_as_denied_exits_69(sandbox: Sandbox, env: dict[str, str]) -> None:
    """-f with an address the mailbox may not send as: Exchange's 550 5.7.60, exit 69, SendAs hint."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-f", "ceo@example.com", "--body", "x", "to@example.com",
        env=env,
    )  # fmt: skip
    assert run.returncode == ExitCode.UNAVAILABLE
    assert "5.7.60" in run.stderr
    assert "Add-RecipientPermission" in run.stderr


async def test_throttled_at_mail_exits_75(sandbox: Sandbox, env: dict[str, str]) -> None:
    """A 4xx to MAIL (Exchange's 432 4.3.2): exit 75, try again later."""
    sandbox.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.TEMPFAIL
    assert "432 4.3.2" in run.stderr
    assert "hint: " in run.stderr


async def test_unreachable_server_exits_75(
    sandbox: Sandbox, env: dict[str, str], unused_tcp_port: int
) -> None:
    """Nothing listening on the SMTP port: exit 75."""
    env = {**env, "SMTP_OAUTH_SMTP__PORT": str(unused_tcp_port)}
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.TEMPFAIL, run.stderr
    assert f"127.0.0.1:{unused_tcp_port}" in run.stderr


async def test_unreachable_identity_provider_exits_75(
    sandbox: Sandbox, env: dict[str, str], unused_tcp_port: int, tmp_path: Path
) -> None:
    """The identity provider cannot be reached (and nothing is cached): exit 75."""
    config = sandbox.write_config(
        tmp_path / "cold.toml",
        identity={
            "token_cache": str(tmp_path / "cache"),
            "authority_host": f"https://127.0.0.1:{unused_tcp_port}",
        },
    )
    run = await run_send_mail("--config", config, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.TEMPFAIL, run.stderr
    assert sandbox.delivered() == []


async def test_auth_refused_twice_exits_77(sandbox: Sandbox, env: dict[str, str]) -> None:
    """535 5.7.139 on AUTH, also after the retry with a fresh token: exit 77, Set-CASMailbox hint."""
    sandbox.inject(
        "AUTH",
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        times=2,
    )
    run = await run_send_mail("--config", sandbox.config_path, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.NOPERM
    assert "535 5.7.139" in run.stderr.splitlines()[0]
    assert "Set-CASMailbox" in run.stderr


async def test_bad_configuration_exits_78(env: dict[str, str], tmp_path: Path) -> None:
    """An invalid configuration file: exit 78, naming the file and the key."""
    config = tmp_path / "bad.toml"
    config.write_text('[identity]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\nbogus = 1\n')
    run = await run_send_mail("--config", config, "--body", "x", "to@example.com", env=env)
    assert run.returncode == ExitCode.CONFIG
    assert str(config) in run.stderr
    assert "bogus" in run.stderr
