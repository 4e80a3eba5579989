"""``smtp-oauth sandbox``: run the fake Entra ID + fake Exchange Online until Ctrl-C or SIGTERM.

FOR TESTING ONLY. It writes ``D/sandbox.toml`` and prints how to point send-mail, the relay and an
application at it; delivered mail lands in ``D/mail``. A restart keeps what is configured against
it: the tenant's ids and secrets, the signing key, the CA and server certificates (renewed only when
missing or about to expire), the ports, and the keys a user added to sandbox.toml.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from smtp_oauth.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from smtp_oauth.sandbox.runner import Sandbox

DEFAULT_DIRECTORY = Path("sandbox-data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIRECTORY,
        metavar="D",
        help=f"where config, keys and delivered mail go (default: ./{DEFAULT_DIRECTORY})",
    )
    parser.add_argument(
        "--idp-port",
        type=int,
        default=0,
        metavar="P",
        help="HTTPS port (default: the last start's, else random)",
    )
    parser.add_argument(
        "--smtp-port",
        type=int,
        default=0,
        metavar="P",
        help="SMTP port (default: the last start's, else random)",
    )


def banner(sandbox: Sandbox) -> str:
    """What to tell the person who started the sandbox."""
    config = sandbox.config_path
    tenant = sandbox.tenant
    return f"""\
smtp-oauth sandbox: FOR TESTING ONLY. Fake services with throwaway secrets; no mail leaves this machine.

  identity provider  {sandbox.authority_host}/{tenant.tenant_id}   (fake Entra ID, HTTPS)
  SMTP submission    {sandbox.smtp_host}:{sandbox.smtp_port}   (fake Exchange Online, STARTTLS + XOAUTH2)
  CA certificate     {sandbox.ca_file}
  mailbox            {tenant.mailbox}
  configuration      {config}   (client credentials; kept across restarts with your additions)

Send a message:
  send-mail --config {config} --to someone@example.test -s hello --body "it works"
Run the relay for legacy senders (add a [[relay.users]] entry first, see the file):
  smtp-oauth --config {config} relay
Point an application at it:
  export SMTP_OAUTH_CONFIG={config}
  python -c 'import smtp_oauth; from email.message import EmailMessage; m = EmailMessage(); \\
m["To"] = "someone@example.test"; m["Subject"] = "hi"; m.set_content("hello"); \\
smtp_oauth.send_message(m, settings=smtp_oauth.load_settings())'
Delivered mail lands in {sandbox.mail_dir} (one .eml and one envelope .json per message).

Press Ctrl-C to stop."""


async def _serve(args: argparse.Namespace) -> None:
    from smtp_oauth.sandbox.runner import Sandbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Sandbox(
        args.dir, idp_port=args.idp_port, smtp_port=args.smtp_port, persistent=True
    ) as sandbox:
        print(banner(sandbox), flush=True)
        await stop.wait()
    print("sandbox stopped", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from smtp_oauth.logs import configure_logging

    # The sandbox's own log (tokens issued, mail accepted or refused, and why) is its user interface.
    configure_logging("INFO", "text")
    from smtp_oauth.sandbox.runner import PortInUse

    try:
        asyncio.run(_serve(args))
    except PortInUse as exc:  # temporary: the other program may go away (EX_TEMPFAIL)
        print(f"smtp-oauth sandbox: cannot start: {exc}", file=sys.stderr)
        return int(ExitCode.TEMPFAIL)
    except OSError as exc:  # a port already taken, an unwritable directory
        print(f"smtp-oauth sandbox: cannot start: {exc}", file=sys.stderr)
        return int(ExitCode.UNAVAILABLE)
    return int(ExitCode.OK)
