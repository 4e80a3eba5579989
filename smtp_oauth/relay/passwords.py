"""Password hashes for the relay's local users: scrypt in a self-describing string.

Format (the modular-crypt style of passlib and libxcrypt, so the parameters travel with the hash)::

    $scrypt$ln=14,r=8,p=1$<salt>$<hash>

``ln`` is log2 of scrypt's cost ``n``; salt (16 bytes) and hash (32 bytes) are standard base64 without
padding. scrypt is in the standard library (``hashlib.scrypt``) and memory-hard, so a stolen
configuration file does not give the passwords away cheaply. These are pure functions; a caller on
the event loop runs :func:`verify_password` (~50 ms of CPU) through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "SCRYPT_FLOOR_VARIABLE",
    "PasswordHashError",
    "ScryptHash",
    "hash_password",
    "hash_weakness",
    "parse_hash",
    "scrypt_floor",
    "verify_password",
]

SCHEME = "scrypt"
DEFAULT_LOG2_N = 14  # n = 16384: ~50 ms and 16 MiB per check, the interactive-login cost of RFC 7914
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Upper bounds on what a hash string may ask for: a typo (or a hostile file) must not make one login
# attempt cost gigabytes of memory or minutes of CPU.
MAX_LOG2_N = 20
MAX_R = 32
MAX_P = 16

# The test suite's override of the start-up floor (hash_weakness): its fixtures log in hundreds of
# times and use cheap hashes. Not a configuration key and not SMTP_OAUTH_*, so that no user sets it
# by accident; the relay logs a warning whenever it lowers the floor.
SCRYPT_FLOOR_VARIABLE = "_SMTP_OAUTH_TEST_SUITE_SCRYPT_FLOOR"

_FORMAT = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)
_EXAMPLE = "$scrypt$ln=14,r=8,p=1$<salt>$<hash>"


class PasswordHashError(ValueError):
    """A password hash string that is not one ``smtp-oauth hash-password`` produces."""


@dataclass(frozen=True)
class ScryptHash:
    """The parts of a ``$scrypt$`` hash string."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        # The digest is as good as the password to an offline attacker: never in logs or tracebacks.
        return f"ScryptHash(log2_n={self.log2_n}, r={self.r}, p={self.p}, salt=..., digest=...)"

    def encode(self) -> str:
        """The hash as its self-describing string."""
        return (
            f"${SCHEME}$ln={self.log2_n},r={self.r},p={self.p}"
            f"${_b64encode(self.salt)}${_b64encode(self.digest)}"
        )

    def derive(self, password: bytes) -> bytes:
        """scrypt of ``password`` with this hash's salt and parameters."""
        n = 1 << self.log2_n
        # hashlib's default maxmem (32 MiB) is too small for r=8 beyond n=2**14; scrypt needs 128*n*r.
        maxmem = 128 * n * self.r * (self.p + 1) + 1024 * 1024
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=n,
            r=self.r,
            p=self.p,
            maxmem=maxmem,
            dklen=len(self.digest),
        )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _as_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def hash_password(password: str | bytes, *, log2_n: int = DEFAULT_LOG2_N) -> str:
    """A new ``$scrypt$`` hash of ``password`` with a random 16-byte salt."""
    _check_bounds(log2_n, DEFAULT_R, DEFAULT_P)
    salt = secrets.token_bytes(SALT_BYTES)
    # derive() takes the output length from the digest it is given, so start from a blank one.
    blank = ScryptHash(log2_n, DEFAULT_R, DEFAULT_P, salt, bytes(HASH_BYTES))
    digest = blank.derive(_as_bytes(password))
    return ScryptHash(log2_n, DEFAULT_R, DEFAULT_P, salt, digest).encode()


def _check_bounds(log2_n: int, r: int, p: int) -> None:
    if not 1 <= log2_n <= MAX_LOG2_N or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise PasswordHashError(
            f"scrypt parameters ln={log2_n}, r={r}, p={p} are out of range "
            f"(ln 1-{MAX_LOG2_N}, r 1-{MAX_R}, p 1-{MAX_P})"
        )


def parse_hash(encoded: str) -> ScryptHash:
    """The parts of a hash string; PasswordHashError (never echoing the string) when it is not one."""
    text = encoded.strip()
    match = _FORMAT.fullmatch(text)
    if match is None:
        scheme = text.split("$")[1] if text.startswith("$") and text.count("$") >= 2 else None
        what = f"its scheme is {scheme!r}" if scheme else "it is not a $-separated hash string"
        raise PasswordHashError(
            f"unsupported password hash: {what}; expected {_EXAMPLE} as printed by `smtp-oauth hash-password`"
        )
    log2_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    _check_bounds(log2_n, r, p)
    try:
        salt, digest = _b64decode(match["salt"]), _b64decode(match["hash"])
    except (binascii.Error, ValueError) as exc:
        raise PasswordHashError("password hash has a salt or hash that is not valid base64") from exc
    if len(salt) < 8 or len(digest) < 16:
        raise PasswordHashError("password hash is truncated (salt or hash too short)")
    return ScryptHash(log2_n=log2_n, r=r, p=p, salt=salt, digest=digest)


def verify_password(password: str | bytes, hashed: str | ScryptHash) -> bool:
    """True when ``password`` matches; compared in constant time. CPU-bound: call via to_thread."""
    parsed = parse_hash(hashed) if isinstance(hashed, str) else hashed
    return hmac.compare_digest(parsed.derive(_as_bytes(password)), parsed.digest)


def scrypt_floor(environ: Mapping[str, str] | None = None) -> int:
    """The lowest ``ln`` accepted at start-up: hash-password's, unless the test suite lowered it."""
    value = (os.environ if environ is None else environ).get(SCRYPT_FLOOR_VARIABLE, "")
    return int(value) if value.isdigit() and 1 <= int(value) < DEFAULT_LOG2_N else DEFAULT_LOG2_N


def hash_weakness(hashed: ScryptHash, *, floor_log2_n: int = DEFAULT_LOG2_N) -> str | None:
    """Why ``hashed`` must not guard a login (None: it may), checked once at start-up.

    scrypt's memory, and with it the cost of each offline guess, is 128 * n * r bytes (RFC 7914
    section 5): a hash below hash-password's n * r is cheaper to attack than the ones it makes. A
    hash of the empty password lets anyone in. The second test costs one scrypt (~50 ms).
    """
    if (1 << hashed.log2_n) * hashed.r < (1 << floor_log2_n) * DEFAULT_R:
        return (
            f"its scrypt parameters (ln={hashed.log2_n}, r={hashed.r}, p={hashed.p}) are weaker than "
            f"those `smtp-oauth hash-password` uses (ln={floor_log2_n}, r={DEFAULT_R}, p={DEFAULT_P})"
        )
    if verify_password(b"", hashed):
        return "it is the hash of the empty password"
    return None
