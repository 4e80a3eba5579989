"""The sandbox IdP's discovery documents: OpenID configuration and instance discovery.

MSAL reads ``authorization_endpoint``, ``token_endpoint`` and ``device_authorization_endpoint``
from the OpenID configuration and takes the tenant from the token endpoint's path; the rest is
there because Entra's document has it and other OIDC clients read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MULTI_TENANT", "instance_metadata", "openid_configuration"]

MULTI_TENANT = frozenset({"common", "organizations"})
_GRANT_TYPES = [
    "authorization_code",
    "client_credentials",
    "refresh_token",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
]
_CLAIMS = ["sub", "iss", "aud", "exp", "iat", "nonce", "preferred_username", "name", "tid", "oid"]


def openid_configuration(
    authority_host: str, asked_tenant: str, tenant_id: str, domain: str
) -> dict[str, Any]:
    """``/{tenant}/v2.0/.well-known/openid-configuration`` for a tenant already known to exist."""
    # Like Entra: a domain name resolves to the tenant id; common/organizations stay as asked.
    multi = asked_tenant.lower() in MULTI_TENANT
    base = f"{authority_host}/{asked_tenant if multi else tenant_id}"
    issuer_tenant = "{tenantid}" if multi else tenant_id
    return {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{authority_host}/{issuer_tenant}/v2.0",
        "request_uri_parameter_supported": False,
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": _GRANT_TYPES,
        "claims_supported": _CLAIMS,
        "tenant_region_scope": None,
        "cloud_instance_name": domain,
    }


def instance_metadata(authority_host: str, query: Mapping[str, str]) -> dict[str, Any]:
    """``/common/discovery/instance``: this host is its own (only) alias."""
    # MSAL asks with the authority's authorize URL, whose port it has dropped (msal/authority.py),
    # so the answer names both host:port and the bare host.
    path = urlsplit(query.get("authorization_endpoint", "")).path
    tenant = next((part for part in path.split("/") if part), "common")
    netloc = urlsplit(authority_host).netloc
    host = urlsplit(authority_host).hostname or netloc
    return {
        "tenant_discovery_endpoint": f"{authority_host}/{tenant}/v2.0/.well-known/openid-configuration",
        "api-version": "1.1",
        "metadata": [{"preferred_network": netloc, "preferred_cache": netloc, "aliases": [netloc, host]}],
    }
