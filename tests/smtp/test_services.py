"""smtp.service presets against the sandbox's HVE and ACS modes (real MSAL, real aiosmtpd)."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_oauth.errors import AuthenticationError, ConfigurationError, MessageError, PermanentDeliveryError
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.tokens.provider import create_token_provider
from smtp_oauth.transport import create_transport


def note(to: str = "colleague@sandbox.test", sender: str | None = None) -> EmailMessage:
    message = EmailMessage()
    if sender:
        message["From"] = sender
    message["To"] = to
    message["Subject"] = "service"
    message.set_content("Hello.\n")
    return message


async def send(settings: Settings, message: EmailMessage, **options: object) -> None:
    async with create_transport(settings) as transport:
        await transport.send(message, **options)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


# --- presets ------------------------------------------------------------------------------------


def test_hve_presets_its_host_and_a_longer_refresh_margin(tmp_path: Path) -> None:
    """service = hve: smtp.hve.mx.microsoft, tokens replaced 20 minutes before expiry."""
    settings = load_settings(
        write(
            tmp_path,
            '[identity]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
            '[smtp]\nservice = "hve"\nusername = "hve@contoso.com"\n',
        )
    )
    assert settings.smtp_host == "smtp.hve.mx.microsoft"
    assert settings.refresh_margin.total_seconds() == 1200


def test_acs_presets_host_and_scope(tmp_path: Path) -> None:
    """service = acs: smtp.azurecomm.net and the communication.azure.com scope; username form accepted."""
    settings = load_settings(
        write(
            tmp_path,
            '[identity]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
            '[smtp]\nservice = "acs"\nusername = "contoso-acs|c|t"\n'
            'from_address = "DoNotReply@contoso.com"\n',
        )
    )
    assert settings.smtp_host == "smtp.azurecomm.net"
    assert settings.smtp_scopes == ["https://communication.azure.com/.default"]


def test_explicit_host_beats_the_service_preset(tmp_path: Path) -> None:
    """An explicit smtp.host wins over the service's."""
    settings = load_settings(
        write(
            tmp_path,
            '[identity]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
            '[smtp]\nservice = "hve"\nhost = "smtp-hve.office365.com"\nusername = "hve@contoso.com"\n',
        )
    )
    assert settings.smtp_host == "smtp-hve.office365.com"


def test_hve_refuses_another_from_address(tmp_path: Path) -> None:
    """HVE sends only as its account: a different smtp.from_address is a configuration error."""
    path = write(
        tmp_path,
        '[identity]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
        '[smtp]\nservice = "hve"\nusername = "hve@contoso.com"\nfrom_address = "x@contoso.com"\n',
    )
    with pytest.raises(ConfigurationError, match="HVE account"):
        load_settings(path)


def test_acs_username_needs_a_from_address(tmp_path: Path) -> None:
    """An ACS SMTP username is not an address, so smtp.from_address is required."""
    path = write(
        tmp_path,
        '[identity]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\n'
        '[smtp]\nservice = "acs"\nusername = "contoso-acs|c|t"\n',
    )
    with pytest.raises(ConfigurationError, match="from_address"):
        load_settings(path)


# --- HVE ----------------------------------------------------------------------------------------


@pytest.mark.smtp_oauth_sandbox(service="hve")
async def test_hve_delivers_internal_mail(smtp_oauth_sandbox: Sandbox) -> None:
    """An internal recipient, sent as the HVE account: delivered."""
    await send(smtp_oauth_sandbox.settings(), note())
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.rcpt_tos == ["colleague@sandbox.test"]


@pytest.mark.smtp_oauth_sandbox(service="hve")
async def test_hve_refuses_external_recipients_with_a_hint(smtp_oauth_sandbox: Sandbox) -> None:
    """550 5.5.105 for an external recipient, explained: HVE is internal only."""
    with pytest.raises(PermanentDeliveryError) as caught:
        await send(smtp_oauth_sandbox.settings(), note("alice@example.test"))
    assert "5.5.105" in str(caught.value)
    assert "inside your organization" in (caught.value.explain() or "")


