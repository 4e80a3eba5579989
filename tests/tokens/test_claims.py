"""Specification of claims.py: reading a token's claims without verifying it."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.tokens.claims import decode_claims, expires_at, summarize


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_decodes_a_signed_token() -> None:
    """The payload of an RS256 JWT comes back as a dict, signature unchecked."""
    token = SigningKey().sign({"aud": "https://outlook.office365.com", "roles": ["SMTP.SendAsApp"], "exp": 1})
    assert decode_claims(token)["roles"] == ["SMTP.SendAsApp"]


def test_unpadded_and_unicode_payloads() -> None:
    """base64url without padding and non-ASCII names decode."""
    payload = b64url(json.dumps({"name": "Zoë Ødegård"}).encode())
    assert decode_claims(f"e30.{payload}.sig")["name"] == "Zoë Ødegård"


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token-value",
        "a.b.c.d.e",  # JWE (encrypted): five parts
        "e30.!!!.sig",
        f"e30.{b64url(b'[1, 2]')}.sig",
        f"e30.{b64url(b'not json')}.sig",
    ],
)
def test_rejects_what_is_not_a_jwt(token: str) -> None:
    """Anything but a three-part token with a JSON object payload is a ValueError without the token."""
    with pytest.raises(ValueError, match="not a JWT") as caught:
        decode_claims(token)
    assert token not in str(caught.value)


def test_expiry() -> None:
    """exp becomes an aware UTC datetime; absent or non-numeric exp gives None."""
    assert expires_at({"exp": 1_800_000_000}) == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    assert expires_at({}) is None
    assert expires_at({"exp": "soon"}) is None
    assert expires_at({"exp": True}) is None


def test_summary_keeps_the_claims_that_explain_a_refusal() -> None:
    """summarize() keeps audience, tenant, app, user, scopes/roles and expiry, in a stable order."""
    claims = {"exp": 2, "nonce": "x", "aud": "a", "scp": "SMTP.Send", "upn": "u@contoso.com", "tid": "t"}
    assert list(summarize(claims)) == ["aud", "tid", "upn", "scp", "exp"]
