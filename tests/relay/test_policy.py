"""Relay policy as pure decisions: loopback, open relay, users, sender rules, networks, headers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.mail.headers import read_headers
from smtp_oauth.relay.passwords import SCRYPT_FLOOR_VARIABLE, hash_password
from smtp_oauth.relay.policy import (
    RelayPolicy,
    check_not_open_relay,
    cleartext_auth_allowed,
    is_loopback_address,
)
from smtp_oauth.settings.models import RelaySettings

HASH = hash_password("pw", log2_n=4)
DEFAULT_MAILBOX = "relay@contoso.com"


def policy(**relay: Any) -> RelayPolicy:
    return RelayPolicy.from_settings(RelaySettings(**relay), default_mailbox=DEFAULT_MAILBOX)


def user(name: str = "fern", **fields: Any) -> dict[str, Any]:
    return {"name": name, "password_hash": HASH, **fields}


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "localhost", "LOCALHOST"]
)
def test_loopback_addresses_are_loopback(host: str) -> None:
    """127/8, ::1, IPv4-mapped 127/8 and 'localhost' count as loopback."""
    assert is_loopback_address(host)


WILDCARD_IPV4 = "0.0.0.0"  # noqa: S104  # a value under test, nothing binds to it


@pytest.mark.parametrize(
    "host", [WILDCARD_IPV4, "::", "", "10.0.0.5", "::ffff:10.0.0.5", "fe80::1%eth0", "mail.lan"]
)
def test_other_addresses_are_not_loopback(host: str) -> None:
    """Wildcards, LAN addresses and host names are not loopback."""
    assert not is_loopback_address(host)


def test_cleartext_auth_is_not_offered_to_a_remote_peer() -> None:
    """A non-loopback peer without TLS is not offered AUTH (its password would cross the wire)."""
    assert not cleartext_auth_allowed("10.0.0.5", tls_active=False)


def test_auth_is_offered_to_a_remote_peer_after_starttls() -> None:
    """After STARTTLS any peer may authenticate."""
    assert cleartext_auth_allowed("10.0.0.5", tls_active=True)


def test_auth_is_offered_to_a_loopback_peer_in_cleartext() -> None:
    """A loopback peer may authenticate without TLS."""
    assert cleartext_auth_allowed("::1", tls_active=False)


@pytest.mark.parametrize("listen", ["0.0.0.0:2525", "[::]:2525", "10.0.0.1:25", "mail.lan:2525"])
def test_public_listen_without_users_is_an_open_relay(listen: str) -> None:
    """Listening beyond loopback with no users is refused, naming relay.users."""
    with pytest.raises(ConfigurationError) as caught:
        check_not_open_relay(RelaySettings(listen=listen))
    assert "that would be an open relay" in str(caught.value)
    assert caught.value.key == "relay.users"


def test_loopback_listen_without_users_is_allowed() -> None:
    """On loopback, an empty user list is not an open relay (nobody else can connect)."""
    check_not_open_relay(RelaySettings(listen="127.0.0.1:2525"))


def test_public_listen_with_users_is_allowed() -> None:
    """Listening beyond loopback is fine when users must authenticate."""
    check_not_open_relay(RelaySettings(listen="0.0.0.0:2525", users=[user()]))


def test_allow_networks_matching_everything_is_an_open_relay() -> None:
    """An allow_networks entry of 0.0.0.0/0 on a public listener is refused."""
    relay = RelaySettings(
        listen="0.0.0.0:2525", users=[user()], allow_networks=[{"cidr": "0.0.0.0/0", "user": "fern"}]
    )
    with pytest.raises(ConfigurationError) as caught:
        check_not_open_relay(relay)
    assert caught.value.key == "relay.allow_networks"


def test_allowed_senders_default_to_the_users_mailbox() -> None:
    """Without allowed_senders a user may send only as its mailbox."""
    fern = policy(users=[user(mailbox="fern@contoso.com")]).users["fern"]
    assert fern.may_send_as("fern@contoso.com")
    assert not fern.may_send_as("other@contoso.com")


def test_mailbox_defaults_to_the_default_mailbox() -> None:
    """Without mailbox a user sends through (and as) the default mailbox."""
    fern = policy(users=[user()]).users["fern"]
    assert fern.mailbox == DEFAULT_MAILBOX
    assert fern.may_send_as(DEFAULT_MAILBOX)


def test_domain_rule_matches_only_that_domain() -> None:
    """'@contoso.com' admits any local part at contoso.com, not subdomains or look-alikes."""
    fern = policy(users=[user(allowed_senders=["@Contoso.com"])]).users["fern"]
    assert fern.may_send_as("anyone@CONTOSO.COM")
    assert not fern.may_send_as("x@scan.contoso.com")
    assert not fern.may_send_as("x@evilcontoso.com")
    assert not fern.may_send_as("@contoso.com")


def test_null_sender_needs_an_explicit_rule() -> None:
    """The null sender matches only a '<>' entry."""
    plain = policy(users=[user(allowed_senders=["@contoso.com"])]).users["fern"]
    bounces = policy(users=[user(allowed_senders=["<>"])]).users["fern"]
    assert not plain.may_send_as("<>")
    assert bounces.may_send_as("<>")
    assert bounces.may_send_as("")


@given(local=st.from_regex(r"[a-z0-9._+-]{1,20}", fullmatch=True), domain=st.sampled_from(["a.com", "b.org"]))
def test_domain_rule_property(local: str, domain: str) -> None:
    """For any local part, '@a.com' admits x@a.com and nothing at another domain."""
    fern = policy(users=[user(allowed_senders=["@a.com"])]).users["fern"]
    assert fern.may_send_as(f"{local}@{domain}") == (domain == "a.com")


def test_bad_allowed_senders_entry_names_the_key() -> None:
    """An allowed_senders entry that is no address is a ConfigurationError naming the key."""
    with pytest.raises(ConfigurationError) as caught:
        policy(users=[user(allowed_senders=["fern at contoso"])])
    assert caught.value.key == "relay.users[0].allowed_senders"


def test_bad_password_hash_names_the_user_and_hides_the_value() -> None:
    """A hash of an unknown format names user and key, and does not echo the hash."""
    with pytest.raises(ConfigurationError) as caught:
        policy(users=[user(password_hash="$2b$12$abcdefghijklmnopqrstuv")])
    assert caught.value.key == "relay.users[0].password_hash"
    assert "'fern'" in str(caught.value)
    assert "abcdefghijklmnopqrstuv" not in str(caught.value)


def test_duplicate_user_names_are_refused() -> None:
    """Two users with the same name are a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        policy(users=[user(), user()])


