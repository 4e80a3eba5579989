"""The relay as a whole: listener -> spool -> delivery, plus metrics and signals.

Start-up: check the listener's configuration (never an open relay), open the spool
(``open_spool``), put messages a killed relay left in ``sending`` back in the queue, listen,
deliver. SIGTERM/SIGINT stop it within ``relay.shutdown_timeout``: no new connections, sessions
and sends in progress finish or (sends) go back to the queue. SIGHUP re-reads the configuration
file and hands users and sender rules to the listener; open connections are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import sqlite3
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from smtp_oauth.errors import ConfigurationError, StorageFullError
from smtp_oauth.relay.delivery.manager import DeliveryConfig, DeliveryManager
from smtp_oauth.relay.eventloop import cancel_and_wait
from smtp_oauth.relay.listener.server import ListenerTuning, Message, RelayListener, log_queued
from smtp_oauth.relay.listener.submission import QueueEntry, SubmissionListener
from smtp_oauth.relay.metrics import MetricsServer, TokenWatch, render_metrics
from smtp_oauth.relay.profiles import MailboxRoutes
from smtp_oauth.relay.spool import open_spool
from smtp_oauth.relay.spool.base import SpoolError
from smtp_oauth.relay.workers.authority import LimitsAuthority
from smtp_oauth.relay.workers.frames import Queued, Setup
from smtp_oauth.relay.workers.pool import WorkerPool
from smtp_oauth.relay.workers.sockets import reuse_port_available
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings

if TYPE_CHECKING:
    from smtp_oauth.relay.spool.base import Spool
    from smtp_oauth.relay.spool.postgres import PostgresTuning
    from smtp_oauth.tokens.types import TokenProvider
    from smtp_oauth.transport import Transport, TransportFactory

__all__ = ["RelayService", "run_relay", "upstream_transports"]

log = logging.getLogger("smtp_oauth.relay")
Ready = Callable[[list[tuple[str, int]]], None]
LISTENER_SHARE = 0.8  # of shutdown_timeout for sessions and sends to finish; the rest is for closing


def upstream_transports(
    settings: Settings,
    *,
    watch: Callable[[TokenProvider], TokenProvider] | None = None,
    routes: MailboxRoutes | None = None,
) -> TransportFactory:
    """Delivery's transports: one per worker (``create_transport``); the workers of one identity
    share one token provider (one token) and, for Microsoft Graph, one client (Graph's
    limits are per app: ``shared_transports``). A mailbox of a relay user's profile is sent with that
    profile's identity and transport (``routes``).

    ``watch`` wraps the top-level identity's provider (``TokenWatch``: the token expiry in /metrics).
    """
    from smtp_oauth.tokens.provider import create_token_provider
    from smtp_oauth.transport import shared_transports

    routes = routes or MailboxRoutes.from_settings(settings)
    provider: TokenProvider = create_token_provider(settings)
    if watch is not None:
        provider = watch(provider)
    factories: dict[str | None, TransportFactory] = {
        None: shared_transports(settings, token_provider=provider)
    }
    for name, profile_settings in routes.profiles.items():
        factories[name] = shared_transports(
            profile_settings, token_provider=create_token_provider(profile_settings)
        )

    def transport_for(mailbox: str) -> Transport:
        return factories[routes.profile_of(mailbox)](mailbox)

    return transport_for


class RelayService:
    """One running relay. ``run()`` returns after ``stop()`` (or a signal) once shut down."""

    def __init__(
        self,
        settings: Settings,
        *,
        transports: TransportFactory | None = None,
        delivery_tuning: Mapping[str, float] | None = None,
        listener_tuning: ListenerTuning | None = None,
        spool_tuning: PostgresTuning | None = None,
    ) -> None:
        self.settings = settings
        relay = settings.relay
        self._routes = MailboxRoutes.from_settings(settings)  # ConfigurationError for a bad profile
        self._grace = relay.shutdown_timeout.total_seconds() * LISTENER_SHARE
        self._listener_tuning = listener_tuning or ListenerTuning(shutdown_grace=self._grace)
        self.listener = RelayListener(  # raises ConfigurationError for an open relay, bad TLS files
            relay,
            default_mailbox=settings.smtp.username,
            profile_mailboxes=self._routes.default_mailboxes(),
            store=self._store,
            tuning=self._listener_tuning,
            # Big bodies are written here as they arrive, and the spool takes the file (its staging_dir).
            incoming_dir=settings.spool_path / "incoming",
        )
        self.submission = SubmissionListener(
            relay.submission_socket_path,
            shared=self.listener,
            queue=self,
            senders=self._local_senders,
            max_message_size=lambda: self.settings.relay.max_message_size,
            max_connections=lambda: self.settings.relay.max_connections,
            tuning=listener_tuning or ListenerTuning(shutdown_grace=self._grace),
            required=relay.submission_socket is not None,
        )
        self._transports = transports
        self._config = DeliveryConfig.from_relay(
            relay, upstream_host=settings.smtp_host, **dict(delivery_tuning or {})
        )
        self.spool: Spool | None = None
        self._spool_tuning = spool_tuning
        self.delivery: DeliveryManager | None = None
        self.workers: WorkerPool | None = None  # relay.workers > 1: the accept processes
        self._reuse_port = False  # the workers listen on SO_REUSEPORT sockets of their own
        self.metrics_server: MetricsServer | None = None
        self.accepted = 0
        self.tokens: TokenWatch | None = None  # the upstream sessions' token provider, once made
        self._stop = asyncio.Event()
        self._listening = False

    def _local_senders(self, address: str) -> tuple[str, frozenset[str]]:
        """The submission socket's: whose mailbox a local sender ``address`` sends as (its profile)."""
        chosen = self._routes.local_sender(address)
        return chosen.mailbox, chosen.senders

    def _watch_tokens(self, provider: TokenProvider) -> TokenProvider:
        self.tokens = TokenWatch(provider)
        return self.tokens

    def stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, ready: Ready | None = None) -> None:
        _raise_descriptor_limit()
        spool = await self._open_spool()
        self.spool = spool
        metrics: MetricsServer | None = None
        delivery_task: asyncio.Task[None] | None = None
        try:
            recovered = await spool.recover()
            if recovered:
                log.warning(
                    "%d messages were being sent when the relay stopped; sending them again", recovered
                )
            transports = self._transports or upstream_transports(
                self.settings, watch=self._watch_tokens, routes=self._routes
            )
            self.delivery = DeliveryManager(spool, transports, self._config)
            await self._start_listening()
            await self.submission.start()
            self._listening = True
            if self.settings.relay.metrics_listen:
                metrics = MetricsServer(
                    self.settings.relay.metrics_listen, health=self.healthy, render=self.metrics
                )
                await metrics.start()
                self.metrics_server = metrics
            delivery_task = asyncio.create_task(self.delivery.run(), name="delivery")
            self._install_signals()
            if ready is not None:
                ready(self.listener.addresses)
            stop_task = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({stop_task, delivery_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if delivery_task in done:
                delivery_task.result()  # raises what broke delivery; the relay exits non-zero
        finally:
            await self._shut_down(spool, delivery_task, metrics)

    async def _start_listening(self) -> None:
        """Accept here (relay.workers = 1), or bind and hand the sockets to the accept workers."""
        count = self.settings.relay.worker_count
        if count <= 1:
            await self.listener.start()
            return
        # One listening socket per worker where the system has SO_REUSEPORT (workers/sockets.py).
        self._reuse_port = reuse_port_available()
        sockets = await self.listener.bind_sockets(reuse_port=self._reuse_port)
        self.workers = WorkerPool(
            count,
            setup=self._worker_setup,
            sockets=sockets,
            queued=self._worker_queued,
            # The limits of all workers are counted here, in this process's listener (reloads included).
            authority=LimitsAuthority(
                self.listener.connection_limits, self.listener.login_guard, self.listener.client_bytes
            ),
        )
        await self.workers.start()
        log.info(
            "relay listening on %s (%d accept workers)",
            ", ".join(f"{h}:{p}" for h, p in self.listener.addresses),
            count,
        )

    def _worker_setup(self, index: int) -> Setup:
        settings = self.settings  # the current one: a worker restarted after a reload gets that
        return Setup(
            settings=settings,
            default_mailbox=settings.smtp.username,
            profile_mailboxes=self._routes.default_mailboxes(),
            spool_dir=settings.spool_path,
            incoming_dir=settings.spool_path / "incoming",
            tuning=self._listener_tuning,
            index=index,
            reuse_port=self._reuse_port,
        )

    def _worker_queued(self, queued: Queued) -> None:
        """A worker committed a message: count it, and tell delivery there is work."""
        self.accepted += 1
        if self.delivery is not None:
            self.delivery.wake()

    async def _open_spool(self) -> Spool:
        """The spool; a full disk is temporary (exit 75: systemd restarts the relay), not a config error."""
        try:
            return await open_spool(
                self.settings.relay,
                spool_dir=self.settings.spool_path,
                deliver=True,
                tuning=self._spool_tuning,
            )
        except ConfigurationError as error:
            if not _disk_full(error.__cause__):
                raise
            raise StorageFullError(
                f"cannot open the relay spool in {self.settings.spool_path}: its file system is full",
                hint="Free space there (or grow it); the relay starts again by itself under systemd. "
                "Nothing queued is lost.",
            ) from error

    async def _shut_down(
        self, spool: Spool, delivery_task: asyncio.Task[None] | None, metrics: MetricsServer | None
    ) -> None:
        log.info("relay stopping")
        self._remove_signals()
        self._listening = False
        stopping = [self.listener.stop(), self.submission.stop()]
        if self.workers is not None:
            stopping.append(self.workers.stop(grace=self._grace))
        if self.delivery is not None:
            stopping.append(self.delivery.stop(grace=self._grace))
        await asyncio.gather(*stopping, return_exceptions=True)
        if delivery_task is not None:
            await cancel_and_wait([delivery_task])
        if metrics is not None:
            await metrics.stop()
        await spool.close()
        log.info("relay stopped")

    async def _store(self, message: Message) -> str:
        """The listener's ``store``: commit durably, log, and tell delivery there is work."""
        spool, delivery = self._running()
        queue_id = await spool.enqueue(message)
        self.accepted += 1
        log_queued(queue_id, message)
        delivery.wake()
        return queue_id

    # -- the submission socket's queue verbs (QueueControl) -------------------------------------

    async def waiting(self) -> list[QueueEntry]:
        """Every message not yet delivered, oldest first (``sendmail -bp``)."""
        spool, _ = self._running()
        entries = await spool.list(["queued", "sending", "deferred", "dead"])
        return [
            QueueEntry(
                id=entry.id,
                state=entry.state,
                size=entry.size,
                created_at=entry.created_at,
                mail_from=entry.mail_from,
                rcpt_tos=entry.rcpt_tos,
                attempts=entry.attempts,
                next_attempt_at=entry.next_attempt_at,
                last_reply=entry.last_reply,
                local_user=entry.local_user,
            )
            for entry in entries
        ]

    async def retry_deferred(self) -> int:
        """Make every deferred message due now and tell delivery (``sendmail -q``)."""
        spool, delivery = self._running()
        count = await spool.retry(None)
        delivery.wake()
        return count

    def _running(self) -> tuple[Spool, DeliveryManager]:
        if self.spool is None or self.delivery is None:  # the listener starts after both
            raise RuntimeError("the relay is not running")
        return self.spool, self.delivery

    # -- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            log.debug("signal handlers not installed (not in the main thread)")

    def _remove_signals(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.reload())
        task.add_done_callback(_log_reload_failure)

    def _check_same_routes(self, routes: MailboxRoutes) -> None:
        # The upstream identities are made at start: a user moved to another profile would
        # otherwise be delivered with the old one's identity.
        if routes.routes != self._routes.routes or set(routes.profiles) != set(self._routes.profiles):
            raise ConfigurationError(
                "the profiles of relay.users changed; that takes a restart of the relay",
                key="relay.users",
            )

    async def reload(self) -> bool:
        """Re-read the configuration file; new users and sender rules for new sessions."""
        try:
            fresh = await asyncio.to_thread(load_settings, self.settings.source_file)
            routes = MailboxRoutes.from_settings(fresh)
            self._check_same_routes(routes)
            self.listener.reload(fresh.relay)
        except ConfigurationError as error:
            log.error("reload failed, keeping the running configuration: %s", error)  # noqa: TRY400
            return False
        self.settings = fresh
        if self.workers is not None:
            self.workers.reload(fresh.relay)
        self._routes = routes  # the same mailboxes and profiles; their senders may have changed
        return True

    # -- metrics ------------------------------------------------------------------------------

    async def healthy(self) -> bool:
        """Listening, able to take mail (relay.min_free_space), and the spool answers a query."""
        if not self._listening or self.spool is None:
            return False
        if self.workers is not None and not self.workers.alive:
            return False
        if await self.listener.storage_low():
            return False
        try:
            await self.spool.counts_by_state()
        except Exception:  # any spool failure means unhealthy, whatever its type
            log.exception("health check: the spool does not answer")
            return False
        return True

    async def metrics(self) -> str:
        spool, delivery = self._running()
        counts = await spool.counts_by_state()
        figures = await spool.figures()
        # The spool has just answered, which is all healthy() would query: up needs no second query.
        return render_metrics(
            queue={str(state): n for state, n in counts.items()},
            deliveries=delivery.results,
            accepted=self.accepted,
            up=self._listening,
            token_expires_at=self.tokens.expires_at if self.tokens is not None else None,
            spool=figures,
            workers=(self.workers.alive, self.workers.restarts) if self.workers is not None else None,
        )


async def run_relay(
    settings: Settings,
    *,
    ready: Ready | None = None,
    transports: TransportFactory | None = None,
    delivery_tuning: Mapping[str, float] | None = None,
) -> None:
    """Run the relay until SIGTERM/SIGINT. ``ready`` gets the listening addresses once accepting.

    ``transports`` (default: ``create_transport`` per mailbox) and ``delivery_tuning`` (e.g.
    ``{"backoff_base": 0.1}``) exist for tests.
    """
    await RelayService(settings, transports=transports, delivery_tuning=delivery_tuning).run(ready=ready)


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (what the spool failed with, or what that was caused by) means the disk or
    a quota is full."""
    if isinstance(error, SpoolError):
        return _disk_full(error.__cause__)
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(error)
    return isinstance(error, OSError) and error.errno in {errno.ENOSPC, errno.EDQUOT}


def _raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one: the default 1024 is what a connection flood
    exhausts (the relay's own limits, relay.max_connections, are what should refuse first)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _log_reload_failure(task: asyncio.Task[bool]) -> None:
    """reload() logs configuration errors itself; anything else (a bug) must not vanish silently."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("reload failed unexpectedly, keeping the running configuration", exc_info=error)
