"""Identities without secrets against the sandbox, with real MSAL over HTTPS: managed identity
(App Service endpoint form) and workload identity federation (a rotated token file)."""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.tokens.provider import create_token_provider
from smtp_oauth.transport import create_transport

GRAPH = "https://graph.microsoft.com/.default"


def configured(sandbox: Sandbox, flow: str, credential: str = "secret", **identity: Any) -> Settings:
    path = sandbox.directory / f"{flow}-{credential}-{len(list(sandbox.directory.glob('*.toml')))}.toml"
    sandbox.write_config(path, flow=flow, credential=credential, identity=identity)
    return load_settings(path)


async def send(settings: Settings) -> None:
    async with create_transport(settings) as transport:
        await transport.send(note())


def note() -> EmailMessage:
    message = EmailMessage()
    message["To"] = "alice@example.test"
    message["Subject"] = "no secret"
    message.set_content("Sent with no secret anywhere.\n")
    return message


@pytest.fixture
def managed_identity_env(smtp_oauth_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's managed identity endpoint exported, as App Service exports its own."""
    for name, value in smtp_oauth_sandbox.managed_identity_environment().items():
        monkeypatch.setenv(name, value)


# --- managed identity ------------------------------------------------------------------------------


@pytest.mark.usefixtures("managed_identity_env")
async def test_system_assigned_identity_gets_an_exchange_token(smtp_oauth_sandbox: Sandbox) -> None:
    """Without identity.client_id the host's system-assigned identity's token comes back."""
    settings = configured(smtp_oauth_sandbox, "managed_identity", "system")
    claims = decode_claims(await create_token_provider(settings).access_token())
    assert claims["appid"] == smtp_oauth_sandbox.tenant.system_identity.client_id
    assert claims["aud"] == "https://outlook.office365.com"


@pytest.mark.usefixtures("managed_identity_env")
async def test_user_assigned_identity_is_chosen_by_client_id(smtp_oauth_sandbox: Sandbox) -> None:
    """identity.client_id selects that user-assigned identity."""
    settings = configured(smtp_oauth_sandbox, "managed_identity", "user")
    claims = decode_claims(await create_token_provider(settings).access_token())
    assert claims["appid"] == smtp_oauth_sandbox.tenant.user_identity.client_id


@pytest.mark.usefixtures("managed_identity_env")
async def test_managed_identity_gets_a_graph_token(smtp_oauth_sandbox: Sandbox) -> None:
    """A Graph scope asks the endpoint for the Graph resource."""
    settings = configured(smtp_oauth_sandbox, "managed_identity", "system", scopes=[GRAPH])
    claims = decode_claims(await create_token_provider(settings).access_token())
    assert claims["aud"] == "https://graph.microsoft.com"


@pytest.mark.usefixtures("managed_identity_env")
async def test_managed_identity_token_is_cached_across_providers(smtp_oauth_sandbox: Sandbox) -> None:
    """A second provider (another process, say) finds the token in the persistent cache."""
    settings = configured(smtp_oauth_sandbox, "managed_identity", "system")
    first = await create_token_provider(settings).access_token()
    second = await create_token_provider(settings).access_token()
    assert first == second
    assert smtp_oauth_sandbox.idp.token_requests["managed_identity"] == 1


@pytest.mark.usefixtures("managed_identity_env")
async def test_forced_refresh_asks_the_endpoint_again(smtp_oauth_sandbox: Sandbox) -> None:
    """force_refresh (after Exchange refused a token) gets a new token from the endpoint."""
    provider = create_token_provider(configured(smtp_oauth_sandbox, "managed_identity", "system"))
    first = await provider.access_token()
    second = await provider.access_token(force_refresh=True)
    assert first != second
    assert smtp_oauth_sandbox.idp.token_requests["managed_identity"] == 2


@pytest.mark.usefixtures("managed_identity_env")
@pytest.mark.parametrize("which", ["system", "user"])
async def test_managed_identity_sends_mail(smtp_oauth_sandbox: Sandbox, which: str) -> None:
    """Both identities deliver: the system one by app role + FullAccess, the user one by RBAC."""
    settings = configured(smtp_oauth_sandbox, "managed_identity", which)
    await send(settings)
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.auth_user == smtp_oauth_sandbox.tenant.mailbox


@pytest.mark.usefixtures("managed_identity_env")
async def test_unknown_user_assigned_identity_says_what_to_check(smtp_oauth_sandbox: Sandbox) -> None:
    """A client_id the host has no identity for is a TokenError naming the identity and the fix."""
    settings = configured(
        smtp_oauth_sandbox, "managed_identity", "user", client_id="00000000-0000-0000-0000-000000000001"
    )
    with pytest.raises(TokenError) as caught:
        await create_token_provider(settings).access_token()
    assert "No User Assigned" in str(caught.value)
    hint = caught.value.explain() or ""
    assert "00000000-0000-0000-0000-000000000001" in hint
    assert "client id" in hint


async def test_managed_identity_off_azure_says_so(
    smtp_oauth_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    """With no endpoint answering, the error says managed identity works only on Azure."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"https://127.0.0.1:{unused_tcp_port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "x")
    settings = configured(smtp_oauth_sandbox, "managed_identity", "system")
    with pytest.raises(TokenError) as caught:
        await create_token_provider(settings).access_token()
    assert caught.value.temporary
    assert "only on Azure" in (caught.value.explain() or "")


def test_managed_identity_needs_no_tenant_or_secret(tmp_path: Path) -> None:
    """flow = managed_identity loads with neither tenant_id nor client_id."""
    path = tmp_path / "c.toml"
    path.write_text('[identity]\nflow = "managed_identity"\n[smtp]\nusername = "a@contoso.com"\n')
    settings = load_settings(path)
    assert settings.identity.tenant_id is None
    assert settings.identity.is_managed_identity


def test_managed_identity_refuses_a_secret(tmp_path: Path) -> None:
    """A client secret next to a managed identity is a configuration error, not silently ignored."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[identity]\nflow = "managed_identity"\nclient_secret = "s"\n[smtp]\nusername = "a@contoso.com"\n'
    )
    with pytest.raises(ConfigurationError, match="uses no secret"):
        load_settings(path)


# --- workload identity federation ---------------------------------------------------------------


async def test_workload_identity_gets_a_token_for_the_app(smtp_oauth_sandbox: Sandbox) -> None:
    """The federated token in the file is exchanged for the app's access token."""
    settings = configured(smtp_oauth_sandbox, "workload_identity")
    claims = decode_claims(await create_token_provider(settings).access_token())
    assert claims["appid"] == smtp_oauth_sandbox.tenant.app.client_id
    assert len(smtp_oauth_sandbox.idp.federation.accepted) == 1


@pytest.mark.smtp_oauth_sandbox(access_token_lifetime=300)
async def test_rotated_token_file_is_read_again_between_two_sends(smtp_oauth_sandbox: Sandbox) -> None:
    """After the platform replaces the file (and the old token is refused), the next send works."""
    settings = configured(smtp_oauth_sandbox, "workload_identity")
    await send(settings)
    smtp_oauth_sandbox.rotate_federated_token(revoke_previous=True)
    await send(settings)
    accepted = smtp_oauth_sandbox.idp.federation.accepted
    assert len(smtp_oauth_sandbox.delivered()) == 2
    assert len(accepted) == 2
    assert accepted[0] != accepted[1]


def test_workload_identity_defaults_come_from_azure_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST fill in."""
    monkeypatch.setenv("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111")
    monkeypatch.setenv("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/")
    path = tmp_path / "c.toml"
    path.write_text('[identity]\nflow = "workload_identity"\n[smtp]\nusername = "a@contoso.com"\n')
    identity = load_settings(path).identity
    assert (identity.tenant_id, identity.client_id) == (
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
    )
    assert identity.federated_token_file == Path("/var/run/secrets/azure/tokens/azure-identity-token")
    assert identity.authority_host == "https://login.microsoftonline.com"


def test_workload_identity_without_a_token_file_is_a_configuration_error(tmp_path: Path) -> None:
    """No federated_token_file and no AZURE_FEDERATED_TOKEN_FILE: the error names both."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[identity]\nflow = "workload_identity"\ntenant_id = "t"\nclient_id = "c"\n'
        '[smtp]\nusername = "a@contoso.com"\n'
    )
    with pytest.raises(ConfigurationError, match="AZURE_FEDERATED_TOKEN_FILE"):
        load_settings(path)


async def test_missing_token_file_is_a_configuration_error(smtp_oauth_sandbox: Sandbox) -> None:
    """A token file that does not exist (pod not labelled for workload identity) is exit 78."""
    settings = configured(
        smtp_oauth_sandbox,
        "workload_identity",
        federated_token_file=str(smtp_oauth_sandbox.directory / "nope"),
    )
    with pytest.raises(ConfigurationError, match="does not exist"):
        await create_token_provider(settings).access_token()


async def test_token_file_content_never_appears_in_errors(smtp_oauth_sandbox: Sandbox) -> None:
    """A refused federated token is not echoed in the error."""
    settings = configured(smtp_oauth_sandbox, "workload_identity")
    token = smtp_oauth_sandbox.federated_token_file.read_text()
    smtp_oauth_sandbox.idp.federation.revoke_issued_before(time.time())
    with pytest.raises(TokenError) as caught:
        await create_token_provider(settings).access_token()
    assert caught.value.aadsts_code == 700024
    assert token not in str(caught.value)
    assert token not in repr(caught.value)
