"""A standalone sandbox identity provider for the IdP tests, and MSAL apps pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msal
import requests

from smtp_oauth.sandbox.idp.provider import SandboxIdentityProvider
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.tenant import SandboxTenant, make_tenant
from smtp_oauth.testing import SandboxKeys
from smtp_oauth.tokens.http import IdpHttpClient

APP_SCOPE = ["https://outlook.office365.com/.default"]
USER_SCOPE = ["https://outlook.office.com/SMTP.Send"]
LOOPBACK_REDIRECT = "http://localhost:8400"


@dataclass
class RunningIdp:
    """The IdP, its tenant and CA, and factories for fresh MSAL apps (MSAL caches 400s per app)."""

    idp: SandboxIdentityProvider
    tenant: SandboxTenant
    key: SigningKey
    ca_file: Path

    def confidential(self, credential: Any = None, **options: Any) -> msal.ConfidentialClientApplication:
        options.setdefault("authority", self.idp.authority)
        options.setdefault("client_id", self.tenant.app.client_id)
        return msal.ConfidentialClientApplication(
            client_credential=self.tenant.app.client_secret if credential is None else credential,
            verify=str(self.ca_file),
            instance_discovery=False,
            timeout=10,
            **options,
        )

    def public(self, **options: Any) -> msal.PublicClientApplication:
        options.setdefault("authority", self.idp.authority)
        options.setdefault("instance_discovery", False)
        return msal.PublicClientApplication(
            self.tenant.public_app.client_id, verify=str(self.ca_file), timeout=10, **options
        )

    def http_client(self) -> IdpHttpClient:
        """Our MSAL http client, which sends the ROPC pre-flight to the IdP's real port."""
        return IdpHttpClient(
            timeout=10, ca_file=str(self.ca_file), authority_netloc=f"127.0.0.1:{self.idp.port}"
        )

    def post(self, path: str, form: dict[str, str], **kwargs: Any) -> requests.Response:
        """A raw POST to ``<authority host><path>``."""
        return requests.post(
            f"{self.idp.authority_host}{path}", data=form, verify=str(self.ca_file), timeout=10, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(
            f"{self.idp.authority_host}{path}", verify=str(self.ca_file), timeout=10, **kwargs
        )


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")


def read_form_post(html: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of the auto-submitting form /authorize sends for form_post."""
    reader = _FormReader()
    reader.feed(html)
    return reader.action, reader.fields


def browser_redirect(running: RunningIdp, auth_uri: str) -> dict[str, str]:
    """What a browser brings back from /authorize: a 302's query, or a form_post form's fields."""
    response = requests.get(auth_uri, allow_redirects=False, verify=str(running.ca_file), timeout=10)
    if response.status_code == 302:
        return dict(parse_qsl(urlsplit(response.headers["Location"]).query))
    assert response.status_code == 200, response.text
    return read_form_post(response.text)[1]


def sign_in(running: RunningIdp, app: msal.ClientApplication | None = None) -> tuple[Any, dict[str, Any]]:
    """Delegated tokens through the auth code flow (no polling delay): (app, MSAL's result)."""
    app = app or running.public()
    flow = app.initiate_auth_code_flow(USER_SCOPE, redirect_uri=LOOPBACK_REDIRECT, response_mode="form_post")
    result = app.acquire_token_by_auth_code_flow(flow, browser_redirect(running, flow["auth_uri"]))
    assert "access_token" in result, result.get("error_description")
    return app, result


@contextmanager
def running_idp(directory: Path, keys: SandboxKeys, **options: Any) -> Iterator[RunningIdp]:
    """An IdP with a new tenant in ``directory``, using the session's CA and signing key."""
    certificates, key = keys.certificates, keys.signing_key
    tenant = make_tenant(directory)
    with SandboxIdentityProvider(
        tenant, signing_key=key, tls_context=certificates.server_context(), **options
    ) as idp:
        yield RunningIdp(idp, tenant, key, certificates.ca_file)
