"""``check`` as a library: config -> token -> claims -> TCP -> TLS -> AUTH -> optional test message.

With ``transport = "graph"``: config -> Graph token -> claims -> dry sendMail request -> large
messages -> optional test message (``graph_check.py``).

Each step returns a :class:`StepResult`; the first failure ends the run and the remaining steps
are reported as skipped, since each needs what the previous one proved. Usable from monitoring::

    report = await run_checks(settings)          # or run_checks(lambda: load_settings(path))
    if not report.ok: alert(report.first_failure.detail, report.first_failure.fix)

Hints come from the errors' own ``explain()`` (errors.py, the one place they are written),
filled in with the ids this check learns on the way (the service principal's object id from an
app-only token's ``oid`` claim).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from smtp_oauth.diagnostics.app_access import (
    PROPAGATION_NOTE,
    AccessModel,
    access_model,
    describe_model,
    setup_script,
)
from smtp_oauth.diagnostics.claims_check import check_claims, scopes_problem
from smtp_oauth.diagnostics.graph_check import (
    DRY_REQUEST_BODY,
    GRAPH_STEPS,
    check_graph_claims,
    large_message_step,
)
from smtp_oauth.diagnostics.probe import SmtpProbe
from smtp_oauth.diagnostics.report import CheckReport, Status, StepResult
from smtp_oauth.errors import ConfigurationError, SmtpOAuthError
from smtp_oauth.mail.addresses import make_message_id, message_date
from smtp_oauth.settings.models import Settings

if TYPE_CHECKING:
    from smtp_oauth.tokens.types import TokenProvider

__all__ = ["STEPS", "run_checks"]

# name -> title, in order; the titles of skipped steps come from here.
STEPS: dict[str, str] = {
    "config": "configuration",
    "token": "access token",
    "claims": "token claims",
    "connect": "TCP connection",
    "tls": "STARTTLS and certificate",
    "auth": "AUTH XOAUTH2",
    "send": "test message",
}

OnStep = Callable[[StepResult], None]
_TITLES = {**STEPS, **GRAPH_STEPS}


class _Run:
    """The state one check run accumulates: the report, and ids learnt for the hints."""

    def __init__(self, on_step: OnStep | None) -> None:
        self.report = CheckReport()
        self.context: dict[str, str] = {}
        self.model: AccessModel | None = None  # how an app-only token gets its mailbox
        self._on_step = on_step

    def add(self, step: StepResult) -> bool:
        self.report.steps.append(step)
        if self._on_step is not None:
            self._on_step(step)
        return step.passed

    def failed(self, name: str, error: SmtpOAuthError, *, cause: str | None = None) -> bool:
        """Record ``error`` as the step's failure; ``cause``, when known, comes before its hint."""
        error.context.update(self.context)
        fix = " ".join(part for part in (cause, error.explain()) if part) or None
        step = StepResult(name, _TITLES[name], Status.FAIL, str(error), fix, error.kind)
        return self.add(step)

    def skip_rest(self, wanted: list[str]) -> None:
        done = {step.name for step in self.report.steps}
        failed = self.report.first_failure
        reason = f"skipped: {failed.title} failed" if failed else "skipped"
        for name in wanted:
            if name not in done:
                self.add(StepResult(name, _TITLES[name], Status.SKIP, reason))


async def run_checks(
    settings: Settings | Callable[[], Settings],
    *,
    send_test: str | None = None,
    token_provider: TokenProvider | None = None,
    on_step: OnStep | None = None,
) -> CheckReport:
    """Run every step in order; ``on_step`` sees each result as soon as it is known.

    ``settings`` may be a loader, so a configuration error becomes the first step's failure.
    ``send_test``: also send a short test message to this address.
    """
    run = _Run(on_step)
    wanted = [*STEPS][:-1] + (["send"] if send_test else [])
    loaded = _config_step(run, settings)
    if loaded is not None and loaded.transport == "graph":
        wanted = [*GRAPH_STEPS][:-1] + (["send"] if send_test else [])
        run.report.identity = {
            "tenant_id": loaded.identity.tenant_id or "",
            "client_id": loaded.identity.client_id or "",
            "flow": loaded.identity.flow,
            "mailbox": loaded.graph_mailbox,
            "graph": loaded.graph_endpoint,
        }
        run.context.update({**loaded.hint_context(), "mailbox": loaded.graph_mailbox})
        await _graph_checks(run, loaded, send_test, token_provider)
    elif loaded is not None:
        run.report.identity = {
            "tenant_id": loaded.identity.tenant_id or "",
            "client_id": loaded.identity.client_id or "",
            "flow": loaded.identity.flow,
            "mailbox": loaded.smtp.username,
            "smtp": f"{loaded.smtp_host}:{loaded.smtp.port}",
        }
        run.context.update(loaded.hint_context())
        await _checks_after_config(run, loaded, send_test, token_provider)
    run.skip_rest(wanted)
    return run.report


