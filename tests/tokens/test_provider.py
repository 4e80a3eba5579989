"""Specification of the MSAL token provider against the sandbox identity provider (real MSAL, HTTPS)."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import socket
import ssl
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.tokens.provider import MsalTokenProvider, create_token_provider
from smtp_oauth.tokens.types import DeviceCodePrompt

# MSAL warns that ROPC is deprecated for public clients; the provider logs its own warning instead.
pytestmark = pytest.mark.filterwarnings("ignore:This API has been deprecated for public client flows")

sandbox_options = pytest.mark.smtp_oauth_sandbox


def settings_for(
    sandbox: Sandbox, flow: str = "client_credentials", *, credential: str = "secret", **identity: Any
) -> Settings:
    """Settings for ``flow`` from a config file of their own; ``identity`` keys override."""
    path = sandbox.directory / f"{flow}-{credential}-{len(list(sandbox.directory.glob('*.toml')))}.toml"
    sandbox.write_config(path, flow=flow, credential=credential, identity=identity)
    return load_settings(path)


def requests_made(sandbox: Sandbox) -> int:
    return sum(sandbox.idp.token_requests.values())


def fake_browser(sandbox: Sandbox, opened: list[str]) -> Callable[[str], bool]:
    """Plays the user's browser: GET /authorize, then POST its form_post form to the loopback."""

    def act(url: str) -> None:
        context = ssl.create_default_context(cafile=str(sandbox.ca_file))
        with urllib.request.urlopen(url, context=context, timeout=10) as response:  # noqa: S310  # https
            page = response.read().decode()
        action = html.unescape(re.search(r'action="([^"]+)"', page).group(1))  # type: ignore[union-attr]
        fields = {k: html.unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}
        body = urllib.parse.urlencode(fields).encode()
        assert action.startswith("http://localhost:")
        with urllib.request.urlopen(urllib.request.Request(action, data=body), timeout=10) as answer:  # noqa: S310
            answer.read()

    def open_browser(url: str) -> bool:
        opened.append(url)
        threading.Thread(target=act, args=(url,), daemon=True).start()
        return True

    return open_browser


async def signed_in(sandbox: Sandbox) -> tuple[MsalTokenProvider, Settings]:
    """A device-code identity whose user is already signed in (quickly, by username/password)."""
    user = sandbox.tenant.user
    settings = settings_for(sandbox, "device_code", username=user.upn, password=user.password)
    provider = create_token_provider(settings)
    await provider.login("username_password")
    return provider, settings


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- each flow end to end --------------------------------------------------------------------------


async def test_client_credentials_with_secret(smtp_oauth_sandbox: Sandbox) -> None:
    """A client secret gets an app-only Exchange token (aud outlook.office365.com, SMTP.SendAsApp)."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    claims = decode_claims(await provider.access_token())
    assert claims["aud"] == "https://outlook.office365.com"
    assert "SMTP.SendAsApp" in claims["roles"]
    assert smtp_oauth_sandbox.idp.token_requests["client_credentials"] == 1


async def test_client_credentials_with_certificate(smtp_oauth_sandbox: Sandbox) -> None:
    """A PEM with key and certificate signs a client assertion the IdP accepts."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, credential="certificate"))
    claims = decode_claims(await provider.access_token())
    assert claims["appid"] == smtp_oauth_sandbox.tenant.app.client_id


async def test_client_credentials_with_encrypted_certificate(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """An encrypted private key is opened with identity.certificate_password."""
    pem = smtp_oauth_sandbox.tenant.certificate_path.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pem-password"),
    )
    certificates = b"".join(
        re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", pem, re.S)
    )
    path = tmp_path / "encrypted.pem"
    path.write_bytes(encrypted + certificates)
    settings = settings_for(
        smtp_oauth_sandbox,
        credential="certificate",
        certificate_path=str(path),
        certificate_password="pem-password",
    )
    assert decode_claims(await create_token_provider(settings).access_token())["aud"]


