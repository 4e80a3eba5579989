"""Delivery: takes due messages from the spool and sends them upstream, one pool per mailbox.

Per upstream mailbox at most ``upstream_connections`` sessions (Exchange Online allows 3
concurrent submissions per mailbox:
https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements),
each reused for many messages and closed after ``idle_timeout``; sends are paced to
``messages_per_minute``; mailboxes never wait for each other. Outcomes:

- accepted (some recipients may be refused): ``delivered``; recipients refused with a 5xx get a
  report, those refused with a 4xx keep the entry ``deferred`` for them alone.
- 5xx (``PermanentDeliveryError``): ``dead`` at once, with a report when ``bounce`` is on.
- 4xx, network, token endpoint down: ``deferred`` with exponential backoff (``backoff.py``) until
  ``max_queue_age``, then ``dead``.
- 535 after the Mailer's retry with a fresh token (``AuthenticationError``), or a token refused by
  Entra ID: ``deferred`` too, logged at ERROR with the hint. These are the operator's problem (a
  consent, a secret, SMTP AUTH disabled); once fixed the queue drains, so mail is not lost to a
  configuration slip. Only ``max_queue_age`` turns them into ``dead``.

Nothing here imports a transport: the service hands in a ``TransportFactory`` (mailbox ->
``Transport``, ``smtp_oauth.transport``), so delivery sends through what ``create_transport`` makes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from smtp_oauth.relay.delivery.backoff import Pacer
from smtp_oauth.relay.delivery.config import DeliveryConfig
from smtp_oauth.relay.delivery.pool import MailboxPool
from smtp_oauth.relay.delivery.upstream import DeliverySpool
from smtp_oauth.relay.eventloop import wait_event

if TYPE_CHECKING:
    from smtp_oauth.transport import TransportFactory

__all__ = ["DeliveryConfig", "DeliveryManager"]

logger = logging.getLogger("smtp_oauth.relay")
PRUNE_INTERVAL = 3600.0


class DeliveryManager:
    """Watches the spool and keeps one ``MailboxPool`` per mailbox with due messages busy."""

    def __init__(self, spool: DeliverySpool, transports: TransportFactory, config: DeliveryConfig) -> None:
        self.spool = spool
        self.transports = transports
        self.config = config
        self.results: Counter[str] = Counter()  # delivered / deferred / dead / bounced, for metrics
        self._pools: dict[str, MailboxPool] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_prune = 0.0
        spool.watch(self.wake)  # work queued by another process (a relay sharing the queue)

    def wake(self) -> None:
        """Something changed in the spool (a new message, a deferral): look again now."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until ``stop``: wake the pools whose mailboxes have due messages.

        Deferred messages are tried at once at start-up: most were deferred because the upstream
        was failing, and a restart is often what fixed it. If it still fails, each mailbox is
        suspended after its first failure (``upstream.py``), so this costs one attempt, not one
        per message.
        """
        try:
            retried = await self.spool.retry()
        except Exception:  # the spool failed (disk full?): the normal schedule will do
            logger.exception("cannot make the deferred messages due at start-up")
        else:
            if retried:
                logger.info("trying %d deferred message(s) now, at start-up", retried)
        while not self._stopping:
            self._wake.clear()
            try:
                timeout = await self._dispatch()
            except Exception:  # the spool failed (locked, disk full): the relay keeps running
                logger.exception("cannot read the queue; trying again in %.0f s", self.config.poll_interval)
                timeout = self.config.poll_interval
            await wait_event(self._wake, max(timeout, 0.01))

    async def _dispatch(self) -> float:
        """Prune when due and wake the pools with due messages; seconds until the next due one."""
        now = time.time()
        if now - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = now
            pruned = await self.spool.prune(older_than=now - self.config.retention)
            if pruned:
                logger.info("pruned %d delivered messages", pruned, extra={"event": "pruned"})
        timeout = self.config.poll_interval
        for mailbox, due_at in (await self.spool.pending_by_mailbox()).items():
            if due_at <= now:
                self._pool(mailbox).wake()
            else:
                timeout = min(timeout, due_at - now)
        return timeout

    def _pool(self, mailbox: str) -> MailboxPool:
        if mailbox not in self._pools:
            self._pools[mailbox] = MailboxPool(
                mailbox,
                spool=self.spool,
                transports=self.transports,
                config=self.config,
                pacer=Pacer(self.config.messages_per_minute),
                results=self.results,
                on_change=self.wake,
            )
        return self._pools[mailbox]

    async def stop(self, *, grace: float) -> None:
        """Take no new messages; let sends in progress finish for ``grace`` seconds, then cancel
        them (they go back to ``queued``); close the upstream sessions."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*(pool.stop(grace=grace) for pool in self._pools.values()))
