"""Diagnostics: ``smtp-oauth check`` as a library, for the command and for monitoring.

:func:`run_checks` walks config -> token -> claims -> TCP -> TLS -> AUTH (-> test message) and
returns a :class:`CheckReport` whose steps say pass/fail, what was found and the exact fix.
:func:`check_claims` is the pure part: does a token's claims fit Exchange Online SMTP?
"""

from smtp_oauth.diagnostics.claims_check import (
    check_claims,
    exchange_audiences,
    scopes_problem,
    signed_in_user,
)
from smtp_oauth.diagnostics.report import CheckReport, Status, StepResult
from smtp_oauth.diagnostics.steps import STEPS, run_checks

__all__ = [
    "STEPS",
    "CheckReport",
    "Status",
    "StepResult",
    "check_claims",
    "exchange_audiences",
    "run_checks",
    "scopes_problem",
    "signed_in_user",
]
