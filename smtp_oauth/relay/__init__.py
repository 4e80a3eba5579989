"""The store-and-forward relay: legacy senders in, Exchange Online (XOAUTH2) out.

How the modules fit together::

    listener/ server, session, sasl    the SMTP listener (aiosmtpd): AUTH, sender policy, limits
    listener/ handler, incoming        its hooks and replies; DATA streamed to spool_dir/incoming/
    policy.py / passwords.py           local users, allowed senders, allow_networks; scrypt hashes
            | store(spool.base.Message) -> queue id, after a durable commit
            v
    spool/ base.py (the protocols), open_spool()  the queue: queued -> sending -> delivered | deferred | dead
           sqlite.py (one relay) | postgres.py (several relays, mailbox leases)
            ^ claim_due / open_body / mark_*
            |
    delivery/ manager, pool            per-mailbox workers: <= 3 transports, pacing, retries
    delivery/ upstream, config         a mailbox's upstream health (432, suspension); delivery's knobs
    delivery/ backoff, bounce          retry timing; RFC 3464 non-delivery reports
    metrics.py                         /healthz and Prometheus /metrics
    service.py                         wires it all (create_transport per worker), signals: run_relay()

Nothing is imported here, so ``smtp-oauth queue`` can load the spool without aiosmtpd or MSAL.
"""
