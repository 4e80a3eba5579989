"""The MSAL side of the persistent token cache: ``PersistentTokenCache``, a ``SerializableTokenCache``.

Its own module so that ``tokens/cache.py`` (layout, privacy checks, persistence, the lock and the
``TokenCache`` protocol) imports no msal: ``open_token_cache`` imports this when a cache is opened.
What it adds to MSAL's cache, and why, is in ``tokens/cache.py``'s docstring.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msal

from smtp_oauth.errors import ConfigurationError

if TYPE_CHECKING:
    from smtp_oauth.tokens.cache import CrossProcessLock, Persistence

__all__ = ["PersistentTokenCache"]


class PersistentTokenCache(msal.SerializableTokenCache):  # type: ignore[misc]  # msal is untyped
    """An MSAL cache that reloads when the file changed and writes every change under a lock."""

    def __init__(
        self, persistence: Persistence, lock: CrossProcessLock, *, stamp: Callable[[], object]
    ) -> None:
        super().__init__()
        self._persistence = persistence
        self._file_lock = lock
        self._stamp = stamp  # what changes when the stored cache is replaced (cache.stamp_of)
        self._loaded_stamp: object = None
        self._batching = False
        self.is_encrypted = persistence.is_encrypted

    @property
    def location(self) -> Path:
        return Path(self._persistence.get_location())

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the cross-process lock (re-entrant): for read-redeem-write of a refresh token."""
        return self._file_lock.hold()

    def reload_if_changed(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._loaded_stamp:
            return
        try:
            content = self._persistence.load()
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # FileNotFoundError, PersistenceNotFound
                return
            raise ConfigurationError(
                f"cannot read token cache {self.location}: {exc.strerror or exc}",
                key="identity.token_cache",
            ) from exc
        try:
            self.deserialize(content)
        except ValueError as exc:
            raise ConfigurationError(
                f"token cache {self.location} is not valid JSON; delete it (tokens will be "
                "fetched again, delegated flows need `smtp-oauth login`)",
                key="identity.token_cache",
            ) from exc
        # The stamp taken *before* the read: a write racing with it is seen next time.
        self._loaded_stamp = stamp

    def _save(self) -> None:
        self._persistence.save(self.serialize())
        self._loaded_stamp = self._stamp()

    def add(self, event: Any, **kwargs: Any) -> None:
        """A token response (access, refresh and id token, account): one write, not five."""
        with self.locked():
            self.reload_if_changed()
            self._batching = True
            try:
                super().add(event, **kwargs)
            finally:
                self._batching = False
            self._save()

    def modify(self, credential_type: Any, old_entry: Any, new_key_value_pairs: Any = None) -> None:
        with self.locked():
            if self._batching:  # inside add(): saved once at its end
                super().modify(credential_type, old_entry, new_key_value_pairs=new_key_value_pairs)
                return
            self.reload_if_changed()
            super().modify(credential_type, old_entry, new_key_value_pairs=new_key_value_pairs)
            self._save()

    def search(self, credential_type: Any, **kwargs: Any) -> Any:
        self.reload_if_changed()
        return super().search(credential_type, **kwargs)

    def count_entries(self) -> int:
        """How many credentials (tokens, accounts) the cache holds, for logout's report."""
        self.reload_if_changed()
        state = json.loads(self.serialize() or "{}")
        return sum(len(state.get(kind, {})) for kind in ("AccessToken", "RefreshToken", "IdToken", "Account"))
