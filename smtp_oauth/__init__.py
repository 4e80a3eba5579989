"""smtp-oauth: send mail through Exchange Online with OAuth 2.0 (XOAUTH2).

::

    import smtp_oauth

    settings = smtp_oauth.load_settings()                   # smtp-oauth.toml, environment, secrets
    async with smtp_oauth.Mailer(settings) as mailer:       # one authenticated session, reused
        result = await mailer.send(message)
    smtp_oauth.send_message(message, settings=settings)     # from synchronous code

Importing this package loads neither msal (only once a token is needed) nor aiosmtpd, the relay
or the sandbox. The public names are loaded on first use (PEP 562): ``send-mail`` runs once per
message, and ``import smtp_oauth.cli.send_mail`` must not pay for the logging handler or, before it
needs them, for pydantic and aiosmtplib.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    MessageError,
    PermanentDeliveryError,
    SmtpOAuthError,
    StorageFullError,
    TemporaryDeliveryError,
    TokenError,
)

if TYPE_CHECKING:
    from smtp_oauth.log_handler import OAuthSMTPHandler
    from smtp_oauth.settings.loading import load_settings
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.smtp.mailer import Mailer
    from smtp_oauth.tokens.types import TokenProvider
    from smtp_oauth.transport import SendResult, send_message

from smtp_oauth.version import __version__

__all__ = [
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
]

# Public name -> the module that defines it. The errors are imported above: they are light, and
# `except smtp_oauth.TokenError` must not import anything.
_LAZY = {
    "Mailer": "smtp_oauth.smtp.mailer",
    "SendResult": "smtp_oauth.transport",
    "send_message": "smtp_oauth.transport",
    "Settings": "smtp_oauth.settings.models",
    "load_settings": "smtp_oauth.settings.loading",
    "OAuthSMTPHandler": "smtp_oauth.log_handler",
    "TokenProvider": "smtp_oauth.tokens.types",
}


if not TYPE_CHECKING:  # type checkers see the imports above; a module __getattr__ would hide typos

    def __getattr__(name: str) -> object:
        """Import the module behind a public name on first use, then keep the name here."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        globals()[name] = value  # later look-ups no longer come here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
