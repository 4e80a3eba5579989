"""Read the claims of an access token without verifying it (for `token --claims` and `check`).

Verification is Exchange Online's job; a client only looks inside its own token to explain a
refusal (wrong audience, missing ``SMTP.SendAsApp`` role or ``SMTP.Send`` scope, wrong tenant)
or to know when it expires. Microsoft says clients should rely on ``expires_in`` rather than parse
tokens (https://learn.microsoft.com/en-us/entra/identity-platform/access-tokens), so nothing here
decides whether a token is *used*; it only
describes one. Pure functions over the standard library, cheap to import.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["SUMMARY_CLAIMS", "decode_claims", "expires_at", "summarize"]

# What a person debugging a 535 wants to see first, in this order.
SUMMARY_CLAIMS = ("aud", "iss", "tid", "appid", "azp", "oid", "upn", "unique_name", "scp", "roles", "exp")


def _b64url_decode(segment: str) -> bytes:
    padded = segment + "=" * (-len(segment) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def decode_claims(token: str) -> dict[str, Any]:
    """The payload of a JWS compact token (``header.payload.signature``) as a dict.

    The signature is not checked. Raises ValueError for anything that is not a JWT with a JSON
    object payload (an opaque token, a JWE with five parts, garbage) — the message never
    contains the token.
    """
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError(f"not a JWT: expected 3 dot-separated parts, got {len(parts)}")
    try:
        payload = json.loads(_b64url_decode(parts[1]))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a JWT: the payload is not base64url-encoded JSON") from exc
    if not isinstance(payload, dict):
        # ValueError like every other malformed-token case: callers catch one type.
        raise ValueError("not a JWT: the payload is not a JSON object")  # noqa: TRY004
    return payload


def expires_at(claims: dict[str, Any]) -> datetime | None:
    """The ``exp`` claim as an aware UTC datetime, or None when absent or not a number."""
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return datetime.fromtimestamp(exp, tz=UTC)


def summarize(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims that explain what a token is good for, in a stable order (absent ones omitted)."""
    return {name: claims[name] for name in SUMMARY_CLAIMS if name in claims}
