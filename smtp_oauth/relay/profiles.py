"""Which sender each upstream mailbox is: one relay for several apps, tenants and transports.

A ``[[relay.users]]`` entry with ``profile = "NAME"`` sends through ``[profiles.NAME]``: its
identity (own app, own token cache entry), its mailbox (``smtp.username`` unless the user names
one) and its transport. The spool and the per-mailbox limits (``upstream_connections``,
``messages_per_minute``) are keyed by mailbox, so each mailbox keeps its own; a mailbox must
therefore belong to one profile only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.loading import settings_for_profile
from smtp_oauth.settings.models import Settings

__all__ = ["MailboxRoutes"]


@dataclass(frozen=True)
class MailboxRoutes:
    """Upstream mailbox -> the settings (profile) it is sent with."""

    default: Settings
    profiles: Mapping[str, Settings]  # profile name -> its merged settings (used profiles only)
    routes: Mapping[str, str]  # mailbox (casefolded) -> profile name

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
        return cls(default=settings, profiles=profiles, routes=routes)

    def profile_of(self, mailbox: str) -> str | None:
        return self.routes.get(mailbox.casefold())

    def settings_for(self, mailbox: str) -> Settings:
        name = self.profile_of(mailbox)
        return self.default if name is None else self.profiles[name]

    def default_mailboxes(self) -> dict[str, str]:
        """Profile name -> its mailbox, for users that name a profile but no mailbox."""
        return {name: settings.smtp.username for name, settings in self.profiles.items()}


def _name(profile: str | None) -> str:
    return f"profile {profile!r}" if profile else "the top-level identity"
