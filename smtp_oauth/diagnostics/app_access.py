"""How an app-only identity may use a mailbox: the two models Exchange Online knows, and their setup.

- **SMTP App RBAC** (since October 2025; recommended): the app holds *no* API permission, its
  token carries no ``roles``, and Exchange grants it mailboxes through a management role
  assignment scoped to them. No FullAccess, so the app cannot read the mailboxes.
  https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/smtp-app-rbac-onboarding
  ("Including the SMTP.SendAsApp claim would trigger an unnecessary check for mailbox permissions.")
- **API permission**: the Office 365 Exchange Online application permission ``SMTP.SendAsApp``
  (the token's ``roles``) with admin consent, plus ``Add-MailboxPermission ... FullAccess``.
  https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth

Both need the app's service principal registered in Exchange (``New-ServicePrincipal``). Which
one a token uses is read from its ``roles``; ``setup_script`` prints the PowerShell for either,
with the user's ids.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["AccessModel", "access_model", "describe_model", "setup_script"]

SEND_AS_APP = "SMTP.SendAsApp"
# Role assignments and mailbox permissions take a while to reach every Exchange server.
PROPAGATION_NOTE = (
    "Exchange can take up to about an hour (two, to be safe) before a new role assignment or "
    "mailbox permission takes effect: wait before reading a failed test as a wrong setup."
)


class AccessModel(enum.StrEnum):
    RBAC = "rbac"
    API_PERMISSION = "api_permission"


def access_model(claims: Mapping[str, Any]) -> AccessModel:
    """RBAC when the app-only token has no ``SMTP.SendAsApp`` role, else the API permission model."""
    roles = claims.get("roles")
    held = roles if isinstance(roles, list) else str(roles or "").split()
    return AccessModel.API_PERMISSION if SEND_AS_APP in held else AccessModel.RBAC


def describe_model(model: AccessModel) -> str:
    if model is AccessModel.RBAC:
        return (
            "SMTP App RBAC (no roles in the token: Exchange checks an 'Application SMTP.SendAsApp' "
            "role assignment covering the mailbox)"
        )
    return "API permission SMTP.SendAsApp (Exchange checks the app's FullAccess on the mailbox)"


def setup_script(model: AccessModel, ids: Mapping[str, str]) -> str:
    """The Exchange Online PowerShell that gives the app the mailbox under ``model``.

    ``ids``: client_id, service_principal_id (the enterprise application's object id, the
    token's ``oid``), mailbox; missing ones are left as placeholders.
    """
    client = ids.get("client_id") or "<application (client) id>"
    principal = ids.get("service_principal_id") or "<enterprise application object id>"
    mailbox = ids.get("mailbox") or "<mailbox>"
    lines = [
        "Connect-ExchangeOnline",
        f'New-ServicePrincipal -AppId {client} -ObjectId {principal} -DisplayName "smtp-oauth"',
    ]
    if model is AccessModel.RBAC:
        lines += [
            f'New-ManagementScope -Name "smtp-oauth {mailbox}" '
            f"-RecipientRestrictionFilter \"PrimarySmtpAddress -eq '{mailbox}'\"",
            f'New-ManagementRoleAssignment -App {client} -Role "Application SMTP.SendAsApp" '
            f'-CustomResourceScope "smtp-oauth {mailbox}"',
            f"Test-ServicePrincipalAuthorization -Identity {client} -Resource {mailbox}",
            "# Leave the app's API permissions empty: an SMTP.SendAsApp permission switches Exchange "
            "back to checking FullAccess.",
        ]
    else:
        lines += [
            "# Entra admin center > App registrations > the app > API permissions: Office 365 Exchange "
            "Online > Application > SMTP.SendAsApp, then Grant admin consent.",
            f"Add-MailboxPermission -Identity {mailbox} -User {principal} -AccessRights FullAccess",
        ]
    return "\n".join(lines)
