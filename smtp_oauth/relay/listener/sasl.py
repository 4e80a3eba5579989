"""SASL PLAIN (RFC 4616) and LOGIN for the relay's local users, read through aiosmtpd's challenge_auth.

PLAIN's message is ``[authzid] NUL authcid NUL passwd``; LOGIN asks ``Username:`` then ``Password:``
(each base64, RFC 4954 ``334`` continuations). Either may come as an initial response on the AUTH
line; ``=`` there means an empty one (RFC 4954 section 4). Passwords stay bytes and never reach a log.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

__all__ = ["SaslCredentials", "parse_plain", "read_login", "read_plain"]

REPLY_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
REPLY_BAD_PLAIN = "501 5.5.2 Malformed AUTH PLAIN response"


@dataclass(frozen=True)
class SaslCredentials:
    """A login name and its password as the client sent them."""

    login: str
    password: bytes

    def __repr__(self) -> str:
        return f"SaslCredentials(login={self.login!r}, password=...)"


def parse_plain(message: bytes) -> SaslCredentials | None:
    """RFC 4616's ``authzid NUL authcid NUL passwd``; None if malformed or authzid names someone else.

    Acting for another identity (authzid != authcid) is not something local users may do.
    """
    parts = message.split(b"\x00")
    if len(parts) != 3:
        return None
    authzid, authcid, password = parts
    if not authcid or (authzid and authzid != authcid):
        return None
    return SaslCredentials(login=_text(authcid), password=password)


def _text(raw: bytes) -> str:
    # A name that is not UTF-8 matches no user, and still costs a full password check.
    return raw.decode("utf-8", errors="replace")


async def _initial_response(server: Any, args: list[str]) -> bytes | None:
    """The decoded initial response on the AUTH line; b'' for '='. None after answering 501."""
    if args[1] == "=":
        return b""
    try:
        return base64.b64decode(args[1], validate=True)
    except (binascii.Error, ValueError):
        await server.push(REPLY_BAD_BASE64)
        return None


async def _challenge(server: Any, prompt: str) -> bytes | None:
    """Send ``334 base64(prompt)`` and return the decoded answer, or None (aiosmtpd answered 501)."""
    answer = await server.challenge_auth(prompt)
    return answer if isinstance(answer, bytes) else None  # MISSING: '*' abort or bad base64


async def read_plain(server: Any, args: list[str]) -> SaslCredentials | None:
    """Credentials of ``AUTH PLAIN [initial-response]``, or None once the client has been answered."""
    message = await (_initial_response(server, args) if len(args) > 1 else _challenge(server, ""))
    if message is None:
        return None
    credentials = parse_plain(message)
    if credentials is None:
        await server.push(REPLY_BAD_PLAIN)
    return credentials


async def read_login(server: Any, args: list[str]) -> SaslCredentials | None:
    """Credentials of ``AUTH LOGIN [base64-username]``, or None once the client has been answered."""
    login = await (_initial_response(server, args) if len(args) > 1 else _challenge(server, "Username:"))
    if login is None:
        return None
    password = await _challenge(server, "Password:")
    if password is None:
        return None
    return SaslCredentials(login=_text(login), password=password)
