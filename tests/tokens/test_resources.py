"""Tokens for two resources from one identity: Exchange Online and Microsoft Graph (real MSAL, sandbox)."""

from __future__ import annotations

import asyncio
import json

import pytest

from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.tokens.provider import cached_access_token, create_token_provider
from tests.tokens.test_provider import requests_made, settings_for

GRAPH = ["https://graph.microsoft.com/.default"]

pytestmark = pytest.mark.filterwarnings("ignore:This API has been deprecated for public client flows")


async def test_one_provider_serves_exchange_and_graph(smtp_oauth_sandbox: Sandbox) -> None:
    """access_token() is for Exchange Online, access_token(scopes=Graph's) for Graph: each its audience."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    exchange = decode_claims(await provider.access_token())
    graph = decode_claims(await provider.access_token(scopes=GRAPH))
    assert exchange["aud"] == "https://outlook.office365.com"
    assert exchange["roles"] == ["SMTP.SendAsApp"]
    assert graph["aud"] == "https://graph.microsoft.com"
    assert "Mail.Send" in graph["roles"]


async def test_each_resource_is_fetched_once_and_then_served_from_memory(smtp_oauth_sandbox: Sandbox) -> None:
    """Concurrent callers of both resources cause one token request per resource (single flight)."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    calls = [provider.access_token() for _ in range(5)] + [
        provider.access_token(scopes=GRAPH) for _ in range(5)
    ]
    tokens = await asyncio.gather(*calls)
    assert len(set(tokens[:5])) == 1
    assert len(set(tokens[5:])) == 1
    assert requests_made(smtp_oauth_sandbox) == 2


async def test_forcing_a_graph_refresh_keeps_the_exchange_token(smtp_oauth_sandbox: Sandbox) -> None:
    """force_refresh for Graph drops Graph's cached token only: Exchange's is still served from the cache."""
    settings = settings_for(smtp_oauth_sandbox)
    provider = create_token_provider(settings)
    exchange = await provider.access_token()
    graph = await provider.access_token(scopes=GRAPH)
    renewed = await provider.access_token(scopes=GRAPH, force_refresh=True)
    assert renewed != graph
    assert cached_access_token(settings) == exchange
    assert requests_made(smtp_oauth_sandbox) == 3


async def test_both_tokens_share_one_cache_file_and_the_fast_path_finds_each(
    smtp_oauth_sandbox: Sandbox,
) -> None:
    """A second process (no msal) reads either resource's token from the one cache file by its scopes."""
    settings = settings_for(smtp_oauth_sandbox)
    provider = create_token_provider(settings)
    exchange = await provider.access_token()
    graph = await provider.access_token(scopes=GRAPH)
    assert cached_access_token(settings) == exchange
    assert cached_access_token(settings, scopes=GRAPH) == graph
    [cache_file] = settings.token_cache_path.glob("*.json")
    targets = {entry["target"] for entry in json.loads(cache_file.read_text())["AccessToken"].values()}
    assert targets == {"https://outlook.office365.com/.default", "https://graph.microsoft.com/.default"}


async def test_a_delegated_sign_in_serves_graph_through_its_refresh_token(
    smtp_oauth_sandbox: Sandbox,
) -> None:
    """After a user signs in for SMTP.Send, Graph's Mail.Send comes from the same refresh token, no prompt."""
    provider = create_token_provider(
        settings_for(smtp_oauth_sandbox, "device_code"), device_code_prompt=lambda _: None
    )
    await provider.login()
    graph = decode_claims(await provider.access_token(scopes=["https://graph.microsoft.com/Mail.Send"]))
    assert graph["aud"] == "https://graph.microsoft.com"
    assert "Mail.Send" in graph["scp"].split()
    assert graph["upn"] == smtp_oauth_sandbox.tenant.mailbox
    assert smtp_oauth_sandbox.idp.token_requests["refresh_token"] == 1


@pytest.mark.smtp_oauth_sandbox(graph_permissions=())
async def test_an_app_without_graph_permissions_gets_a_token_without_roles(
    smtp_oauth_sandbox: Sandbox,
) -> None:
    """As Entra does: no application permission on Graph -> a token with no roles claim (RBAC decides)."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    claims = decode_claims(await provider.access_token(scopes=GRAPH))
    assert claims["aud"] == "https://graph.microsoft.com"
    assert "roles" not in claims
