"""``smtp-oauth token``: print an access token, its XOAUTH2 form, or its decoded claims.

For other programs: msmtp's ``passwordeval "smtp-oauth token"``, a tool that wants the whole
XOAUTH2 initial response (``--xoauth2``), or a person asking what a token allows (``--claims``,
which never prints the token itself). The token comes from the cache when it is still valid for
10 minutes, else from the identity provider, exactly as send-mail would get it.

``--resource exchange|graph|URI`` and ``--scope`` get a token for another resource with the same
identity (default: the one ``transport`` needs); a scope without a ``/`` is the resource's
(``--resource graph --scope Mail.Send`` is ``https://graph.microsoft.com/Mail.Send``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtp_oauth.cli.exit_codes import ExitCode
from smtp_oauth.tokens.types import scope_key

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings

__all__ = ["add_arguments", "requested_scopes", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smtp-oauth token``."""
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--xoauth2",
        action="store_true",
        help="print the base64 SASL XOAUTH2 initial response for smtp.username instead of the token",
    )
    form.add_argument(
        "--claims",
        action="store_true",
        help="print the token's decoded claims as JSON (not verified); the token itself is not printed",
    )
    parser.add_argument(
        "--resource",
        metavar="exchange|graph|URI",
        help="the resource the token is for: exchange (SMTP AUTH), graph (Microsoft Graph) or a resource "
        "URI such as https://graph.microsoft.com; default: the one `transport` needs",
    )
    parser.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="a scope to ask for instead of the resource's default (repeatable); without a '/' it is "
        "one of the resource's permissions, e.g. --resource graph --scope Mail.Send",
    )
    parser.add_argument(
        "--force-refresh",
        action="store_true",
        help="ask the identity provider for a new token even if the cached one is still valid",
    )


def requested_scopes(settings: Settings, resource: str | None, scopes: Sequence[str] | None) -> list[str]:
    """The scopes ``--resource`` and ``--scope`` ask for (see the module docstring)."""
    if not scopes:
        return settings.token_scopes(resource)
    base = settings.token_scopes(resource)[0].rpartition("/")[0]
    return [scope if "/" in scope else f"{base}/{scope}" for scope in scopes]


def run(args: argparse.Namespace) -> int:
    """Get a token and print it in the chosen form."""
    from smtp_oauth.cli.common import load_settings_from_args
    from smtp_oauth.tokens.provider import cached_access_token, create_token_provider

    settings = load_settings_from_args(args)
    scopes = requested_scopes(settings, args.resource, args.scope)
    if args.xoauth2 and scope_key(scopes) != scope_key(settings.token_scopes("exchange")):
        print(
            "smtp-oauth: --xoauth2 is the SMTP AUTH login, which takes an Exchange Online token; "
            "leave out --resource/--scope (or use --resource exchange)",
            file=sys.stderr,
        )
        return int(ExitCode.USAGE)
    # msmtp's passwordeval runs this once per message: a token cached with 10 minutes left is
    # read without importing msal at all, as send-mail does.
    token = None if args.force_refresh else cached_access_token(settings, scopes=scopes)
    if token is None:
        token = create_token_provider(settings).access_token_sync(
            force_refresh=args.force_refresh, scopes=scopes
        )
    if args.claims:
        from smtp_oauth.tokens.claims import decode_claims

        try:
            claims = decode_claims(token)
        except ValueError as exc:
            print(f"smtp-oauth: cannot show the claims: {exc}", file=sys.stderr)
            return int(ExitCode.DATAERR)
        print(json.dumps(claims, indent=2, sort_keys=True))
    elif args.xoauth2:
        from smtp_oauth.smtp.xoauth2 import encode

        print(encode(settings.smtp.username, token))
    else:
        print(token)
    return int(ExitCode.OK)
