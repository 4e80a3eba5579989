"""``smtp-oauth login`` and ``logout``: a user signs in once; the refresh token is cached for later sends.

Delegated flows only: with ``identity.flow = "client_credentials"`` the app signs in with its own
secret or certificate on every token request, so there is nobody to log in.

Which sign-in, without ``--flow``: ``device_code`` when the configuration says so or when this
session cannot show a browser (no ``$DISPLAY``/``$WAYLAND_DISPLAY`` on Linux, or stdin is not a
terminal: ssh, cron, a container); ``interactive`` (browser, auth code + PKCE on a loopback
redirect) otherwise; ``username_password`` when configured (no prompt at all).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from smtp_oauth.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings

__all__ = ["add_arguments_for", "choose_flow", "has_display", "run_for"]

INTERACTIVE_FLOWS = ("device_code", "interactive")


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    """Options of ``login`` (``logout`` has none besides --config)."""
    if name == "login":
        parser.add_argument(
            "--flow",
            choices=INTERACTIVE_FLOWS,
            help="device_code: enter a code on any device's browser; interactive: a browser on this "
            "machine (default: device_code without a display, else the configured flow or interactive)",
        )


def has_display(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a browser opened here would be seen by the person at the keyboard."""
    env = os.environ if environ is None else environ
    if not sys.stdin.isatty():
        return False
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    return True  # macOS and Windows always have a desktop session for an interactive user


def choose_flow(settings: Settings, requested: str | None, *, display: bool) -> str:
    """The sign-in flow: the one asked for, else what the configuration and this session allow."""
    if requested:
        return requested
    configured = settings.identity.flow
    if configured in {"username_password", "device_code"}:
        return configured
    return "interactive" if display else "device_code"


def _refuse_client_credentials(settings: Settings) -> int:
    print(
        "smtp-oauth: identity.flow is client_credentials: the app authenticates with its own "
        f"{'certificate' if settings.identity.certificate_path else 'client secret'} on every token "
        "request, so there is no user to sign in.\n"
        "hint: `smtp-oauth token` or `smtp-oauth check` gets a token now. To send as a user instead, set "
        'identity.flow = "device_code" or "interactive" and the public client app\'s client_id.',
        file=sys.stderr,
    )
    return int(ExitCode.USAGE)


def run_for(name: str, args: argparse.Namespace) -> int:
    """Run ``login`` or ``logout``."""
    import asyncio

    from smtp_oauth.cli.common import load_settings_from_args
    from smtp_oauth.tokens.provider import create_token_provider

    settings = load_settings_from_args(args)
    # The provider's defaults show the device code on stderr and, when no browser opens, print the
    # sign-in URL instead: stdout stays for the result.
    provider = create_token_provider(settings)
    if name == "logout":
        removed = asyncio.run(provider.logout())
        print(
            f"Removed {removed} cached token{'s' if removed != 1 else ''} of client "
            f"{settings.identity.client_id} (tenant {settings.identity.tenant_id}) "
            f"from {settings.token_cache_path}."
        )
        return int(ExitCode.OK)

    if not settings.identity.is_delegated:
        return _refuse_client_credentials(settings)
    flow = choose_flow(settings, getattr(args, "flow", None), display=has_display())
    # The transport's resource: a user of transport = "graph" consents to Graph's Mail.Send.
    signed_in = asyncio.run(provider.login(flow, scopes=settings.token_scopes()))
    who = signed_in.username or "(the user did not share a name)"
    print(f"Signed in as {who} (tenant {signed_in.tenant_id or settings.identity.tenant_id}) with {flow}.")
    print(f"Granted scopes: {' '.join(signed_in.scopes) or '(none reported)'}")
    print(
        f"Access token valid until {signed_in.expires_on:%Y-%m-%d %H:%M:%S %Z}; the refresh token is "
        f"cached in {settings.token_cache_path} and renews it when needed."
    )
    if signed_in.username and signed_in.username.lower() != settings.smtp.username.lower():
        print(
            f"Note: smtp.username is {settings.smtp.username}, not {signed_in.username}: Exchange accepts "
            f"this only if {signed_in.username} has FullAccess on that mailbox (run `smtp-oauth check`).",
            file=sys.stderr,
        )
    return int(ExitCode.OK)
