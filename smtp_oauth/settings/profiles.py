"""Profiles: several senders in one configuration, ``[profiles.NAME]`` over the top level.

::

    [identity]                      # the default sender: HR's ERP
    tenant_id = "contoso.onmicrosoft.com"
    client_id = "1111..."
    client_secret = "..."
    [smtp]
    username = "hr@contoso.com"

    [profiles.scanner.identity]     # the scanners: another app, by workload identity
    client_id = "2222..."
    flow = "workload_identity"
    federated_token_file = "/var/run/secrets/azure/tokens/azure-identity-token"
    [profiles.scanner.smtp]
    username = "scanner@contoso.com"

A profile holds any of ``transport``, ``fallback_transport`` and the tables ``identity``,
``smtp`` and ``graph``; each of its keys replaces the top-level key of the same name, the rest
is inherited. One exception, because a credential belongs to one app: when a profile names
another app or flow (``identity.client_id``, ``identity.flow``) or brings a credential of its
own, the top level's credentials (secret, certificate, federated token file, user/password) are
not inherited. This module is pure: dicts in, dicts out; ``loading`` validates the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.models import PROFILE_KEYS

__all__ = ["CREDENTIAL_KEYS", "PROFILE_VARIABLE", "apply_profile", "profile_names"]

PROFILE_VARIABLE = "SMTP_OAUTH_PROFILE"
CREDENTIAL_KEYS = (
    "client_secret",
    "certificate_path",
    "certificate_password",
    "federated_token_file",
    "username",
    "password",
)
# Keys that make the profile's identity another app: its credentials are its own.
_OTHER_APP_KEYS = ("client_id", "flow", *CREDENTIAL_KEYS)


def profile_names(values: Mapping[str, Any]) -> list[str]:
    """The profiles the raw values define, sorted."""
    profiles = values.get("profiles")
    return sorted(profiles) if isinstance(profiles, Mapping) else []


def apply_profile(values: Mapping[str, Any], name: str, *, source: str) -> dict[str, Any]:
    """``values`` (every source merged) with ``[profiles.name]`` over the top level.

    ConfigurationError (exit 78) for a profile that is not defined; ``source`` names the file.
    """
    profiles = values.get("profiles")
    profile = profiles.get(name) if isinstance(profiles, Mapping) else None
    if not isinstance(profile, Mapping):
        known = profile_names(values)
        listed = ", ".join(known) if known else "none are defined"
        raise ConfigurationError(
            f"unknown profile {name!r} in {source} (profiles: {listed})",
            file=source,
            key=f"profiles.{name}",
            hint=f"Add a [profiles.{name}] table, or pick one of the defined profiles "
            "(--profile, $SMTP_OAUTH_PROFILE, relay.users[].profile).",
        )
    merged = dict(values)
    for key, value in profile.items():
        if key not in PROFILE_KEYS:
            continue  # the model refuses unknown keys, naming them
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            inherited = dict(below)
            if key == "identity" and any(k in value for k in _OTHER_APP_KEYS):
                for credential in CREDENTIAL_KEYS:
                    inherited.pop(credential, None)
            merged[key] = {**inherited, **value}
        else:
            merged[key] = value
    return merged
