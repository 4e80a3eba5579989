"""``smtp-oauth queue list|show ID|retry [ID]|delete ID|migrate``: the relay's queue (postqueue/postsuper).

Works while the relay runs (SQLite WAL; a running relay picks up retried messages within its poll
interval). ``retry`` without an id makes every deferred message due now; with an id it also
revives a dead message. ``migrate`` creates or upgrades a PostgreSQL queue's schema (relays also do
it at start-up; both are idempotent). Exit 0, or 1 when the id is not in the queue, 75 when the
queue's database cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from smtp_oauth.cli.common import add_config_option
from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.logs import configure_logging
from smtp_oauth.relay.spool import open_spool
from smtp_oauth.relay.spool.base import STATES, MessageGone, SpoolAdmin, SpooledMessage, SpoolError
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings

__all__ = ["add_arguments", "run"]

NOT_FOUND = 1
HEADER_LIMIT = 64 * 1024  # `show` prints the header section; a body is never read whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list queue entries (newest last)")
    listing.add_argument("--state", choices=STATES, action="append", help="only these states (repeatable)")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    show = actions.add_parser("show", help="show one entry and its message headers")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    retry = actions.add_parser("retry", help="send now: one entry (deferred or dead), or every deferred one")
    retry.add_argument("id", nargs="?")
    delete = actions.add_parser("delete", help="remove an entry and its message for good")
    delete.add_argument("id")
    migrate = actions.add_parser("migrate", help="create or upgrade the schema of a PostgreSQL queue")
    for action in (listing, show, retry, delete, migrate):
        add_config_option(action)  # `smtp-oauth queue list --config F` works too


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _next_attempt(entry: SpooledMessage) -> str:
    if entry.state not in {"queued", "deferred"}:
        return "-"
    return "now" if entry.next_attempt_at <= time.time() else _when(entry.next_attempt_at)


def _print_table(entries: list[SpooledMessage]) -> None:
    columns = ("ID", "STATE", "TRIES", "NEXT ATTEMPT", "SENDER", "RECIPIENTS", "LAST REPLY")
    rows = [
        (
            entry.id,
            entry.state,
            str(entry.attempts),
            _next_attempt(entry),
            entry.mail_from or "<>",
            ",".join(entry.rcpt_tos)
            if len(entry.rcpt_tos) <= 2
            else f"{entry.rcpt_tos[0]},+{len(entry.rcpt_tos) - 1}",
            entry.last_reply[:80],
        )
        for entry in entries
    ]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns) - 1)]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"{len(entries)} message(s)", file=sys.stderr)


def _print_entry(entry: SpooledMessage, headers: str) -> None:
    print(f"id:           {entry.id}")
    print(f"state:        {entry.state}")
    print(f"user:         {entry.local_user} (from {entry.peer or 'local'})")
    print(f"mailbox:      {entry.mailbox}")
    print(f"sender:       {entry.mail_from or '<>'}")
    print(f"recipients:   {', '.join(entry.rcpt_tos)}")
    print(f"message-id:   {entry.message_id or '-'}")
    print(f"size:         {entry.size} bytes")
    print(f"attempts:     {entry.attempts}")
    print(f"next attempt: {_next_attempt(entry)}")
    print(f"last reply:   {entry.last_reply or '-'}")
    for address, (code, text) in entry.refused.items():
        print(f"refused:      {address}: {code} {text}")
    print(f"queued at:    {_when(entry.created_at)}")
    print(f"updated at:   {_when(entry.updated_at)}")
    if headers:
        print()
        print(headers.rstrip())


async def _headers_of(spool: SpoolAdmin, queue_id: str) -> str:
    try:
        async with spool.open_body(queue_id) as body:
            data = await asyncio.to_thread(body.read, HEADER_LIMIT)
    except MessageGone:
        return ""  # delivered: the body is gone, the record stays
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(data)
    return "".join(f"{name}: {value}\n" for name, value in parsed.items())


async def _list(spool: SpoolAdmin, args: argparse.Namespace) -> int:
    entries = await spool.list(args.state)
    if args.json:
        print(json.dumps([entry.to_json() for entry in entries], indent=2))
    else:
        _print_table(entries)
    return int(ExitCode.OK)


async def _show(spool: SpoolAdmin, args: argparse.Namespace) -> int:
    entry = await spool.get(args.id)
    if entry is None:
        return _not_found(args.id)
    headers = await _headers_of(spool, entry.id)
    if args.json:
        print(json.dumps({**entry.to_json(), "headers": headers}, indent=2))
    else:
        _print_entry(entry, headers)
    return int(ExitCode.OK)


async def _retry(spool: SpoolAdmin, args: argparse.Namespace) -> int:
    count = await spool.retry(args.id)
    if args.id is not None and count == 0:
        entry = await spool.get(args.id)
        if entry is None:
            return _not_found(args.id)
        print(f"smtp-oauth: message {args.id} is {entry.state}: nothing to retry", file=sys.stderr)
        return NOT_FOUND
    print(f"{count} message(s) will be sent now", file=sys.stderr)
    return int(ExitCode.OK)


async def _delete(spool: SpoolAdmin, args: argparse.Namespace) -> int:
    if not await spool.delete(args.id):
        return _not_found(args.id)
    print(f"deleted {args.id}", file=sys.stderr)
    return int(ExitCode.OK)


def _not_found(queue_id: str, where: str = "") -> int:
    print(f"smtp-oauth: no message {queue_id} in the queue{where}", file=sys.stderr)
    return NOT_FOUND


ACTIONS: dict[str, Callable[[SpoolAdmin, argparse.Namespace], Awaitable[int]]] = {
    "list": _list,
    "show": _show,
    "retry": _retry,
    "delete": _delete,
}


async def _run(settings: Settings, args: argparse.Namespace) -> int | None:
    """The action's exit code, or None when there is no spool (the relay never ran here)."""
    try:
        spool = await open_spool(settings.relay, spool_dir=settings.spool_path, create=False)
    except FileNotFoundError:
        return None
    try:
        return await ACTIONS[args.action](spool, args)
    finally:
        await spool.close()


