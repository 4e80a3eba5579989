"""The HTTP client MSAL uses to reach the identity platform: timeouts, our CA, no env overrides.

Why not MSAL's own requests session:
- MSAL's default timeout is none; a hung IdP would hang a cron job forever.
- requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override ``Session.verify``
  (psf/requests#3829); passing ``verify=`` on each request makes ``identity.ca_file`` win.
- MSAL's username/password flow first GETs ``https://{host}/common/userrealm/...`` on the
  authority's *host only*, dropping its port (msal/authority.py); for an authority that is not a
  Microsoft cloud (the sandbox, a private test IdP) we send that request to the configured port.

Everything msal needs: ``get``/``post`` returning objects with status_code, text, headers and
raise_for_status (msal/oauth2cli/http.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

__all__ = ["IdpHttpClient"]


class IdpHttpClient:
    """A requests session with a fixed timeout and CA bundle, shaped for msal's ``http_client``."""

    def __init__(
        self,
        *,
        timeout: float,
        ca_file: str | None = None,
        authority_netloc: str | None = None,
    ) -> None:
        self._session = requests.Session()
        self._timeout = timeout
        self._verify: str | bool = ca_file or True
        # Only set for authorities that are not Microsoft clouds: "127.0.0.1:8443".
        self._authority_netloc = authority_netloc

    def __repr__(self) -> str:
        return f"IdpHttpClient(timeout={self._timeout!r}, verify={self._verify!r})"

    def _route(self, url: str) -> str:
        if self._authority_netloc is None:
            return url
        parts = urlsplit(url)
        authority_host = urlsplit(f"https://{self._authority_netloc}").hostname
        if parts.port is None and parts.hostname == authority_host:
            return urlunsplit(parts._replace(netloc=self._authority_netloc))
        return url

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["verify"] = self._verify
        return self._session.get(self._route(url), params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["verify"] = self._verify
        return self._session.post(self._route(url), params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        self._session.close()
