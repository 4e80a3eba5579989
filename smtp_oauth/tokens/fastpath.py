"""send-mail's fast path: an access token straight from the plaintext cache file, without msal.

``send-mail`` runs once per message from legacy software; importing msal and building an app
costs more than the whole delivery when a valid token is already cached. This reads MSAL's
cache format (``AccessToken`` entries: ``secret``, ``expires_on``, ``refresh_on``, ``target``,
``client_id``, ``realm``, ``environment``, ``home_account_id``) and matches what
``msal_session.MsalSession`` would pick. Anything unusual gives None and the caller takes the slow
path (which also reports problems such as an encrypted or too-open cache).

Two halves: :func:`cache_query` turns validated settings into a ``CacheQuery`` (which token would
do, in plain values that send-mail's settings snapshot keeps), and :func:`read_token` answers it
with the stdlib alone (json, os, stat, time), so a send served by the snapshot imports neither
pydantic nor msal, nor the rest of the token package.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smtp_oauth.settings.snapshot import CacheQuery

if TYPE_CHECKING:
    from datetime import timedelta

    from smtp_oauth.settings.models import Settings

__all__ = ["cache_query", "read_cached_token", "read_token"]

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_GROUP_OTHER_BITS = 0o077


def cache_query(
    settings: Settings, *, scopes: Sequence[str] | None = None, min_validity: timedelta | None = None
) -> CacheQuery | None:
    """The query for ``scopes`` (default ``identity.scopes``) valid for ``min_validity`` (default
    ``REFRESH_MARGIN``), or None when the cache cannot be read this way (a managed
    identity, whose tokens msal files under its own realm; no tenant to match)."""
    from urllib.parse import urlsplit

    from smtp_oauth.tokens.cache import cache_file_path
    from smtp_oauth.tokens.types import REFRESH_MARGIN, scope_key

    identity = settings.identity
    if identity.is_managed_identity or identity.tenant_id is None or identity.client_id is None:
        return None
    margin = REFRESH_MARGIN if min_validity is None else min_validity
    return CacheQuery(
        cache_file=str(cache_file_path(settings)),
        client_id=identity.client_id,
        environment=(urlsplit(identity.effective_authority_host).hostname or "").lower(),
        tenant_id=identity.tenant_id,
        delegated=identity.is_delegated,
        account_names=[identity.username, settings.smtp.username],
        scopes=list(scope_key(scopes or settings.smtp_scopes)),
        min_validity=margin.total_seconds(),
    )


def read_cached_token(
    settings: Settings, *, scopes: Sequence[str] | None = None, min_validity: timedelta | None = None
) -> str | None:
    """A cached access token for ``scopes`` valid for at least ``min_validity`` (see cache_query),
    read straight from the plaintext cache file, or None: missing, encrypted, expiring, due for refresh."""
    query = cache_query(settings, scopes=scopes, min_validity=min_validity)
    return read_token(query) if query is not None else None


def _read_plaintext(path: str) -> dict[str, Any] | None:
    """The JSON of a plaintext cache file, or None (missing, encrypted, too open, not ours, unreadable)."""
    try:
        st = os.stat(path)
        if os.name != "nt":
            parent = os.stat(os.path.dirname(path) or ".")
            # File or directory open to others, or not ours: the slow path refuses it with the fix.
            if (stat.S_IMODE(st.st_mode) | stat.S_IMODE(parent.st_mode)) & _GROUP_OTHER_BITS:
                return None
            if st.st_uid != os.geteuid() or parent.st_uid != os.geteuid():
                return None
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _matching_home_accounts(cache: dict[str, Any], query: CacheQuery) -> set[str]:
    """home_account_ids of the account a delegated provider would use (see MsalSession.account)."""
    accounts = [
        entry
        for entry in (cache.get("Account") or {}).values()
        if isinstance(entry, dict) and str(entry.get("environment", "")).lower() == query.environment
    ]
    identity_username, smtp_username = query.account_names
    for wanted, fall_through in ((identity_username, False), (smtp_username, True)):
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


def read_token(query: CacheQuery) -> str | None:
    """The cached access token ``query`` asks for, the one expiring last, or None. Stdlib only."""
    cache = _read_plaintext(query.cache_file)
    if cache is None:
        return None
    wanted_scopes = set(query.scopes)
    home_ids = _matching_home_accounts(cache, query) if query.delegated else set()
    # MSAL files tokens under the tenant GUID from the discovered token endpoint; a tenant configured
    # by domain name cannot be compared, but the cache file is this authority's alone anyway.
    tenant = query.tenant_id
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
            entry.get("client_id") != query.client_id
            or str(entry.get("environment", "")).lower() != query.environment
            or (tenant_is_guid and str(entry.get("realm", "")).lower() != tenant.lower())
            or not wanted_scopes <= set(str(entry.get("target", "")).lower().split())
            or (home not in home_ids if query.delegated else home is not None)
            or expires_on - now < query.min_validity
            or (refresh_on is not None and refresh_on <= now)
        ):
            continue
        if expires_on > best_expiry and isinstance(entry.get("secret"), str):
            best_expiry, best = expires_on, entry["secret"]
    return best
