"""The client side of the relay's submission socket (``relay/listener/submission.py``): stdlib only.

``send-mail`` with ``[send_mail] via = "relay"`` runs once per message, so this is the whole of its
network code: a blocking Unix socket, ESMTP with PIPELINING (one write for EHLO, MAIL, RCPT and
DATA; RFC 2920), the message dot-stuffed (RFC 5321 4.5.2), and the relay's reply after its spool
commit. No asyncio, no TLS (the kernel carries the bytes and names the sender), no AUTH.

Replies become the library's errors through the same rules as the Mailer's (``smtp/replies.py``):
4xx is temporary (75), 5xx permanent (69). No relay listening is 69 with one line saying so;
a socket this account may not use is 77.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from smtp_oauth.errors import (
    DeliveryConnectionError,
    DeliveryTimeoutError,
    FailureKind,
    PermanentDeliveryError,
    SmtpOAuthError,
    TemporaryDeliveryError,
)
from smtp_oauth.smtp.replies import Stage, from_reply

__all__ = [
    "Reply",
    "SubmissionClient",
    "SubmissionDenied",
    "dot_stuff",
    "open_submission_socket",
    "relay_unavailable",
]

MAX_REPLY_LINE = 1 << 20  # an XQUEUE line carries a message's recipients; anything longer is not ours
_CHUNK = 1 << 16


class SubmissionDenied(SmtpOAuthError):
    """This account may not connect to the submission socket (its file mode and group say so)."""

    kind = FailureKind.DENIED

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

    def explain(self) -> str | None:
        return self.hint


def relay_unavailable(paths: Sequence[Path], detail: str) -> PermanentDeliveryError:
    """No relay answers on any of ``paths`` (exit 69, EX_UNAVAILABLE)."""
    where = " or ".join(str(path) for path in paths)
    return PermanentDeliveryError(
        f"no relay is running: nothing accepts mail on the submission socket {where} ({detail})",
        hint='send_mail.via is "relay": start the relay (`smtp-oauth relay`, or `systemctl start '
        'smtp-oauth-relay`), point relay.submission_socket at its socket, or set [send_mail] via = "direct".',
    )


def open_submission_socket(paths: Sequence[Path], *, timeout: float | None) -> tuple[socket.socket, Path]:
    """A connection to the first of ``paths`` a relay listens on; 69 if none, 77 if not allowed."""
    failure = "no such socket"
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except PermissionError:
            sock.close()
            raise SubmissionDenied(
                f"permission denied on the relay's submission socket {path}",
                hint="Only the relay's own user and the members of the socket's group may submit: "
                "`ls -l` it and add this account to that group (`usermod -aG <group> <user>`, then "
                "log in again).",
            ) from None
        except FileNotFoundError:
            sock.close()
            failure = "no such socket"
        except ConnectionRefusedError:
            sock.close()
            failure = "connection refused"
        except OSError as exc:
            sock.close()
            failure = exc.strerror or str(exc)
        else:
            return sock, path
    raise relay_unavailable(paths, failure)


class Reply(NamedTuple):
    """One SMTP reply: its code and its lines' texts."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def dot_stuff(data: bytes) -> Iterator[bytes]:
    """``data`` as DATA's content: CRLF lines, a leading '.' doubled, ending in CRLF (RFC 5321 4.5.2).

    Bare LF and lone CR line ends are sent as CRLF, as the Mailer does.
    """
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text.startswith(b"."):
        text = b"." + text
    text = text.replace(b"\n.", b"\n..")
    if not text.endswith(b"\n"):
        text += b"\n"
    yield text.replace(b"\n", b"\r\n")


