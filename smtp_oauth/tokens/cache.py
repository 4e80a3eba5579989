"""The persistent MSAL token cache: one file per identity, private, atomic, shared across processes.

Layout. ``identity.token_cache`` (default ``$XDG_STATE_HOME/smtp-oauth/token-cache``) names a
*directory* (0700) holding one cache file (0600) per identity, so the relay, cron jobs and the
CLI can share the directory without mixing apps or tenants::

    token-cache/<client_id>-<12 hex digits of sha256(authority, client_id)>.json
    token-cache/<same>.json.lock      (lock file, empty, never deleted)

Why not msal-extensions' ``PersistedTokenCache`` + ``FilePersistence`` as they are (1.3.1):
- ``FilePersistence.save`` truncates and rewrites in place; a reader (another process, or
  send-mail's fast path) can see half a file. We write a temp file, fsync, and rename.
- ``CrossPlatLock`` deletes its lock file on exit, a known race (Azure/azure-cli#20252), and waits
  5 s on a stale one. Our lock file stays; the OS lock (portalocker, flock) is the lock.
- Reload-if-newer compares the file's mtime with the time of the last *sync*: a write landing
  between our read and that timestamp is missed, and our next write would drop a rotated refresh
  token. We compare the file's identity (inode, size, mtime_ns) as it was when we read it.
- A silent refresh reads the refresh token, redeems it and writes the new one. With strict
  rotation two processes redeeming the same one lose; ``TokenCache.locked()`` lets the provider
  hold the cross-process lock around the whole acquisition (and the second process then finds
  the first one's fresh access token instead of asking the IdP).

Encryption: msal-extensions' ``build_encrypted_persistence`` (DPAPI, Keychain, libsecret) when the
OS offers it; otherwise plaintext 0600 and one INFO line. An existing plaintext cache stays
plaintext (switching would silently drop its refresh token). Like ssh with private keys, a cache
file or directory that group or others can access is refused.

Importing this module does not import msal. send-mail's fast path reads the plaintext file without
this module (``fastpath.read_token``, stdlib only); the rules there are the same (0600, ours).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.files import write_private

if TYPE_CHECKING:
    import portalocker

    from smtp_oauth.settings.models import Settings

__all__ = [
    "CACHE_DIR_MODE",
    "CACHE_FILE_MODE",
    "AtomicFilePersistence",
    "CrossProcessLock",
    "Persistence",
    "TokenCache",
    "cache_file_path",
    "check_private",
    "open_token_cache",
]

log = logging.getLogger(__name__)

CACHE_DIR_MODE = 0o700
CACHE_FILE_MODE = 0o600
_GROUP_OTHER_BITS = 0o077


def cache_file_path(settings: Settings) -> Path:
    """Where this identity's cache file lives (the directory is ``settings.token_cache_path``)."""
    identity = settings.identity
    digest = hashlib.sha256(identity.cache_key.encode()).hexdigest()[:12]
    name = identity.client_id or "managed-identity"
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]
    return settings.token_cache_path.expanduser() / f"{readable}-{digest}.json"


def check_private(path: Path, *, directory: bool = False) -> None:
    """Refuse a cache file or directory that group or others may access (as ssh does with keys)."""
    if os.name == "nt":  # mode bits mean nothing there; the profile directory's ACL protects it
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & _GROUP_OTHER_BITS:
        return
    what = "token cache directory" if directory else "token cache"
    access = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "accessible"
    wanted = "700" if directory else "600"
    raise ConfigurationError(
        f"{what} {path} is {access} by others (mode {mode:04o}); run: chmod {wanted} {path}",
        key="identity.token_cache",
        hint="The cache holds refresh and access tokens: only the owner may read it.",
    )


def _prepare_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(
            f"identity.token_cache {directory} is a file; it must name a directory "
            "(smtp-oauth keeps one cache file per identity in it)",
            key="identity.token_cache",
        )
    try:
        directory.mkdir(mode=CACHE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create token cache directory {directory}: {exc.strerror}", key="identity.token_cache"
        ) from exc
    check_private(directory, directory=True)


class AtomicFilePersistence:
    """Plaintext persistence (msal-extensions' duck type) written with temp file + fsync + rename."""

    is_encrypted = False

    def __init__(self, location: Path) -> None:
        self._location = location

    def get_location(self) -> str:
        return str(self._location)

    def save(self, content: str) -> None:
        write_private(self._location, content)  # 0600, temp file + fsync + rename

    def load(self) -> str:
        """The content; FileNotFoundError when nothing was saved yet."""
        return self._location.read_text(encoding="utf-8")

    def stamp(self) -> object:
        """Changes whenever the file is replaced; None when there is no file."""
        try:
            st = self._location.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def time_last_modified(self) -> float:
        return self._location.stat().st_mtime


