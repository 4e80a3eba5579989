"""sendmail's other operation modes, all through the relay's submission socket.

``send-mail`` behaves like Postfix's sendmail here (postfix sendmail(1)):

- ``-bs``: SMTP on stdin/stdout (Symfony Mailer's default transport). The bytes go to the relay's
  submission socket and back unchanged: the client speaks SMTP to the relay itself.
- ``-bp``, or run as ``mailq``: list the relay's queue, in mailq's layout.
- ``-q``: ask the relay to retry every deferred message now (``ETRN``, RFC 1985).
- ``-bi``, or run as ``newaliases``: there is no aliases database (Exchange Online resolves every
  address), so there is nothing to rebuild: one line saying so, exit 0, as package scripts expect.
- ``-bv`` (verify recipients) cannot be answered before delivery: exit 64 with one line.

Without a running relay each of the first three exits 69 (EX_UNAVAILABLE) with one line. Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smtp_oauth.cli.exit_codes import ExitCode
from smtp_oauth.relay.client import SubmissionClient, open_submission_socket

__all__ = ["MODES", "flush_queue", "list_queue", "no_aliases", "smtp_on_stdio"]

_CHUNK = 1 << 16
AFTER_EOF = 10.0  # seconds the relay may stay silent after stdin ended before -bs gives up


def smtp_on_stdio(paths: Sequence[Path]) -> int:
    """``-bs``: copy stdin to the relay's socket and its replies to stdout until the relay closes.

    At the end of stdin the socket is not half-closed (aiosmtpd would drop the commands it has not
    answered yet): the relay gets ``AFTER_EOF`` seconds to answer them, and closes after QUIT.
    """
    sock, _ = open_submission_socket(paths, timeout=None)
    stdin_done = threading.Event()

    def upstream() -> None:
        with contextlib.suppress(OSError):  # the relay hung up first: the main loop sees it
            while chunk := os.read(sys.stdin.fileno(), _CHUNK):
                sock.sendall(chunk)
        stdin_done.set()

    # A thread rather than a selector: stdin may be a regular file, which epoll refuses.
    threading.Thread(target=upstream, name="sendmail-bs-stdin", daemon=True).start()
    out = sys.stdout.buffer
    sock.settimeout(1.0)
    quiet_since: float | None = None
    try:
        while True:
            try:
                chunk = sock.recv(_CHUNK)
            except TimeoutError:
                if stdin_done.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > AFTER_EOF:
                        break  # the client left without QUIT and the relay has nothing more to say
                continue
            if not chunk:
                break
            quiet_since = None
            out.write(chunk)
            out.flush()
    finally:
        sock.close()
    return int(ExitCode.OK)


def _arrival(epoch: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S", time.localtime(epoch))


_MARKS = {"sending": "*", "dead": "!"}  # as mailq marks active and held messages
_ID_WIDTH = 25  # a 24-digit queue id and its mark; Postfix's long ids widen its column the same way
_INDENT = " " * (_ID_WIDTH + 31)  # recipients and replies line up under -Sender/Recipient-


def format_queue(entries: list[dict[str, Any]]) -> str:
    """mailq's layout (Postfix): id, size, arrival, sender; recipients below; the last reply in ()."""
    if not entries:
        return "Mail queue is empty\n"
    lines = [f"{'-Queue ID-':<{_ID_WIDTH}} --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for entry in entries:
        total += int(entry["size"])
        mark = _MARKS.get(str(entry["state"]), "")
        queue_id = f"{entry['id']}{mark}"
        sender = entry["mail_from"] or "MAILER-DAEMON"
        arrival = _arrival(float(entry["created_at"]))
        lines.append(f"{queue_id:<{_ID_WIDTH}} {entry['size']:>8} {arrival:<20} {sender}")
        if entry["last_reply"]:
            lines.append(f"{_INDENT}({entry['last_reply']})")
        lines.extend(f"{_INDENT}{recipient}" for recipient in entry["rcpt_tos"])
        lines.append("")
    count = len(entries)
    lines.append(f"-- {max(1, (total + 1023) // 1024)} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(lines) + "\n"


def list_queue(paths: Sequence[Path], *, timeout: float) -> int:
    """``-bp`` / ``mailq``."""
    with SubmissionClient(paths, timeout=timeout) as client:
        entries = client.queue()
    sys.stdout.write(format_queue(entries))
    return int(ExitCode.OK)


def flush_queue(paths: Sequence[Path], *, timeout: float, verbose: bool, prog: str) -> int:
    """``-q``: every deferred message is due now."""
    with SubmissionClient(paths, timeout=timeout) as client:
        reply = client.command("ETRN")
    if reply.code != 250:
        print(f"{prog}: the relay refused the queue run: {reply.code} {reply.text}", file=sys.stderr)
        return int(ExitCode.UNAVAILABLE)
    if verbose:
        print(f"{prog}: {reply.text}", file=sys.stderr)
    return int(ExitCode.OK)


def no_aliases(prog: str) -> int:
    """``newaliases`` / ``-bi``: nothing to rebuild."""
    print(
        f"{prog}: nothing to do: there are no local aliases (Exchange Online resolves every address)",
        file=sys.stderr,
    )
    return int(ExitCode.OK)


MODES = ("smtp", "queue", "flush", "aliases", "verify")
