"""A relay process for the shared-queue tests: ``smtp-oauth relay`` with shortened internal timings.

``python -m tests.relay.shared_relay_child CONFIG SPOOL_DIR`` runs ``RelayService`` on CONFIG
(``relay.spool_dir`` replaced by SPOOL_DIR) with leases of 4 s renewed every 0.5 s and retries
after a fraction of a second, and prints ``relay listening on 127.0.0.1:PORT`` once it accepts.
SIGTERM stops it gracefully, as it does the real command.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from smtp_oauth.relay.service import RelayService
from smtp_oauth.relay.spool.postgres import PostgresTuning
from smtp_oauth.settings.loading import load_settings

LEASES = PostgresTuning(lease_ttl=4.0, lease_renew=0.5, handover_delay=0.2, connect_timeout=2.0)
DELIVERY = {"backoff_base": 0.2, "backoff_cap": 0.5, "poll_interval": 0.5}


def main() -> None:
    config, spool_dir = Path(sys.argv[1]), Path(sys.argv[2])
    settings = load_settings(config)
    settings = settings.model_copy(
        update={"relay": settings.relay.model_copy(update={"spool_dir": spool_dir})}
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = RelayService(settings, delivery_tuning=DELIVERY, spool_tuning=LEASES)

    def ready(addresses: list[tuple[str, int]]) -> None:
        print(f"relay listening on 127.0.0.1:{addresses[0][1]}", flush=True)

    asyncio.run(service.run(ready=ready))


if __name__ == "__main__":
    main()
