"""Specification of the persistent token cache: private files, atomic writes, sharing across processes,
and send-mail's fast path that reads it without importing msal."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings
from smtp_oauth.tokens.cache import cache_file_path
from smtp_oauth.tokens.provider import cached_access_token, create_token_provider

# MSAL warns that ROPC is deprecated for public clients; the provider logs its own warning instead.
pytestmark = pytest.mark.filterwarnings("ignore:This API has been deprecated for public client flows")

# Gets a token in a separate process and prints it; argv: config path, "force" or "".
TOKEN_SCRIPT = (
    "import sys\n"
    "from smtp_oauth.settings.loading import load_settings\n"
    "from smtp_oauth.tokens.provider import create_token_provider\n"
    "provider = create_token_provider(load_settings(sys.argv[1]))\n"
    "print(provider.access_token_sync(force_refresh=sys.argv[2] == 'force'))\n"
)


def settings_for(
    sandbox: Sandbox, flow: str = "client_credentials", **identity: Any
) -> tuple[Settings, Path]:
    path = sandbox.directory / f"{flow}-{len(list(sandbox.directory.glob('*.toml')))}.toml"
    sandbox.write_config(path, flow=flow, identity=identity)
    return load_settings(path), path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def token_in_subprocess(config: Path, *, force: bool = False) -> str:
    """Runs TOKEN_SCRIPT in a new interpreter (blocking, so off the loop serving the fake Exchange)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", TOKEN_SCRIPT, str(config), "force" if force else ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# -- files and modes -------------------------------------------------------------------------------


async def test_cache_file_and_directory_are_private(smtp_oauth_sandbox: Sandbox) -> None:
    """The cache directory is created 0700 and the cache and lock files 0600, whatever the umask."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    old_umask = os.umask(0o022)
    try:
        await create_token_provider(settings).access_token()
    finally:
        os.umask(old_umask)
    path = cache_file_path(settings)
    assert path.parent == settings.token_cache_path
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert mode(path.with_name(path.name + ".lock")) == 0o600


async def test_one_file_per_identity(smtp_oauth_sandbox: Sandbox) -> None:
    """Two identities sharing the cache directory get one file each."""
    app, _ = settings_for(smtp_oauth_sandbox)
    user, _ = settings_for(smtp_oauth_sandbox, "username_password")
    await create_token_provider(app).access_token()
    await create_token_provider(user).access_token()
    assert cache_file_path(app) != cache_file_path(user)
    assert sorted(p.name for p in app.token_cache_path.glob("*.json")) == sorted(
        [cache_file_path(app).name, cache_file_path(user).name]
    )


async def test_writes_leave_no_temporary_files(smtp_oauth_sandbox: Sandbox) -> None:
    """Writes go through a temp file renamed into place: afterwards only the cache and its lock remain,
    and the cache is complete JSON in MSAL's format."""
    settings, _ = settings_for(smtp_oauth_sandbox, "username_password")
    provider = create_token_provider(settings)
    for _ in range(3):
        await provider.access_token(force_refresh=True)
    path = cache_file_path(settings)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]
    state = json.loads(path.read_text())
    assert {"AccessToken", "RefreshToken", "IdToken", "Account"} <= set(state)
    assert len(state["RefreshToken"]) == 1  # the rotated refresh token replaced the old one


async def test_cache_readable_by_others_is_refused(smtp_oauth_sandbox: Sandbox) -> None:
    """A 0644 cache file is refused like ssh refuses a readable key, with the chmod that fixes it."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    await create_token_provider(settings).access_token()
    path = cache_file_path(settings)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError) as caught:
        await create_token_provider(settings).access_token()
    assert str(caught.value) == f"token cache {path} is readable by others (mode 0644); run: chmod 600 {path}"
    assert caught.value.key == "identity.token_cache"


async def test_cache_writable_by_group_is_refused(smtp_oauth_sandbox: Sandbox) -> None:
    """A group-writable (0620) cache file is refused too."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    await create_token_provider(settings).access_token()
    cache_file_path(settings).chmod(0o620)
    with pytest.raises(ConfigurationError, match=r"writable by others \(mode 0620\)"):
        await create_token_provider(settings).access_token()


