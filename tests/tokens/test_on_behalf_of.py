"""On-behalf-of against the sandbox (real MSAL, HTTPS): a middle tier sends as the users whose
tokens it received, each user's tokens cached apart; bad incoming tokens explained."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.tokens.on_behalf_of import OnBehalfOf
from smtp_oauth.transport import create_transport


def note() -> EmailMessage:
    message = EmailMessage()
    message["To"] = "alice@example.test"
    message["Subject"] = "on behalf of"
    message.set_content("Sent by the middle tier as its caller.\n")
    return message


async def test_middle_tier_sends_as_the_caller(smtp_oauth_sandbox: Sandbox) -> None:
    """The exchanged token is the user's (scp SMTP.Send), and the message goes out as their mailbox."""
    obo = OnBehalfOf(smtp_oauth_sandbox.settings())
    user = await obo.user(smtp_oauth_sandbox.idp.user_token_for_api())
    assert user.username == smtp_oauth_sandbox.tenant.mailbox
    claims = decode_claims(await user.access_token())
    assert "SMTP.Send" in claims["scp"]
    async with create_transport(
        smtp_oauth_sandbox.settings(), token_provider=user, mailbox=user.username
    ) as transport:
        await transport.send(note())
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.auth_user == smtp_oauth_sandbox.tenant.mailbox


async def test_two_users_get_two_cached_tokens(smtp_oauth_sandbox: Sandbox) -> None:
    """Two callers: two exchanges, two tokens for two users; asking again is served from the cache."""
    idp, tenant = smtp_oauth_sandbox.idp, smtp_oauth_sandbox.tenant
    obo = OnBehalfOf(smtp_oauth_sandbox.settings())
    first, second = idp.user_token_for_api(tenant.user), idp.user_token_for_api(tenant.second_user)
    tokens = [await obo.access_token(first), await obo.access_token(second)]
    assert [decode_claims(t)["upn"] for t in tokens] == [tenant.user.upn, tenant.second_user.upn]
    assert await obo.access_token(first) == tokens[0]
    assert await obo.access_token(second) == tokens[1]
    assert idp.token_requests["urn:ietf:params:oauth:grant-type:jwt-bearer"] == 2


async def test_graph_token_on_behalf_of_the_user(smtp_oauth_sandbox: Sandbox) -> None:
    """The same user's token for Graph (Mail.Send) comes from the same exchange machinery."""
    obo = OnBehalfOf(smtp_oauth_sandbox.settings())
    user = await obo.user(smtp_oauth_sandbox.idp.user_token_for_api())
    claims = decode_claims(await user.access_token(scopes=["https://graph.microsoft.com/Mail.Send"]))
    assert claims["aud"] == "https://graph.microsoft.com"
    assert "Mail.Send" in claims["scp"]


async def test_expired_incoming_token_is_explained(smtp_oauth_sandbox: Sandbox) -> None:
    """An expired user token: TokenError with AADSTS500133 and what the caller must do."""
    obo = OnBehalfOf(smtp_oauth_sandbox.settings())
    with pytest.raises(TokenError) as caught:
        await obo.user(smtp_oauth_sandbox.idp.user_token_for_api(lifetime=-60))
    assert caught.value.aadsts_code == 500133
    assert "must get a new token" in (caught.value.explain() or "")


async def test_token_for_another_api_is_refused_by_entra(smtp_oauth_sandbox: Sandbox) -> None:
    """A token not issued for this middle tier (here: an Exchange token) is AADSTS500131, explained."""
    from smtp_oauth.tokens.provider import create_token_provider

    exchange_token = await create_token_provider(smtp_oauth_sandbox.settings()).access_token()
    obo = OnBehalfOf(smtp_oauth_sandbox.settings())
    with pytest.raises(TokenError) as caught:
        await obo.user(exchange_token)
    assert caught.value.aadsts_code == 500131
    assert smtp_oauth_sandbox.tenant.app.client_id in (caught.value.explain() or "")


async def test_a_forged_token_is_refused(smtp_oauth_sandbox: Sandbox) -> None:
    """A token with a bad signature is AADSTS50013, and no cached user token is handed out for it."""
    idp = smtp_oauth_sandbox.idp
    obo = OnBehalfOf(smtp_oauth_sandbox.settings())
    genuine = idp.user_token_for_api()
    await obo.access_token(genuine)
    head, body, _ = genuine.split(".")
    with pytest.raises(TokenError) as caught:
        await obo.access_token(f"{head}.{body}.AAAA")
    assert caught.value.aadsts_code == 50013


def test_public_client_cannot_act_on_behalf_of(smtp_oauth_sandbox: Sandbox) -> None:
    """A delegated (public client) identity is refused: OBO needs the middle tier's credential."""
    path = smtp_oauth_sandbox.directory / "device.toml"
    smtp_oauth_sandbox.write_config(path, flow="device_code")
    from smtp_oauth.settings.loading import load_settings

    with pytest.raises(ConfigurationError, match="middle tier"):
        OnBehalfOf(load_settings(path))