class SubmissionClient:
    """One connection to a running relay's submission socket. Blocking; used as a context manager."""

    def __init__(
        self, paths: Sequence[Path], *, timeout: float = 60.0, context: Mapping[str, str] | None = None
    ) -> None:
        self._paths = list(paths)
        self._context = dict(context or {})  # ids for the hints of errors (mailbox, tenant, client)
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.path: Path | None = None
        self.extensions: set[str] = set()

    @property
    def server(self) -> str:
        """How errors name the relay."""
        return f"the relay (submission socket {self.path or self._paths[0]})"

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect to the first socket a relay listens on, read its greeting and say EHLO."""
        self._sock, self.path = open_submission_socket(self._paths, timeout=self._timeout)
        self._expect(self.read_reply(), 220, Stage.CONNECT)
        self._send(b"EHLO localhost\r\n")
        ehlo = self._expect(self.read_reply(), 250, Stage.CONNECT)
        self.extensions = {line.split(" ", 1)[0].upper() for line in ehlo.lines[1:]}

    def close(self) -> None:
        """QUIT (not waited for: the message was already stored) and close."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.sendall(b"QUIT\r\n")
        self._sock.close()
        self._sock = None

    # -- wire ---------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        assert self._sock is not None  # connected
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise DeliveryConnectionError(f"{self.server} closed the connection: {exc}") from exc

    def _line(self) -> bytes:
        assert self._sock is not None  # connected
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_LINE:
                raise TemporaryDeliveryError(f"{self.server} sent a reply line that never ends")
            try:
                chunk = self._sock.recv(_CHUNK)
            except TimeoutError:
                raise DeliveryTimeoutError(f"{self.server} did not answer in time") from None
            except OSError as exc:
                raise DeliveryConnectionError(f"{self.server} closed the connection: {exc}") from exc
            if not chunk:
                raise DeliveryConnectionError(f"{self.server} closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def read_reply(self) -> Reply:
        """One (possibly multi-line) reply."""
        lines: list[str] = []
        while True:
            raw = self._line().decode("utf-8", errors="replace")
            if len(raw) < 3 or not raw[:3].isdigit():
                raise TemporaryDeliveryError(f"{self.server} sent something that is not SMTP: {raw[:80]!r}")
            lines.append(raw[4:])
            if raw[3:4] != "-":
                return Reply(int(raw[:3]), lines)

    def _expect(self, reply: Reply, code: int, stage: Stage, subject: str | None = None) -> Reply:
        if reply.code != code:
            raise from_reply(
                reply.code,
                reply.text,
                server=self.server,
                stage=stage,
                context=self._context,
                subject=subject,
            )
        return reply

    # -- commands -----------------------------------------------------------------------------

    def send(
        self, data: bytes, *, sender: str, recipients: Sequence[str]
    ) -> tuple[str, dict[str, tuple[int, str]]]:
        """Hand over one message; (the relay's "queued as" reply, refused recipients) once stored.

        Raises when the relay refuses the sender, every recipient, or the message.
        """
        utf8 = not all(address.isascii() for address in (sender, *recipients))
        mail = f"MAIL FROM:<{sender}>" + (" SMTPUTF8" if utf8 and "SMTPUTF8" in self.extensions else "")
        commands = [mail, *(f"RCPT TO:<{address}>" for address in recipients), "DATA"]
        self._send("".join(f"{command}\r\n" for command in commands).encode("utf-8"))
        self._expect(self.read_reply(), 250, Stage.MAIL, subject=f"<{sender}>")
        refused: dict[str, tuple[int, str]] = {}
        for address in recipients:
            reply = self.read_reply()
            if reply.code not in {250, 251}:
                refused[address] = (reply.code, reply.text)
        data_reply = self.read_reply()
        if len(refused) == len(recipients):
            code, text = next(iter(refused.values()))
            raise from_reply(
                code, text, server=self.server, stage=Stage.RCPT, context=self._context, recipients=refused
            )
        self._expect(data_reply, 354, Stage.DATA)
        for chunk in dot_stuff(data):
            self._send(chunk)
        self._send(b".\r\n")
        reply = self._expect(self.read_reply(), 250, Stage.DATA)
        return f"{reply.code} {reply.text}", refused

    def command(self, line: str) -> Reply:
        """Any other command (``ETRN``, ``XQUEUE``, ...) and its reply, whatever the code."""
        self._send(f"{line}\r\n".encode())
        return self.read_reply()

    def queue(self) -> list[dict[str, Any]]:
        """The relay's waiting messages (``XQUEUE``), oldest first."""
        reply = self._expect(self.command("XQUEUE"), 250, Stage.CONNECT)
        return [json.loads(line) for line in _json_lines(reply.lines)]


def _json_lines(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("{"):
            yield line
