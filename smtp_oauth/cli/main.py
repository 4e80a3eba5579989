"""``smtp-oauth``: the administrator's command. A thin shell: parse, call the library, map errors.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``
(or ``add_arguments_for``/``run_for`` when one module serves two commands); its one-line help is in
``COMMANDS``, so only the chosen module is imported and a typo costs no msal import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from smtp_oauth.cli.common import add_config_option, run_guarded

# name -> (module, one-line help). Order is the order of `smtp-oauth --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("smtp_oauth.cli.demo", "run the whole chain on the local sandbox (no Microsoft account needed)"),
    "sandbox": ("smtp_oauth.cli.sandbox_cmd", "run a local fake Entra ID + Exchange Online, for testing"),
    "login": ("smtp_oauth.cli.login", "sign in (device code or browser) and cache the refresh token"),
    "logout": ("smtp_oauth.cli.login", "forget this identity's cached tokens"),
    "token": ("smtp_oauth.cli.token", "print an access token, its XOAUTH2 form, or its claims"),
    "check": ("smtp_oauth.cli.check", "check config, token, claims and SMTP AUTH step by step"),
    "config": ("smtp_oauth.cli.config_cmd", "show the effective settings and where each came from"),
    "relay": ("smtp_oauth.cli.relay_cmd", "run the store-and-forward SMTP relay for legacy senders"),
    "queue": ("smtp_oauth.cli.queue_cmd", "list, show, retry or delete relay queue entries"),
    "hash-password": ("smtp_oauth.cli.hash_password", "hash a relay user's password for relay.users"),
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def _chosen_command(argv: Sequence[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in {"--config", "--profile"}:
            skip_next = True
            continue
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp-oauth",
        description="Send mail through Exchange Online with OAuth 2.0.",
    )
    add_config_option(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_command(argv)
    for name, (_, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_config_option(sub)
        if name == chosen:
            module = _load(name)
            if hasattr(module, "add_arguments_for"):
                module.add_arguments_for(name, sub)
            else:
                module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    module = _load(args.command)
    if hasattr(module, "run_for"):
        return run_guarded(lambda: module.run_for(args.command, args))
    return run_guarded(lambda: module.run(args))


if __name__ == "__main__":
    sys.exit(main())
