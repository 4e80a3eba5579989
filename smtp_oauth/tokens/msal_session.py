"""The MSAL calls behind ``MsalTokenProvider``: one app per session, every flow, errors mapped.

Blocking code, run in worker threads by ``provider.py``. Sources for MSAL's behaviour: its
reference, https://learn.microsoft.com/python/api/msal/msal.application, and its source (msal 1.39,
https://github.com/AzureAD/microsoft-authentication-library-for-python). No msal or requests
exception leaves this module: every entry point runs through ``token_errors.ErrorMapper.translated``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import msal
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.tokens.http import IdpHttpClient
from smtp_oauth.tokens.msal_errors import ErrorMapper, RecordingHttpClient
from smtp_oauth.tokens.types import (
    RESERVED_SCOPES,
    AbortSignal,
    DeviceCodePrompt,
    IssuedToken,
    SignedIn,
    request_scopes,
)

if TYPE_CHECKING:
    from smtp_oauth.settings.models import IdentitySettings, Settings
    from smtp_oauth.tokens.cache import TokenCache

__all__ = ["MsalSession", "certificate_credential"]

log = logging.getLogger(__name__)

# MSAL warns (DeprecationWarning) on every username/password grant; we log our own warning once.
_ROPC_DEPRECATION = "This API has been deprecated for public client flows"

_PEM_KEY = re.compile(
    r"-----BEGIN (?:ENCRYPTED |RSA |EC )?PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S
)
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

_T = TypeVar("_T")


def certificate_credential(identity: IdentitySettings) -> dict[str, str]:
    """MSAL's credential dict for a PEM holding the private key and the certificate.

    msal >= 1.35 computes the SHA-256 thumbprint (PS256 assertion) and the x5c header from
    ``public_certificate``. The key is checked here so that a wrong password or a PEM without a
    key says so, instead of failing inside MSAL.
    """
    path = identity.certificate_path
    assert path is not None  # checked by the caller
    try:
        pem = Path(path).expanduser().read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
        raise ConfigurationError(
            f"cannot read identity.certificate_path {path}: {reason}", key="identity.certificate_path"
        ) from exc
    key_match, certificates = _PEM_KEY.search(pem), _PEM_CERT.findall(pem)
    if key_match is None or not certificates:
        raise ConfigurationError(
            f"identity.certificate_path {path} must hold a PEM private key and its certificate "
            f"(found: {'a key' if key_match else 'no key'}, {len(certificates)} certificate(s))",
            key="identity.certificate_path",
            hint="Concatenate them: cat app.key app.crt > app.pem (chmod 600 app.pem).",
        )
    password = identity.certificate_password.get_secret_value() if identity.certificate_password else None
    try:
        load_pem_private_key(key_match.group(0).encode(), password.encode() if password else None)
        x509.load_pem_x509_certificate(certificates[0].encode())
    except (ValueError, TypeError) as exc:
        # With a password set, a wrong one is the cause whatever cryptography says: about 1 wrong
        # password in 300 decrypts to garbage and reads "... may be encrypted with an unsupported ...".
        if password and "not encrypted" in str(exc):
            problem = "is not encrypted: remove identity.certificate_password"
        elif password:
            problem = "cannot be decrypted with identity.certificate_password"
        elif "encrypted" in str(exc):
            problem = "is encrypted: set identity.certificate_password"
        else:
            problem = "cannot be read"
        raise ConfigurationError(
            f"the private key in {path} {problem}", key="identity.certificate_password"
        ) from exc
    credential = {"private_key": key_match.group(0), "public_certificate": "\n".join(certificates)}
    if password:
        credential["passphrase"] = password
    return credential


class MsalSession:
    """One MSAL application over the persistent cache. Not thread-safe: the provider serializes."""

    def __init__(self, settings: Settings, cache: TokenCache) -> None:
        self._settings = settings
        self._identity = settings.identity
        self._cache = cache
        self._default_scopes = request_scopes(self._identity.effective_scopes)
        self._authority = self._identity.authority
        netloc = None if self._identity.is_microsoft_authority else urlsplit(self._authority).netloc
        ca_file = str(self._identity.ca_file) if self._identity.ca_file else None
        if ca_file is not None and not (Path(ca_file).is_file() and os.access(ca_file, os.R_OK)):
            # requests would raise a bare OSError on the first request: a refused token, exit 77.
            raise ConfigurationError(
                f"identity.ca_file {ca_file} is not a readable file",
                key="identity.ca_file",
                hint="Point identity.ca_file at a readable PEM file of CA certificates, or remove it "
                "to trust the system's CAs (Entra ID needs nothing else).",
            )
        self._http = RecordingHttpClient(
            IdpHttpClient(timeout=self._identity.timeout, ca_file=ca_file, authority_netloc=netloc)
        )
        self._errors = ErrorMapper(self._authority, self._http, settings.hint_context())
        self._app: Any = self._translated(self._build_app)
        self._ropc_warned = False

    # -- plumbing -------------------------------------------------------------------------------

    def _build_app(self) -> Any:
        common: dict[str, Any] = {
            "authority": self._authority,
            "token_cache": self._cache,
            "http_client": self._http,
            "app_name": "smtp-oauth",
        }
        if not self._identity.is_microsoft_authority:
            common["instance_discovery"] = False  # the sandbox or a private IdP: used as given
        if self._identity.flow == "workload_identity":
            from smtp_oauth.tokens.federated import FederatedTokenFile

            assert self._identity.federated_token_file is not None  # settings require it
            # A callable: MSAL calls it for each token request, so a rotated file is always re-read.
            assertion = {"client_assertion": FederatedTokenFile(self._identity.federated_token_file)}
            return msal.ConfidentialClientApplication(
                self._identity.client_id, client_credential=assertion, **common
            )
        if self._identity.flow == "client_credentials":
            credential: str | dict[str, str]
            if self._identity.client_secret is not None:
                credential = self._identity.client_secret.get_secret_value()
            else:
                credential = certificate_credential(self._identity)
            return msal.ConfidentialClientApplication(
                self._identity.client_id, client_credential=credential, **common
            )
        return msal.PublicClientApplication(self._identity.client_id, **common)

    def close(self) -> None:
        """Release the HTTP connections (the provider drops a session after a failure)."""
        self._http.close()

    def _translated(self, call: Callable[[], _T]) -> _T:
        return self._errors.translated(call)

    def _token_error(self, message: str, **kwargs: Any) -> TokenError:
        return self._errors.token_error(message, **kwargs)

    def _issued(self, result: dict[str, Any] | None) -> IssuedToken:
        if result is None:
            raise self._no_cached_token()
        if "access_token" not in result:
            raise self._errors.from_result(result)
        now = time.time()
        refresh_on = result.get("refresh_on")
        return IssuedToken(
            access_token=result["access_token"],
            expires_on=now + float(result.get("expires_in", 0)),
            refresh_on=float(refresh_on) if refresh_on else None,
            source=str(result.get("token_source", "identity_provider")),
        )

    def _no_cached_token(self) -> TokenError:
        who = f" for {self._identity.username}" if self._identity.username else ""
        return self._token_error(
            f"no signed-in account{who} in the token cache {self._cache.location}; run `smtp-oauth login`",
            error="no_cached_token",
        )

    # -- access tokens --------------------------------------------------------------------------

    def acquire(
        self, *, scopes: list[str] | None = None, force_refresh: bool, min_validity: float
    ) -> IssuedToken:
        """Silent first (cache, then refresh token), then the non-interactive grant if there is one.

        ``scopes`` (default ``identity.scopes``) choose the resource: one app and one cache serve
        Exchange Online and Microsoft Graph alike. Holds the cache's cross-process lock throughout,
        so that a refresh token is read, redeemed and replaced by one process at a time (strict
        rotation) and others then find the new token.
        """
        wanted = request_scopes(scopes) if scopes else self._default_scopes

        def run() -> IssuedToken:
            with self._cache.locked():
                if not self._identity.is_delegated:  # client credentials, workload identity
                    return self._client_credentials(wanted, force_refresh, min_validity)
                return self._delegated(wanted, force_refresh, min_validity)

        return self._translated(run)

    def _forget_app_tokens(self, scopes: list[str]) -> None:
        """Drop the app's cached tokens for ``scopes`` only: another resource's token stays usable.

        MSAL refuses ``force_refresh`` for client credentials; without a cached token it asks the IdP.
        """
        # As msal's remove_tokens_for_client, but for these scopes only.
        query = {
            "client_id": self._identity.client_id,
            "environment": self._app.authority.instance,
            "home_account_id": None,  # app-only tokens belong to no account
        }
        for entry in list(
            self._cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN, target=scopes, query=query)
        ):
            self._cache.remove_at(entry)

    def _client_credentials(self, scopes: list[str], force_refresh: bool, min_validity: float) -> IssuedToken:
        if force_refresh:
            self._forget_app_tokens(scopes)
        issued = self._issued(self._app.acquire_token_for_client(scopes))
        if issued.source == "cache" and issued.remaining() < min_validity:
            self._forget_app_tokens(scopes)
            issued = self._issued(self._app.acquire_token_for_client(scopes))
        return issued

    def _delegated(self, scopes: list[str], force_refresh: bool, min_validity: float) -> IssuedToken:
        account = self._account()
        if account is None:
            return self._password_grant(scopes)
        result = self._app.acquire_token_silent_with_error(scopes, account, force_refresh=force_refresh)
        if result is None or (
            "error" in result and result.get("error") in {"invalid_grant", "interaction_required"}
        ):
            # Nothing cached, or the refresh token is dead: ROPC can sign in again by itself.
            if self._identity.flow == "username_password":
                return self._password_grant(scopes)
            if result is None:
                raise self._no_cached_token()
        issued = self._issued(result)
        if issued.source == "cache" and issued.remaining() < min_validity:
            issued = self._issued(
                self._app.acquire_token_silent_with_error(scopes, account, force_refresh=True)
            )
        return issued

    def _account(self) -> dict[str, Any] | None:
        """The cached account for identity.username; else smtp.username's; else the only one."""
        if self._identity.username:
            matches = self._app.get_accounts(username=self._identity.username)
            return matches[0] if matches else None
        matches = self._app.get_accounts(username=self._settings.smtp.username)
        if matches:
            return dict(matches[0])
        accounts = self._app.get_accounts()
        if len(accounts) > 1:
            names = ", ".join(sorted(str(a.get("username")) for a in accounts))
            raise ConfigurationError(
                f"several accounts are signed in ({names}); set identity.username to choose one",
                key="identity.username",
            )
        return dict(accounts[0]) if accounts else None

    def _password_grant(self, scopes: list[str]) -> IssuedToken:
        if self._identity.flow != "username_password":
            raise self._no_cached_token()
        result = self._password_result(scopes)
        return self._issued(result)

    def _password_result(self, scopes: list[str]) -> dict[str, Any]:
        identity = self._identity
        if identity.username is None or identity.password is None:
            raise ConfigurationError(
                "username/password sign-in needs identity.username and identity.password",
                key="identity.password",
            )
        if not self._ropc_warned:
            log.warning(
                "identity.flow = username_password (ROPC): multi-factor authentication and Conditional "
                "Access policies block it; prefer client_credentials or `smtp-oauth login` (device code)"
            )
            self._ropc_warned = True
        # Silenced around this call only: a library must leave its host's warning filters alone.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ROPC_DEPRECATION, category=DeprecationWarning)
            result: dict[str, Any] = self._app.acquire_token_by_username_password(
                identity.username, identity.password.get_secret_value(), scopes
            )
        return result

    # -- on-behalf-of (a middle tier sending as the user whose token it received) ---------------

    def on_behalf_of(
        self,
        assertion: str,
        *,
        account_id: str | None,
        scopes: list[str],
        force_refresh: bool,
        min_validity: float,
    ) -> tuple[IssuedToken, str, str | None]:
        """The user's token for ``scopes``: from the cache for a known user (``account_id``, the
        home account id an earlier exchange of a token of theirs gave), else by the OBO grant.

        Returns (token, home account id, username). MSAL itself does not look in the cache for
        on-behalf-of; its result carries client_info and an id token, so the user's tokens are
        cached under their own account, apart from every other user's.
        https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-on-behalf-of-flow
        """
        wanted = request_scopes(scopes)

        def cached() -> tuple[IssuedToken, str, str | None] | None:
            accounts = [a for a in self._app.get_accounts() if a.get("home_account_id") == account_id]
            if not accounts or force_refresh:
                return None
            result = self._app.acquire_token_silent_with_error(wanted, accounts[0])
            if not result or "access_token" not in result:
                return None  # no token or a dead refresh token: exchange the assertion again
            issued = self._issued(result)
            if issued.remaining() < min_validity:
                result = self._app.acquire_token_silent_with_error(wanted, accounts[0], force_refresh=True)
                if not result or "access_token" not in result:
                    return None
                issued = self._issued(result)
            return issued, str(account_id), accounts[0].get("username")

        def run() -> tuple[IssuedToken, str, str | None]:
            with self._cache.locked():
                found = cached() if account_id else None
                if found is not None:
                    return found
                result = self._app.acquire_token_on_behalf_of(assertion, wanted)
                issued = self._issued(result)
                claims = result.get("id_token_claims") or {}
                home = _home_account_id(result) or str(claims.get("oid", ""))
                username = claims.get("preferred_username") or claims.get("upn")
                return issued, home, str(username) if username else None

        return self._translated(run)

    # -- delegated sign-in (login) ----------------------------------------------------------------

    def _signed_in(self, result: dict[str, Any], scopes: list[str]) -> SignedIn:
        issued = self._issued(result)  # raises for error dicts
        claims = result.get("id_token_claims") or {}
        scope = result.get("scope")
        return SignedIn(
            username=claims.get("preferred_username") or claims.get("upn"),
            scopes=[s for s in str(scope).split() if s.lower() not in RESERVED_SCOPES]
            if scope
            else list(scopes),
            expires_on=datetime.fromtimestamp(issued.expires_on, tz=UTC),
            tenant_id=claims.get("tid"),
        )

    def sign_in_with_device_code(
        self, scopes: list[str], prompt: Callable[[DeviceCodePrompt], None], abort: AbortSignal
    ) -> SignedIn:
        scopes = request_scopes(scopes)

        def run() -> SignedIn:
            flow = self._app.initiate_device_flow(scopes=scopes)
            if "user_code" not in flow:
                raise self._errors.from_result(flow)
            prompt(
                DeviceCodePrompt(
                    verification_uri=str(flow.get("verification_uri") or flow.get("verification_url", "")),
                    user_code=str(flow["user_code"]),
                    message=str(flow.get("message", "")),
                    expires_in=int(flow.get("expires_in", 0)),
                )
            )
            # MSAL's documented way to stop polling from another thread.
            abort.on_abort(functools.partial(flow.__setitem__, "expires_at", 0))
            result = self._app.acquire_token_by_device_flow(flow)
            if result.get("error") in {"authorization_pending", "slow_down"}:
                reason = "was cancelled" if abort.aborted else "expired before the sign-in was completed"
                raise self._token_error(f"device code sign-in {reason}", error="expired_token")
            return self._signed_in(result, scopes)

        return self._translated(run)

    def sign_in_interactively(
        self, scopes: list[str], open_browser: Callable[[str], bool], timeout: float, abort: AbortSignal
    ) -> SignedIn:
        """Auth code + PKCE with a loopback redirect on a free port (RFC 8252), browser via our hook."""
        from msal.oauth2cli.authcode import AuthCodeReceiver

        scopes = request_scopes(scopes)

        def run() -> SignedIn:
            with _receiver_on_dynamic_port(AuthCodeReceiver) as receiver:
                abort.on_abort(receiver.close)
                flow = self._app.initiate_auth_code_flow(
                    scopes,
                    redirect_uri=f"http://localhost:{receiver.get_port()}",
                    response_mode="form_post",  # MSAL's receiver accepts only POSTed responses
                    # Pre-fills the account picker; the mailbox is usually the user's own.
                    login_hint=self._identity.username or self._settings.smtp.username,
                )
                if not _safe_open(open_browser, flow["auth_uri"]):
                    print(
                        "Could not open a browser. To sign in, open this address in a browser on this "
                        f"computer:\n\n{flow['auth_uri']}\n",
                        file=sys.stderr,
                        flush=True,
                    )
                response = receiver.get_auth_response(timeout=timeout, state=flow["state"])
            if not response:
                reason = "was cancelled" if abort.aborted else f"got no answer within {timeout:.0f} s"
                raise self._token_error(f"interactive sign-in {reason}", error="timeout")
            return self._signed_in(self._app.acquire_token_by_auth_code_flow(flow, response), scopes)

        return self._translated(run)

    def sign_in_with_password(self, scopes: list[str]) -> SignedIn:
        scopes = request_scopes(scopes)
        return self._translated(lambda: self._signed_in(self._password_result(scopes), scopes))

    def sign_out(self) -> int:
        """Remove this identity's tokens; how many cache entries went."""

        def run() -> int:
            with self._cache.locked():
                before = self._cache.count_entries()
                if not self._identity.is_delegated:
                    self._app.remove_tokens_for_client()
                else:
                    for account in self._accounts_to_forget():
                        self._app.remove_account(account)
                removed: int = before - self._cache.count_entries()
                return removed

        return self._translated(run)

    def _accounts_to_forget(self) -> Iterator[dict[str, Any]]:
        if self._identity.username:
            yield from self._app.get_accounts(username=self._identity.username)
        else:
            yield from self._app.get_accounts()


# IANA's dynamic/private range (RFC 6335): port 0 would give Linux's ephemeral range, which starts
# at 32768 and overlaps registered services' ports.
DYNAMIC_PORTS = range(49152, 65536)


def _receiver_on_dynamic_port(receiver_class: Any, attempts: int = 50) -> Any:
    """MSAL's loopback receiver listening on a free port in the dynamic range."""
    for port in random.sample(DYNAMIC_PORTS, attempts):
        try:
            return receiver_class(port=port)
        except OSError:  # taken: try another
            continue
    return receiver_class(port=0)


def _home_account_id(result: dict[str, Any]) -> str | None:
    """``<uid>.<utid>`` from a token response's client_info, as MSAL names the account."""
    import base64
    import json

    info = result.get("client_info")
    if not isinstance(info, str):
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(info + "=" * (-len(info) % 4)))
    except ValueError:
        return None
    if not isinstance(decoded, dict) or "uid" not in decoded or "utid" not in decoded:
        return None
    return f"{decoded['uid']}.{decoded['utid']}"


def _safe_open(open_browser: Callable[[str], bool], url: str) -> bool:
    with contextlib.suppress(Exception):
        return bool(open_browser(url))
    return False
