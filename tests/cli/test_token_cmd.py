"""`smtp-oauth token`: the token, its XOAUTH2 form, or its claims (never the token) from the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.smtp.xoauth2 import decode
from smtp_oauth.tokens.claims import decode_claims
from tests.cli.admin_cli import Completed, clean_env, run_cli, run_cli_async


async def _token(sandbox: Sandbox, tmp_path: Path, *args: str, config: Path | None = None) -> Completed:
    path = config or sandbox.config_path
    return await run_cli_async("token", "--config", str(path), *args, env=clean_env(tmp_path), cwd=tmp_path)


async def test_token_prints_an_exchange_access_token(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """`token` prints one line: a JWT for Exchange Online with the SMTP.SendAsApp role."""
    done = await _token(smtp_oauth_sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert "\n" not in token
    claims = decode_claims(token)
    assert claims["aud"] == "https://outlook.office365.com"
    assert "SMTP.SendAsApp" in claims["roles"]


async def test_xoauth2_is_the_initial_response_for_the_mailbox(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """`token --xoauth2` prints base64(user=<smtp.username>^Aauth=Bearer <token>^A^A)."""
    done = await _token(smtp_oauth_sandbox, tmp_path, "--xoauth2")
    assert done.returncode == 0, done.stderr
    credentials = decode(done.stdout.strip())
    assert credentials.user == smtp_oauth_sandbox.tenant.mailbox
    assert decode_claims(credentials.token)["aud"] == "https://outlook.office365.com"


async def test_claims_are_json_without_the_token(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """`token --claims` prints the decoded claims as JSON and not the (cached, same) token itself."""
    token = (await _token(smtp_oauth_sandbox, tmp_path)).stdout.strip()
    done = await _token(smtp_oauth_sandbox, tmp_path, "--claims")
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims == decode_claims(token)  # the cached token was reused: same claims
    assert claims["appid"] == smtp_oauth_sandbox.tenant.app.client_id
    for part in token.split("."):
        assert part not in done.stdout + done.stderr


def test_xoauth2_and_claims_exclude_each_other(tmp_path: Path) -> None:
    """Asking for both forms at once is a usage error (exit 2 from argparse), and prints no token."""
    done = run_cli("token", "--xoauth2", "--claims", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""


async def test_wrong_secret_exits_77_with_the_hint(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """A refused client secret -> exit 77, one line naming AADSTS7000215, then the hint; nothing on stdout."""
    config = smtp_oauth_sandbox.write_config(
        tmp_path / "bad.toml", identity={"client_secret": "wrong-secret"}
    )
    done = await _token(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 77
    assert done.stdout == ""
    assert "AADSTS7000215" in done.stderr
    assert "hint:" in done.stderr
    assert "wrong-secret" not in done.stderr


async def test_delegated_without_sign_in_says_to_log_in(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """A delegated flow with nothing cached -> exit 77 and the hint to run `smtp-oauth login`."""
    config = smtp_oauth_sandbox.write_config(tmp_path / "user.toml", flow="device_code")
    done = await _token(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 77, done.stderr
    assert "smtp-oauth login" in done.stderr


async def test_resource_graph_claims_show_a_graph_token(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """`token --resource graph --claims`: audience https://graph.microsoft.com with the Mail.Send role."""
    done = await _token(smtp_oauth_sandbox, tmp_path, "--resource", "graph", "--claims")
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims["aud"] == "https://graph.microsoft.com"
    assert "Mail.Send" in claims["roles"]


async def test_transport_graph_makes_graph_the_default_resource(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """With transport = "graph", plain `token` prints the token the transport needs: Graph's."""
    config = smtp_oauth_sandbox.write_config(tmp_path / "graph.toml", transport="graph")
    done = await _token(smtp_oauth_sandbox, tmp_path, "--claims", config=config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["aud"] == "https://graph.microsoft.com"


async def test_a_bare_scope_is_one_of_the_resources_permissions(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """`--resource graph --scope Mail.Send` asks for https://graph.microsoft.com/Mail.Send (delegated)."""
    config = smtp_oauth_sandbox.write_config(tmp_path / "user.toml", flow="username_password")
    done = await _token(
        smtp_oauth_sandbox, tmp_path, "--resource", "graph", "--scope", "Mail.Send", "--claims", config=config
    )
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["scp"] == "Mail.Send"


async def test_xoauth2_for_graph_is_a_usage_error(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """`--xoauth2 --resource graph` exits 64: the SMTP login takes an Exchange token; no token printed."""
    done = await _token(smtp_oauth_sandbox, tmp_path, "--xoauth2", "--resource", "graph")
    assert done.returncode == 64
    assert done.stdout == ""
    assert "Exchange Online token" in done.stderr


async def test_unencrypted_cache_is_mentioned_once_when_created(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """The "stored unencrypted" INFO line comes when the cache is created, not on every later run."""
    first = await _token(smtp_oauth_sandbox, tmp_path)
    second = await _token(smtp_oauth_sandbox, tmp_path)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "unencrypted" not in second.stderr


async def test_a_cache_directory_open_to_others_is_refused(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A token cache directory with mode 0777 is refused (exit 78) with the chmod fix, fast path too."""
    first = await _token(smtp_oauth_sandbox, tmp_path)
    assert first.returncode == 0, first.stderr
    directory = smtp_oauth_sandbox.settings().token_cache_path.expanduser()
    directory.chmod(0o777)
    try:
        second = await _token(smtp_oauth_sandbox, tmp_path)
    finally:
        directory.chmod(0o700)
    assert second.returncode == 78
    assert f"chmod 700 {directory}" in second.stderr