def test_allow_networks_must_name_a_known_user() -> None:
    """allow_networks mapping to a user that does not exist is a ConfigurationError."""
    with pytest.raises(ConfigurationError) as caught:
        policy(users=[user()], allow_networks=[{"cidr": "10.0.5.0/24", "user": "printer"}])
    assert caught.value.key == "relay.allow_networks[0].user"


def test_network_user_matches_peers_inside_the_network() -> None:
    """A peer inside a CIDR (also as an IPv4-mapped address) maps to its user; others to None."""
    relay_policy = policy(users=[user()], allow_networks=[{"cidr": "10.0.5.0/24", "user": "fern"}])
    fern = relay_policy.users["fern"]
    assert relay_policy.network_user("10.0.5.17") == fern
    assert relay_policy.network_user("::ffff:10.0.5.17") == fern
    assert relay_policy.network_user("10.0.6.1") is None
    assert relay_policy.network_user("::1") is None


def test_read_headers_finds_every_from_address_and_the_message_id() -> None:
    """Folded, multi-address and repeated From: fields all count; the Message-ID is read."""
    data = (
        b'From: "Fern, F." <fern@contoso.com>,\r\n bob@contoso.com\r\n'
        b"Message-ID: <id-1@contoso.com>\r\n"
        b"From : ceo@contoso.com\r\n"
        b"\r\n"
        b"From: body-line@example.com\r\n"
    )
    headers = read_headers(data)
    assert headers.from_addresses == ("fern@contoso.com", "bob@contoso.com", "ceo@contoso.com")
    assert headers.message_id == "<id-1@contoso.com>"


def test_read_headers_stops_at_a_bare_lf_blank_line_too() -> None:
    """Bare-LF lines are header lines as well, and a bare-LF blank line ends the header."""
    headers = read_headers(b"Subject: x\nFrom: a@b.com\n\nFrom: body@example.com\r\n\r\n")
    assert headers.from_addresses == ("a@b.com",)


def test_empty_from_counts_as_an_empty_sender() -> None:
    """An empty From: field yields '' so the sender check refuses it."""
    assert read_headers(b"From:\r\n\r\nbody\r\n").from_addresses == ("",)


def test_message_without_from_has_no_header_senders() -> None:
    """No From: field: nothing to check beyond MAIL FROM; no Message-ID either."""
    headers = read_headers(b"Subject: hi\r\n\r\nbody\r\n")
    assert headers.from_addresses == ()
    assert headers.message_id is None


