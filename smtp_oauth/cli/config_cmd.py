"""``smtp-oauth config``: the effective settings and where each came from; ``--example`` prints a template.

The listing is a TOML file (it loads back to the same settings), each line followed by its source
as a comment, so a person can see at once that ``SMTP_OAUTH_SMTP__PORT`` beats the file's ``port``.
Secrets are shown as ``**********``: the output is meant to be pasted into a support ticket.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import resources
from typing import Any

from smtp_oauth.cli.exit_codes import ExitCode

__all__ = ["add_arguments", "example_config", "run"]

_VALUE_COLUMN = 48  # where the "# source" comments start, for a readable listing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smtp-oauth config``."""
    parser.add_argument(
        "--example",
        action="store_true",
        help="print config.example.toml (every key with its default and a comment) and exit",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document: key -> value and source")


def example_config() -> str:
    """The text of config.example.toml, as shipped inside the package."""
    return resources.files("smtp_oauth").joinpath("config.example.toml").read_text(encoding="utf-8")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else a quoted (basic) string."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """A value as TOML writes it (https://toml.io/en/v1.0.0).

    JSON's strings, integers, floats, booleans and arrays are TOML's too (json.dumps never writes
    the one escape TOML lacks, ``\\/``); a table becomes an inline table, and its unset (None) keys
    are left out, since TOML has no null.
    """
    if isinstance(value, dict):
        items = [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    return json.dumps(value)


def render_text(
    settings_values: list[Any],
    *,
    config_file: str | None,
    secrets_dir: str | None,
    profile: str | None = None,
    profiles: list[str] | None = None,
) -> str:
    """The human listing: sections as in the TOML file, one ``key = value  # source`` per line."""
    lines = [
        f"# configuration file: {config_file or '(none: environment only)'}",
        f"# secrets directory: {secrets_dir or '(none)'}",
    ]
    if profiles:
        shown = f"profile {profile} merged over the top level" if profile else "top level"
        lines.append(f"# profiles: {', '.join(profiles)} (showing: {shown})")
    section = ""
    for item in settings_values:
        head, _, name = item.key.rpartition(".")
        if head != section:
            section = head
            lines.append("")
            lines.append(f"[{section}]")
        # TOML has no null: an unset key is shown commented out, so the listing stays a file that
        # loads back to the same settings.
        entry = f"# {name} = (not set)" if item.value is None else f"{name} = {_toml_value(item.value)}"
        lines.append(f"{entry:<{_VALUE_COLUMN}} # {item.source}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Print the example, or the effective settings with their sources."""
    if args.example:
        sys.stdout.write(example_config())
        return int(ExitCode.OK)

    from smtp_oauth.cli.common import load_settings_from_args
    from smtp_oauth.settings.loading import secrets_directory
    from smtp_oauth.settings.sources import describe_settings

    settings = load_settings_from_args(args)
    values = describe_settings(settings, config_path=getattr(args, "config", None))
    config_file = str(settings.source_file.resolve()) if settings.source_file else None
    secrets_dir = secrets_directory()
    if args.json:
        document = {
            "config_file": config_file,
            "profile": settings.profile,
            "profiles": sorted(settings.profiles),
            "secrets_dir": str(secrets_dir) if secrets_dir else None,
            "settings": {
                item.key: {"value": item.value, "source": item.source.kind, "where": item.source.where}
                for item in values
            },
        }
        print(json.dumps(document, indent=2))
    else:
        sys.stdout.write(
            render_text(
                values,
                config_file=config_file,
                secrets_dir=str(secrets_dir) if secrets_dir else None,
                profile=settings.profile,
                profiles=sorted(settings.profiles),
            )
        )
    return int(ExitCode.OK)
