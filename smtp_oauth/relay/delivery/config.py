"""Delivery's configuration, in a leaf module that the manager and the pools both import.

(The pools need it and the manager builds them; with the config in the manager the two modules
imported each other.) What delivery sends through is the library's seam, ``smtp_oauth.transport``:
the relay service hands in a ``TransportFactory`` built with ``create_transport``, and delivery
never imports a transport implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtp_oauth.relay.delivery.backoff import BACKOFF_BASE, BACKOFF_CAP
from smtp_oauth.relay.delivery.upstream import PROBE_FIRST, PROBE_MAX
from smtp_oauth.settings.models import RelaySettings

__all__ = ["DeliveryConfig"]


@dataclass(frozen=True)
class DeliveryConfig:
    """Delivery's knobs: the public ones come from ``[relay]``, the rest are internal tuning."""

    upstream_connections: int = 3
    messages_per_minute: int = 30
    max_queue_age: float = 5 * 86400.0
    retention: float = 7 * 86400.0
    bounce: bool = False
    upstream_host: str | None = None  # named in reports' Remote-MTA
    backoff_base: float = BACKOFF_BASE  # tests shrink these to retry in a fraction of a second
    backoff_cap: float = BACKOFF_CAP
    poll_interval: float = 2.0  # notice work queued by other processes (`smtp-oauth queue retry`)
    # relay.upstream_idle_timeout: a session kept open is one of the mailbox's 3 that its other
    # senders (send-mail, the library) cannot have.
    idle_timeout: float = 5.0
    probe_first: float = PROBE_FIRST  # a suspended mailbox's first probe, then doubling...
    probe_max: float = PROBE_MAX  # ...up to this (the interface promises at most 30 s)

    @classmethod
    def from_relay(
        cls, relay: RelaySettings, *, upstream_host: str | None = None, **tuning: float
    ) -> DeliveryConfig:
        """The config for ``[relay]``; ``tuning`` overrides the internal knobs (tests)."""
        public: dict[str, float] = {"idle_timeout": relay.upstream_idle_timeout.total_seconds()}
        return cls(
            upstream_connections=relay.upstream_connections,
            messages_per_minute=relay.messages_per_minute,
            max_queue_age=relay.max_queue_age.total_seconds(),
            retention=relay.retention.total_seconds(),
            bounce=relay.bounce,
            upstream_host=upstream_host,
            **{**public, **tuning},
        )