class Persistence(Protocol):
    """Where the cache's bytes live: ``AtomicFilePersistence``, or msal-extensions' encrypted ones."""

    is_encrypted: bool

    def get_location(self) -> str: ...
    def save(self, content: str) -> None: ...
    def load(self) -> str: ...
    def time_last_modified(self) -> float: ...


def stamp_of(persistence: Persistence) -> object:
    """What changes whenever the stored cache is replaced (None: nothing stored)."""
    if isinstance(persistence, AtomicFilePersistence):
        return persistence.stamp()
    try:  # keyring persistences touch a signal file at the location on every save
        return persistence.time_last_modified()
    except OSError:  # includes msal-extensions' PersistenceNotFound
        return None


class TokenCache(Protocol):
    """The persistent MSAL cache as smtp-oauth uses it (``msal_cache.PersistentTokenCache``).

    MSAL itself calls more of it (``add``, ``modify``, ...) on the applications it is given to.
    """

    is_encrypted: bool

    @property
    def location(self) -> Path:
        """The cache file."""
        ...

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the cross-process lock (re-entrant): for read-redeem-write of a refresh token."""
        ...

    def reload_if_changed(self) -> None:
        """Read the file again if another process (or thread) replaced it since."""
        ...

    def count_entries(self) -> int:
        """How many credentials (tokens, accounts) the cache holds."""
        ...

    def search(
        self, credential_type: str, *, target: list[str] | None = None, query: dict[str, object] | None = None
    ) -> Iterator[dict[str, object]]:
        """MSAL's entries of ``credential_type`` (``msal.TokenCache.CredentialType``) that match."""
        ...

    def remove_at(self, entry: dict[str, object]) -> None:
        """Forget one entry ``search`` found (MSAL's name)."""
        ...


class CrossProcessLock:
    """Re-entrant within a thread, exclusive across threads and processes (flock on a kept file)."""

    def __init__(self, path: Path, *, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._file_lock: portalocker.Lock | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        import portalocker

        with self._thread_lock:
            if self._depth == 0:
                try:  # created 0600 up front: portalocker would open it with the umask's mode
                    os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT, CACHE_FILE_MODE))
                except OSError as exc:
                    raise ConfigurationError(
                        f"cannot create the token cache lock {self._path}: {exc.strerror}",
                        key="identity.token_cache",
                    ) from exc
                lock = portalocker.Lock(self._path, mode="a", timeout=self._timeout, check_interval=0.05)
                try:
                    lock.acquire()
                except portalocker.exceptions.LockException as exc:
                    raise TokenError(
                        f"token cache {self._path} stayed locked by another process for "
                        f"{self._timeout:.0f} s",
                        error="cache_locked",
                        temporary=True,
                    ) from exc
                self._file_lock = lock
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._file_lock is not None:
                    self._file_lock.release()
                    self._file_lock = None


def _build_persistence(location: Path) -> Persistence:
    """Encrypted where the OS offers it; plaintext 0600 (and one INFO line) otherwise."""
    try:
        if location.exists() and location.stat().st_size > 0:
            # A plaintext cache already holds tokens: keep it (a keyring one has an empty signal file).
            # Said at INFO once, when the cache was created: here it would reach every msmtp run.
            log.debug("token cache %s is stored unencrypted (file mode 0600)", location)
            return AtomicFilePersistence(location)
    except OSError:
        pass
    try:
        from msal_extensions import build_encrypted_persistence

        persistence: Persistence = build_encrypted_persistence(str(location))
    except (ImportError, ValueError, RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info(
            "token cache %s is stored unencrypted (file mode 0600): no OS keyring available (%s)",
            location,
            reason,
        )
        return AtomicFilePersistence(location)
    return persistence


def open_token_cache(settings: Settings) -> TokenCache:
    """The persistent MSAL cache for ``settings``' identity (a ``msal.SerializableTokenCache``).

    Raises ConfigurationError for a cache that is not private.
    """
    location = cache_file_path(settings)
    _prepare_directory(location.parent)
    try:
        check_private(location)
    except PermissionError as exc:
        raise ConfigurationError(
            f"cannot read token cache {location}: {exc.strerror}", key="identity.token_cache"
        ) from exc
    persistence = _build_persistence(location)
    # Wait longer than one token request can take (connect + read timeouts) before giving up.
    lock = CrossProcessLock(
        location.with_name(location.name + ".lock"), timeout=max(60.0, 3 * settings.identity.timeout)
    )
    from smtp_oauth.tokens.msal_cache import PersistentTokenCache  # msal only when a cache is opened

    cache = PersistentTokenCache(persistence, lock, stamp=functools.partial(stamp_of, persistence))
    cache.reload_if_changed()
    return cache
