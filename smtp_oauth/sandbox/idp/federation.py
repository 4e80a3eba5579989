"""An OIDC issuer whose tokens the sandbox IdP trusts as federated identity credentials.

It plays the part of a Kubernetes service account issuer (AKS workload identity) or GitHub
Actions' ``token.actions.githubusercontent.com``: it signs short-lived JWTs (ES256, its own key,
not the IdP's) with ``iss`` = its URL, ``sub`` = the workload, ``aud`` =
``api://AzureADTokenExchange``, and publishes its OpenID configuration and keys:

    GET /federation/.well-known/openid-configuration
    GET /federation/keys

An app that lists a ``FederatedCredential`` (issuer, subject, audience) accepts such a token as
``client_assertion`` (``client_assertion_type`` = jwt-bearer), as Entra does
(https://learn.microsoft.com/en-us/entra/workload-id/workload-identity-federation). The issuer
remembers the ``jti`` of every token the IdP accepted, and can revoke the tokens it issued before
a moment: a client that keeps a token instead of re-reading the rotated file then fails.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.tenant import FederatedCredential, RegisteredApp

__all__ = ["FEDERATION_PATH", "FederatedIssuer"]

FEDERATION_PATH = "federation"
_ALGORITHM = "ES256"
_KEY_ID = "sandbox-federation-1"


class FederatedIssuer:
    """Signs workload tokens and checks them when an app presents one as its client assertion."""

    def __init__(self, url: str = "", *, lifetime: int = 3600) -> None:
        self.url = url  # set once the server has its port
        self.lifetime = lifetime
        # EC keys are made in microseconds; this one is the workload platform's, not Entra's.
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._lock = threading.Lock()
        self._revoked_before = 0.0
        self.accepted: list[str] = []  # jti of each token accepted as a client assertion

    def __repr__(self) -> str:
        return f"FederatedIssuer(url={self.url!r})"

    def issue(self, subject: str, *, audience: str, lifetime: int | None = None) -> str:
        """A signed token for ``subject``, as the platform writes into the workload's token file."""
        now = time.time()
        claims = {
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + (lifetime or self.lifetime)),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": _KEY_ID})

    def revoke_issued_before(self, moment: float) -> None:
        """Refuse tokens issued up to ``moment``'s second (``iat`` counts whole seconds)."""
        with self._lock:
            self._revoked_before = float(int(moment) + 1)

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/keys",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [_ALGORITHM],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": _KEY_ID, "use": "sig", "alg": _ALGORITHM}]}

    def trusts(self, assertion: str) -> bool:
        """True when ``assertion`` claims to come from this issuer (not yet verified)."""
        try:
            return jwt.decode(assertion, options={"verify_signature": False}).get("iss") == self.url
        except jwt.PyJWTError:
            return False

    def verify(self, app: RegisteredApp, assertion: str) -> None:
        """Accept ``assertion`` for ``app`` or raise Entra's AADSTS error."""
        credentials = [c for c in app.federated_credentials if c.issuer == self.url]
        if not credentials:
            raise AadError.bad_assertion(
                70021,
                f"No matching federated identity record found for presented assertion issuer '{self.url}'. "
                "Please check your federated identity credential Subject, Audience and Issuer against the "
                "presented assertion.",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=[_ALGORITHM],
                audience=[c.audience for c in credentials],
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AadError.bad_assertion(
                700024, "Client assertion is not within its valid time range."
            ) from exc
        except jwt.PyJWTError as exc:
            raise AadError.bad_assertion(
                70021, f"The presented assertion could not be validated: {exc}."
            ) from exc
        with self._lock:
            revoked = claims["iat"] < self._revoked_before
        if revoked:
            raise AadError.bad_assertion(
                700024,
                "Client assertion is not within its valid time range. (The sandbox issuer replaced this "
                "token: read the federated token file again for every token request.)",
            )
        if not any(_matches(c, claims) for c in credentials):
            raise AadError.bad_assertion(
                70021,
                "No matching federated identity record found for presented assertion. Assertion Issuer: "
                f"'{claims['iss']}'. Assertion Subject: '{claims['sub']}'. Assertion Audience: "
                f"'{claims['aud']}'.",
            )
        with self._lock:
            self.accepted.append(str(claims.get("jti", "")))


def _matches(credential: FederatedCredential, claims: Mapping[str, Any]) -> bool:
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    return credential.subject == claims["sub"] and credential.audience in audiences
