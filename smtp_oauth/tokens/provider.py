"""Access tokens for Exchange Online and Microsoft Graph: the ``TokenProvider`` seam, on MSAL.

``MsalTokenProvider`` keeps the current token of each scope set (Exchange Online by default,
Graph's when a caller passes ``scopes``) in memory and serves it while it is valid for more than
``REFRESH_MARGIN`` (10 minutes) and MSAL's ``refresh_on`` has not passed, so the hot path touches
neither MSAL nor the disk. Otherwise exactly one caller per process goes to MSAL (an
``asyncio.Lock`` per event loop, then a ``threading.Lock`` shared with sync callers), in a worker
thread: MSAL is blocking. Both resources share one MSAL application and its persistent cache: a
delegated sign-in's refresh token serves either, an app's secret or certificate is sent to Entra
once per resource and hour. The persistent cache and the MSAL calls live in ``cache.py`` and
``msal_session.py``; this module imports neither msal nor msal-extensions at import time, because
``send-mail`` (one process per message) first tries ``cached_access_token``: a plain JSON read of
the cache file.

Only ``smtp_oauth.errors`` types leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.tokens.types import (
    DELEGATED_LOGIN_FLOWS,
    REFRESH_MARGIN,
    AbortSignal,
    DeviceCodePrompt,
    IssuedToken,
    SignedIn,
    TokenProvider,
    scope_key,
)

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tokens.cache import TokenCache

__all__ = [
    "REFRESH_MARGIN",
    "DeviceCodePrompt",
    "MsalTokenProvider",
    "SignedIn",
    "TokenProvider",
    "cached_access_token",
    "create_token_provider",
]

log = logging.getLogger(__name__)

# After MSAL's proactive refresh (refresh_on) failed and it handed back the still-valid token,
# wait this long before trying again instead of asking the IdP on every call.
_REFRESH_RETRY_SECONDS = 60.0


def _print_device_code(prompt: DeviceCodePrompt) -> None:
    print(prompt.message, file=sys.stderr, flush=True)


def _open_web_browser(url: str) -> bool:
    import webbrowser

    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


_T = TypeVar("_T")


async def _in_daemon_thread(function: Callable[[], _T]) -> _T:
    """Run ``function`` in a daemon thread: a sign-in waiting for a human must not keep the
    interpreter alive after Ctrl-C (``asyncio.to_thread`` workers are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # result is _T when error is None

    def target() -> None:
        try:
            outcome: tuple[_T | None, BaseException | None] = (function(), None)
        except BaseException as exc:  # handed to the awaiting coroutine
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name="smtp-oauth-sign-in", daemon=True).start()
    return await future


