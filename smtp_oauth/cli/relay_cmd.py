"""``smtp-oauth relay``: run the store-and-forward relay in the foreground.

Exit 0 after SIGTERM/SIGINT (graceful stop), 78 for configuration errors (including an open relay:
a non-loopback ``relay.listen`` without ``relay.users``) and when another relay holds the spool.
"""

from __future__ import annotations

import argparse

from smtp_oauth.cli.common import load_settings_from_args
from smtp_oauth.cli.exit_codes import ExitCode

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``smtp-oauth relay`` takes only the global ``--config``; everything else is in ``[relay]``."""
    parser.epilog = (
        "Listens on relay.listen (default 127.0.0.1:2525) and delivers through Exchange Online. "
        "SIGTERM/SIGINT stop it gracefully, SIGHUP reloads relay users and sender rules."
    )


def run(args: argparse.Namespace) -> int:
    from smtp_oauth.relay import eventloop
    from smtp_oauth.relay.service import run_relay

    settings = load_settings_from_args(args)
    eventloop.run(run_relay(settings))  # on uvloop when installed: the main process delivers
    return int(ExitCode.OK)
