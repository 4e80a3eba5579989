"""Who may use the relay and as whom they may send: local users, networks, sender rules. Pure.

Built once from ``[relay]`` (and again on SIGHUP) and consulted by the listener at each step:

- AUTH: :meth:`RelayPolicy.user` finds the local account; the password hash is checked elsewhere
  (``passwords.py``, off the event loop).
- Without AUTH: :meth:`RelayPolicy.network_user` maps a peer in ``relay.allow_networks`` to its user.
- MAIL FROM and the message's From: header(s): :meth:`LocalUser.may_send_as` against the user's
  ``allowed_senders`` (addresses or ``@domain``, case-insensitive; ``<>`` permits bounces).
- Cleartext AUTH: :func:`cleartext_auth_allowed` (loopback peers, or after STARTTLS).
- Never an open relay: :func:`check_not_open_relay` before binding.

Malformed settings become a ConfigurationError naming the key, so a SIGHUP with a typo keeps the
running policy instead of locking every sender out.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.passwords import (
    DEFAULT_LOG2_N,
    SCRYPT_FLOOR_VARIABLE,
    PasswordHashError,
    ScryptHash,
    hash_weakness,
    parse_hash,
    scrypt_floor,
)
from smtp_oauth.settings.models import RelaySettings, parse_listen

__all__ = [
    "NULL_SENDER",
    "LocalUser",
    "RelayPolicy",
    "check_not_open_relay",
    "cleartext_auth_allowed",
    "is_loopback_address",
]

log = logging.getLogger("smtp_oauth.relay.listener")

NULL_SENDER = "<>"  # the empty reverse-path of bounces (RFC 5321 4.5.5), as written in allowed_senders

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback_address(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1, ::ffff:127.x.y.z and 'localhost'; False for names and wildcards."""
    if not host:
        return False  # "" binds every interface
    if host.lower() == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def _ip(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


def cleartext_auth_allowed(peer_host: str | None, *, tls_active: bool) -> bool:
    """Whether AUTH PLAIN/LOGIN may be offered to this peer: only if the password cannot be sniffed.

    That is after STARTTLS, or when the peer is on this machine (loopback traffic never reaches a
    wire). A peer on a wildcard or LAN listener without TLS is not offered AUTH at all, as Postfix's
    ``smtpd_tls_auth_only`` does.
    """
    return tls_active or is_loopback_address(peer_host)


# Address space that is not reachable from the Internet (RFC 6890 special-purpose registries):
# networks inside it are a LAN's devices; anything else in allow_networks is someone else's hosts.
_NON_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.168.0.0/16", "::1/128", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip
MAX_PUBLIC_ADDRESSES = 2**16  # public space allow_networks may cover in all: a /16 of offices
WIDE_PRIVATE_PREFIX = {4: 16, 6: 48}  # shorter private prefixes than these get a warning


def _non_public(network: IPNetwork) -> bool:
    return any(network.version == block.version and network.subnet_of(block) for block in _NON_PUBLIC)  # type: ignore[arg-type]


def check_not_open_relay(relay: RelaySettings) -> None:
    """Refuse settings that would let anyone on the network send mail as our mailboxes.

    A non-loopback listener needs relay.users; relay.allow_networks may not cover more than
    ``MAX_PUBLIC_ADDRESSES`` of public address space in all (``0.0.0.0/1`` + ``128.0.0.0/1`` is
    the whole Internet, split in two), on any listener; wide private ranges are logged as a warning.
    """
    host, _ = parse_listen(relay.listen)
    loopback = is_loopback_address(host)
    if not loopback and not relay.users:
        raise ConfigurationError(
            f"relay.listen is {relay.listen}, which is not loopback, and relay.users is empty: that "
            "would be an open relay, so the relay will not start",
            key="relay.users",
            hint="Add [[relay.users]] entries (passwords from `smtp-oauth hash-password`); "
            "relay.allow_networks only maps networks to such users, it is not a user list. "
            "Or listen on 127.0.0.1 only.",
        )
    public4: list[ipaddress.IPv4Network] = []
    public6: list[ipaddress.IPv6Network] = []
    for network in (ipaddress.ip_network(n.cidr, strict=False) for n in relay.allow_networks):
        if _non_public(network):
            if network.prefixlen < WIDE_PRIVATE_PREFIX[network.version] or (loopback and network.is_loopback):
                log.warning(
                    "relay.allow_networks has %s: every host (or, on loopback, every local program) "
                    "in it sends without a password; list only the devices that cannot log in",
                    network,
                )
            continue
        if isinstance(network, ipaddress.IPv4Network):
            public4.append(network)
        else:
            public6.append(network)
    covered4 = sum(n.num_addresses for n in ipaddress.collapse_addresses(public4))
    covered6 = sum(n.num_addresses for n in ipaddress.collapse_addresses(public6))
    # IPv6: a /48 (one site) in all, the same share of the space as a /16 of IPv4's public part.
    for version, covered, limit, networks in (
        (4, covered4, MAX_PUBLIC_ADDRESSES, public4),
        (6, covered6, 2**80, public6),
    ):
        if covered > limit:
            listed = ", ".join(str(n) for n in networks)
            raise ConfigurationError(
                f"relay.allow_networks covers {covered} public IPv{version} addresses ({listed}): every "
                "host in them could send mail as your mailbox without a password, an open relay",
                key="relay.allow_networks",
                hint="List only the networks of the devices that cannot authenticate, e.g. 10.0.5.0/24 "
                "or an office's public /28; everything else logs in as a [[relay.users]] entry.",
            )


def _normalise_rule(rule: str) -> str:
    """An allowed_senders entry in canonical form, or ValueError."""
    text = rule.strip().lower()
    if text == NULL_SENDER:
        return text
    local, at, domain = text.rpartition("@")
    if not at or not domain or "." not in domain.strip(".") or any(c.isspace() for c in text):
        raise ValueError(rule)
    return f"@{domain}" if not local else f"{local}@{domain}"


def sender_matches(address: str, rules: frozenset[str]) -> bool:
    """Whether ``address`` (an addr-spec, or '' / '<>' for the null sender) matches one of ``rules``."""
    text = address.strip().lower()
    if text in {"", NULL_SENDER}:
        return NULL_SENDER in rules
    local, at, domain = text.rpartition("@")
    if not (local and at and domain):
        return False  # "@contoso.com" or "postmaster" is no sender address, whatever the rules say
    return text in rules or f"@{domain}" in rules


@dataclass(frozen=True)
class LocalUser:
    """A ``[[relay.users]]`` account: its password hash, upstream mailbox and sender rules."""

    name: str
    password: ScryptHash
    mailbox: str
    allowed_senders: frozenset[str]

    def may_send_as(self, address: str) -> bool:
        """Whether this user may use ``address`` as MAIL FROM or in From:."""
        return sender_matches(address, self.allowed_senders)


def _build_user(
    index: int,
    relay: RelaySettings,
    *,
    default_mailbox: str,
    profile_mailboxes: Mapping[str, str],
    floor_log2_n: int,
) -> LocalUser:
    settings = relay.users[index]
    key = f"relay.users[{index}]"
    try:
        password = parse_hash(settings.password_hash.get_secret_value())
    except PasswordHashError as exc:
        raise ConfigurationError(
            f"{key}.password_hash of user {settings.name!r}: {exc}",
            key=f"{key}.password_hash",
            hint="Generate it with `smtp-oauth hash-password` and paste the whole line.",
        ) from None
    weakness = hash_weakness(password, floor_log2_n=floor_log2_n)
    if weakness is not None:
        raise ConfigurationError(
            f"{key}.password_hash of user {settings.name!r} is refused: {weakness}",
            key=f"{key}.password_hash",
            hint=f"Choose a password for {settings.name!r} and replace the hash with the line "
            "`smtp-oauth hash-password` prints.",
        )
    profile_mailbox = profile_mailboxes.get(settings.profile) if settings.profile else None
    mailbox = settings.mailbox or profile_mailbox or default_mailbox
    rules = settings.allowed_senders if settings.allowed_senders is not None else [mailbox]
    try:
        allowed = frozenset(_normalise_rule(rule) for rule in rules)
    except ValueError as exc:
        raise ConfigurationError(
            f"{key}.allowed_senders of user {settings.name!r} has {exc.args[0]!r}, which is neither "
            "an address, an @domain nor <>",
            key=f"{key}.allowed_senders",
            hint='Use entries like "fern@contoso.com" or "@contoso.com".',
        ) from None
    return LocalUser(name=settings.name, password=password, mailbox=mailbox, allowed_senders=allowed)


@dataclass(frozen=True)
class RelayPolicy:
    """The relay's users and networks, looked up by name or by peer address."""

    users: dict[str, LocalUser]
    networks: tuple[tuple[IPNetwork, str], ...]  # (network, user name), first match wins

    @classmethod
    def from_settings(
        cls,
        relay: RelaySettings,
        *,
        default_mailbox: str,
        profile_mailboxes: Mapping[str, str] | None = None,
    ) -> RelayPolicy:
        """Check and index ``[relay]``; ConfigurationError naming the key if anything is wrong.

        ``profile_mailboxes``: profile name -> its smtp.username, the mailbox of a user that names
        a profile but no mailbox.
        """
        users: dict[str, LocalUser] = {}
        floor = scrypt_floor()
        if floor != DEFAULT_LOG2_N and relay.users:
            log.warning("%s lowers the scrypt floor to ln=%d (test suite only)", SCRYPT_FLOOR_VARIABLE, floor)
        for index, settings in enumerate(relay.users):
            if settings.name in users:
                raise ConfigurationError(
                    f"relay.users has two users named {settings.name!r}",
                    key=f"relay.users[{index}].name",
                    hint="Give each [[relay.users]] entry its own name.",
                )
            users[settings.name] = _build_user(
                index,
                relay,
                default_mailbox=default_mailbox,
                profile_mailboxes=profile_mailboxes or {},
                floor_log2_n=floor,
            )
        networks: list[tuple[IPNetwork, str]] = []
        for index, network in enumerate(relay.allow_networks):
            if network.user not in users:
                raise ConfigurationError(
                    f"relay.allow_networks[{index}] maps {network.cidr} to user {network.user!r}, "
                    "which is not in relay.users",
                    key=f"relay.allow_networks[{index}].user",
                    hint="Add a [[relay.users]] entry with that name: its mailbox and "
                    "allowed_senders apply to the network's devices.",
                )
            networks.append((ipaddress.ip_network(network.cidr, strict=False), network.user))
        return cls(users=users, networks=tuple(networks))

    def user(self, name: str) -> LocalUser | None:
        """The account called ``name`` (exact, case-sensitive like Postfix's SASL names)."""
        return self.users.get(name)

    def network_user(self, peer_host: str | None) -> LocalUser | None:
        """The user a peer in ``relay.allow_networks`` sends as without AUTH, or None."""
        address = _ip(peer_host) if peer_host else None
        if address is None:
            return None
        for network, name in self.networks:
            if address.version == network.version and address in network:
                return self.users[name]
        return None
