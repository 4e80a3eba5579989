"""The relay's delivery: one pool per mailbox, pacing, backoff, outcomes and bounces."""
