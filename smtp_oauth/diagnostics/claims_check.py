"""Does this access token fit Exchange Online SMTP? Pure checks over decoded claims.

What Exchange Online requires (https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth):
the audience is Exchange Online
(``https://outlook.office365.com``, ``https://outlook.office.com`` or its application id); an
app-only token carries the ``SMTP.SendAsApp`` role or, under SMTP App RBAC, no role at all (which
model is reported; see ``app_access``), a delegated one the ``SMTP.Send`` scope; a
delegated token may only authenticate as the signed-in user's own mailbox, or a mailbox that user
holds FullAccess on. Anything else is answered ``535 5.7.3`` with no reason, which is why the
check looks first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from smtp_oauth.diagnostics.app_access import access_model, describe_model
from smtp_oauth.diagnostics.report import Status, StepResult
from smtp_oauth.errors import FailureKind
from smtp_oauth.settings.models import CLOUDS, Settings

__all__ = [
    "APP_ROLE",
    "DELEGATED_SCOPE",
    "EXCHANGE_APP_ID",
    "check_claims",
    "exchange_audiences",
    "scopes_problem",
    "signed_in_user",
]

EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"  # "Office 365 Exchange Online"
APP_ROLE = "SMTP.SendAsApp"
DELEGATED_SCOPE = "SMTP.Send"
CLOCK_SKEW = timedelta(minutes=5)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")

TITLE = "token claims"
_FACT_CLAIMS = ("aud", "roles", "scp", "tid", "oid", "appid", "azp")


def exchange_audiences(settings: Settings) -> set[str]:
    """The ``aud`` values Exchange Online accepts in the configured cloud."""
    cloud = CLOUDS[settings.identity.cloud]
    return {
        cloud.app_scope.removesuffix("/.default"),
        cloud.delegated_scope.rsplit("/", 1)[0],
        EXCHANGE_APP_ID,
    }


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(item) for item in value]
    return []


def signed_in_user(claims: Mapping[str, Any]) -> str | None:
    """The user a delegated token was issued to (upn, else preferred_username, else unique_name)."""
    for name in ("upn", "preferred_username", "unique_name", "email"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


Problem = tuple[str, str]  # (what is wrong, the fix)


def _default_scopes_text(settings: Settings) -> str:
    cloud = CLOUDS[settings.identity.cloud]
    return f'["{cloud.delegated_scope}"]' if settings.identity.is_delegated else f'["{cloud.app_scope}"]'


def _consent_url(settings: Settings) -> str:
    identity = settings.identity
    authority = f"{identity.effective_authority_host}/{identity.tenant_id}"
    return f"{authority}/adminconsent?client_id={identity.client_id}"


_OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})


def scopes_problem(settings: Settings) -> str | None:
    """When identity.scopes asks for an API other than Exchange Online: what to change, else None.

    Entra answers such a request with AADSTS500011 (unknown resource) or a token Exchange refuses
    with 535 5.7.3; either way the cause is the configured scopes.
    """
    scopes = settings.identity.scopes
    if not scopes:
        return None
    expected = exchange_audiences(settings)
    foreign = [
        scope
        for scope in scopes
        if scope.lower() not in _OIDC_SCOPES and scope.rpartition("/")[0] not in expected
    ]
    if not foreign:
        return None
    return (
        f"identity.scopes asks for {', '.join(foreign)}, which is not Exchange Online "
        f"({', '.join(sorted(expected - {EXCHANGE_APP_ID}))}): a token for it has the wrong audience. "
        f"Remove identity.scopes to use the default {_default_scopes_text(settings)}, or set it to that."
    )


def _audience_problem(claims: Mapping[str, Any], settings: Settings, now: datetime) -> Problem | None:
    audiences = _as_list(claims.get("aud"))
    expected = exchange_audiences(settings)
    if set(audiences) & expected:
        return None
    scopes = settings.identity.scopes
    configured = f"identity.scopes is {scopes}" if scopes else "the scopes"
    fix = scopes_problem(settings) or (
        f"{configured} ask for another API. Remove identity.scopes to use the default "
        f"{_default_scopes_text(settings)}, or set it to that."
    )
    return (
        f"the token is for {', '.join(audiences) or '(no audience)'}, not Exchange Online "
        f"({', '.join(sorted(expected - {EXCHANGE_APP_ID}))}); Exchange refuses it with 535 5.7.3",
        fix + ' (Microsoft Graph is configured in [graph], with transport = "graph".)',
    )


def _issuer_problem(claims: Mapping[str, Any], settings: Settings, now: datetime) -> Problem | None:
    client, tenant = settings.identity.client_id, settings.identity.tenant_id
    app_id = claims.get("appid") or claims.get("azp")
    # A system-assigned managed identity has no configured client id; nor a tenant.
    if isinstance(app_id, str) and client is not None and app_id.lower() != client.lower():
        return (
            f"the token was issued to application {app_id}, not identity.client_id {client}",
            "Check identity.client_id, and that identity.token_cache is not shared with another app.",
        )
    tid = claims.get("tid")
    # A tenant configured by domain name cannot be compared with the token's GUID.
    if isinstance(tid, str) and tenant is not None and _GUID.match(tenant) and tid.lower() != tenant.lower():
        return (
            f"the token was issued by tenant {tid}, not identity.tenant_id {tenant}",
            "Set identity.tenant_id to the tenant that holds the mailbox.",
        )
    return None


def _permission_problem(claims: Mapping[str, Any], settings: Settings, now: datetime) -> Problem | None:
    client = settings.identity.client_id
    if settings.identity.is_delegated:
        scopes = _as_list(claims.get("scp"))
        if DELEGATED_SCOPE in scopes:
            return None
        return (
            f"the delegated token has no {DELEGATED_SCOPE} scope (scp: {' '.join(scopes) or 'none'})",
            f"Add the delegated permission {DELEGATED_SCOPE} (API permissions > Add a permission > "
            f"Microsoft Graph > Delegated permissions > {DELEGATED_SCOPE}) to app {client}, grant "
            f"consent ({_consent_url(settings)}), then sign in again: smtp-oauth logout && smtp-oauth login",
        )
    # An app-only token without SMTP.SendAsApp is valid: SMTP App RBAC grants the mailbox through a
    # role assignment, not a permission (app_access.py); only Exchange's AUTH can tell.
    return None


def _time_problem(claims: Mapping[str, Any], settings: Settings, now: datetime) -> Problem | None:
    clock_fix = "Check this machine's clock (timedatectl; an NTP client such as chrony)."
    expiry = _timestamp(claims.get("exp"))
    if expiry is not None and expiry <= now:
        return f"the token expired at {expiry:%Y-%m-%d %H:%M:%S} UTC, before it was used", clock_fix
    not_before = _timestamp(claims.get("nbf"))
    if not_before is not None and not_before > now + CLOCK_SKEW:
        return (
            f"the token is valid only from {not_before:%H:%M:%S} UTC: this machine's clock is behind",
            clock_fix,
        )
    return None


_PROBLEMS = (_audience_problem, _issuer_problem, _permission_problem, _time_problem)


def _mailbox_note(claims: Mapping[str, Any], settings: Settings) -> str | None:
    """Delegated: a token for another user works only on a mailbox that user has FullAccess on."""
    user, mailbox = signed_in_user(claims), settings.smtp.username
    if not settings.identity.is_delegated or not user or user.lower() == mailbox.lower():
        return None
    return (
        f"signed in as {user} but smtp.username is {mailbox}: Exchange accepts this only if "
        f"{user} has FullAccess on {mailbox} (a shared mailbox: Add-MailboxPermission -Identity "
        f"{mailbox} -User {user} -AccessRights FullAccess); otherwise set smtp.username = "
        f'"{user}" or sign in as {mailbox} (smtp-oauth logout && smtp-oauth login)'
    )


def check_claims(claims: Mapping[str, Any], settings: Settings, *, now: datetime | None = None) -> StepResult:
    """PASS, WARN or FAIL for a token's claims against the settings; the fix names the user's ids."""
    now = now or datetime.now(UTC)
    facts: dict[str, Any] = {name: claims[name] for name in _FACT_CLAIMS if name in claims}
    if not settings.identity.is_delegated:
        facts["model"] = access_model(claims).value
    expiry = _timestamp(claims.get("exp"))
    if expiry is not None:
        facts["expires_at"] = expiry.isoformat(timespec="seconds")
    user = signed_in_user(claims)
    if user:
        facts["user"] = user
    for find in _PROBLEMS:
        problem = find(claims, settings, now)
        if problem is not None:
            detail, fix = problem
            return StepResult("claims", TITLE, Status.FAIL, detail, fix, FailureKind.DENIED, facts)
    note = _mailbox_note(claims, settings)
    status = Status.WARN if note else Status.PASS
    return StepResult(
        "claims",
        TITLE,
        status,
        _describe(claims, now=now, app_only=not settings.identity.is_delegated),
        note,
        facts=facts,
    )


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value, tz=UTC)


def _describe(claims: Mapping[str, Any], *, now: datetime, app_only: bool) -> str:
    parts = [f"aud {', '.join(_as_list(claims.get('aud')))}"]
    roles, scopes = _as_list(claims.get("roles")), _as_list(claims.get("scp"))
    if roles:
        parts.append(f"roles {', '.join(roles)}")
    if scopes:
        parts.append(f"scp {' '.join(scopes)}")
    if app_only:
        parts.append(f"model: {describe_model(access_model(claims))}")
    user = signed_in_user(claims)
    if user:
        parts.append(f"user {user}")
    elif isinstance(claims.get("oid"), str):
        parts.append(f"service principal {claims['oid']}")
    expiry = _timestamp(claims.get("exp"))
    if expiry is not None:
        minutes = int((expiry - now).total_seconds() // 60)
        parts.append(f"expires in {minutes} min ({expiry:%H:%M:%S} UTC)")
    return ", ".join(parts)
