"""The relay's durable queue: the spool protocols (``base.py``) and their backends.

``open_spool`` chooses the backend from the settings: SQLite in ``relay.spool_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtp_oauth.relay.spool.base import Spool
    from smtp_oauth.settings.models import RelaySettings

__all__ = ["open_spool"]


async def open_spool(
    relay: RelaySettings,
    *,
    spool_dir: Path,
    deliver: bool = False,
    create: bool = True,
) -> Spool:
    """Open the queue ``relay`` names.

    ``deliver=True`` is the relay itself: SQLite takes the spool's lock (one relay per spool
    directory). Without it (``smtp-oauth queue``) the queue is only looked at and changed.
    ``create=False``: a SQLite spool that does not exist raises FileNotFoundError instead of being
    made. ``spool_dir`` is the resolved ``relay.spool_dir``.
    """
    from smtp_oauth.relay.spool.sqlite import SqliteSpool

    return await SqliteSpool.open(spool_dir, exclusive=deliver, create=create)
