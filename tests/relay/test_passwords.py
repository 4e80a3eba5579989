"""scrypt password hashes for relay users: format, verification, rejection of other formats."""

from __future__ import annotations

import pytest

from smtp_oauth.relay.passwords import (
    SCRYPT_FLOOR_VARIABLE,
    PasswordHashError,
    hash_password,
    hash_weakness,
    parse_hash,
    scrypt_floor,
    verify_password,
)


def test_default_hash_is_self_describing_scrypt() -> None:
    """The default hash names scrypt, ln=14, r=8, p=1 and carries a 16-byte salt and 32-byte hash."""
    encoded = hash_password("correct horse")
    assert encoded.startswith("$scrypt$ln=14,r=8,p=1$")
    parsed = parse_hash(encoded)
    assert (len(parsed.salt), len(parsed.digest)) == (16, 32)


def test_right_password_verifies() -> None:
    """verify_password accepts the password the hash was made from."""
    assert verify_password("correct horse", hash_password("correct horse", log2_n=8))


def test_wrong_password_does_not_verify() -> None:
    """verify_password refuses any other password."""
    assert not verify_password("correct horsE", hash_password("correct horse", log2_n=8))


def test_non_ascii_password_round_trips_as_utf8() -> None:
    """A str password and its UTF-8 bytes (what SMTP clients send) verify alike."""
    encoded = hash_password("pässwörd", log2_n=8)
    assert verify_password("pässwörd".encode(), encoded)


def test_same_password_hashes_differently() -> None:
    """Each hash gets a fresh salt."""
    assert hash_password("x", log2_n=4) != hash_password("x", log2_n=4)


def test_cost_parameters_travel_with_the_hash() -> None:
    """A hash made with another cost verifies with that cost."""
    encoded = hash_password("pw", log2_n=6)
    assert parse_hash(encoded).log2_n == 6
    assert verify_password("pw", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "plaintext-password",
        "",
    ],
)
def test_unknown_formats_are_rejected_clearly(encoded: str) -> None:
    """Other schemes and plain text raise PasswordHashError pointing at hash-password."""
    with pytest.raises(PasswordHashError, match="smtp-oauth hash-password"):
        parse_hash(encoded)


def test_rejection_does_not_echo_the_value() -> None:
    """The error message never repeats the (possibly secret) string it was given."""
    with pytest.raises(PasswordHashError) as caught:
        parse_hash("hunter2-is-my-password")
    assert "hunter2" not in str(caught.value)


def test_absurd_cost_is_rejected() -> None:
    """A hash asking for ln=30 (gigabytes per check) is refused instead of run."""
    encoded = hash_password("pw", log2_n=4).replace("ln=4", "ln=30")
    with pytest.raises(PasswordHashError, match="out of range"):
        parse_hash(encoded)


def test_repr_hides_salt_and_digest() -> None:
    """A parsed hash in a log or traceback shows its parameters only."""
    encoded = hash_password("pw", log2_n=4)
    digest_b64 = encoded.rsplit("$", 1)[1]
    assert digest_b64 not in repr(parse_hash(encoded))


def test_hash_weaker_than_hash_password_makes_is_weak() -> None:
    """A hash with scrypt parameters below hash-password's (ln=14, r=8) is reported as weak."""
    weak = parse_hash(hash_password("long enough password", log2_n=10))
    reason = hash_weakness(weak)
    assert reason is not None
    assert "ln=10" in reason
    assert "ln=14" in reason


def test_hash_of_the_empty_password_is_weak() -> None:
    """A hash of the empty password is reported as weak, whatever its cost."""
    assert hash_weakness(parse_hash(hash_password("", log2_n=4)), floor_log2_n=4) == (
        "it is the hash of the empty password"
    )


def test_hash_password_output_is_not_weak() -> None:
    """What hash-password makes (default parameters, a real password) passes the start-up check."""
    assert hash_weakness(parse_hash(hash_password("correct horse"))) is None


def test_floor_override_is_only_the_test_suite_variable() -> None:
    """The floor is hash-password's unless the test suite's variable lowers it (never raises it)."""
    assert scrypt_floor({}) == 14
    assert scrypt_floor({SCRYPT_FLOOR_VARIABLE: "4"}) == 4
    assert scrypt_floor({SCRYPT_FLOOR_VARIABLE: "20"}) == 14
    assert scrypt_floor({"SMTP_OAUTH_RELAY__SCRYPT_FLOOR": "4"}) == 14
