"""OAuthSMTPHandler: mail log records through Exchange Online, like logging.handlers.SMTPHandler.

::

    handler = OAuthSMTPHandler(settings, to=["ops@contoso.com"], subject="app: error")
    logging.getLogger().addHandler(handler)          # level ERROR by default

Unlike SMTPHandler it never makes the application wait for SMTP or for a token: ``emit`` formats the
record and puts it on a bounded queue, and one worker thread, with its own event loop and one
transport (``create_transport``: an SMTP session reused between mails), sends them. Records that
pile up while a mail is being sent go out together in the next mail, so an error storm does not run
into Exchange Online's 30 messages a minute. ``flush``/``close`` wait for the queue to drain, up to
``timeout``; ``logging.shutdown`` calls them at exit. A failure to send goes to ``handleError``
(stderr), never into the application, and records logged by the worker itself (smtp_oauth, msal) are
not mailed, so sending cannot feed itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Sequence
from email.message import EmailMessage
from typing import TYPE_CHECKING

from smtp_oauth.mail.addresses import message_date

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tokens.types import TokenProvider
    from smtp_oauth.transport import Transport

__all__ = ["OAuthSMTPHandler"]

DEFAULT_SUBJECT = "Log message from smtp-oauth"
DEFAULT_CAPACITY = 1000  # queued records; beyond that new records are counted and dropped
MAX_RECORDS_PER_MAIL = 100

_Batch = list[tuple[logging.LogRecord, str]]  # records with their text, formatted when logged


class OAuthSMTPHandler(logging.Handler):
    """A logging handler that sends records by mail in the background (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        to: Sequence[str],
        *,
        subject: str = DEFAULT_SUBJECT,
        sender: str | None = None,
        level: int = logging.ERROR,
        capacity: int = DEFAULT_CAPACITY,
        timeout: float = 30.0,
        token_provider: TokenProvider | None = None,
    ) -> None:
        super().__init__(level)
        if isinstance(to, str):
            to = [to]  # as SMTPHandler accepts "toaddrs" as one string
        if not to:
            raise ValueError("OAuthSMTPHandler needs at least one recipient in to=")
        self.settings = settings
        self.to = list(to)
        self.subject = subject
        self.sender = sender
        self.timeout = timeout
        self._token_provider = token_provider
        self._queue: queue.Queue[tuple[logging.LogRecord, str] | None] = queue.Queue(maxsize=capacity)
        self._pending = 0  # records queued or being sent
        self._dropped = 0
        self._idle = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._abandoned = False  # close() gave up waiting: the worker stops without further reports

    def __repr__(self) -> str:
        return f"<OAuthSMTPHandler to={self.to!r} ({logging.getLevelName(self.level)})>"

    def getSubject(self, record: logging.LogRecord) -> str:  # SMTPHandler's name, for overriding
        """The subject of a mail for ``record``; override to vary it, as with SMTPHandler."""
        return self.subject

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted record; returns at once (never waits for the network)."""
        if self._worker is not None and threading.get_ident() == self._worker.ident:
            return  # logged while sending (by us, aiosmtplib or msal): mailing it could loop forever
        try:
            text = self.format(record)  # now, in the caller's thread, while the record's args are current
            with self._idle:
                if self._closed:
                    return
                try:
                    self._queue.put_nowait((record, text))
                except queue.Full:
                    self._dropped += 1
                    return
                self._pending += 1
                self._start_worker()
        except Exception:
            self.handleError(record)

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="OAuthSMTPHandler", daemon=True)
            self._worker.start()

    def flush(self) -> None:
        """Wait until every queued record is sent (or failed), at most ``timeout`` seconds."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=self.timeout)

    def close(self) -> None:
        """Send what is queued (up to ``timeout``), say QUIT, and stop the worker."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        if worker is not None:
            deadline = time.monotonic() + self.timeout
            with contextlib.suppress(queue.Full):  # a full queue: wait for room, but not forever
                self._queue.put(None, timeout=self.timeout)
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive() or self._pending:
                self._abandoned = True  # the worker drops the rest: this line already reported it
                print(
                    f"OAuthSMTPHandler: {self._pending} log record(s) not mailed within {self.timeout:g}s",
                    file=sys.stderr,
                )
        super().close()

    # -- the worker thread ------------------------------------------------------------------------

    def _work(self) -> None:
        # The app pays for the transport (aiosmtplib) only once a record is mailed.
        from smtp_oauth.transport import create_transport

        with asyncio.Runner() as runner:
            transport = create_transport(self.settings, token_provider=self._token_provider)
            try:
                while (batch := self._next_batch()) is not None:
                    self._send(runner, transport, batch)
            finally:
                runner.run(transport.close())

    def _next_batch(self) -> _Batch | None:
        """The next record and whatever queued up behind it; None once close() asked to stop."""
        first = self._queue.get()
        if first is None or self._abandoned:
            return None
        batch = [first]
        while len(batch) < MAX_RECORDS_PER_MAIL:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after sending this batch
                break
            batch.append(item)
        return batch

    def _send(self, runner: asyncio.Runner, transport: Transport, batch: _Batch) -> None:
        try:
            runner.run(transport.send(self._message(batch), sender=self.sender, timeout=self.timeout))
        except Exception:
            if not self._abandoned:
                for record, _ in batch:
                    # handleError prints to stderr, which may be closed by now (interpreter exit,
                    # a test's capture): the worker must outlive that, or later records are lost.
                    with contextlib.suppress(Exception):
                        self.handleError(record)
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _message(self, batch: _Batch) -> EmailMessage:
        first = batch[0][0]
        subject = self.getSubject(first)
        if len(batch) > 1:
            subject = f"{subject} (+{len(batch) - 1} more)"
        body = "\n\n".join(text for _, text in batch)
        with self._idle:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            body += f"\n\n[{dropped} more record(s) were dropped: the queue was full]"
        message = EmailMessage()
        message["From"] = self.sender or self.settings.smtp.sender
        message["To"] = ", ".join(self.to)
        message["Subject"] = subject
        message["Date"] = message_date(first.created)
        message.set_content(body + "\n")
        return message