async def test_open_cache_directory_is_refused(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """A cache directory others can enter or list (0755) is refused with chmod 700."""
    directory = tmp_path / "shared-cache"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    settings, _ = settings_for(smtp_oauth_sandbox, token_cache=str(directory))
    with pytest.raises(ConfigurationError, match=rf"directory {directory} is readable by others .*chmod 700"):
        await create_token_provider(settings).access_token()


async def test_cache_path_that_is_a_file_is_refused(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """identity.token_cache names a directory; pointing it at a file is a configuration error."""
    file = tmp_path / "tokens.json"
    file.write_text("{}")
    settings, _ = settings_for(smtp_oauth_sandbox, token_cache=str(file))
    with pytest.raises(ConfigurationError, match="must name a directory"):
        await create_token_provider(settings).access_token()


async def test_corrupt_cache_is_reported(smtp_oauth_sandbox: Sandbox) -> None:
    """A cache file that is not JSON is a configuration error saying to delete it."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    path = cache_file_path(settings)
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not valid JSON; delete it"):
        await create_token_provider(settings).access_token()


# -- sharing across processes ----------------------------------------------------------------------


async def test_cache_is_reused_by_another_process(smtp_oauth_sandbox: Sandbox) -> None:
    """A second process finds the first one's token in the cache: no second IdP request."""
    _, config = settings_for(smtp_oauth_sandbox)
    first = await token_in_subprocess(config)
    assert await token_in_subprocess(config) == first
    assert smtp_oauth_sandbox.idp.token_requests["client_credentials"] == 1


@pytest.mark.smtp_oauth_sandbox(strict_refresh_rotation=True)
async def test_processes_refreshing_in_turn_keep_the_rotated_refresh_token(
    smtp_oauth_sandbox: Sandbox,
) -> None:
    """With strict rotation, processes refreshing one after another each find the newest refresh token."""
    user = smtp_oauth_sandbox.tenant.user
    settings, config = settings_for(
        smtp_oauth_sandbox, "device_code", username=user.upn, password=user.password
    )
    provider = create_token_provider(settings)
    await provider.login("username_password")  # quicker than a device code; the flow stays device_code
    tokens = {await token_in_subprocess(config, force=True) for _ in range(2)}
    tokens.add(await provider.access_token(force_refresh=True))  # this process: its memory is stale
    assert len(tokens) == 3
    assert smtp_oauth_sandbox.idp.token_requests["refresh_token"] == 3


# -- the fast path ---------------------------------------------------------------------------------


async def test_fast_path_returns_the_cached_token(smtp_oauth_sandbox: Sandbox) -> None:
    """cached_access_token() reads the token MSAL cached, for the same identity and scopes."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    token = await create_token_provider(settings).access_token()
    assert cached_access_token(settings) == token


async def test_fast_path_serves_delegated_tokens(smtp_oauth_sandbox: Sandbox) -> None:
    """It finds the signed-in user's token too (matched through the cached account)."""
    settings, _ = settings_for(smtp_oauth_sandbox, "username_password")
    token = await create_token_provider(settings).access_token()
    assert cached_access_token(settings) == token


async def test_fast_path_with_a_tenant_domain_name(smtp_oauth_sandbox: Sandbox) -> None:
    """With tenant_id given as a domain, MSAL files tokens under the tenant GUID: still found."""
    settings, _ = settings_for(smtp_oauth_sandbox, tenant_id=smtp_oauth_sandbox.tenant.domain)
    token = await create_token_provider(settings).access_token()
    assert cached_access_token(settings) == token


async def test_fast_path_is_none_without_a_cache(smtp_oauth_sandbox: Sandbox) -> None:
    """No cache file yet: None (the caller goes the slow way)."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    assert cached_access_token(settings) is None


async def test_fast_path_skips_tokens_expiring_too_soon(smtp_oauth_sandbox: Sandbox) -> None:
    """A token valid for less than min_validity is not returned (lifetime here: 1 hour)."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    await create_token_provider(settings).access_token()
    assert cached_access_token(settings, min_validity=timedelta(minutes=61)) is None
    assert cached_access_token(settings, min_validity=timedelta(minutes=50)) is not None


async def test_fast_path_ignores_other_identities(smtp_oauth_sandbox: Sandbox) -> None:
    """A token for another tenant or other scopes in the same file is not handed out."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    await create_token_provider(settings).access_token()
    path = cache_file_path(settings)
    state = json.loads(path.read_text())
    for entry in state["AccessToken"].values():
        entry["realm"] = "another-tenant"
    path.write_text(json.dumps(state))
    assert cached_access_token(settings) is None
    other_scopes = settings.model_copy(
        update={"identity": settings.identity.model_copy(update={"scopes": ["api://other/.default"]})}
    )
    assert cached_access_token(other_scopes) is None


async def test_fast_path_ignores_an_open_cache(smtp_oauth_sandbox: Sandbox) -> None:
    """A cache readable by others is not read by the fast path (the slow path reports it)."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    await create_token_provider(settings).access_token()
    cache_file_path(settings).chmod(0o644)
    assert cached_access_token(settings) is None


async def test_fast_path_ignores_unreadable_content(smtp_oauth_sandbox: Sandbox) -> None:
    """An encrypted (non-JSON) cache gives None, not an error."""
    settings, _ = settings_for(smtp_oauth_sandbox)
    path = cache_file_path(settings)
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_bytes(b"\x00\x93encrypted")
    path.chmod(0o600)
    assert cached_access_token(settings) is None


def test_importing_tokens_does_not_import_msal() -> None:
    """`import smtp_oauth.tokens.provider` (send-mail's start-up) loads neither msal nor msal_extensions."""
    code = (
        "import smtp_oauth.tokens.provider, smtp_oauth.tokens.cache, sys\n"
        "assert 'msal' not in sys.modules, 'msal imported'\n"
        "assert 'msal_extensions' not in sys.modules, 'msal_extensions imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_opened_cache_is_a_module_level_class(smtp_oauth_sandbox: Sandbox) -> None:
    """open_token_cache gives msal_cache.PersistentTokenCache, a class defined at module level."""
    from smtp_oauth.tokens.cache import open_token_cache
    from smtp_oauth.tokens.msal_cache import PersistentTokenCache

    cache = open_token_cache(smtp_oauth_sandbox.settings())
    assert type(cache) is PersistentTokenCache
    assert PersistentTokenCache.__qualname__ == "PersistentTokenCache"
    assert cache.location == cache_file_path(smtp_oauth_sandbox.settings())
    with cache.locked():
        assert cache.count_entries() == 0