class MsalTokenProvider:
    """``TokenProvider`` on MSAL: client credentials (secret or certificate) or a delegated flow."""

    def __init__(
        self,
        settings: Settings,
        *,
        device_code_prompt: Callable[[DeviceCodePrompt], None] | None = None,
        open_browser: Callable[[str], bool] | None = None,
        interactive_timeout: float = 300,
    ) -> None:
        self._settings = settings
        self._device_code_prompt = device_code_prompt or _print_device_code
        self._open_browser = open_browser or _open_web_browser
        self._interactive_timeout = interactive_timeout
        self._default_scopes = list(settings.smtp_scopes)  # Exchange Online's, or the SMTP service's
        # Per service: HVE refuses tokens in their last minutes, so they are replaced earlier.
        self._margin = settings.refresh_margin.total_seconds()
        # scope_key(scopes) -> the current token for those scopes, and a counter bumped whenever a
        # new one is stored (a caller that waited for a forced refresh takes the one just made).
        self._tokens: dict[tuple[str, ...], IssuedToken] = {}
        self._generations: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()  # one MSAL call at a time, sync and async callers alike
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._session: Any = None  # token_flows.MsalSession, built on first use
        self._cache: TokenCache | None = None

    def __repr__(self) -> str:
        identity = self._settings.identity
        return f"MsalTokenProvider(flow={identity.flow!r}, client_id={identity.client_id!r})"

    # -- the hot path ---------------------------------------------------------------------------

    def _scopes(self, scopes: Sequence[str] | None) -> tuple[list[str], tuple[str, ...]]:
        chosen = list(scopes) if scopes else self._default_scopes
        return chosen, scope_key(chosen)

    def _fresh(self, key: tuple[str, ...]) -> str | None:
        token, now = self._tokens.get(key), time.time()
        if token is None or token.remaining(now) <= self._margin:
            return None
        if token.refresh_on is not None and now >= token.refresh_on:
            return None
        return token.access_token

    def _refreshed_meanwhile(self, key: tuple[str, ...], generation: int) -> str | None:
        """The token a concurrent forced refresh stored while this caller waited for the lock."""
        token = self._tokens.get(key)
        if token is not None and self._generations.get(key, 0) != generation:
            return token.access_token
        return None

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._async_locks.get(loop)
        if lock is None:
            lock = self._async_locks[loop] = asyncio.Lock()
        return lock

    async def access_token(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        """A token valid for more than 10 minutes; ``force_refresh`` asks the IdP for a new one.

        ``scopes`` (default ``identity.scopes``) picks the resource: e.g. Graph's
        ``https://graph.microsoft.com/.default``. Each scope set has its own token and its own
        single-flight refresh.
        """
        wanted, key = self._scopes(scopes)
        generation = self._generations.get(key, 0)
        if not force_refresh and (token := self._fresh(key)) is not None:
            return token
        async with self._async_lock():
            if not force_refresh and (token := self._fresh(key)) is not None:
                return token
            if force_refresh and (token := self._refreshed_meanwhile(key, generation)) is not None:
                return token
            return await asyncio.to_thread(self._acquire, wanted, key, force_refresh, generation)

    def access_token_sync(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        """``access_token`` for synchronous callers (logging handler, CLI); blocks."""
        wanted, key = self._scopes(scopes)
        generation = self._generations.get(key, 0)
        if not force_refresh and (token := self._fresh(key)) is not None:
            return token
        return self._acquire(wanted, key, force_refresh, generation)

    # -- MSAL, in a worker thread -----------------------------------------------------------------

    def _msal_session(self) -> Any:
        if self._session is None:
            from smtp_oauth.tokens.cache import open_token_cache

            if self._cache is None:
                self._cache = open_token_cache(self._settings)
            if self._settings.identity.is_managed_identity:
                from smtp_oauth.tokens.managed_identity import ManagedIdentitySession

                self._session = ManagedIdentitySession(self._settings, self._cache)
            else:
                from smtp_oauth.tokens.msal_session import MsalSession

                self._session = MsalSession(self._settings, self._cache)
        return self._session

    def _run_msal(self, call: Callable[[Any], _T]) -> _T:
        """Run ``call(session)``; after any failure the next call gets a fresh MSAL app, because
        MSAL replays a refused request from its 60 s throttle cache (``msal/throttled_http_client.py``
        in https://github.com/AzureAD/microsoft-authentication-library-for-python)."""
        try:
            return call(self._msal_session())
        except BaseException:
            session, self._session = self._session, None
            if session is not None:
                session.close()
            raise

    def _acquire(self, scopes: list[str], key: tuple[str, ...], force_refresh: bool, generation: int) -> str:
        with self._lock:
            if not force_refresh and (token := self._fresh(key)) is not None:
                return token
            if force_refresh and (token := self._refreshed_meanwhile(key, generation)) is not None:
                return token
            margin = self._margin
            issued: IssuedToken = self._run_msal(
                lambda session: session.acquire(
                    scopes=scopes, force_refresh=force_refresh, min_validity=margin
                )
            )
            self._store(key, issued)
            return issued.access_token

    def _store(self, key: tuple[str, ...], issued: IssuedToken) -> None:
        now = time.time()
        if issued.refresh_on is not None and issued.refresh_on <= now:
            # MSAL's proactive refresh failed and it returned the cached token: retry later.
            issued = IssuedToken(
                issued.access_token, issued.expires_on, now + _REFRESH_RETRY_SECONDS, issued.source
            )
        self._tokens[key] = issued
        self._generations[key] = self._generations.get(key, 0) + 1
        log.debug(
            "token for %s acquired (source=%s, expires in %d s)",
            " ".join(key),
            issued.source,
            issued.remaining(now),
        )

    # -- delegated sign-in ------------------------------------------------------------------------

    async def login(self, flow: str | None = None, *, scopes: Sequence[str] | None = None) -> SignedIn:
        """Sign in a user (device code, interactive, or username/password) and cache the refresh token.

        ``scopes`` (default ``identity.scopes``) is what the user consents to at sign-in; the
        refresh token then also serves other resources the app was granted (MSAL asks for them).
        """
        chosen = flow or self._settings.identity.flow
        if chosen not in DELEGATED_LOGIN_FLOWS or not self._settings.identity.is_delegated:
            raise ConfigurationError(
                f"`login` signs in a user (device_code, interactive or username_password); "
                f"identity.flow is {self._settings.identity.flow!r}"
                + (f" and the requested flow {chosen!r}" if flow else ""),
                key="identity.flow",
                hint='Set identity.flow = "device_code" (or "interactive") and the public client app\'s '
                "client_id to send as a user; client credentials need no sign-in.",
            )
        abort = AbortSignal()

        def sign_in() -> SignedIn:
            with self._lock:
                wanted = list(scopes) if scopes else self._default_scopes
                signed_in: SignedIn = self._run_msal(
                    lambda session: self._sign_in(session, chosen, wanted, abort)
                )
                self._tokens.clear()  # the next access_token() reads the new sign-in's tokens
                return signed_in

        try:
            return await _in_daemon_thread(sign_in)
        except asyncio.CancelledError:
            abort.abort()
            raise

    def _sign_in(self, session: Any, flow: str, scopes: list[str], abort: AbortSignal) -> SignedIn:
        if flow == "device_code":
            result: SignedIn = session.sign_in_with_device_code(scopes, self._device_code_prompt, abort)
        elif flow == "interactive":
            result = session.sign_in_interactively(
                scopes, self._open_browser, self._interactive_timeout, abort
            )
        else:
            result = session.sign_in_with_password(scopes)
        return result

    async def logout(self) -> int:
        """Remove this identity's tokens (and account) from the cache; returns how many entries."""

        def sign_out() -> int:
            with self._lock:
                removed: int = self._run_msal(lambda session: session.sign_out())
                self._tokens.clear()
                return removed

        return await asyncio.to_thread(sign_out)


def create_token_provider(settings: Settings, **kwargs: Any) -> MsalTokenProvider:
    """The token provider ``settings`` describe (keyword arguments go to ``MsalTokenProvider``)."""
    return MsalTokenProvider(settings, **kwargs)


def cached_access_token(
    settings: Settings, *, scopes: Sequence[str] | None = None, min_validity: timedelta = REFRESH_MARGIN
) -> str | None:
    """A cached access token for ``scopes`` (default ``identity.scopes``) valid for at least
    ``min_validity``, read straight from the plaintext cache file, or None (missing, encrypted,
    expiring, due for refresh). No msal import: for ``send-mail``, which runs once per message.
    See ``fastpath``."""
    from smtp_oauth.tokens.fastpath import read_cached_token

    return read_cached_token(settings, scopes=scopes, min_validity=min_validity)
