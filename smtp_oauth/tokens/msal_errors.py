"""The boundary where MSAL's and requests' outcomes become smtp-oauth errors.

MSAL reports a refusal as a dict (``error``, ``error_description``, ``error_codes``,
``correlation_id``) and raises for the rest: requests exceptions for network trouble,
``MsalServiceError`` for HTTP >= 500, ``ValueError`` for an authority it cannot use (or a
non-JSON answer). ``ErrorMapper`` turns all of them into ``TokenError`` (temporary when a retry can
help: network, HTTP 5xx/429, ``temporarily_unavailable``) or ``ConfigurationError``. Messages
carry Entra's first description line and the correlation id, never a secret (Entra does not echo
them, and we never put request bodies in messages).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msal
import requests

from smtp_oauth.errors import ConfigurationError, SmtpOAuthError, TokenError, fill_hint
from smtp_oauth.tokens.hints import aadsts_code_of, aadsts_hint
from smtp_oauth.tokens.http import IdpHttpClient

__all__ = ["ErrorMapper", "RecordingHttpClient", "first_line"]

log = logging.getLogger(__name__)

# OAuth error codes (RFC 6749 §5.2 and Entra) after which the same request may succeed later.
_TEMPORARY_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_TOO_MANY_REQUESTS = 429
_SERVER_ERROR = 500

_T = TypeVar("_T")


def first_line(text: str) -> str:
    """The first non-empty line (Entra appends trace id, correlation id and timestamp lines)."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _network_reason(exc: BaseException) -> str:
    """A short reason for a requests exception ("Connection refused", "timed out", TLS failure)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc)
    # OpenSSL's reason ends with its source position, "... certificate (_ssl.c:1006)": not for people.
    for pattern in (
        r"(certificate verify failed.*?)\s*(?:\(_ssl\.c:\d+\)|[\"']\)|$)",
        r"\[Errno -?\d+\] ([^'\")]+)",
    ):
        if match := re.search(pattern, text):
            return match.group(1).strip()
    return type(exc).__name__


class RecordingHttpClient:
    """IdpHttpClient that remembers, per thread, the last HTTP status and error body: MSAL turns a
    429 into a plain error dict (only the status says a retry will help), and a refused tenant
    discovery into a ValueError without Entra's AADSTS code."""

    def __init__(self, client: IdpHttpClient) -> None:
        self._client = client
        self._local = threading.local()

    @property
    def last_status(self) -> int | None:
        status: int | None = getattr(self._local, "status", None)
        return status

    @property
    def last_error(self) -> dict[str, Any]:
        """``error``/``error_description`` of the last refused request ({} if none or not JSON)."""
        error: dict[str, Any] = getattr(self._local, "error", {})
        return error

    def forget(self) -> None:
        """Start a new operation: worker threads are reused, their last answer must not be."""
        self._local.status, self._local.error = None, {}

    def _record(self, response: requests.Response) -> requests.Response:
        self._local.status, self._local.error = response.status_code, {}
        if response.status_code >= 400:
            with contextlib.suppress(ValueError):
                body = response.json()
                if isinstance(body, dict) and "error" in body:
                    self._local.error = {
                        "error": body.get("error"),
                        "error_description": body.get("error_description"),
                    }
        return response

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._record(self._client.get(url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._record(self._client.post(url, **kwargs))

    def close(self) -> None:
        self._client.close()


class ErrorMapper:
    """Turns MSAL results and exceptions for one authority into our errors."""

    def __init__(self, authority: str, http: RecordingHttpClient, context: Mapping[str, str]) -> None:
        self._authority = authority
        self._http = http
        self._context = dict(context)

    def token_error(self, message: str, **kwargs: Any) -> TokenError:
        return TokenError(message, context=self._context, **kwargs)

    def from_result(self, result: Mapping[str, Any]) -> TokenError:
        """MSAL's error dict as a TokenError."""
        error = str(result.get("error") or "unknown_error")
        description = str(result.get("error_description") or "")
        codes = result.get("error_codes") or []
        aadsts = aadsts_code_of(description) or (int(codes[0]) if codes and str(codes[0]).isdigit() else None)
        correlation_id = result.get("correlation_id")
        status = self._http.last_status
        temporary = error in _TEMPORARY_ERRORS or (
            status is not None and (status == _TOO_MANY_REQUESTS or status >= _SERVER_ERROR)
        )
        message = f"token request refused by {self._authority}: {error}"
        if line := first_line(description):
            message += f": {line}"
        if correlation_id:
            message += f" (correlation id {correlation_id})"
        return TokenError(
            message,
            error=error,
            aadsts_code=aadsts,
            hint=aadsts_hint(aadsts),
            description=description or None,
            correlation_id=str(correlation_id) if correlation_id else None,
            temporary=temporary,
            context=self._context,
        )

    def translated(self, call: Callable[[], _T]) -> _T:
        """Run ``call``; msal/requests exceptions become our errors (the one boundary)."""
        self._http.forget()
        try:
            return call()
        except SmtpOAuthError:
            raise
        except requests.RequestException as exc:
            reason = _network_reason(exc)
            raise self.token_error(
                f"cannot reach the identity provider {self._authority}: {reason}",
                # A certificate that does not verify is not a busy server: explain() names the fix.
                error="untrusted_certificate"
                if reason.startswith("certificate verify failed")
                else "network_error",
                temporary=True,
            ) from exc
        except msal.exceptions.MsalServiceError as exc:  # MSAL's raise_for_status() on HTTP >= 500
            raise self.token_error(
                f"the identity provider {self._authority} failed (HTTP {self._http.last_status or 'error'}); "
                "try again later",
                error="server_error",
                temporary=True,
            ) from exc
        except json.JSONDecodeError as exc:  # a proxy or gateway page instead of the IdP's JSON
            raise self.token_error(
                f"the identity provider {self._authority} answered with something that is not JSON "
                f"(HTTP {self._http.last_status}); a proxy in the way?",
                error="invalid_response",
                temporary=True,
            ) from exc
        except ValueError as exc:  # MSAL: bad authority, unusable tenant discovery, bad scopes
            raise self._configuration_error(exc) from exc
        except OSError as exc:  # writing the cache, binding the loopback port for interactive sign-in
            where = f" ({exc.filename})" if exc.filename else ""
            raise self.token_error(
                f"token request failed: {exc.strerror or exc}{where}", error="os_error"
            ) from exc
        except Exception as exc:  # anything else MSAL raises must not escape either
            log.debug("unexpected MSAL failure", exc_info=True)
            raise self.token_error(
                f"MSAL failed: {type(exc).__name__}: {first_line(str(exc))}", error="msal_error"
            ) from exc

    def _configuration_error(self, exc: ValueError) -> ConfigurationError:
        hint = "Check identity.tenant_id, identity.cloud and identity.authority_host."
        refused = self._http.last_error
        if refused.get("error_description"):
            # Tenant discovery was refused (e.g. AADSTS90002 unknown tenant): Entra's words say more.
            description = str(refused["error_description"])
            template = aadsts_hint(aadsts_code_of(description))
            known = fill_hint(template, self._context) if template else None
            return ConfigurationError(
                f"the identity provider refused authority {self._authority}: {first_line(description)}",
                key="identity.tenant_id",
                hint=known or hint,
                context=self._context,
            )
        return ConfigurationError(
            f"MSAL cannot use authority {self._authority}: {first_line(str(exc))}",
            key="identity.tenant_id",
            hint=hint,
            context=self._context,
        )