def _config_step(run: _Run, settings: Settings | Callable[[], Settings]) -> Settings | None:
    try:
        loaded = settings if isinstance(settings, Settings) else settings()
    except ConfigurationError as error:
        run.failed("config", error)
        return None
    source = str(loaded.source_file) if loaded.source_file else "environment only"
    identity = loaded.identity
    if loaded.transport == "graph":
        run.add(
            StepResult(
                "config",
                STEPS["config"],
                Status.PASS,
                f"{source}: flow {identity.flow}, tenant {identity.tenant_id or '-'}, "
                f"client {identity.client_id or '(system-assigned)'}, transport graph: mailbox "
                f"{loaded.graph_mailbox} at {loaded.graph_endpoint}",
                facts={"file": loaded.source_file and str(loaded.source_file)},
            )
        )
        return loaded
    run.add(
        StepResult(
            "config",
            STEPS["config"],
            Status.PASS,
            f"{source}: flow {identity.flow}, tenant {identity.tenant_id or '-'}, "
            f"client {identity.client_id or '(system-assigned)'}, "
            f"mailbox {loaded.smtp.username}, {loaded.smtp_host}:{loaded.smtp.port} {loaded.smtp.security}",
            facts={"file": loaded.source_file and str(loaded.source_file)},
        )
    )
    return loaded


async def _checks_after_config(
    run: _Run, settings: Settings, send_test: str | None, provider: TokenProvider | None
) -> None:
    if provider is None:
        from smtp_oauth.tokens.provider import create_token_provider

        try:
            provider = create_token_provider(settings)
        except SmtpOAuthError as error:
            run.failed("token", error)
            return
    token = await _token_step(run, settings, provider)
    if token is None or not _claims_step(run, settings, token):
        return
    probe = SmtpProbe(settings)
    try:
        if not run.add(await probe.connect()) or not run.add(await probe.secure()):
            return
    finally:
        await probe.close()
    await _auth_and_send(run, settings, provider, send_test)


async def _token_step(run: _Run, settings: Settings, provider: TokenProvider) -> str | None:
    # force_refresh: a token still in the cache would hide a secret changed or revoked since.
    try:
        token = await provider.access_token(force_refresh=True)
    except SmtpOAuthError as error:
        run.failed("token", error, cause=scopes_problem(settings))
        return None
    identity = settings.identity
    run.add(
        StepResult(
            "token",
            STEPS["token"],
            Status.PASS,
            f"issued by {identity.authority} for {' '.join(identity.effective_scopes)} ({identity.flow})",
        )
    )
    return token


def _claims_step(run: _Run, settings: Settings, token: str) -> bool:
    from smtp_oauth.tokens.claims import decode_claims

    try:
        claims = decode_claims(token)
    except ValueError as exc:
        # Not a JWT (encrypted or opaque): nothing to look at, and Exchange may still accept it.
        return run.add(StepResult("claims", STEPS["claims"], Status.WARN, f"cannot read the token: {exc}"))
    if not settings.identity.is_delegated and isinstance(claims.get("oid"), str):
        # An app-only token's oid is the service principal (enterprise application) object id:
        # exactly the id New-ServicePrincipal and Add-MailboxPermission ask for.
        run.context["enterprise_app_object_id"] = claims["oid"]
        run.context["service_principal_id"] = claims["oid"]
    if not settings.identity.is_delegated:
        run.model = access_model(claims)
        if isinstance(claims.get("appid"), str):  # a system-assigned identity's id is only here
            run.context["client_id"] = claims["appid"]
    return run.add(check_claims(claims, settings))


def _access_setup(run: _Run) -> str | None:
    """For a refused app-only AUTH: the PowerShell that grants the mailbox under the token's model."""
    if run.model is None:
        return None
    return (
        f"The token uses {describe_model(run.model)}. To give the app the mailbox:\n"
        f"{setup_script(run.model, run.context)}\n{PROPAGATION_NOTE}"
    )


async def _auth_and_send(
    run: _Run, settings: Settings, provider: TokenProvider, send_test: str | None
) -> None:
    from smtp_oauth.smtp.mailer import Mailer
    from smtp_oauth.transport import create_transport

    transport = create_transport(settings, token_provider=provider)
    # The auth step is SMTP's AUTH XOAUTH2 on its own, before any message (only SMTP has a login
    # apart from sending): on the transport when it is the SMTP one, whose session the test
    # message then reuses; else (a Graph fallback) on an SMTP session of its own.
    mailer = transport if isinstance(transport, Mailer) else Mailer(settings, token_provider=provider)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(transport)
            if mailer is not transport:
                await stack.enter_async_context(mailer)
            auth_cause = _access_setup(run)
            if not await _step(run, "auth", mailer.verify_login, _auth_detail(settings), cause=auth_cause):
                return
            if send_test:
                message = _test_message(settings, send_test)
                await _step(run, "send", lambda: transport.send(message), _send_detail(send_test))
    except SmtpOAuthError as error:
        # Raised while entering or leaving the session (connect on enter, QUIT on exit): it is the
        # failure of the first step not yet reported; after the last one it no longer matters.
        done = {step.name for step in run.report.steps}
        pending = [name for name in ("auth", "send") if name not in done and (name == "auth" or send_test)]
        if pending:
            run.failed(pending[0], error)


