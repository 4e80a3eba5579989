"""The sandbox identity provider's token signing key: RS256 JWTs, published as a JWKS.

The fake Exchange Online verifies tokens with the same ``SigningKey`` (signature, expiry, audience),
as the real one verifies Entra's tokens against the tenant's published keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["SigningKey", "TokenInvalid"]


class TokenInvalid(Exception):
    """A token failed verification; the message says why (for the sandbox's log, not the client)."""


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class SigningKey:
    """An RSA key that signs the sandbox's access and id tokens."""

    def __init__(self, private_key: rsa.RSAPrivateKey | None = None) -> None:
        self._private = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._private.public_key().public_numbers()
        self._public_jwk = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }
        thumb = json.dumps({k: self._public_jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
        self.key_id = base64.urlsafe_b64encode(hashlib.sha256(thumb.encode()).digest()).rstrip(b"=").decode()
        self._public_jwk["kid"] = self.key_id

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.key_id!r})"

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """The key written by :meth:`private_pem` (ValueError if ``data`` is not an RSA key)."""
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("not an RSA private key")
        return cls(key)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (the sandbox keeps it 0600 across restarts)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set published at the IdP's ``jwks_uri``."""
        return {"keys": [dict(self._public_jwk)]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        """An RS256 JWT carrying ``claims``, with this key's ``kid`` in the header."""
        return jwt.encode(dict(claims), self._private, algorithm="RS256", headers={"kid": self.key_id})

    def verify(self, token: str, *, audience: str | list[str] | None = None) -> dict[str, Any]:
        """The claims of a token this key signed; TokenInvalid if signature, expiry or audience fail."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._private.public_key(),
                algorithms=["RS256"],
                audience=audience,
                options={"require": ["exp", "iat", "aud"], "verify_aud": audience is not None},
                leeway=0,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenInvalid("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenInvalid("wrong audience") from exc
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from exc
        return claims
