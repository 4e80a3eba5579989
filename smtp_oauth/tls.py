"""TLS contexts for our clients: the system's trusted CAs plus a configured private CA file.

One rule for every client that verifies a server (SMTP submission, Microsoft Graph): the
certificate is always verified (RFC 2818 §3.1); a ``ca_file`` only adds trust anchors, for a
private server or the sandbox, and a file that cannot be loaded is a configuration error naming
the key that points at it.
"""

from __future__ import annotations

import ssl

from smtp_oauth.errors import ConfigurationError

__all__ = ["add_ca_file"]


def add_ca_file(context: ssl.SSLContext, ca_file: str | None, *, key: str) -> ssl.SSLContext:
    """``context`` trusting ``ca_file`` too (when set); ``key`` is the setting that names the file."""
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load {key} {ca_file}: {exc}",
                key=key,
                hint=f"Point {key} at a readable PEM file of CA certificates.",
            ) from exc
    return context
