"""One upstream mailbox's delivery: up to N workers, each owning one reused upstream session.

A worker claims a due message, waits for the mailbox's pacing slot, sends it, and records the
outcome (see ``manager.py`` for the rules). Workers start when the pool is first woken and
keep running; an idle worker closes its session after ``idle_timeout``. The body is handed to the
session as the file ``Spool.open_body`` gives (the Mailer streams it); a report reads only its start.

``upstream.UpstreamHealth`` decides how many workers may send now (fewer after a 432) and
suspends the mailbox after an upstream-wide failure: then only a probe is tried, and its success
sends what was held back at once.

A claimed message never stays ``sending`` because reading its body or recording its outcome
failed (the queue's database locked, full or unreachable): it is given back (``release``: queued
again, sent again, at-least-once), and a release that fails too is tried again before the
worker's next claim, and once more when the pool stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, BinaryIO

from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    SmtpOAuthError,
    TokenError,
)
from smtp_oauth.relay.delivery.backoff import Pacer, next_attempt_at
from smtp_oauth.relay.delivery.bounce import BOUNCE_USER, MAX_ORIGINAL_HEADERS, build_report, should_bounce
from smtp_oauth.relay.delivery.upstream import (
    CONGESTION_RETRY,
    RETRY_AFTER_MAX,
    DeliverySpool,
    UpstreamHealth,
    is_congestion,
    is_upstream_wide,
)
from smtp_oauth.relay.eventloop import cancel_and_wait, wait_event
from smtp_oauth.relay.spool.base import Message, MessageGone, SpooledMessage

if TYPE_CHECKING:
    from smtp_oauth.relay.delivery.config import DeliveryConfig
    from smtp_oauth.transport import SendResult, Transport, TransportFactory

__all__ = ["MailboxPool"]

logger = logging.getLogger("smtp_oauth.relay")
SESSION_CLOSE_TIMEOUT = 10.0
SHUTDOWN_CLOSE_TIMEOUT = 1.0  # at stop: relay.shutdown_timeout is a promise, QUIT is a courtesy
RELEASE_RETRY = 1.0  # seconds before a worker tries again to give back what it could not record
Body = BinaryIO | None  # the open body of the message being handled (None: it was gone)


def _report_original(body: Body) -> bytes:
    """What a report quotes of the original (its header, at most 64 KiB): the file's start only.

    Blocking: call it in a thread.
    """
    if body is None:
        return b""
    body.seek(0)
    return body.read(MAX_ORIGINAL_HEADERS + 4)  # + the blank line that may end the header there


def _reply_of(error: BaseException) -> str:
    """The upstream's reply line if there was one, else our error message (never a token)."""
    if isinstance(error, DeliveryError) and error.reply:
        return error.reply
    return str(error) or type(error).__name__


def _needs_operator(error: BaseException) -> bool:
    """Refused credentials or configuration: a person has to act, the log says so at ERROR."""
    return isinstance(error, AuthenticationError | ConfigurationError) or (
        isinstance(error, TokenError) and not error.temporary
    )


def _log(level: int, entry: SpooledMessage, event: str, detail: str = "", **fields: object) -> None:
    """One structured line per message event; addresses and sizes, never bodies or tokens."""
    extra = {
        "event": event,
        "queue_id": entry.id,
        "message_id": entry.message_id,
        "sender": entry.mail_from,
        "recipients": len(entry.rcpt_tos),
        "size": entry.size,
        "mailbox": entry.mailbox,
        "latency_ms": int((time.time() - entry.created_at) * 1000),
        **fields,
    }
    logger.log(level, "%s %s%s", event, entry.id, f": {detail}" if detail else "", extra=extra)