def test_allow_networks_covering_the_internet_in_halves_is_refused() -> None:
    """0.0.0.0/1 + 128.0.0.0/1 (every IPv4 host, in two entries) is an open relay: refused."""
    networks = [{"cidr": "0.0.0.0/1", "user": "fern"}, {"cidr": "128.0.0.0/1", "user": "fern"}]
    relay = RelaySettings(listen="0.0.0.0:2525", users=[user()], allow_networks=networks)
    with pytest.raises(ConfigurationError) as caught:
        check_not_open_relay(relay)
    assert caught.value.key == "relay.allow_networks"
    assert "public IPv4 addresses" in str(caught.value)


def test_allow_networks_covering_ipv6_in_halves_is_refused() -> None:
    """::/1 + 8000::/1 is every IPv6 host: refused."""
    networks = [{"cidr": "::/1", "user": "fern"}, {"cidr": "8000::/1", "user": "fern"}]
    with pytest.raises(ConfigurationError):
        check_not_open_relay(RelaySettings(listen="[::]:2525", users=[user()], allow_networks=networks))


def test_everything_on_a_loopback_listener_is_refused_too() -> None:
    """0.0.0.0/0 on a loopback listener is refused as well (it was accepted silently)."""
    networks = [{"cidr": "0.0.0.0/0", "user": "fern"}]
    with pytest.raises(ConfigurationError):
        check_not_open_relay(RelaySettings(listen="127.0.0.1:2525", users=[user()], allow_networks=networks))


def test_an_office_s_small_public_network_is_accepted() -> None:
    """A public /28 (an office's NAT range) is a normal allow_networks entry."""
    networks = [{"cidr": "198.51.100.16/28", "user": "fern"}]
    check_not_open_relay(RelaySettings(listen="0.0.0.0:2525", users=[user()], allow_networks=networks))


def test_a_wide_private_range_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """10.0.0.0/8 starts, with a warning that every host in it sends without a password."""
    networks = [{"cidr": "10.0.0.0/8", "user": "fern"}]
    check_not_open_relay(RelaySettings(listen="0.0.0.0:2525", users=[user()], allow_networks=networks))
    assert "10.0.0.0/8" in caplog.text
    assert "without a password" in caplog.text


@pytest.mark.parametrize(
    "header",
    [
        b"Sender: boss@contoso.com",
        b"Resent-From: boss@contoso.com",
        b"Resent-Sender: Boss <boss@contoso.com>",
        b'From: "boss@contoso.com" <fern@contoso.com>',
        b"From: =?utf-8?q?boss=40contoso=2Ecom?= <fern@contoso.com>",
        b"From: fern@contoso.com (boss@contoso.com)",
    ],
)
def test_other_sender_fields_and_display_names_are_checked(header: bytes) -> None:
    """Sender:, Resent-From:/-Sender: and an address shown as a display name are checked like From:."""
    fern = policy(users=[user(mailbox="fern@contoso.com")]).users["fern"]
    found = read_headers(b"From: fern@contoso.com\r\n" + header + b"\r\n\r\nbody\r\n").from_addresses
    assert "boss@contoso.com" in found
    assert not all(fern.may_send_as(address) for address in found)


def test_a_plain_display_name_passes() -> None:
    """'Fern Example <fern@contoso.com>' and its own address as display name are fine."""
    fern = policy(users=[user(mailbox="fern@contoso.com")]).users["fern"]
    data = b'From: Fern Example <fern@contoso.com>\r\nSender: "fern@contoso.com" <fern@contoso.com>\r\n\r\nx'
    assert all(fern.may_send_as(address) for address in read_headers(data).from_addresses)


def test_user_with_a_hash_cheaper_than_hash_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay user whose scrypt parameters are below hash-password's is refused, naming the fix."""
    monkeypatch.delenv(SCRYPT_FLOOR_VARIABLE)
    with pytest.raises(ConfigurationError) as caught:
        policy(users=[user("printer", password_hash=hash_password("long enough", log2_n=12))])
    assert "'printer'" in str(caught.value)
    assert "ln=12" in str(caught.value)
    assert "smtp-oauth hash-password" in (caught.value.hint or "")
    assert caught.value.key == "relay.users[0].password_hash"


def test_user_with_the_hash_of_the_empty_password_is_refused() -> None:
    """A relay user whose hash is of the empty password is refused at start-up."""
    with pytest.raises(ConfigurationError, match=r"'scanner'.*empty password"):
        policy(users=[user("scanner", password_hash=hash_password("", log2_n=4))])
