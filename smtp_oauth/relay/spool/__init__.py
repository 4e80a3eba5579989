"""The relay's durable queue: the spool protocols (``base.py``) and their backends.

``open_spool`` chooses the backend from the settings: ``relay.spool_url`` (PostgreSQL, a queue
shared by several relays; psycopg is imported only then) or else SQLite in ``relay.spool_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smtp_oauth.errors import ConfigurationError

if TYPE_CHECKING:
    from smtp_oauth.relay.spool.base import Spool
    from smtp_oauth.relay.spool.postgres import PostgresTuning
    from smtp_oauth.settings.models import RelaySettings

__all__ = ["open_spool"]


async def open_spool(
    relay: RelaySettings,
    *,
    spool_dir: Path,
    deliver: bool = False,
    create: bool = True,
    tuning: PostgresTuning | None = None,
) -> Spool:
    """Open the queue ``relay`` names.

    ``deliver=True`` is the relay itself: SQLite takes the spool's lock (one relay per spool
    directory); PostgreSQL joins the relays sharing the queue and leases mailboxes (``tuning``:
    its timings, for tests). Without it (``smtp-oauth queue``) the queue is only looked at and changed.
    ``create=False``: a SQLite spool that does not exist raises FileNotFoundError instead of being
    made. ``spool_dir`` is the resolved ``relay.spool_dir`` (with PostgreSQL only bodies being
    received or read are kept there, briefly).
    """
    if relay.spool_url is not None:
        try:
            from smtp_oauth.relay.spool.postgres import PostgresSpool
        except ImportError as exc:
            raise ConfigurationError(
                "relay.spool_url names a PostgreSQL queue, but psycopg is not installed",
                key="relay.spool_url",
                hint="Install the PostgreSQL extra: pip install 'smtp-oauth[postgresql]'.",
            ) from exc
        return await PostgresSpool.open(
            relay.spool_url.get_secret_value(),
            staging_dir=spool_dir / "incoming",
            deliver=deliver,
            tuning=tuning,
        )
    from smtp_oauth.relay.spool.sqlite import SqliteSpool

    return await SqliteSpool.open(spool_dir, exclusive=deliver, create=create)
