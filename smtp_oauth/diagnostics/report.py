"""The outcome of ``smtp-oauth check``: one result per step, and the report they make together."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smtp_oauth.errors import FailureKind

__all__ = ["CheckReport", "Status", "StepResult"]


class Status(enum.StrEnum):
    """PASS and WARN let the check succeed; FAIL ends it; SKIP marks the steps after a failure."""

    PASS = "pass"  # noqa: S105 - a status name, not a password
    WARN = "warn"  # works, but something deserves a look (e.g. signed in as another user)
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class StepResult:
    """One step: what was checked, what was found, and for a failure the exact fix."""

    name: str  # stable identifier for monitoring: config, token, claims, connect, tls, auth, send
    title: str  # for people: "access token", "STARTTLS and certificate", ...
    status: Status
    detail: str  # what was found; never a secret or a token
    fix: str | None = None  # what to do, filled in with the user's ids where known
    failure: FailureKind | None = (
        None  # what sort of failure (None unless FAIL); the CLI maps it to an exit status
    )
    facts: dict[str, Any] = field(default_factory=dict)  # machine-readable findings (ids, expiry)

    @property
    def passed(self) -> bool:
        return self.status in {Status.PASS, Status.WARN}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
            "failure": self.failure.value if self.failure else None,
            "facts": self.facts,
        }


@dataclass
class CheckReport:
    """All steps in order. ``failure`` is None only when no step failed."""

    steps: list[StepResult] = field(default_factory=list)
    identity: dict[str, str] = field(default_factory=dict)  # ids checked (never secrets)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return all(step.status is not Status.FAIL for step in self.steps)

    @property
    def first_failure(self) -> StepResult | None:
        return next((step for step in self.steps if step.status is Status.FAIL), None)

    @property
    def failure(self) -> FailureKind | None:
        """What sort of failure ended the check (a failed step that names none: a bug of ours)."""
        step = self.first_failure
        if step is None:
            return None
        return step.failure or FailureKind.SOFTWARE

    def to_dict(self) -> dict[str, Any]:
        """One JSON-serializable document for monitoring."""
        return {
            "ok": self.ok,
            "failure": self.failure.value if self.failure else None,
            "checked_at": self.checked_at.isoformat(timespec="seconds"),
            "identity": self.identity,
            "steps": [step.to_dict() for step in self.steps],
        }
