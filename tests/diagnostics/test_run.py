"""diagnostics.run_checks as a library (for monitoring): step order, callbacks, skips and exit codes."""

from __future__ import annotations

import json

from smtp_oauth.diagnostics import STEPS, Status, StepResult, run_checks
from smtp_oauth.errors import ConfigurationError, FailureKind
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.models import Settings


async def test_healthy_sandbox_reports_every_step_in_order(smtp_oauth_sandbox: Sandbox) -> None:
    """Given Settings, every step passes in the documented order and on_step sees each as it ends."""
    seen: list[StepResult] = []
    report = await run_checks(smtp_oauth_sandbox.settings(), on_step=seen.append)
    assert report.ok
    assert report.failure is None
    assert [step.name for step in report.steps] == ["config", "token", "claims", "connect", "tls", "auth"]
    assert seen == report.steps
    assert {step.status for step in report.steps} == {Status.PASS}


async def test_report_is_json_serializable(smtp_oauth_sandbox: Sandbox) -> None:
    """to_dict() round-trips through json and names the ids that were checked."""
    report = await run_checks(smtp_oauth_sandbox.settings(), send_test="ops@example.org")
    document = json.loads(json.dumps(report.to_dict()))
    assert document["ok"] is True
    assert document["identity"]["mailbox"] == smtp_oauth_sandbox.tenant.mailbox
    assert document["steps"][-1]["name"] == "send"


async def test_configuration_error_from_a_loader_is_the_first_failure() -> None:
    """A loader raising ConfigurationError -> config FAIL (exit 78), then every other step SKIP."""

    def broken() -> Settings:
        raise ConfigurationError("invalid configuration (x.toml):\n  smtp.username: required", hint="Fix it.")

    report = await run_checks(broken, send_test="ops@example.org")
    assert not report.ok
    assert report.failure is FailureKind.CONFIG
    assert report.first_failure is not None
    assert report.first_failure.name == "config"
    assert "smtp.username" in report.first_failure.detail
    assert report.first_failure.fix == "Fix it."
    assert [step.status for step in report.steps[1:]] == [Status.SKIP] * (len(STEPS) - 1)


async def test_auth_failure_fix_names_the_service_principal_from_the_token(
    smtp_oauth_sandbox: Sandbox,
) -> None:
    """An app-only 5.7.3: the fix is filled in with the token's oid as the service principal id."""
    smtp_oauth_sandbox.inject("AUTH", "535 5.7.3 Authentication unsuccessful", times=2)
    report = await run_checks(smtp_oauth_sandbox.settings())
    failure = report.first_failure
    assert failure is not None
    assert failure.name == "auth"
    assert report.failure is FailureKind.DENIED
    sp = smtp_oauth_sandbox.tenant.app.service_principal_id
    assert failure.fix is not None
    assert f"-ObjectId {sp}" in failure.fix
    assert f"-User {sp}" in failure.fix
