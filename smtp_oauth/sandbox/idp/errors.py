"""Error responses shaped like Entra ID's, so clients' error handling is tested on the real shape.

Entra answers a failed OAuth request with HTTP 400 (401 for a bad client credential) and::

    {"error": "invalid_client",
     "error_description": "AADSTS7000215: Invalid client secret provided. ...\\r\\nTrace ID: ...
                           \\r\\nCorrelation ID: ...\\r\\nTimestamp: 2026-11-26 20:02:05Z",
     "error_codes": [7000215], "timestamp": "2026-11-26 20:02:05Z",
     "trace_id": "...", "correlation_id": "...", "error_uri": "https://<host>/error?code=7000215"}

Codes and texts follow Microsoft's "Microsoft Entra authentication and authorization error codes"
page (abridged). Each constructor below is one situation a client must handle.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

__all__ = ["AadError"]


class AadError(Exception):
    """An OAuth error the sandbox answers with; ``body()`` is the JSON Entra would send."""

    def __init__(
        self,
        error: str,
        code: int,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.error = error
        self.code = code
        self.description = description
        self.status = status
        self.headers = headers or {}

    def body(self, *, base_url: str, correlation_id: str | None = None) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace_id = str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.description}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {now}"
            ),
            "error_codes": [self.code],
            "timestamp": now,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{base_url}/error?code={self.code}",
        }

    # --- requests and tenants -------------------------------------------------------------------

    @classmethod
    def missing_parameter(cls, name: str) -> AadError:
        return cls(
            "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'."
        )

    @classmethod
    def unknown_tenant(cls, tenant: str) -> AadError:
        return cls(
            "invalid_request",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud. Check with your subscription administrator, this may "
            "happen if there are no active subscriptions for the tenant.",
        )

    @classmethod
    def unsupported_grant_type(cls, grant_type: str) -> AadError:
        return cls(
            "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
        )

    @classmethod
    def temporarily_unavailable(cls, status: int, retry_after: int | None) -> AadError:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls(
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
            status=status,
            headers=headers,
        )

    # --- clients ------------------------------------------------------------------------------

    @classmethod
    def unknown_client(cls, client_id: str, tenant: str) -> AadError:
        return cls(
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
            "This can happen if the application has not been installed by the administrator of the "
            "tenant or consented to by any user in the tenant. You may have sent your authentication "
            "request to the wrong tenant.",
        )

    @classmethod
    def wrong_secret(cls, client_id: str) -> AadError:
        return cls(
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
            status=401,
        )

    @classmethod
    def no_credential(cls) -> AadError:
        return cls(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            status=401,
        )

    @classmethod
    def public_client_credential(cls) -> AadError:
        return cls(
            "invalid_request",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        )

    @classmethod
    def bad_assertion(cls, code: int, reason: str) -> AadError:
        return cls("invalid_client", code, reason, status=401)

    # --- scopes ---------------------------------------------------------------------------------

    @classmethod
    def unknown_resource(cls, resource: str, tenant: str) -> AadError:
        return cls(
            "invalid_resource",
            500011,
            f"The resource principal named {resource} was not found in the tenant named {tenant}. This "
            "can happen if the application has not been installed by the administrator of the tenant "
            "or consented to by any user in the tenant. You might have sent your authentication "
            "request to the wrong tenant.",
        )

    @classmethod
    def invalid_scope(cls, scope: str) -> AadError:
        return cls(
            "invalid_scope",
            70011,
            f"The provided request must include a 'scope' input parameter. The provided value for the "
            f"input parameter 'scope' is not valid. The scope {scope} is not valid.",
        )

    @classmethod
    def app_only_scope_not_default(cls, scope: str) -> AadError:
        return cls(
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a "
            "scope value with /.default suffixed to the resource identifier (application ID URI).",
        )

    @classmethod
    def consent_required(cls, client_id: str, app_name: str) -> AadError:
        return cls(
            "invalid_grant",
            65001,
            f"The user or administrator has not consented to use the application with ID '{client_id}' "
            f"named '{app_name}'. Send an interactive authorization request for this user and resource.",
        )

    # --- grants -------------------------------------------------------------------------------

    @classmethod
    def invalid_grant(cls, detail: str = "Provided grant is invalid or malformed.") -> AadError:
        return cls("invalid_grant", 70000, detail)

    @classmethod
    def refresh_token_inactive(cls, issued: str) -> AadError:
        return cls(
            "invalid_grant",
            700082,
            f"The refresh token has expired due to inactivity. The token was issued on {issued} and "
            "was inactive for 90.00:00:00.",
        )

    @classmethod
    def code_expired(cls) -> AadError:
        return cls(
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a "
            "new interactive authorization request for this user and resource.",
        )

    @classmethod
    def code_redeemed(cls) -> AadError:
        return cls(
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use "
            "an existing refresh token.",
        )

    @classmethod
    def pkce_mismatch(cls) -> AadError:
        return cls(
            "invalid_grant",
            501481,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        )

    @classmethod
    def redirect_uri_mismatch(cls, redirect_uri: str, client_id: str) -> AadError:
        return cls(
            "invalid_request",
            50011,
            f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect "
            f"URIs configured for the application '{client_id}'. Make sure the redirect URI sent in "
            "the request matches one added to your application in the Azure portal.",
        )

    @classmethod
    def code_redirect_mismatch(cls) -> AadError:
        # At the token endpoint the URI must equal the one /authorize issued the code for.
        return cls(
            "invalid_grant",
            50011,
            "The redirect URI specified in the request does not match the redirect URI used to "
            "obtain the authorization code.",
        )

    @classmethod
    def unknown_user(cls, tenant: str) -> AadError:
        return cls(
            "invalid_grant",
            50034,
            f"The user account {{EmailHidden}} does not exist in the {tenant} directory. To sign into "
            "this application, the account must be added to the directory.",
        )

    @classmethod
    def wrong_password(cls) -> AadError:
        return cls(
            "invalid_grant", 50126, "Error validating credentials due to invalid username or password."
        )

    @classmethod
    def authorization_pending(cls) -> AadError:
        return cls(
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )

    @classmethod
    def device_code_expired(cls) -> AadError:
        return cls("expired_token", 70019, "Verification code expired.")

    @classmethod
    def authorization_declined(cls) -> AadError:
        return cls("authorization_declined", 70000, "The end user denied the authorization request.")
