"""Client authentication at the token endpoint: a secret, a certificate assertion, or none.

- Confidential apps must prove who they are: ``client_secret`` (form field or HTTP Basic,
  RFC 6749 2.3.1) or ``client_assertion`` (RFC 7523: a JWT signed with the key of a registered
  certificate, ``x5t#S256``/``x5t`` naming it, ``aud`` = the token endpoint, ``iss`` = ``sub`` =
  the client id, not expired). MSAL signs with PS256 when it knows the SHA-256 thumbprint, RS256
  with the legacy SHA-1 one.
- A federated credential: the ``client_assertion`` is a token of a trusted OIDC issuer
  (workload identity federation), checked by ``federation.FederatedIssuer``.
- Public clients must not send either (AADSTS700025).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jwt

from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.tenant import RegisteredApp

if TYPE_CHECKING:
    from smtp_oauth.sandbox.idp.federation import FederatedIssuer

__all__ = ["JWT_BEARER", "authenticate_client"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def authenticate_client(
    app: RegisteredApp,
    form: Mapping[str, str],
    *,
    audiences: list[str],
    issuers: Sequence[FederatedIssuer] = (),
) -> str:
    """How the client proved itself: ``"secret"``, ``"certificate"``, ``"federated"`` or ``"none"``.

    ``audiences`` are the values a client assertion's ``aud`` may hold (the token endpoint URL);
    ``issuers`` the OIDC issuers whose tokens may stand in for a credential.
    """
    secret = form.get("client_secret")
    assertion = form.get("client_assertion")
    if app.is_public:
        if secret or assertion:
            raise AadError.public_client_credential()
        return "none"
    if secret:
        expected = app.client_secret or ""
        if not hmac.compare_digest(secret.encode(), expected.encode()):
            raise AadError.wrong_secret(app.client_id)
        return "secret"
    if assertion:
        for issuer in issuers:
            if issuer.trusts(assertion):
                _check_assertion_type(form.get("client_assertion_type", ""))
                issuer.verify(app, assertion)
                return "federated"
        _verify_assertion(app, assertion, form.get("client_assertion_type", ""), audiences)
        return "certificate"
    raise AadError.no_credential()


def _check_assertion_type(assertion_type: str) -> None:
    if assertion_type != JWT_BEARER:
        raise AadError(
            "invalid_request",
            700023,
            f"The client_assertion_type must be '{JWT_BEARER}'.",
        )


def _verify_assertion(app: RegisteredApp, assertion: str, assertion_type: str, audiences: list[str]) -> None:
    _check_assertion_type(assertion_type)
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as exc:
        raise AadError.bad_assertion(700025, f"Client assertion is not a valid JWT: {exc}.") from exc
    thumbprint = _presented_thumbprint(header)
    known = {app.certificate_thumbprint_sha256, app.certificate_thumbprint_sha1} - {None}
    if app.certificate is None or thumbprint not in known:
        shown = base64.urlsafe_b64encode(thumbprint or b"").rstrip(b"=").decode()
        raise AadError.bad_assertion(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found., "
            f"Thumbprint of key used by client: '{shown}']",
        )
    try:
        claims = jwt.decode(
            assertion,
            app.certificate.public_key(),  # type: ignore[arg-type]  # RSA key; PyJWT's union is wider
            algorithms=["RS256", "PS256"],
            audience=audiences,
            options={"require": ["aud", "iss", "sub", "exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AadError.bad_assertion(700024, "Client assertion is not within its valid time range.") from exc
    except jwt.InvalidAudienceError as exc:
        raise AadError.bad_assertion(
            700027, f"Client assertion audience claim does not match; expected one of {audiences}."
        ) from exc
    except jwt.PyJWTError as exc:
        raise AadError.bad_assertion(
            700027, f"Client assertion failed signature validation. [Reason - {exc}]"
        ) from exc
    if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
        raise AadError.bad_assertion(
            700021, "Client assertion application identifier doesn't match 'client_id' parameter."
        )


def _presented_thumbprint(header: Mapping[str, object]) -> bytes | None:
    for name in ("x5t#S256", "x5t"):
        value = header.get(name)
        if isinstance(value, str):
            try:
                return _b64url_decode(value)
            except ValueError:
                return None
    return None
