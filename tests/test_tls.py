"""The one rule for the CA file our clients trust beside the system's CAs."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.tls import add_ca_file


def test_unreadable_ca_file_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    """A CA file that cannot be loaded names the setting that points at it and how to fix it."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError) as caught:
        add_ca_file(ssl.create_default_context(), str(missing), key="smtp.ca_file")
    assert caught.value.key == "smtp.ca_file"
    assert str(missing) in str(caught.value)
    assert "readable PEM file" in (caught.value.hint or "")


def test_no_ca_file_leaves_the_context_as_it_was() -> None:
    """Without a CA file the context keeps verifying against the system's CAs only."""
    context = ssl.create_default_context()
    assert add_ca_file(context, None, key="smtp.ca_file") is context
    assert context.verify_mode is ssl.CERT_REQUIRED
