"""smtp-oauth: send mail through Exchange Online with OAuth 2.0 (XOAUTH2).

::

    import smtp_oauth

    settings = smtp_oauth.load_settings()                   # smtp-oauth.toml, environment, secrets
    async with smtp_oauth.Mailer(settings) as mailer:       # one authenticated session, reused
        result = await mailer.send(message)
    smtp_oauth.send_message(message, settings=settings)     # from synchronous code

Importing this package loads neither msal (only once a token is needed) nor aiosmtpd, the relay
or the sandbox.
"""

from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    MessageError,
    PermanentDeliveryError,
    SmtpOAuthError,
    TemporaryDeliveryError,
    TokenError,
)
from smtp_oauth.log_handler import OAuthSMTPHandler
from smtp_oauth.sender import Mailer, SendResult, send_message
from smtp_oauth.settings import Settings, load_settings
from smtp_oauth.tokens import TokenProvider

__version__ = "0.1.0"  # the project's version in pyproject.toml (a test keeps them equal)

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DeliveryError",
    "Mailer",
    "MessageError",
    "OAuthSMTPHandler",
    "PermanentDeliveryError",
    "SendResult",
    "Settings",
    "SmtpOAuthError",
    "TemporaryDeliveryError",
    "TokenError",
    "TokenProvider",
    "__version__",
    "load_settings",
    "send_message",
]
