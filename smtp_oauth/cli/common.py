"""What every command shares: the --config option, loading settings, logging, and error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.errors import SmtpOAuthError

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings

__all__ = ["add_config_option", "load_settings_from_args", "report_error", "run_guarded"]


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` and ``--profile NAME``, accepted before or after the subcommand."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $SMTP_OAUTH_CONFIG, ./smtp-oauth.toml, "
        "$XDG_CONFIG_HOME/smtp-oauth/config.toml, /etc/smtp-oauth/config.toml)",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="use [profiles.NAME] of the configuration (default: $SMTP_OAUTH_PROFILE)",
    )


def load_settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings named by ``--config`` (or discovered), with logging configured from them."""
    from smtp_oauth.logs import configure_logging
    from smtp_oauth.settings.loading import load_settings

    settings = load_settings(getattr(args, "config", None), profile=getattr(args, "profile", None))
    configure_logging(settings.log_level, settings.log_format)
    return settings


def report_error(error: SmtpOAuthError, stream: TextIO | None = None, *, prog: str = "smtp-oauth") -> None:
    """One line naming the cause, then the hint (sendmail/msmtp style), on stderr."""
    out = stream or sys.stderr
    first, *rest = str(error).splitlines() or [type(error).__name__]
    print(f"{prog}: {first}", file=out)
    for line in rest:
        print(line, file=out)
    hint = error.explain()
    if hint:
        print(f"hint: {hint}", file=out)


def run_guarded(action: Callable[[], int]) -> int:
    """Run a command; turn our errors into their exit code and Ctrl-C into 130."""
    try:
        return action()
    except SmtpOAuthError as error:
        report_error(error)
        return exit_code_of(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return int(ExitCode.OK)
    except Exception:
        import logging  # only a bug gets here: send-mail's start-up does not pay for logging

        logging.getLogger("smtp_oauth").exception("internal error")
        return int(ExitCode.SOFTWARE)
