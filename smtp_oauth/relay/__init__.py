"""The store-and-forward relay: legacy senders in, Exchange Online (XOAUTH2) out.

How the modules fit together::

    server.py / session.py / sasl.py   the SMTP listener (aiosmtpd): AUTH, sender policy, limits
    handler.py / incoming.py           its hooks and replies; DATA streamed to spool_dir/incoming/
    policy.py / passwords.py           local users, allowed senders, allow_networks; scrypt hashes
            | store(spool.base.Message) -> queue id, after a durable commit
            v
    spool/ base.py (the protocols) / sqlite.py   the queue: queued -> sending -> delivered | deferred | dead
            ^ claim_due / open_body / mark_*
            |
    delivery.py / mailbox_worker.py    per-mailbox workers: <= 3 sessions, pacing, retries
    backoff.py / bounce.py             retry timing; RFC 3464 non-delivery reports
    metrics.py                         /healthz and Prometheus /metrics
    service.py                         wires it all, signals (SIGTERM, SIGINT, SIGHUP): run_relay()

Nothing is imported here, so ``smtp-oauth queue`` can load the spool without aiosmtpd or MSAL.
"""
