"""XOAUTH2 wire format: property tests of encode/decode and of the 334 error challenge parser."""

from __future__ import annotations

import base64
import json

import pytest
from aiosmtplib.auth import auth_xoauth2_encode
from hypothesis import given
from hypothesis import strategies as st

from smtp_oauth.smtp.xoauth2 import decode, encode, parse_error_challenge

FORBIDDEN = "\x01\r\n"

users = st.text(min_size=1).filter(lambda user: not any(char in user for char in FORBIDDEN))
tokens = st.text(
    alphabet=st.characters(codec="ascii", exclude_characters=FORBIDDEN + " "), min_size=1, max_size=4096
)


def test_microsoft_documentation_example() -> None:
    """The example of Microsoft's "Authenticate ... using OAuth" page encodes to its published base64."""
    assert encode("test@contoso.onmicrosoft.com", "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA") == (
        "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0Nj"
        "bFJDM0VvQUEBAQ=="
    )


@given(users, tokens)
def test_round_trip(user: str, token: str) -> None:
    """decode(encode(user, token)) gives back the user and the token."""
    credentials = decode(encode(user, token))
    assert (credentials.user, credentials.token) == (user, token)


@given(users, tokens)
def test_same_bytes_as_aiosmtplib(user: str, token: str) -> None:
    """Our encoding is byte for byte what aiosmtplib sends for AUTH XOAUTH2."""
    assert encode(user, token).encode("ascii") == auth_xoauth2_encode(user, token)


@given(st.text(), st.sampled_from(FORBIDDEN), st.text(), tokens)
def test_user_with_separator_or_line_break_is_refused(before: str, bad: str, after: str, token: str) -> None:
    """A user name containing \\x01, CR or LF could smuggle fields or commands: ValueError."""
    with pytest.raises(ValueError, match="user"):
        encode(before + bad + after, token)


@given(users, st.text(), st.sampled_from(FORBIDDEN + " "), st.text())
def test_token_with_space_or_separator_is_refused(user: str, before: str, bad: str, after: str) -> None:
    """A token with a space, \\x01, CR or LF is not a bearer token: ValueError."""
    with pytest.raises(ValueError, match="token"):
        encode(user, before + bad + after)


@given(st.one_of(st.text(), st.binary().map(lambda raw: base64.b64encode(raw).decode())))
def test_decode_rejects_garbage_with_value_error_only(blob: str) -> None:
    """Anything that is not an XOAUTH2 response raises ValueError, never another exception."""
    try:
        decoded = decode(blob)
    except ValueError:
        return
    assert decoded.user
    assert decoded.token


def test_token_is_kept_out_of_repr() -> None:
    """The decoded credentials' repr shows the user, not the token."""
    credentials = decode(encode("a@b.test", "secret-token-value"))
    assert "secret-token-value" not in repr(credentials)
    assert "a@b.test" in repr(credentials)


@given(st.dictionaries(st.text(), st.text()))
def test_error_challenge_round_trip(fields: dict[str, str]) -> None:
    """A 334 challenge carrying base64 JSON (Google's style) decodes to its fields."""
    challenge = base64.b64encode(json.dumps(fields).encode()).decode()
    assert parse_error_challenge(challenge) == fields
    assert parse_error_challenge(challenge.encode()) == fields


def test_google_style_challenge() -> None:
    """The documented Google challenge gives status, schemes and scope."""
    payload = {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
    challenge = base64.b64encode(json.dumps(payload).encode())
    assert parse_error_challenge(challenge)["status"] == "401"


@given(st.one_of(st.just(""), st.just("   "), st.text(), st.binary()))
def test_bare_or_unreadable_challenge_is_empty(challenge: str | bytes) -> None:
    """A bare 334 (Exchange) or anything that is not base64 JSON of an object gives {}."""
    parsed = parse_error_challenge(challenge)
    assert isinstance(parsed, dict)
    if isinstance(challenge, str) and not challenge.strip():
        assert parsed == {}


@given(st.lists(st.integers()))
def test_challenge_that_is_not_an_object_is_empty(values: list[int]) -> None:
    """Valid base64 JSON that is not an object (a list) gives {}."""
    assert parse_error_challenge(base64.b64encode(json.dumps(values).encode())) == {}