async def test_wrong_certificate_password_is_a_configuration_error(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A password that does not open the key is reported as configuration, naming the key."""
    key = serialization.load_pem_private_key(smtp_oauth_sandbox.tenant.certificate_path.read_bytes(), None)
    path = tmp_path / "encrypted.pem"
    pem = smtp_oauth_sandbox.tenant.certificate_path.read_text()
    certificate = pem[pem.index("-----BEGIN CERTIFICATE-----") :]
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
        + certificate.encode()
    )
    settings = settings_for(
        smtp_oauth_sandbox,
        credential="certificate",
        certificate_path=str(path),
        certificate_password="Not-The-Pem-Pw",
    )
    with pytest.raises(ConfigurationError, match="cannot be decrypted") as caught:
        await create_token_provider(settings).access_token()
    assert caught.value.key == "identity.certificate_password"
    assert "Not-The-Pem-Pw" not in str(caught.value)


def test_wrong_password_that_garbles_the_key_is_not_called_missing(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A wrong password whose decryption happens to pass the padding check (about 1 in 300) still
    says the key cannot be decrypted with it, not "set identity.certificate_password"."""
    from smtp_oauth.tokens.msal_session import certificate_credential

    pem = smtp_oauth_sandbox.tenant.certificate_path.read_text()
    key = serialization.load_pem_private_key(pem.encode(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right"),
    )
    garbling = None
    for attempt in range(20000):  # about 0.1 ms each
        try:
            serialization.load_pem_private_key(encrypted, f"wrong-{attempt}".encode())
        except ValueError as exc:
            if "encrypted" in str(exc):
                garbling = f"wrong-{attempt}"
                break
    assert garbling is not None
    path = tmp_path / "encrypted.pem"
    path.write_bytes(encrypted + pem[pem.index("-----BEGIN CERTIFICATE-----") :].encode())
    settings = settings_for(
        smtp_oauth_sandbox,
        credential="certificate",
        certificate_path=str(path),
        certificate_password=garbling,
    )
    with pytest.raises(ConfigurationError, match=r"cannot be decrypted with identity\.certificate_password"):
        certificate_credential(settings.identity)


def test_password_for_an_unencrypted_key_says_to_remove_it(smtp_oauth_sandbox: Sandbox) -> None:
    """identity.certificate_password set for a key that is not encrypted: the message says so."""
    from smtp_oauth.tokens.msal_session import certificate_credential

    settings = settings_for(
        smtp_oauth_sandbox,
        credential="certificate",
        certificate_path=str(smtp_oauth_sandbox.tenant.certificate_path),
        certificate_password="not-needed",
    )
    with pytest.raises(ConfigurationError, match=r"is not encrypted: remove identity\.certificate_password"):
        certificate_credential(settings.identity)


async def test_certificate_file_without_key_is_a_configuration_error(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A PEM holding only the certificate says what is missing and how to build the file."""
    pem = smtp_oauth_sandbox.tenant.certificate_path.read_text()
    path = tmp_path / "cert-only.pem"
    path.write_text(pem[pem.index("-----BEGIN CERTIFICATE-----") :])
    settings = settings_for(smtp_oauth_sandbox, credential="certificate", certificate_path=str(path))
    with pytest.raises(ConfigurationError, match="no key") as caught:
        await create_token_provider(settings).access_token()
    assert "cat app.key app.crt" in (caught.value.explain() or "")


async def test_device_code_login_then_silent_tokens(smtp_oauth_sandbox: Sandbox) -> None:
    """login() shows the code through the callback, caches the sign-in; access_token() then needs no login."""
    prompts: list[DeviceCodePrompt] = []
    provider = create_token_provider(
        settings_for(smtp_oauth_sandbox, "device_code"), device_code_prompt=prompts.append
    )
    signed_in = await provider.login()
    assert len(prompts) == 1
    assert prompts[0].user_code in prompts[0].message
    assert prompts[0].verification_uri.startswith(smtp_oauth_sandbox.authority_host)
    assert prompts[0].expires_in > 0
    assert signed_in.username == smtp_oauth_sandbox.tenant.user.upn
    assert signed_in.scopes == ["https://outlook.office.com/SMTP.Send"]
    assert signed_in.tenant_id == smtp_oauth_sandbox.tenant.tenant_id
    before = requests_made(smtp_oauth_sandbox)
    claims = decode_claims(await provider.access_token())
    assert claims["scp"] == "SMTP.Send"
    assert requests_made(smtp_oauth_sandbox) == before  # the sign-in's token, from the cache


@sandbox_options(device_code_auto_approve=False)
async def test_device_code_waits_for_the_user(smtp_oauth_sandbox: Sandbox) -> None:
    """Polling continues until the user enters the code (here: approved from the prompt callback)."""

    def approve_later(prompt: DeviceCodePrompt) -> None:
        threading.Timer(0.5, smtp_oauth_sandbox.idp.approve_device_code, args=(prompt.user_code,)).start()

    provider = create_token_provider(
        settings_for(smtp_oauth_sandbox, "device_code"), device_code_prompt=approve_later
    )
    assert (await provider.login()).username == smtp_oauth_sandbox.tenant.user.upn


@sandbox_options(device_code_auto_approve=False)
async def test_device_code_declined_is_a_token_error(smtp_oauth_sandbox: Sandbox) -> None:
    """A user declining the sign-in ends login() with a permanent TokenError."""

    def decline(prompt: DeviceCodePrompt) -> None:
        smtp_oauth_sandbox.idp.decline_device_code(prompt.user_code)

    provider = create_token_provider(
        settings_for(smtp_oauth_sandbox, "device_code"), device_code_prompt=decline
    )
    with pytest.raises(TokenError) as caught:
        await provider.login()
    assert not caught.value.temporary


@sandbox_options(device_code_auto_approve=False)
async def test_cancelled_device_code_login_stops_polling(smtp_oauth_sandbox: Sandbox) -> None:
    """Cancelling login() (Ctrl-C) stops the polling thread: no more requests reach the IdP."""
    loop = asyncio.get_running_loop()
    prompted = asyncio.Event()
    provider = create_token_provider(
        settings_for(smtp_oauth_sandbox, "device_code"),
        device_code_prompt=lambda prompt: loop.call_soon_threadsafe(prompted.set),
    )
    login = asyncio.create_task(provider.login())
    await prompted.wait()
    login.cancel()
    with pytest.raises(asyncio.CancelledError):
        await login
    await asyncio.sleep(1.2)  # MSAL checks for the abort between its 1 s polling steps
    polls = smtp_oauth_sandbox.idp.token_requests["device_code"]
    assert polls >= 1
    await asyncio.sleep(1.2)
    assert smtp_oauth_sandbox.idp.token_requests["device_code"] == polls


async def test_interactive_login_with_loopback_redirect(smtp_oauth_sandbox: Sandbox) -> None:
    """Interactive sign-in: auth code + PKCE, form_post to a loopback listener on a free port."""
    opened: list[str] = []
    settings = settings_for(smtp_oauth_sandbox, "interactive")
    provider = create_token_provider(settings, open_browser=fake_browser(smtp_oauth_sandbox, opened))
    signed_in = await provider.login()
    assert signed_in.username == smtp_oauth_sandbox.tenant.user.upn
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(opened[0]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["response_mode"] == ["form_post"]
    assert re.fullmatch(r"http://localhost:\d+", query["redirect_uri"][0])
    assert decode_claims(await provider.access_token())["scp"] == "SMTP.Send"
    assert smtp_oauth_sandbox.idp.token_requests["authorization_code"] == 1


async def test_interactive_prints_the_address_when_no_browser_opens(
    smtp_oauth_sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a browser the sign-in address is printed, and the sign-in completes when it is visited."""
    opened: list[str] = []
    visit = fake_browser(smtp_oauth_sandbox, opened)

    def no_browser(url: str) -> bool:
        visit(url)  # the user copies the printed address into a browser
        return False

    provider = create_token_provider(settings_for(smtp_oauth_sandbox, "interactive"), open_browser=no_browser)
    await provider.login()
    assert opened[0] in capsys.readouterr().err


async def test_interactive_times_out(smtp_oauth_sandbox: Sandbox) -> None:
    """No answer on the loopback within interactive_timeout is a TokenError, not a hang."""
    provider = create_token_provider(
        settings_for(smtp_oauth_sandbox, "interactive"), open_browser=lambda url: True, interactive_timeout=1
    )
    with pytest.raises(TokenError, match="no answer within 1 s"):
        await provider.login()


async def test_username_password(smtp_oauth_sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    """ROPC signs in by itself (no login) and warns once that MFA and Conditional Access block it."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, "username_password"))
    with caplog.at_level(logging.WARNING, logger="smtp_oauth"):
        claims = decode_claims(await provider.access_token())
        await provider.access_token(force_refresh=True)
    assert claims["upn"] == smtp_oauth_sandbox.tenant.user.upn
    warnings = [r for r in caplog.records if "multi-factor" in r.getMessage()]
    assert len(warnings) == 1
    assert smtp_oauth_sandbox.idp.token_requests["password"] == 1  # then the refresh token


async def test_username_password_silences_msals_deprecation_only_inside_the_call(
    smtp_oauth_sandbox: Sandbox,
) -> None:
    """MSAL's ROPC DeprecationWarning is not shown (we log our own), and the host's filters stay as set."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, "username_password"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        await provider.access_token()
        assert warnings.filters == filters
    assert [str(w.message) for w in seen if "public client flows" in str(w.message)] == []


async def test_username_password_wrong_password(smtp_oauth_sandbox: Sandbox) -> None:
    """A wrong password is a permanent TokenError carrying Entra's AADSTS code, not the password."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, "username_password", password="not-it"))
    with pytest.raises(TokenError) as caught:
        await provider.access_token()
    assert caught.value.error == "invalid_grant"
    assert caught.value.aadsts_code == 50126
    assert not caught.value.temporary
    assert "not-it" not in str(caught.value)


async def test_delegated_without_sign_in_says_run_login(smtp_oauth_sandbox: Sandbox) -> None:
    """A device-code identity with nothing cached fails with no_cached_token and says `smtp-oauth login`."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, "device_code"))
    with pytest.raises(TokenError) as caught:
        await provider.access_token()
    assert caught.value.error == "no_cached_token"
    assert "smtp-oauth login" in (caught.value.explain() or "")
    assert requests_made(smtp_oauth_sandbox) == 0


async def test_login_refuses_client_credentials(smtp_oauth_sandbox: Sandbox) -> None:
    """login() is for delegated identities; with client credentials it is a configuration error."""
    with pytest.raises(ConfigurationError, match=r"identity\.flow"):
        await create_token_provider(settings_for(smtp_oauth_sandbox)).login()


async def test_logout_forgets_the_sign_in(smtp_oauth_sandbox: Sandbox) -> None:
    """logout() removes the account's tokens; access_token() then asks for a login again."""
    provider, settings = await signed_in(smtp_oauth_sandbox)
    assert await provider.logout() >= 3  # access token, refresh token, id token, account
    with pytest.raises(TokenError, match="login"):
        await create_token_provider(settings).access_token()


# -- refresh, single flight, forced refresh --------------------------------------------------------


async def test_concurrent_callers_cause_one_request(smtp_oauth_sandbox: Sandbox) -> None:
    """20 concurrent access_token() calls: one token request, one token."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    tokens = await asyncio.gather(*(provider.access_token() for _ in range(20)))
    assert len(set(tokens)) == 1
    assert requests_made(smtp_oauth_sandbox) == 1


async def test_concurrent_forced_refreshes_cause_one_request(smtp_oauth_sandbox: Sandbox) -> None:
    """Ten sessions refused at once (535) and forcing a refresh together: one new token, one request."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    first = await provider.access_token()
    tokens = await asyncio.gather(*(provider.access_token(force_refresh=True) for _ in range(10)))
    assert len(set(tokens)) == 1
    assert tokens[0] != first
    assert requests_made(smtp_oauth_sandbox) == 2


async def test_force_refresh_client_credentials(smtp_oauth_sandbox: Sandbox) -> None:
    """force_refresh=True gets a new app-only token from the IdP despite MSAL's cache."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    first = await provider.access_token()
    assert await provider.access_token() == first
    assert await provider.access_token(force_refresh=True) != first
    assert smtp_oauth_sandbox.idp.token_requests["client_credentials"] == 2


async def test_force_refresh_delegated_uses_the_refresh_token(smtp_oauth_sandbox: Sandbox) -> None:
    """For a signed-in user, force_refresh redeems the refresh token (no new sign-in)."""
    provider, _ = await signed_in(smtp_oauth_sandbox)
    first = await provider.access_token()
    assert await provider.access_token(force_refresh=True) != first
    assert smtp_oauth_sandbox.idp.token_requests["refresh_token"] == 1


def test_sync_callers(smtp_oauth_sandbox_sync: tuple[Sandbox, Settings]) -> None:
    """access_token_sync() serves synchronous code (logging handler, CLI) the same way."""
    sandbox, settings = smtp_oauth_sandbox_sync
    provider = MsalTokenProvider(settings)
    assert sandbox.idp.token_requests["client_credentials"] == 0
    token = provider.access_token_sync()
    assert provider.access_token_sync() == token
    assert provider.access_token_sync(force_refresh=True) != token
    assert sandbox.idp.token_requests["client_credentials"] == 2


@pytest.fixture
def smtp_oauth_sandbox_sync(tmp_path: Path) -> Any:
    """A sandbox running on its own loop in a thread, for tests of synchronous callers."""
    loop = asyncio.new_event_loop()
    sandbox = Sandbox(tmp_path / "sandbox")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(sandbox.start(), loop).result(30)
    try:
        yield sandbox, settings_for(sandbox)
    finally:
        asyncio.run_coroutine_threadsafe(sandbox.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@sandbox_options(access_token_lifetime=660)
async def test_token_with_11_minutes_left_is_reused(smtp_oauth_sandbox: Sandbox) -> None:
    """A cached token valid for 11 minutes is still used (by another provider sharing the cache)."""
    settings = settings_for(smtp_oauth_sandbox)
    token = await create_token_provider(settings).access_token()
    assert await create_token_provider(settings).access_token() == token
    assert requests_made(smtp_oauth_sandbox) == 1


@sandbox_options(access_token_lifetime=540)
async def test_token_with_9_minutes_left_is_refreshed(smtp_oauth_sandbox: Sandbox) -> None:
    """A token with less than 10 minutes left is replaced, though MSAL would still serve it."""
    settings = settings_for(smtp_oauth_sandbox)
    provider = create_token_provider(settings)
    token = await provider.access_token()
    assert await provider.access_token() != token  # in-memory copy not trusted either
    assert await create_token_provider(settings).access_token() not in {token}
    assert requests_made(smtp_oauth_sandbox) == 3


@sandbox_options(access_token_lifetime=540)
async def test_delegated_token_with_9_minutes_left_is_refreshed(smtp_oauth_sandbox: Sandbox) -> None:
    """The 10-minute margin holds for delegated tokens too (refresh token redeemed)."""
    provider, _ = await signed_in(smtp_oauth_sandbox)
    await provider.access_token()
    assert smtp_oauth_sandbox.idp.token_requests["refresh_token"] == 1


@sandbox_options(refresh_in=1)
async def test_refresh_on_is_honoured(smtp_oauth_sandbox: Sandbox) -> None:
    """Once MSAL's refresh_on (from the IdP's refresh_in) has passed, a new token is fetched early."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    token = await provider.access_token()
    await asyncio.sleep(1.2)
    assert await provider.access_token() != token
    assert requests_made(smtp_oauth_sandbox) == 2


@sandbox_options(strict_refresh_rotation=True)
async def test_rotated_refresh_token_is_shared_between_providers(smtp_oauth_sandbox: Sandbox) -> None:
    """With strict rotation, two providers on one cache refreshing in turn never use a spent token."""
    first, settings = await signed_in(smtp_oauth_sandbox)
    second = create_token_provider(settings)
    for provider in (first, second, first, second):
        await provider.access_token(force_refresh=True)
    assert smtp_oauth_sandbox.idp.token_requests["refresh_token"] == 4


async def test_revoked_refresh_token_says_sign_in_again(smtp_oauth_sandbox: Sandbox) -> None:
    """A revoked refresh token: permanent invalid_grant whose explanation says to log in again."""
    provider, _ = await signed_in(smtp_oauth_sandbox)
    smtp_oauth_sandbox.idp.revoke_refresh_tokens()
    with pytest.raises(TokenError) as caught:
        await provider.access_token(force_refresh=True)
    assert caught.value.error == "invalid_grant"
    assert not caught.value.temporary
    assert "smtp-oauth login" in (caught.value.explain() or "")


# -- errors ----------------------------------------------------------------------------------------


async def test_wrong_secret_is_permanent_with_aadsts_code(smtp_oauth_sandbox: Sandbox) -> None:
    """A wrong secret: TokenError invalid_client / AADSTS7000215, permanent, secret not in the message."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, client_secret="Wrong8Q~secret-value"))
    with pytest.raises(TokenError) as caught:
        await provider.access_token()
    error = caught.value
    assert error.error == "invalid_client"
    assert error.aadsts_code == 7000215
    assert not error.temporary
    assert error.correlation_id
    authority = f"{smtp_oauth_sandbox.authority_host}/{smtp_oauth_sandbox.tenant.tenant_id}"
    assert str(error).startswith(
        f"token request refused by {authority}: "
        "invalid_client: AADSTS7000215: Invalid client secret provided."
    )
    assert str(error).endswith(f"(correlation id {error.correlation_id})")
    assert "Wrong8Q~secret-value" not in str(error)
    assert "Certificates & secrets" in (error.explain() or "")


async def test_retry_after_a_refusal_reaches_the_idp(smtp_oauth_sandbox: Sandbox) -> None:
    """After a 400/401 the next attempt is a real request (MSAL's 60 s replay of refusals is bypassed)."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, client_secret="Wrong8Q~secret-value"))
    for _ in range(2):
        with pytest.raises(TokenError):
            await provider.access_token()
    assert requests_made(smtp_oauth_sandbox) == 2


async def test_unknown_client_id(smtp_oauth_sandbox: Sandbox) -> None:
    """An unknown client id is AADSTS700016, whose hint names the client and tenant."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, client_id="0000-not-registered"))
    with pytest.raises(TokenError) as caught:
        await provider.access_token()
    assert caught.value.aadsts_code == 700016
    assert "0000-not-registered" in (caught.value.explain() or "")


async def test_unknown_tenant_is_a_configuration_error(smtp_oauth_sandbox: Sandbox) -> None:
    """A tenant the IdP does not know (AADSTS90002 at discovery) is a configuration error with a hint."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox, tenant_id="no-such-tenant"))
    with pytest.raises(ConfigurationError, match="AADSTS90002") as caught:
        await provider.access_token()
    assert "identity.tenant_id" in (caught.value.explain() or "")


async def test_idp_503_is_temporary_and_the_next_call_succeeds(smtp_oauth_sandbox: Sandbox) -> None:
    """HTTP 503 from the IdP is a temporary TokenError; the next call (fresh MSAL app) succeeds."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    smtp_oauth_sandbox.idp.fail_next(1, status=503)
    with pytest.raises(TokenError) as caught:
        await provider.access_token()
    assert caught.value.temporary
    assert "503" in str(caught.value)
    assert await provider.access_token()


async def test_idp_429_is_temporary(smtp_oauth_sandbox: Sandbox) -> None:
    """HTTP 429 (throttled) is temporary: a retry later can help."""
    provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    smtp_oauth_sandbox.idp.fail_next(1, status=429, retry_after=1)
    with pytest.raises(TokenError) as caught:
        await provider.access_token()
    assert caught.value.temporary


async def test_unreachable_idp_is_temporary(smtp_oauth_sandbox: Sandbox) -> None:
    """Nothing listening at the authority: temporary TokenError saying it cannot be reached."""
    settings = settings_for(smtp_oauth_sandbox, authority_host=f"https://127.0.0.1:{closed_port()}")
    with pytest.raises(TokenError, match="cannot reach the identity provider") as caught:
        await create_token_provider(settings).access_token()
    assert caught.value.temporary


async def test_untrusted_idp_certificate_is_reported(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """Without the sandbox CA in identity.ca_file, TLS verification fails and says so."""
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(
        smtp_oauth_sandbox.tenant.certificate_path.read_text().split("-----END PRIVATE KEY-----")[1]
    )
    settings = settings_for(smtp_oauth_sandbox, ca_file=str(other_ca))
    with pytest.raises(TokenError, match="certificate verify failed"):
        await create_token_provider(settings).access_token()


async def test_untrusted_idp_certificate_hint_names_identity_ca_file(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """An untrusted IdP certificate: the whole reason, and a hint naming identity.ca_file."""
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(
        smtp_oauth_sandbox.tenant.certificate_path.read_text().split("-----END PRIVATE KEY-----")[1]
    )
    settings = settings_for(smtp_oauth_sandbox, ca_file=str(other_ca))
    with pytest.raises(TokenError) as caught:
        await create_token_provider(settings).access_token()
    assert str(caught.value).endswith("certificate verify failed: unable to get local issuer certificate")
    hint = caught.value.explain() or ""
    assert "identity.ca_file" in hint
    assert "try again later" not in hint


def test_certificate_reason_keeps_quoted_names() -> None:
    """A hostname mismatch keeps the name it quotes; only OpenSSL's source position is dropped."""
    import requests

    from smtp_oauth.tokens.msal_errors import _network_reason

    wrapped = (
        "HTTPSConnectionPool(host='idp.example', port=443): Max retries exceeded with url: /t "
        '(Caused by SSLError(SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate '
        "verify failed: Hostname mismatch, certificate is not valid for 'idp.example'. (_ssl.c:1006)\")))"
    )
    reason = _network_reason(requests.exceptions.SSLError(wrapped))
    assert (
        reason == "certificate verify failed: Hostname mismatch, certificate is not valid for 'idp.example'."
    )


async def test_missing_identity_ca_file_is_a_configuration_error(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """identity.ca_file naming no file: a ConfigurationError (exit 78) naming the key, not exit 77."""
    settings = settings_for(smtp_oauth_sandbox, ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError) as caught:
        await create_token_provider(settings).access_token()
    assert caught.value.key == "identity.ca_file"
    assert "missing.pem" in str(caught.value)


async def test_ca_file_beats_requests_ca_bundle(
    smtp_oauth_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """identity.ca_file is trusted even when REQUESTS_CA_BUNDLE points elsewhere (psf/requests#3829)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca-bundle.pem")
    assert await create_token_provider(settings_for(smtp_oauth_sandbox)).access_token()


# -- logs ------------------------------------------------------------------------------------------


async def test_debug_logs_hold_no_secret_or_token(
    smtp_oauth_sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, logs (ours and MSAL's) contain neither the client secret, the password nor any token."""
    caplog.set_level(logging.DEBUG)
    app_provider = create_token_provider(settings_for(smtp_oauth_sandbox))
    ropc = settings_for(smtp_oauth_sandbox, "username_password")
    user_provider = create_token_provider(ropc)
    tokens = [await app_provider.access_token(), await app_provider.access_token(force_refresh=True)]
    tokens += [await user_provider.access_token(), await user_provider.access_token(force_refresh=True)]
    cache = "".join(path.read_text() for path in ropc.token_cache_path.glob("*.json"))
    refresh_tokens = re.findall(r'"secret": "([^"]{20,})"', cache)
    text = caplog.text
    assert "acquired (source=identity_provider, expires in" in text
    secrets = [smtp_oauth_sandbox.tenant.app.client_secret, smtp_oauth_sandbox.tenant.user.password]
    for secret in [*secrets, *tokens, *refresh_tokens]:
        assert secret
        assert secret not in text