class MailboxPool:
    """The workers of one upstream mailbox."""

    def __init__(
        self,
        mailbox: str,
        *,
        spool: DeliverySpool,
        transports: TransportFactory,
        config: DeliveryConfig,
        pacer: Pacer,
        results: Counter[str],
        on_change: Callable[[], None],
    ) -> None:
        self.mailbox = mailbox
        self.spool = spool
        self.transports = transports
        self.config = config
        self.pacer = pacer
        self.results = results
        self.on_change = on_change
        self._work = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._unreleased: set[str] = set()  # claimed, outcome not recorded, release failed too
        self.health = UpstreamHealth(
            config.upstream_connections, probe_first=config.probe_first, probe_max=config.probe_max
        )
        # The upstream asked us to wait (Graph's Retry-After): no claims for this mailbox until then.
        self._paused_until = 0.0  # time.monotonic()
        self._stopped = asyncio.Event()

    def wake(self) -> None:
        """There are due messages: start the workers if needed and let idle ones claim."""
        if not self._tasks and not self._stopping:
            self._tasks = [
                asyncio.create_task(self._worker(n), name=f"deliver {self.mailbox} #{n}")
                for n in range(self.config.upstream_connections)
            ]
        self._work.set()

    async def stop(self, *, grace: float) -> None:
        """Stop claiming; wait up to ``grace`` seconds for sends in progress, then cancel them."""
        self._stopping = True
        self._stopped.set()
        self._work.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        await cancel_and_wait(pending)
        for queue_id in sorted(self._unreleased):  # one last try; else recover() or a lease expiry
            with contextlib.suppress(Exception):
                await self.spool.release(queue_id)
                self._unreleased.discard(queue_id)

    async def _worker(self, index: int) -> None:
        stack = AsyncExitStack()  # holds the upstream session while it is open
        session: Transport | None = None
        try:
            while not self._stopping:
                try:
                    session = await self._claim_and_send(index, session, stack)
                except Exception:  # the spool failed (disk full?): keep the worker, try again soon
                    logger.exception("delivery worker for %s", self.mailbox)
                    # The session may be open in the stack: close it, or the next claim opens
                    # another one and the mailbox gets more than upstream_connections sessions.
                    await self._close(stack)
                    session = None
                    await asyncio.sleep(1.0)
        finally:
            await self._close(stack)

    async def _claim_and_send(
        self, index: int, session: Transport | None, stack: AsyncExitStack
    ) -> Transport | None:
        await self._release_unrecorded()
        await self._wait_out_pause()
        if self._stopping:
            return session
        self._work.clear()  # before claiming: a wake-up that comes during the claim is not lost
        health = self.health
        if not health.may_claim(index):
            # Fewer sessions allowed after a 432, or suspended: give the session back to the
            # mailbox's other senders and wait for a wake-up (or the next probe).
            await self._close(stack)
            await self._wait_for_work(idle=False, until_probe=health.seconds_to_probe())
            return None
        probe = health.suspended
        claimed: list[SpooledMessage] = []
        if probe:
            health.start_probe()
        try:
            if probe:
                await self._due_for_probe()
            claimed = await self.spool.claim_due(self.mailbox, 1)
        finally:
            if probe and not claimed:
                health.end_probe()
        if not claimed:
            if not await self._wait_for_work(idle=session is not None):
                await self._close(stack)
                return None
            return session
        return await self._attempt(claimed[0], session, stack)

    async def _due_for_probe(self) -> None:
        """A probe needs a due message: make one of those held back due, if none is."""
        pending = await self.spool.pending_by_mailbox()
        if pending.get(self.mailbox, float("inf")) <= time.time():
            return
        for queue_id in sorted(self.health.held):
            entry = await self.spool.get(queue_id)
            if entry is not None and entry.state == "deferred":
                await self.spool.retry(queue_id)
                return
            self.health.held.discard(queue_id)

    async def _wait_out_pause(self) -> None:
        """Sleep while the upstream's Retry-After lasts (woken early only to stop)."""
        delay = self._paused_until - time.monotonic()
        if delay > 0 and not self._stopping:
            await wait_event(self._stopped, delay)

    def _pause(self, wait: float) -> None:
        """Honour a wait the upstream asked for: this mailbox's workers claim nothing until then."""
        self._paused_until = max(self._paused_until, time.monotonic() + wait)

    async def _wait_for_work(self, *, idle: bool, until_probe: float | None = None) -> bool:
        """Wait for a wake-up (or the next probe); False if an open session stayed idle for
        ``idle_timeout``."""
        if not idle:
            await wait_event(self._work, until_probe)
            return True
        return await wait_event(self._work, self.config.idle_timeout)

    async def _close(self, stack: AsyncExitStack) -> None:
        """QUIT the session, but do not let a dead server hold the worker."""
        with contextlib.suppress(Exception, TimeoutError):
            timeout = SHUTDOWN_CLOSE_TIMEOUT if self._stopping else SESSION_CLOSE_TIMEOUT
            await asyncio.wait_for(stack.aclose(), timeout=timeout)

    async def _attempt(
        self, entry: SpooledMessage, session: Transport | None, stack: AsyncExitStack
    ) -> Transport | None:
        """Send one claimed message; returns the session to keep (None: open a new one next time)."""
        handed_over = False  # from here on, _send records the outcome or gives the message back
        try:
            async with self.spool.open_body(entry.id) as body:
                handed_over = True
                return await self._send(entry, body, session, stack)
        except MessageGone:
            gone = "the message's body is missing from the spool"
            await self._record(entry, self._dead(entry, None, gone, None))
            return session
        except BaseException:
            if not handed_over:  # the body could not be read (the database failed, or a stop)
                await asyncio.shield(self._give_back(entry))
            raise

    async def _send(
        self, entry: SpooledMessage, body: BinaryIO, session: Transport | None, stack: AsyncExitStack
    ) -> Transport | None:
        try:
            if session is None:
                session = await stack.enter_async_context(self.transports(self.mailbox))
            # Paced right before the send, not before opening the session: sessions that took
            # different times to open (a token, TLS) would otherwise send in a bunch.
            await self.pacer.wait()
            receipt = await session.send(body, sender=entry.mail_from, recipients=entry.rcpt_tos)
        except asyncio.CancelledError:
            await self._cut_off(entry, "the send")
            raise
        except PermanentDeliveryError as error:
            await self._answered()
            await self._record(entry, self._dead(entry, body, _reply_of(error), error))
            return session  # a 5xx for this message; the session itself is fine
        except (SmtpOAuthError, OSError) as error:
            await self._record(entry, self._failed(entry, body, error))
        except Exception as error:  # a bug of ours must not lose the message
            logger.exception("unexpected error delivering %s", entry.id)
            await self._record(entry, self._deferred(entry, body, error))
        else:
            try:
                await self._record(entry, self._delivered(entry, body, receipt))
            except asyncio.CancelledError:  # sent, but its delivery may not be recorded
                await self._cut_off(entry, "recording its delivery")
                raise
            return session
        await self._close(stack)  # after a failure start afresh: new connection, new token
        return None

    async def _cut_off(self, entry: SpooledMessage, doing: str) -> None:
        """Cancelled (the relay stopping, its grace period over) while ``doing``: the message goes
        back to the queue. It may have gone out already, so it may arrive twice (at-least-once);
        the line says so, one per message, which is what bounds the duplicates of a stop."""
        if self._stopping:
            _log(
                logging.WARNING,
                entry,
                "send_cut_off",
                f"the relay is stopping and {doing} did not finish in time; the message goes back "
                "to the queue and may arrive twice",
            )
        await asyncio.shield(self._give_back(entry))

    async def _record(self, entry: SpooledMessage, outcome: Coroutine[object, object, None]) -> None:
        """Record an outcome; if that fails, give the message back rather than leave it ``sending``."""
        try:
            await outcome
        except Exception:
            logger.exception(
                "could not record what happened to %s; it goes back to the queue and will be sent again",
                entry.id,
                extra={"event": "requeued", "queue_id": entry.id, "mailbox": entry.mailbox},
            )
            await self._give_back(entry)

    async def _give_back(self, entry: SpooledMessage) -> None:
        try:
            await self.spool.release(entry.id)
        except Exception:
            logger.warning("could not give %s back to the queue yet; trying again shortly", entry.id)
            self._unreleased.add(entry.id)

    async def _release_unrecorded(self) -> None:
        """Give back what an earlier failure left claimed; raises (and waits) while the spool fails."""
        for queue_id in sorted(self._unreleased):
            try:
                await self.spool.release(queue_id)
            except Exception:
                await asyncio.sleep(RELEASE_RETRY)
                raise
            self._unreleased.discard(queue_id)

    async def _failed(self, entry: SpooledMessage, data: Body, error: SmtpOAuthError | OSError) -> None:
        """A temporary failure: shrink after a 432, suspend after an upstream-wide one, defer."""
        health = self.health
        if is_congestion(error) and health.congested():
            logger.warning(
                "%s: Exchange refused a session (%s): another sender uses the mailbox's sessions; "
                "%d session(s) for the relay now",
                self.mailbox,
                _reply_of(error),
                health.limit,
                extra={"event": "upstream_congested", "mailbox": self.mailbox, "sessions": health.limit},
            )
            await self._deferred(entry, data, error, retry_in=CONGESTION_RETRY)
            self._work.set()  # the workers above the new limit close their sessions now
            return
        if is_upstream_wide(error):
            reply = _reply_of(error)
            wait = error.retry_after if isinstance(error, DeliveryError) else None
            if health.suspend(reply, retry_after=wait):
                self._log_suspended(error, reply)
            health.held.add(entry.id)
            await self._deferred(entry, data, error, quiet=True)
            return
        await self._answered()
        await self._deferred(entry, data, error)

    def _log_suspended(self, error: SmtpOAuthError | OSError, reply: str) -> None:
        """The one line a mailbox's suspension gets (its messages' own lines are INFO meanwhile)."""
        operator = _needs_operator(error)
        hint = error.explain() if isinstance(error, SmtpOAuthError) else None
        logger.log(
            logging.ERROR if operator else logging.WARNING,
            "%s: upstream failing (%s); holding its queue and trying one message in %.0f s, then "
            "every %.0f s at most%s",
            self.mailbox,
            reply,
            self.health.seconds_to_probe() or 0.0,
            self.health.probe_max,
            f" (hint: {hint})" if hint else "",
            extra={"event": "upstream_suspended", "mailbox": self.mailbox, "upstream_reply": reply},
        )

    async def _answered(self) -> None:
        """The upstream took part in a transaction (whatever it said of the message): not down."""
        resumed, grown = self.health.delivered()
        if resumed:
            await self._resumed()
        elif grown:
            self._work.set()

    async def _resumed(self) -> None:
        """The probe went through: everything held back for the failure is due now."""
        held, self.health.held = self.health.held, set()
        released = 0
        for queue_id in sorted(held):
            entry = await self.spool.get(queue_id)
            if entry is not None and entry.state == "deferred":
                released += await self.spool.retry(queue_id)
        logger.info(
            "%s: upstream answers again; sending the %d message(s) held back now",
            self.mailbox,
            released,
            extra={"event": "upstream_resumed", "mailbox": self.mailbox, "released": released},
        )
        self._work.set()
        self.on_change()

    async def _delivered(self, entry: SpooledMessage, data: Body, receipt: SendResult) -> None:
        await self._answered()
        # Recipients refused with a 4xx are tried again (the entry stays, for them alone); the
        # others got the message and are never sent it twice. 5xx refusals are final.
        temporary = [address for address, (code, _) in receipt.refused.items() if code < 500]
        retry_at = self._retry_at(entry) if temporary else None
        if retry_at is None:
            temporary = []  # none, or too old to try again: final like a 5xx
        permanent = {addr: reply for addr, reply in receipt.refused.items() if addr not in temporary}
        failed = {addr: f"{code} {text}" for addr, (code, text) in permanent.items()}
        refusal = "the server refused these recipients"
        report = await self._report(entry, data, failed, refusal, None) if permanent else None
        refused = {**entry.refused, **permanent}
        if retry_at is None:
            report_id = await self.spool.mark_delivered(
                entry.id, reply=receipt.reply, refused=refused, report=report
            )
        else:
            code, text = receipt.refused[temporary[0]]
            report_id = await self.spool.mark_partly_delivered(
                entry.id,
                remaining=temporary,
                next_attempt_at=retry_at,
                reply=f"{code} {text}",
                refused=refused,
                report=report,
            )
        self.results["delivered"] += 1
        _log(
            logging.INFO,
            entry,
            "delivered",
            upstream_reply=receipt.reply,
            attempts=entry.attempts + 1,
            refused=len(receipt.refused),
        )
        if retry_at is not None:
            self.results["deferred"] += 1
            _log(
                logging.WARNING,
                entry,
                "deferred",
                f"{len(temporary)} recipient(s) refused for now, to be tried again: {code} {text}",
                upstream_reply=f"{code} {text}",
                attempts=entry.attempts + 1,
                retry_in_s=round(retry_at - time.time(), 1),
                remaining=len(temporary),
            )
            self.on_change()
        if permanent:
            _log(logging.WARNING, entry, "refused", "some recipients were refused", refused=failed)
            self._bounced(entry, report_id)

    def _retry_at(self, entry: SpooledMessage) -> float | None:
        """When to try ``entry`` again after this failed attempt; None once it is too old."""
        return next_attempt_at(
            now=time.time(),
            created_at=entry.created_at,
            attempts=entry.attempts + 1,
            max_queue_age=self.config.max_queue_age,
            base=self.config.backoff_base,
            cap=self.config.backoff_cap,
        )

    async def _deferred(
        self,
        entry: SpooledMessage,
        data: Body,
        error: BaseException,
        *,
        retry_in: float | None = None,
        quiet: bool = False,
    ) -> None:
        """Record a temporary failure; ``retry_in`` instead of the backoff (not past the age
        limit); ``quiet``: the mailbox's state-change line already said why, with the hint."""
        now = time.time()
        attempts = entry.attempts + 1
        retry_at = self._retry_at(entry)
        if retry_at is not None and retry_in is not None:
            retry_at = min(retry_at, now + retry_in)
        reply = _reply_of(error)
        hint = error.explain() if isinstance(error, SmtpOAuthError) else None
        if retry_at is None:
            reason = f"still failing after {attempts} attempts, at the queue age limit: {reply}"
            await self._dead(entry, data, reason, error)
            return
        wait = error.retry_after if isinstance(error, DeliveryError) else None
        if wait is not None:
            # Not before the upstream said (Graph's Retry-After), whatever the backoff would allow.
            wait = min(wait, RETRY_AFTER_MAX)
            retry_at = max(retry_at, now + wait)
            self._pause(wait)
        await self.spool.mark_deferred(entry.id, next_attempt_at=retry_at, reply=reply)
        self.results["deferred"] += 1
        # Refused credentials need a person; everything else is routine and retried quietly.
        operator = _needs_operator(error) and not quiet
        _log(
            logging.INFO if quiet else logging.ERROR if operator else logging.WARNING,
            entry,
            "deferred",
            reply + (f" (hint: {hint})" if hint and operator else ""),
            upstream_reply=reply,
            attempts=attempts,
            retry_in_s=round(retry_at - now, 1),
        )
        self.on_change()

    async def _dead(
        self, entry: SpooledMessage, data: Body, reason: str, error: BaseException | None
    ) -> None:
        hint = error.explain() if isinstance(error, SmtpOAuthError) else None
        failed = dict.fromkeys(entry.rcpt_tos, reason)
        if isinstance(error, DeliveryError) and error.recipients:
            failed = {addr: f"{code} {text}" for addr, (code, text) in error.recipients.items()}
        report = await self._report(entry, data, failed, reason, hint)
        report_id = await self.spool.mark_dead(entry.id, reply=reason, report=report)
        self.results["dead"] += 1
        _log(
            logging.ERROR,
            entry,
            "dead",
            reason + (f" (hint: {hint})" if hint else ""),
            upstream_reply=reason,
            attempts=entry.attempts + 1,
        )
        self._bounced(entry, report_id)

    async def _original(self, data: Body) -> bytes:
        """``_report_original`` off the loop; a body that cannot be read gives a report without it."""
        try:
            return await asyncio.to_thread(_report_original, data)
        except (OSError, ValueError):  # ValueError: the file was closed
            return b""

    async def _report(
        self, entry: SpooledMessage, data: Body, failed: dict[str, str], reason: str, hint: str | None
    ) -> Message | None:
        """The non-delivery report on ``entry`` (None: reports are off, or it gets none). The spool
        queues it in the transaction that records the failure, so a crash between the two cannot
        lose it (RFC 5321 section 6.1: a failure the relay accepted responsibility for is
        reported)."""
        if not (self.config.bounce and should_bounce(entry)):
            return None
        original = await self._original(data)  # before mark_* drops the body
        # In a thread: the report names this host, and socket.getfqdn() is a DNS look-up that can
        # take the resolver's whole timeout, which would freeze every session of the relay.
        report = await asyncio.to_thread(
            functools.partial(
                build_report,
                entry,
                original,
                failed=failed,
                reason=reason,
                hint=hint,
                upstream_host=self.config.upstream_host,
            )
        )
        return Message(BOUNCE_USER, entry.mailbox, entry.mailbox, [entry.mail_from], report)

    def _bounced(self, entry: SpooledMessage, report_id: str | None) -> None:
        """Count and log a report the spool queued (none: nothing to say)."""
        if report_id is None:
            return
        self.results["bounced"] += 1
        _log(logging.INFO, entry, "bounced", f"non-delivery report {report_id} queued", report_id=report_id)
        self.on_change()
