"""Which sender each upstream mailbox is: one relay for several apps, tenants and transports.

A ``[[relay.users]]`` entry with ``profile = "NAME"`` sends through ``[profiles.NAME]``: its
identity (own app, own token cache entry), its mailbox (``smtp.username`` unless the user names
one) and its transport. The spool and the per-mailbox limits (``upstream_connections``,
``messages_per_minute``) are keyed by mailbox, so each mailbox keeps its own; a mailbox must
therefore belong to one profile only.

Local submissions (the submission socket: send-mail with ``via = "relay"``) have no relay user to
name a profile, so the sender does, as it does for send-mail itself (``--profile`` picks the
identity, whose mailbox and ``smtp.from_address`` are the senders): a MAIL FROM that is the mailbox
or from_address of the top level or of a ``[profiles.NAME]`` is sent as that one's mailbox, with
that one's identity. A profile whose mailbox another identity already sends keeps that owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.loading import settings_for_profile
from smtp_oauth.settings.models import Settings

__all__ = ["LocalSender", "MailboxRoutes"]


@dataclass(frozen=True)
class LocalSender:
    """The mailbox a local submission sends as, and the senders it may use (send-mail's own)."""

    mailbox: str
    senders: frozenset[str]  # lower case, as policy.sender_matches compares

    @classmethod
    def of(cls, settings: Settings) -> LocalSender:
        smtp = settings.smtp
        return cls(smtp.username, frozenset({smtp.username.lower(), smtp.sender.lower()}))


@dataclass(frozen=True)
class MailboxRoutes:
    """Upstream mailbox -> the settings (profile) it is sent with."""

    default: Settings
    profiles: Mapping[str, Settings]  # profile name -> its merged settings (used profiles only)
    routes: Mapping[str, str]  # mailbox (casefolded) -> profile name
    local: tuple[LocalSender, ...] = ()  # the top level's first, then each profile's
    local_routes: Mapping[str, str] = field(default_factory=dict)  # profiles' own mailboxes, for local mail

    def local_sender(self, address: str) -> LocalSender:
        """Whom a local submission from ``address`` sends as: the identity that has it as its
        mailbox or from_address, else the top level (whose sender rules then refuse it)."""
        wanted = address.strip().lower()
        for candidate in self.local:
            if wanted in candidate.senders:
                return candidate
        return self.local[0] if self.local else LocalSender.of(self.default)

    @classmethod
    def from_settings(cls, settings: Settings) -> MailboxRoutes:
        """Merge each profile the relay users name; ConfigurationError for a mailbox claimed twice."""
        profiles: dict[str, Settings] = {}
        owners: dict[str, str | None] = {}
        for index, user in enumerate(settings.relay.users):
            if user.profile is not None and user.profile not in profiles:
                profiles[user.profile] = settings_for_profile(settings, user.profile)
            chosen = profiles[user.profile] if user.profile is not None else settings
            mailbox = (user.mailbox or chosen.smtp.username).casefold()
            if mailbox in owners and owners[mailbox] != user.profile:
                raise ConfigurationError(
                    f"relay.users[{index}] ({user.name!r}) sends as {mailbox} through "
                    f"{_name(user.profile)}, but another user sends as it through {_name(owners[mailbox])}",
                    key=f"relay.users[{index}].profile",
                    hint="A mailbox is sent by one identity: give these users the same profile.",
                )
            owners[mailbox] = user.profile
        routes = {mailbox: name for mailbox, name in owners.items() if name is not None}
        owners.setdefault(settings.smtp.username.casefold(), None)
        local = [LocalSender.of(settings)]
        local_routes: dict[str, str] = {}
        for name in settings.profiles:
            merged = profiles.get(name) or settings_for_profile(settings, name)
            mailbox = merged.smtp.username.casefold()
            if owners.setdefault(mailbox, name) != name:
                continue  # another identity sends as this mailbox (see the module's docstring)
            profiles[name] = merged
            local.append(LocalSender.of(merged))
            if mailbox not in routes:
                local_routes[mailbox] = name
        return cls(
            default=settings, profiles=profiles, routes=routes, local=tuple(local), local_routes=local_routes
        )

    def profile_of(self, mailbox: str) -> str | None:
        key = mailbox.casefold()
        return self.routes.get(key) or self.local_routes.get(key)

    def settings_for(self, mailbox: str) -> Settings:
        name = self.profile_of(mailbox)
        return self.default if name is None else self.profiles[name]

    def default_mailboxes(self) -> dict[str, str]:
        """Profile name -> its mailbox, for users that name a profile but no mailbox."""
        return {name: settings.smtp.username for name, settings in self.profiles.items()}


def _name(profile: str | None) -> str:
    return f"profile {profile!r}" if profile else "the top-level identity"
