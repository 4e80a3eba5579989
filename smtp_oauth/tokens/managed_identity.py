"""Tokens of an Azure managed identity, through msal's ``ManagedIdentityClient``.

No tenant, no secret: the Azure host hands out the identity's tokens on a local endpoint, which
msal finds by itself (msal/managed_identity.py ``_obtain_token``): App Service, Functions and
Automation (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``), Service Fabric, Azure ML
(``MSI_ENDPOINT``), Azure Arc, else a VM's IMDS at 169.254.169.254. ``identity.client_id`` picks a
user-assigned identity; without one the host's system-assigned identity answers.
https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/overview

msal asks for a *resource*, not scopes (``acquire_token_for_client(resource=...)``), caches the
token in our persistent cache under ``realm = "managed_identity"``, and itself refreshes tokens
that live two hours or more at half-life. Blocking, like ``msal_session``; errors are mapped at the
same boundary (``ErrorMapper``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msal

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.tokens.http import IdpHttpClient
from smtp_oauth.tokens.msal_errors import ErrorMapper, RecordingHttpClient
from smtp_oauth.tokens.types import IssuedToken, request_scopes

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tokens.cache import TokenCache

__all__ = ["ManagedIdentitySession", "managed_identity_endpoint", "scope_resource"]

# Where msal keeps managed identity tokens (msal/managed_identity.py): realm "managed_identity",
# client_id the user-assigned identity's, or None for the system-assigned one (its "Id").
_MI_REALM = "managed_identity"
_IMDS = "http://169.254.169.254/metadata/identity/oauth2/token"


def managed_identity_endpoint(environ: os._Environ[str] | dict[str, str] | None = None) -> str:
    """The endpoint msal will ask, for messages: the same detection order as msal's."""
    env = os.environ if environ is None else environ
    for endpoint, secret in (("IDENTITY_ENDPOINT", "IDENTITY_HEADER"), ("MSI_ENDPOINT", "MSI_SECRET")):
        if env.get(endpoint) and env.get(secret):
            return env[endpoint]
    if env.get("IDENTITY_ENDPOINT") and env.get("IMDS_ENDPOINT"):
        return env["IDENTITY_ENDPOINT"]  # Azure Arc
    host = env.get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
    return f"{host.rstrip('/')}/metadata/identity/oauth2/token" if host else _IMDS


def scope_resource(scopes: list[str]) -> str:
    """``["https://outlook.office365.com/.default"]`` -> ``"https://outlook.office365.com"``.

    A managed identity gets tokens for a resource with all the app roles it was assigned, which
    is what ``<resource>/.default`` means for client credentials.
    """
    wanted = request_scopes(scopes)
    if len(wanted) != 1 or not wanted[0].endswith("/.default"):
        raise ConfigurationError(
            f"a managed identity gets tokens for one resource, as '<resource>/.default'; "
            f"identity.scopes is {wanted}",
            key="identity.scopes",
            hint='Remove identity.scopes, or set one, e.g. ["https://outlook.office365.com/.default"].',
        )
    return wanted[0].removesuffix("/.default")


class ManagedIdentitySession:
    """The ``MsalSession`` shape (acquire, sign_out, close) for ``flow = "managed_identity"``."""

    def __init__(self, settings: Settings, cache: TokenCache) -> None:
        identity = settings.identity
        self._identity = identity
        self._cache = cache
        self._default_scopes = list(identity.effective_scopes)
        self._cache_client_id = identity.client_id
        ca_file = str(identity.ca_file) if identity.ca_file else None
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigurationError(
                f"identity.ca_file {ca_file} is not a readable file", key="identity.ca_file"
            )
        self._http = RecordingHttpClient(IdpHttpClient(timeout=identity.timeout, ca_file=ca_file))
        endpoint = managed_identity_endpoint()
        self._errors = ErrorMapper(
            f"managed identity endpoint {endpoint}", self._http, settings.hint_context()
        )
        managed: msal.ManagedIdentity = (
            msal.UserAssignedManagedIdentity(client_id=identity.client_id)
            if identity.client_id
            else msal.SystemAssignedManagedIdentity()
        )
        self._app = msal.ManagedIdentityClient(managed, http_client=self._http, token_cache=cache)

    def close(self) -> None:
        self._http.close()

    def acquire(
        self, *, scopes: list[str] | None = None, force_refresh: bool, min_validity: float
    ) -> IssuedToken:
        """The identity's token for the scopes' resource: from the cache, else from the endpoint."""
        resource = scope_resource(list(scopes) if scopes else self._default_scopes)

        def run() -> IssuedToken:
            with self._cache.locked():
                if force_refresh:
                    self._forget(resource)
                issued = self._issued(self._app.acquire_token_for_client(resource=resource))
                if issued.source == "cache" and issued.remaining() < min_validity:
                    self._forget(resource)
                    issued = self._issued(self._app.acquire_token_for_client(resource=resource))
                return issued

        try:
            return self._errors.translated(run)
        except TokenError as exc:
            if exc.error == "network_error":
                exc.hint = (
                    "The managed identity endpoint did not answer: this works only on Azure compute "
                    "(VM, App Service, Functions, Container Apps, AKS pod identity, Arc) with a managed "
                    "identity assigned. " + _hint(self._identity.client_id, "")
                )
            raise

    def sign_out(self) -> int:
        """Forget the identity's cached tokens; how many went."""

        def run() -> int:
            with self._cache.locked():
                return self._forget(None)

        return self._errors.translated(run)

    def _forget(self, resource: str | None) -> int:
        # ManagedIdentityClient has no force_refresh: without a cached token it asks the endpoint.
        entries = list(
            self._cache.search(
                msal.TokenCache.CredentialType.ACCESS_TOKEN,
                target=[resource] if resource else None,
                query={"client_id": self._cache_client_id, "realm": _MI_REALM},
            )
        )
        for entry in entries:
            self._cache.remove_at(entry)
        return len(entries)

    def _issued(self, result: dict[str, Any] | None) -> IssuedToken:
        if not result or "access_token" not in result:
            error = self._errors.from_result(result or {"error": "no_token"})
            error.hint = _hint(self._identity.client_id, error.description or "")
            raise error
        refresh_on = result.get("refresh_on")
        return IssuedToken(
            access_token=result["access_token"],
            expires_on=time.time() + float(result.get("expires_in", 0)),
            refresh_on=float(refresh_on) if refresh_on else None,
            source=str(result.get("token_source", "identity_provider")),
        )


def _hint(client_id: str | None, description: str) -> str:
    which = f"the user-assigned identity {client_id}" if client_id else "a system-assigned identity"
    text = f"Check that this Azure resource has {which} enabled (Azure portal > the resource > Identity)"
    if client_id and ("not found" in description.lower() or "no user assigned" in description.lower()):
        text += ", and that identity.client_id is that identity's *client id* (not its object id)"
    return text + "."
