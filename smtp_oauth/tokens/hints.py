"""What to do about an ``AADSTS<n>`` code Entra ID answers with: the table, and one pure look-up.

The texts are abridged from Microsoft's list of error codes,
https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes . They are
templates: ``{tenant_id}``, ``{client_id}`` and ``{mailbox}`` are filled in with the user's ids when
the error is shown (``SmtpOAuthError.explain()``). Standard library only (no msal), so any code that
meets an AADSTS code maps it through this one table: ``msal_errors.py`` and the on-behalf-of flow
attach ``aadsts_hint(code)`` to the TokenError they raise.
"""

from __future__ import annotations

import re

__all__ = ["AADSTS_HINTS", "aadsts_code_of", "aadsts_hint"]

# AADSTS code -> cause and fix.
AADSTS_HINTS: dict[int, str] = {
    7000215: (
        "The client secret is wrong (AADSTS7000215). Copy the secret's *Value* (not its Secret ID) "
        "from Entra admin center > App registrations > {client_id} > Certificates & secrets into "
        "identity.client_secret."
    ),
    7000222: (
        "The client secret has expired (AADSTS7000222). Create a new secret under App registrations > "
        "{client_id} > Certificates & secrets and update identity.client_secret."
    ),
    700016: (
        "No application {client_id} exists in tenant {tenant_id} (AADSTS700016). Check identity.client_id "
        "and identity.tenant_id, and that the app is registered (or consented) in that tenant."
    ),
    90002: (
        "Tenant {tenant_id} was not found (AADSTS90002). Check identity.tenant_id (a GUID or a "
        "domain like contoso.onmicrosoft.com) and identity.cloud (global, usgov, china)."
    ),
    65001: (
        "Nobody has consented to the app's permissions (AADSTS65001). An admin can grant consent at "
        "https://login.microsoftonline.com/{tenant_id}/adminconsent?client_id={client_id}"
    ),
    50076: (
        "Multi-factor authentication is required (AADSTS50076). Username/password sign-in cannot do MFA: "
        "use `smtp-oauth login` (device code or interactive) or client credentials."
    ),
    700082: (
        "The refresh token expired after a long time unused (AADSTS700082). Sign in again with "
        "`smtp-oauth login`."
    ),
    70043: (
        "The refresh token is no longer valid under a Conditional Access sign-in frequency policy "
        "(AADSTS70043). Sign in again with `smtp-oauth login`."
    ),
    70000: (
        "The grant (refresh token or code) is invalid or was revoked (AADSTS70000). Sign in again with "
        "`smtp-oauth login`."
    ),
    50173: "The grant was revoked (AADSTS50173). Sign in again with `smtp-oauth login`.",
    500011: (
        "The resource principal (Office 365 Exchange Online) was not found in tenant {tenant_id} "
        "(AADSTS500011): the tenant has no Exchange Online, or the wrong cloud is configured "
        "(identity.cloud)."
    ),
    53003: (
        "A Conditional Access policy blocked the sign-in (AADSTS53003). Ask an admin to exclude this "
        "app or account from the policy, or to allow this location/device."
    ),
    7000218: (
        "The token request carried no credential (AADSTS7000218): set identity.client_secret or "
        "identity.certificate_path, or enable 'Allow public client flows' for delegated sign-in."
    ),
    500133: (
        "The user's access token has expired (AADSTS500133): on-behalf-of can only exchange a token that "
        "is still valid. The calling client must get a new token for this API and call again."
    ),
    500131: (
        "The user's token was not issued for this app (AADSTS500131): its audience must be application "
        "{client_id} (or api://{client_id}). The calling client must request a token for this API's scope."
    ),
    50013: (
        "The user's token failed validation (AADSTS50013: bad signature, or another tenant's key): only "
        "tokens Entra issued for this API can be exchanged on-behalf-of the user."
    ),
    50027: (
        "The user's token is not a valid JWT (AADSTS50027): pass the access token exactly as the caller "
        "sent it (without the 'Bearer ' prefix)."
    ),
    700025: (
        "The app is a public client and must not send a secret (AADSTS700025): remove "
        "identity.client_secret for delegated flows."
    ),
}


def aadsts_hint(code: int | None) -> str | None:
    """The cause and fix for AADSTS ``code`` (a template with ``{placeholders}``), or None."""
    return AADSTS_HINTS.get(code) if code is not None else None


def aadsts_code_of(text: str | None) -> int | None:
    """The number of the first ``AADSTS<n>`` in an Entra error description, if any."""
    if not text:
        return None
    match = re.search(r"AADSTS(\d+)", text)
    return int(match.group(1)) if match else None
