"""send-mail's fast path: an access token straight from the plaintext cache file, without msal.

``send-mail`` runs once per message from legacy software; importing msal and building an app
costs more than the whole delivery when a valid token is already cached. This reads MSAL's
cache format (``AccessToken`` entries: ``secret``, ``expires_on``, ``refresh_on``, ``target``,
``client_id``, ``realm``, ``environment``, ``home_account_id``) and matches what
``token_flows.MsalSession`` would pick. Anything unusual gives None and the caller takes the slow
path (which also reports problems such as an encrypted or too-open cache).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from smtp_oauth.tokens.cache import cache_file_path, read_plaintext_cache
from smtp_oauth.tokens.types import REFRESH_MARGIN, scope_key

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings

__all__ = ["read_cached_token"]

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _matching_home_accounts(cache: dict[str, Any], settings: Settings, environment: str) -> set[str]:
    """home_account_ids of the account a delegated provider would use (see MsalSession.account)."""
    accounts = [
        entry
        for entry in (cache.get("Account") or {}).values()
        if isinstance(entry, dict) and str(entry.get("environment", "")).lower() == environment
    ]
    identity = settings.identity
    for wanted, fall_through in ((identity.username, False), (settings.smtp.username, True)):
        if not wanted:
            continue
        found = {
            str(a.get("home_account_id"))
            for a in accounts
            if str(a.get("username", "")).lower() == wanted.lower()
        }
        if found or not fall_through:
            return found
    ids = {str(a.get("home_account_id")) for a in accounts}
    return ids if len(ids) == 1 else set()


def read_cached_token(
    settings: Settings, *, scopes: Sequence[str] | None = None, min_validity: timedelta = REFRESH_MARGIN
) -> str | None:
    """A cached access token for ``scopes`` (default ``identity.scopes``) valid for at least
    ``min_validity``, read straight from the plaintext cache file (MSAL's JSON format), or None:
    missing, encrypted, expiring, due for refresh.

    Starts fast (no msal import) for ``send-mail``, which runs once per message.
    """
    cache = read_plaintext_cache(cache_file_path(settings))
    if cache is None:
        return None
    identity = settings.identity
    environment = (urlsplit(identity.effective_authority_host).hostname or "").lower()
    wanted_scopes = set(scope_key(scopes or settings.smtp_scopes))
    home_ids = _matching_home_accounts(cache, settings, environment) if identity.is_delegated else set()
    # MSAL files tokens under the tenant GUID from the discovered token endpoint; a tenant configured
    # by domain name cannot be compared, but the cache file is this authority's alone anyway.
    if identity.is_managed_identity or identity.tenant_id is None:
        return None  # msal files these under its own realm; the slow path reads them
    tenant = identity.tenant_id
    tenant_is_guid = _GUID.fullmatch(tenant) is not None
    now, best_expiry, best = time.time(), 0.0, None
    for entry in (cache.get("AccessToken") or {}).values():
        if not isinstance(entry, dict) or entry.get("key_id") or entry.get("ext_cache_key"):
            continue  # bound (PoP, SSH) or path-scoped tokens are not SMTP bearer tokens
        try:
            expires_on = float(entry["expires_on"])
            refresh_on = float(entry["refresh_on"]) if entry.get("refresh_on") else None
        except (KeyError, TypeError, ValueError):
            continue
        home = entry.get("home_account_id") or None
        if (
            entry.get("client_id") != identity.client_id
            or str(entry.get("environment", "")).lower() != environment
            or (tenant_is_guid and str(entry.get("realm", "")).lower() != tenant.lower())
            or not wanted_scopes <= set(str(entry.get("target", "")).lower().split())
            or (home not in home_ids if identity.is_delegated else home is not None)
            or expires_on - now < min_validity.total_seconds()
            or (refresh_on is not None and refresh_on <= now)
        ):
            continue
        if expires_on > best_expiry and isinstance(entry.get("secret"), str):
            best_expiry, best = expires_on, entry["secret"]
    return best
