"""The relay on every core: accept processes (``relay.workers``) in front of one delivering process.

``pool.WorkerPool`` (in the main process) binds nothing itself: it is handed the listening sockets
``RelayListener.bind_sockets`` made and starts ``relay.workers`` children (``child.py``) that all
accept on them, each with its own event loop, its own SQLite connection and group commit on the
one spool. The main process keeps what must have a single owner: delivery (one owner per mailbox,
so Exchange's per-mailbox session and rate limits hold exactly), the submission socket and its
queue verbs, ``/metrics``, signals and reloads. ``frames.py`` is what they say to each other.
"""
