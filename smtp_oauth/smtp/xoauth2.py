"""XOAUTH2, the SASL mechanism Exchange Online and Gmail use to carry an OAuth access token.

Wire format (Microsoft, "Authenticate an IMAP, POP or SMTP connection using OAuth")::

    base64("user=" + mailbox + "\\x01" + "auth=Bearer " + access_token + "\\x01\\x01")

sent as ``AUTH XOAUTH2 <base64>`` (initial response) or after a bare ``334``. A server that refuses
the token may first send ``334 <base64 JSON>`` (Google's style: ``{"status":"401",...}``), to which
the client answers an empty line, and then the final ``5xx``; Exchange answers ``535`` directly.

Pure functions: bytes and strings in, bytes and strings out.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import NamedTuple

__all__ = ["XOAuth2Credentials", "decode", "encode", "parse_error_challenge"]

_SEPARATOR = "\x01"
_FORBIDDEN_IN_USER = ("\x01", "\r", "\n")


class XOAuth2Credentials(NamedTuple):
    """A decoded XOAUTH2 initial response. The token is kept out of ``repr``.

    A NamedTuple, not a dataclass: send-mail's stdlib path does not pay for ``dataclasses``' import.
    """

    user: str
    token: str

    def __repr__(self) -> str:
        return f"XOAuth2Credentials(user={self.user!r})"


def _check_user(user: str) -> None:
    if not user:
        raise ValueError("the XOAUTH2 user must not be empty")
    if any(char in user for char in _FORBIDDEN_IN_USER):
        raise ValueError("the XOAUTH2 user must not contain \\x01, CR or LF")


def encode(user: str, token: str) -> str:
    """The base64 XOAUTH2 initial response for ``user`` (the mailbox) and an access token."""
    _check_user(user)
    if not token or any(char in token for char in _FORBIDDEN_IN_USER) or " " in token:
        raise ValueError("the access token must be a non-empty string without spaces, \\x01, CR or LF")
    raw = f"user={user}{_SEPARATOR}auth=Bearer {token}{_SEPARATOR}{_SEPARATOR}"
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


def decode(initial_response: str | bytes) -> XOAuth2Credentials:
    """Parse a base64 XOAUTH2 initial response; ValueError when it is not one."""
    try:
        raw = base64.b64decode(initial_response, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not valid base64 UTF-8") from exc
    if not raw.endswith(_SEPARATOR * 2):
        raise ValueError("an XOAUTH2 response ends with two \\x01")
    fields: dict[str, str] = {}
    for part in raw[:-2].split(_SEPARATOR):
        key, sep, value = part.partition("=")
        if not sep or key in fields:
            # Never quote the field: it may be the token itself.
            raise ValueError("malformed XOAUTH2 response: a field without '=' or a repeated field")
        fields[key] = value
    if set(fields) != {"user", "auth"}:
        raise ValueError("an XOAUTH2 response has exactly the fields user and auth")
    scheme, _, token = fields["auth"].partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ValueError("the auth field must be 'Bearer <token>'")
    _check_user(fields["user"])
    return XOAuth2Credentials(user=fields["user"], token=token)


def parse_error_challenge(challenge: str | bytes) -> dict[str, str]:
    """Decode the base64 JSON of a ``334`` error challenge (``{"status": "401", ...}``).

    Returns {} when the challenge is empty or not JSON (Exchange sends a bare ``334``).
    """
    text = challenge.strip() if isinstance(challenge, str) else challenge.strip().decode("ascii", "replace")
    if not text:
        return {}
    try:
        data = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(key): str(value) for key, value in data.items()}
