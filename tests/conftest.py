"""Fixtures shared by every test: a clean environment; the sandbox plugin and the coverage floor."""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from smtp_oauth.relay.passwords import SCRYPT_FLOOR_VARIABLE

# The plugin comes from the package's pytest11 entry point once that is registered; registering
# it twice (entry point + pytest_plugins) is an error, so only name it here when it is missing.
pytest_plugins = ["tests.coverage_floor"]
if not any(ep.value == "smtp_oauth.testing" for ep in entry_points(group="pytest11")):
    pytest_plugins.append("smtp_oauth.testing")

# Variables of this machine that would change what the code under test does.
_FOREIGN_VARIABLES = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "MSAL_FORCE_REGION",
    "SSL_CERT_FILE",
    "CREDENTIALS_DIRECTORY",  # systemd's LoadCredential= directory: smtp-oauth reads secrets from it
)


def pytest_configure(config: pytest.Config) -> None:
    """Files the tests write are private, as a careful user's (umask 077); cheap relay hashes.

    Their configuration files hold the sandbox's client secret, and load_settings refuses such a file
    when group or others may read it (msmtp's rule); a test of a loose mode sets it with chmod.
    Subprocesses (the CLI, the relay) inherit the umask.
    """
    del config
    os.umask(0o077)
    # The relay refuses hashes cheaper than hash-password's (ln=14, ~50 ms a login); the fixtures
    # log in hundreds of times with ln=4 ones. The tests of that refusal pass their own floor.
    os.environ[SCRYPT_FLOOR_VARIABLE] = "1"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees this machine's CA overrides, MSAL region, credentials, SMTP_OAUTH_* or XDG dirs."""
    for name in _FOREIGN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("SMTP_OAUTH_"):
            monkeypatch.delenv(name)
    home = Path(tmp_path_factory.mktemp("xdg"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    # Each relay a test starts puts its submission socket here, never in this machine's /run.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