async def _step(
    run: _Run,
    name: str,
    action: Callable[[], Awaitable[Any]],
    describe: Callable[[Any], str],
    *,
    cause: str | None = None,
) -> bool:
    try:
        outcome = await action()
    except SmtpOAuthError as error:
        from smtp_oauth.errors import AuthenticationError

        if isinstance(error, AuthenticationError) and error.enhanced_status == "5.7.3" and cause:
            # Exchange's generic refusal: the model's setup says more than the FullAccess-only hint.
            error.hint = cause
            return run.failed(name, error)
        return run.failed(name, error)
    return run.add(StepResult(name, STEPS[name], Status.PASS, describe(outcome)))


def _auth_detail(settings: Settings) -> Callable[[Any], str]:
    return lambda reply: f"authenticated as {settings.smtp.username}: {reply}"


def _send_detail(address: str) -> Callable[[Any], str]:
    def describe(result: Any) -> str:
        reply = getattr(result, "reply", "")
        refused = getattr(result, "refused", {})
        if refused:
            return f"sent, but refused for {', '.join(refused)}: {reply}"
        return f"sent to {address}: {reply}"

    return describe


def _test_message(settings: Settings, address: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.smtp.sender
    message["To"] = address
    message["Subject"] = "smtp-oauth check: test message"
    message["Date"] = message_date()
    message["Message-ID"] = make_message_id(settings.smtp.sender)
    message.set_content(
        f"This message was sent by `smtp-oauth check --send-test` on {socket.gethostname()}\n"
        f"through {settings.smtp_host}:{settings.smtp.port} as {settings.smtp.username}.\n"
        "If you can read it, sending mail with OAuth works.\n"
    )
    return message


async def _graph_checks(
    run: _Run, settings: Settings, send_test: str | None, provider: TokenProvider | None
) -> None:
    """The Graph transport's steps (graph_check.py's docstring says what each proves)."""
    from smtp_oauth.graph.client import GraphClient
    from smtp_oauth.tokens.claims import decode_claims

    if provider is None:
        from smtp_oauth.tokens.provider import create_token_provider

        try:
            provider = create_token_provider(settings)
        except SmtpOAuthError as error:
            run.failed("token", error)
            return
    try:
        token = await provider.access_token(force_refresh=True, scopes=settings.graph_scopes)
    except SmtpOAuthError as error:
        run.failed("token", error)
        return
    identity = settings.identity
    detail = f"issued by {identity.authority} for {' '.join(settings.graph_scopes)} ({identity.flow})"
    run.add(StepResult("token", GRAPH_STEPS["token"], Status.PASS, detail))
    try:
        claims = decode_claims(token)
    except ValueError as exc:
        claims = {}
        run.add(StepResult("claims", GRAPH_STEPS["claims"], Status.WARN, f"cannot read the token: {exc}"))
    else:
        if not settings.identity.is_delegated and isinstance(claims.get("oid"), str):
            run.context["enterprise_app_object_id"] = claims["oid"]
            run.context["service_principal_id"] = claims["oid"]
        if not run.add(check_graph_claims(claims, settings)):
            return
    client = GraphClient(settings, token_provider=provider)
    try:
        if not await _dry_request(run, settings, client):
            return
        run.add(large_message_step(claims, settings))
        if send_test:
            await _graph_send_test(run, settings, client, send_test)
    finally:
        await client.aclose()


async def _dry_request(run: _Run, settings: Settings, client: Any) -> bool:
    from urllib.parse import quote

    from smtp_oauth.graph.errors import GraphMessageError

    mailbox = settings.graph_mailbox
    try:
        await client.request(
            "POST",
            f"/v1.0/users/{quote(mailbox, safe='@')}/sendMail",
            what=f"the dry sendMail request for {mailbox}",
            context=run.context,
            content=DRY_REQUEST_BODY,
            content_type="text/plain",
        )
    except GraphMessageError as answer:
        if answer.graph_code == "ErrorMimeContentInvalidBase64String":
            detail = (
                f"Graph authorized sendMail for {mailbox} and then refused the deliberately invalid body "
                f"({answer.status} {answer.graph_code}): the mailbox can send; nothing was sent"
            )
            return run.add(StepResult("mailbox", GRAPH_STEPS["mailbox"], Status.PASS, detail))
        return run.failed("mailbox", answer)
    except SmtpOAuthError as error:
        return run.failed("mailbox", error)
    return run.add(
        StepResult(
            "mailbox",
            GRAPH_STEPS["mailbox"],
            Status.WARN,
            f"Graph accepted a sendMail request for {mailbox} whose body is not a message",
        )
    )


async def _graph_send_test(run: _Run, settings: Settings, client: Any, address: str) -> None:
    from smtp_oauth.graph.transport import GraphTransport

    message = _test_message(settings, address)
    message.replace_header("From", settings.graph_mailbox)
    transport = GraphTransport(settings, client=client, close_client=False)
    await _step(run, "send", lambda: transport.send(message), _send_detail(address))
