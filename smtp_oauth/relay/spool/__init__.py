"""The relay's durable queue: the spool protocols and their backends."""
