"""SMTP clients that guess and log in, for the failed-login limit tests (one listener or workers)."""

from __future__ import annotations

import base64
import smtplib
import time
from typing import Any

from smtp_oauth.relay.listener.server import ListenerTuning


def plain(user: str, password: str) -> str:
    """The AUTH PLAIN argument for ``user`` and ``password``."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def user_under_attack_tuning(**overrides: Any) -> ListenerTuning:
    """Quick failure delays, a user under attack after 3 failures, one new address a minute."""
    fast: dict[str, Any] = {
        "auth_failure_delay": 0.01,
        "auth_failure_delay_max": 0.01,
        "auth_user_failure_limit": 3,
        "auth_user_attempt_interval": 60.0,
        "greet_pause": 0.0,
        "shutdown_grace": 1.0,
    }
    return ListenerTuning(**(fast | overrides))


def guess_for(address: tuple[str, int], seconds: float, *, wrong: str, source: str = "127.0.0.1") -> int:
    """AUTH PLAIN ``wrong`` until ``seconds`` are over; how many were checked (535, not 454) in time."""
    answered = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with smtplib.SMTP(*address, timeout=30, source_address=(source, 0)) as client:
            client.ehlo("attacker")
            for _ in range(2):  # the session's failure limit hangs up after the third
                if time.monotonic() >= deadline:
                    break
                code, _ = client.docmd("AUTH", f"PLAIN {wrong}")
                answered += code == 535 and time.monotonic() < deadline
    return answered


def guesses_until_closed(address: tuple[str, int], *, wrong: str, source: str) -> list[int]:
    """AUTH PLAIN ``wrong`` on one connection until the relay closes it (10 at most): the codes."""
    codes: list[int] = []
    with smtplib.SMTP(*address, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("attacker")
        try:
            while len(codes) < 10:
                codes.append(client.docmd("AUTH", f"PLAIN {wrong}")[0])
        except smtplib.SMTPServerDisconnected:
            pass
    return codes


def login(address: tuple[str, int], *, right: str, source: str) -> tuple[int, float]:
    """One AUTH PLAIN ``right`` from ``source``: its reply code and how long the session took."""
    started = time.monotonic()
    with smtplib.SMTP(*address, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("printer")
        code, _ = client.docmd("AUTH", f"PLAIN {right}")
    return code, time.monotonic() - started
