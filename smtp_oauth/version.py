"""The version of smtp-oauth, in a leaf module: code inside the package reads it here, never from
the package itself (``smtp_oauth/__init__.py`` is the public face, not a dependency)."""

__version__ = "0.1.0"  # the project's version in pyproject.toml (a test keeps them equal)
