"""``check`` for ``transport = "graph"``: Graph's token claims and a dry request to the mailbox.

The steps after the configuration: a Graph token (``graph.scopes``), its claims (audience
``https://graph.microsoft.com``; ``roles`` or ``scp`` ``Mail.Send``, or no roles at all, which is
RBAC for Applications, where Exchange decides per mailbox), then the **dry request**: a
``sendMail`` to the mailbox whose body is deliberately not base64. Graph checks the token, the
mailbox and the ``Mail.Send`` permission before it reads the body, so the answer
``400 ErrorMimeContentInvalidBase64String`` proves the mailbox can send, and nothing is sent. It
needs no permission beyond Mail.Send (reading the mailbox or its folders would need Mail.Read or
User.Read.All, which a sending app should not have). Then whether large messages can go through
drafts (``Mail.ReadWrite`` in the token), then ``--send-test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smtp_oauth.diagnostics.report import Status, StepResult
from smtp_oauth.errors import FailureKind
from smtp_oauth.settings.models import Settings

__all__ = ["DRY_REQUEST_BODY", "GRAPH_STEPS", "check_graph_claims", "graph_audiences", "large_message_step"]

GRAPH_STEPS: dict[str, str] = {
    "config": "configuration",
    "token": "access token",
    "claims": "token claims",
    "mailbox": "Graph sendMail permission (dry request)",
    "large": "large messages (Mail.ReadWrite)",
    "send": "test message",
}
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"  # "Microsoft Graph"
DRY_REQUEST_BODY = b"!not-base64: smtp-oauth check"  # Graph refuses it after authorizing the request
_MAIL_SEND = "Mail.Send"
_READ_WRITE = "Mail.ReadWrite"


def graph_audiences(settings: Settings) -> set[str]:
    """The ``aud`` values Graph accepts in the configured cloud."""
    return {settings.identity.cloud_preset.graph_endpoint, GRAPH_APP_ID}


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(item) for item in value]
    return []


def _consent_url(settings: Settings) -> str:
    identity = settings.identity
    authority = f"{identity.effective_authority_host}/{identity.tenant_id}"
    return f"{authority}/adminconsent?client_id={identity.client_id}"


def check_graph_claims(claims: Mapping[str, Any], settings: Settings) -> StepResult:
    """PASS/WARN/FAIL for a Graph token: audience, then Mail.Send (role, scope, or RBAC)."""
    audiences = _as_list(claims.get("aud"))
    facts = {name: claims[name] for name in ("aud", "roles", "scp", "tid", "oid", "appid") if name in claims}
    client = settings.identity.client_id
    if not set(audiences) & graph_audiences(settings):
        return StepResult(
            "claims",
            GRAPH_STEPS["claims"],
            Status.FAIL,
            f"the token is for {', '.join(audiences) or '(no audience)'}, not Microsoft Graph "
            f"({settings.identity.cloud_preset.graph_endpoint}); Graph refuses it with 401",
            f"graph.scopes is {settings.graph.scopes}: remove it to use the default {settings.graph_scopes}."
            if settings.graph.scopes
            else "Check identity.cloud.",
            FailureKind.DENIED,
            facts,
        )
    if settings.identity.is_delegated:
        scopes = _as_list(claims.get("scp"))
        if _MAIL_SEND in scopes:
            return StepResult(
                "claims",
                GRAPH_STEPS["claims"],
                Status.PASS,
                f"aud {audiences[0]}, scp {' '.join(scopes)}",
                facts=facts,
            )
        return StepResult(
            "claims",
            GRAPH_STEPS["claims"],
            Status.FAIL,
            f"the delegated token has no Mail.Send scope (scp: {' '.join(scopes) or 'none'})",
            f"Add the delegated permission Microsoft Graph > Mail.Send to app {client}, grant consent "
            f"({_consent_url(settings)}), then sign in again: smtp-oauth logout && smtp-oauth login",
            FailureKind.DENIED,
            facts,
        )
    roles = _as_list(claims.get("roles"))
    if _MAIL_SEND in roles:
        return StepResult(
            "claims",
            GRAPH_STEPS["claims"],
            Status.PASS,
            f"aud {audiences[0]}, roles {', '.join(roles)} (the Graph permission: every mailbox)",
            facts=facts,
        )
    return StepResult(
        "claims",
        GRAPH_STEPS["claims"],
        Status.PASS,
        f"aud {audiences[0]}, no Mail.Send role: the RBAC for Applications model, where Exchange "
        "grants the app chosen mailboxes (the dry request checks this one)",
        facts=facts,
    )


def large_message_step(claims: Mapping[str, Any], settings: Settings) -> StepResult:
    """Whether messages over ~3 MB can go through drafts: Mail.ReadWrite in the token (WARN if not)."""
    granted = _as_list(claims.get("scp" if settings.identity.is_delegated else "roles"))
    if _READ_WRITE in granted:
        return StepResult(
            "large",
            GRAPH_STEPS["large"],
            Status.PASS,
            "Mail.ReadWrite granted: messages over 3 MB go through a draft and upload sessions",
        )
    return StepResult(
        "large",
        GRAPH_STEPS["large"],
        Status.WARN,
        "no Mail.ReadWrite in the token: messages over about 3 MB will be refused (exit 65) unless an "
        "RBAC role assignment ('Application Mail.ReadWrite') grants it",
        f"To send large messages, add Microsoft Graph > Mail.ReadWrite to app {settings.identity.client_id} "
        f"and grant admin consent ({_consent_url(settings)}); or send them through SMTP.",
    )