@pytest.mark.smtp_oauth_sandbox(service="hve")
async def test_hve_refuses_another_envelope_sender(smtp_oauth_sandbox: Sandbox) -> None:
    """MAIL FROM other than the HVE account: 550 5.7.62 and a hint naming the account."""
    settings = smtp_oauth_sandbox.settings()
    with pytest.raises(PermanentDeliveryError) as caught:
        await send(settings, note(), sender="other@sandbox.test")
    assert "5.7.62" in str(caught.value)
    assert settings.smtp.username in (caught.value.explain() or "")


@pytest.mark.smtp_oauth_sandbox(service="hve")
async def test_hve_refuses_another_from_header(smtp_oauth_sandbox: Sandbox) -> None:
    """From: other than the HVE account (envelope right): 550 5.6.241."""
    with pytest.raises(PermanentDeliveryError) as caught:
        await send(
            smtp_oauth_sandbox.settings(),
            note(sender="other@sandbox.test"),
            sender=smtp_oauth_sandbox.tenant.mailbox,
        )
    assert "5.6.241" in str(caught.value)


@pytest.mark.smtp_oauth_sandbox(service="hve", access_token_lifetime=1000)
async def test_hve_replaces_tokens_20_minutes_ahead(smtp_oauth_sandbox: Sandbox) -> None:
    """A token with 16 minutes left is not reused under HVE (Exchange would still reuse it)."""
    provider = create_token_provider(smtp_oauth_sandbox.settings())
    first = await provider.access_token()
    second = await provider.access_token()
    assert first != second
    assert smtp_oauth_sandbox.idp.token_requests["client_credentials"] == 2


@pytest.mark.smtp_oauth_sandbox(access_token_lifetime=1000)
async def test_exchange_reuses_a_token_with_16_minutes_left(smtp_oauth_sandbox: Sandbox) -> None:
    """The same token lifetime under Exchange Online: one token serves both calls."""
    provider = create_token_provider(smtp_oauth_sandbox.settings())
    assert await provider.access_token() == await provider.access_token()
    assert smtp_oauth_sandbox.idp.token_requests["client_credentials"] == 1


@pytest.mark.smtp_oauth_sandbox(service="hve", access_token_lifetime=420)
async def test_expiring_token_is_refused_with_5_7_142_and_explained(smtp_oauth_sandbox: Sandbox) -> None:
    """A token with 7 minutes left is refused (535 5.7.142) even after the retry; the hint says why."""
    with pytest.raises(AuthenticationError) as caught:
        await send(smtp_oauth_sandbox.settings(), note())
    assert "5.7.142" in str(caught.value)
    assert "expires within minutes" in (caught.value.explain() or "")
    assert smtp_oauth_sandbox.exchange.auth_attempts == 2  # retried once with a new token


# --- ACS ----------------------------------------------------------------------------------------


@pytest.mark.smtp_oauth_sandbox(service="acs")
async def test_acs_token_is_for_communication_services(smtp_oauth_sandbox: Sandbox) -> None:
    """The token sent to ACS has the communication.azure.com audience, and the message goes out."""
    settings = smtp_oauth_sandbox.settings()
    claims = decode_claims(await create_token_provider(settings).access_token())
    assert claims["aud"] == "https://communication.azure.com"
    await send(settings, note("alice@example.test"))
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.auth_user == smtp_oauth_sandbox.tenant.acs_username
    assert delivered.mail_from == smtp_oauth_sandbox.tenant.acs_sender


@pytest.mark.smtp_oauth_sandbox(service="acs")
async def test_acs_recipient_limit_is_checked_before_connecting(smtp_oauth_sandbox: Sandbox) -> None:
    """51 recipients: MessageError (exit 65) without a connection."""
    message = note(", ".join(f"user{n}@example.test" for n in range(51)))
    with pytest.raises(MessageError, match="at most 50"):
        await send(smtp_oauth_sandbox.settings(), message)
    assert smtp_oauth_sandbox.exchange.auth_attempts == 0
