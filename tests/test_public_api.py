"""The public API: exactly the names in __all__, and a light import."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys

import smtp_oauth
from smtp_oauth import errors

PUBLIC_NAMES = {
    "AuthenticationError",
    "ConfigurationError",
    "DeliveryConnectionError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "Mailer",
    "MessageError",
    "OAuthSMTPHandler",
    "PermanentDeliveryError",
    "SendResult",
    "Settings",
    "SmtpOAuthError",
    "StorageFullError",
    "TemporaryDeliveryError",
    "TokenError",
    "TokenProvider",
    "__version__",
    "load_settings",
    "send_message",
}


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is the documented public API, each name importable from the package."""
    assert set(smtp_oauth.__all__) == PUBLIC_NAMES
    assert len(smtp_oauth.__all__) == len(PUBLIC_NAMES)
    for name in smtp_oauth.__all__:
        assert hasattr(smtp_oauth, name), name


def test_every_error_class_is_exported() -> None:
    """Every exception class of smtp_oauth.errors can be caught as smtp_oauth.<Name>."""
    error_classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert error_classes <= set(smtp_oauth.__all__)


def test_version_matches_the_distribution() -> None:
    """__version__ is the installed distribution's version."""
    assert smtp_oauth.__version__ == importlib.metadata.version("smtp-oauth")


def test_import_stays_light() -> None:
    """`import smtp_oauth` loads neither msal, msal_extensions, aiosmtpd, the relay nor the sandbox."""
    probe = (
        "import sys, smtp_oauth; "
        "heavy = ('msal', 'msal_extensions', 'aiosmtpd', 'smtp_oauth.relay', 'smtp_oauth.sandbox'); "
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_python_m_smtp_oauth_is_the_admin_command() -> None:
    """`python -m smtp_oauth --help` is `smtp-oauth --help`."""
    shown = subprocess.run(
        [sys.executable, "-m", "smtp_oauth", "--help"], capture_output=True, text=True, check=True
    )
    assert shown.stdout.startswith("usage: smtp-oauth")