def _queue_settings(args: argparse.Namespace) -> Settings:
    """The settings (spool_dir, logging), without requiring the identity's credential.

    The queue command never signs in, and under the shipped systemd unit the client secret reaches
    only the relay (``LoadCredential``): an operator running ``smtp-oauth queue list`` must not be
    told to supply a secret. A delegated flow needs no credential in the configuration.
    """
    settings = load_settings(getattr(args, "config", None), identity={"flow": "device_code"})
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _migrate(settings: Settings) -> int:
    """``queue migrate``: the schema of relay.spool_url, to the version this smtp-oauth knows."""
    if settings.relay.spool_url is None:
        print("nothing to migrate: the SQLite spool (relay.spool_dir) updates itself", file=sys.stderr)
        return int(ExitCode.OK)
    try:
        from smtp_oauth.relay.spool.postgres import migrate_database
    except ImportError:
        print("smtp-oauth: psycopg is not installed: pip install 'smtp-oauth[postgresql]'", file=sys.stderr)
        return int(ExitCode.CONFIG)
    from smtp_oauth.relay.spool.postgres_schema import SCHEMA_VERSION

    applied = asyncio.run(migrate_database(settings.relay.spool_url.get_secret_value()))
    if applied:
        print(f"queue schema migrated to version {applied[-1]}", file=sys.stderr)
    else:
        print(f"queue schema already at version {SCHEMA_VERSION}", file=sys.stderr)
    return int(ExitCode.OK)


def run(args: argparse.Namespace) -> int:  # noqa: PLR0911  # one exit per outcome reads best
    settings = _queue_settings(args)
    if args.action == "migrate":
        try:
            return _migrate(settings)
        except SpoolError as error:
            print(f"smtp-oauth: {error}", file=sys.stderr)
            return exit_code_of(error)
    directory = settings.spool_path
    try:
        result = asyncio.run(_run(settings, args))
    except SpoolError as error:
        print(f"smtp-oauth: {error}", file=sys.stderr)
        return exit_code_of(error)
    if result is not None:
        return result
    if args.action == "list":
        print("[]" if args.json else f"the queue is empty (no spool at {directory})")
        return int(ExitCode.OK)
    if args.action == "retry" and args.id is None:
        return int(ExitCode.OK)
    return _not_found(args.id, f" (no spool at {directory})")
