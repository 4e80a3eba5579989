"""The error tree keeps only the tree: hints are attached where an error is made, and filled when shown."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    FailureKind,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    TokenError,
    fill_hint,
)
from smtp_oauth.smtp.hints import reply_hint
from smtp_oauth.smtp.replies import Stage, all_refused, connection_failure, from_reply
from smtp_oauth.tokens.hints import aadsts_code_of, aadsts_hint

AUTH_DISABLED = "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
CONTEXT = {"mailbox": "sender@contoso.example", "client_id": "11111111-2222-3333-4444-555555555555"}


def _modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    probe = f"import sys; {statement}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_hint_tables_load_without_aiosmtplib_or_msal() -> None:
    """Both hint tables import with the standard library only: no aiosmtplib, msal or pydantic."""
    loaded = _modules_after("import smtp_oauth.smtp.hints, smtp_oauth.tokens.hints")
    assert loaded & {"aiosmtplib", "msal", "pydantic", "httpx", "asyncio"} == set()


def test_mapping_replies_loads_the_table_only_on_a_refusal() -> None:
    """smtp.replies (send-mail's direct path) leaves the reply table unloaded until a reply is refused."""
    assert "smtp_oauth.smtp.hints" not in _modules_after("import smtp_oauth.smtp.replies")


def test_a_refused_login_carries_the_reply_tables_hint_filled_with_the_mailbox() -> None:
    """535 5.7.139 made into an error at the boundary explains Set-CASMailbox for the mailbox, and Graph."""
    error = from_reply(535, AUTH_DISABLED, server="smtp.example:587", stage=Stage.AUTH, context=CONTEXT)
    assert isinstance(error, AuthenticationError)
    hint = error.explain() or ""
    assert "Set-CASMailbox -Identity sender@contoso.example" in hint
    assert 'transport = "graph"' in hint


def test_every_refused_recipient_gets_the_hint_of_the_reply() -> None:
    """All recipients refused with 5.7.60 explains the SendAs grant, as a refused MAIL FROM would."""
    refused = {"to@example.net": (550, "5.7.60 SMTP; Client does not have permissions to send as this user")}
    error = all_refused(refused, server="smtp.example:587", context=CONTEXT)
    assert isinstance(error, PermanentDeliveryError)
    assert "Add-RecipientPermission" in (error.explain() or "")


def test_reply_hint_takes_the_first_matching_row() -> None:
    """A 552 with 5.2.2 is the full mailbox, not the general too-large row; the text match ignores case."""
    assert "mailbox is full" in (reply_hint(554, "5.2.2", "mailbox full") or "")
    assert "larger than the server accepts" in (reply_hint(552, "5.3.4", "too big") or "")
    assert "SendAsDenied" in (reply_hint(550, "5.7.1", "...SENDASDENIED...") or "")
    assert reply_hint(250, None, "OK") is None


def test_an_error_made_outside_a_boundary_has_no_table_hint() -> None:
    """The tree does not look replies up itself: only what the raiser attached is explained."""
    error = PermanentDeliveryError("refused", code=535, text=AUTH_DISABLED)
    assert error.enhanced_status == "5.7.139"
    assert error.explain() is None
    assert DeliveryError("refused", code=550, hint="Ask {mailbox}'s admin.", context=CONTEXT).explain() == (
        "Ask sender@contoso.example's admin."
    )


def test_an_unreachable_server_without_a_hint_says_what_to_check() -> None:
    """A temporary failure with no reply code and no hint names host, port, firewall and proxy."""
    assert "firewall" in (TemporaryDeliveryError("down").explain() or "")


def test_aadsts_codes_are_found_and_explained_with_the_users_ids() -> None:
    """AADSTS7000215 in Entra's description: the wrong-secret hint naming the client id."""
    description = "AADSTS7000215: Invalid client secret provided. Trace ID: x"
    code = aadsts_code_of(description)
    assert code == 7000215
    error = TokenError("refused", aadsts_code=code, hint=aadsts_hint(code), context=CONTEXT)
    assert CONTEXT["client_id"] in (error.explain() or "")
    assert aadsts_hint(None) is None
    assert aadsts_code_of("no code here") is None


def test_fill_hint_names_unknown_ids_and_keeps_literal_braces() -> None:
    """Unknown placeholders read <tenant-id>; a hint whose braces are text is shown as written."""
    assert fill_hint("tenant {tenant_id}", {}) == "tenant <tenant-id>"
    assert fill_hint('set [relay] users = [{name = "x"}', {}) == 'set [relay] users = [{name = "x"}'


def test_configuration_hints_are_shown_as_written() -> None:
    """A ConfigurationError's hint is text, not a template (TOML examples keep their braces)."""
    hint = 'identity = { tenant_id = "..." } is not valid here'
    assert ConfigurationError("bad", hint=hint).explain() == hint


@pytest.mark.parametrize(
    ("failure", "stage", "ours", "builtin"),
    [
        (
            ConnectionRefusedError(111, "Connection refused"),
            Stage.CONNECT,
            DeliveryConnectionError,
            ConnectionError,
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            Stage.DATA,
            DeliveryConnectionError,
            ConnectionError,
        ),
        (TimeoutError(), Stage.AUTH, DeliveryTimeoutError, TimeoutError),
    ],
    ids=["refused", "dropped", "timeout"],
)
def test_connection_failures_are_also_the_builtin_exceptions_they_are(
    failure: OSError, stage: Stage, ours: type[DeliveryError], builtin: type[OSError]
) -> None:
    """A refused or dropped connection is a ConnectionError, a timeout a TimeoutError; both temporary."""
    error = connection_failure(failure, server="smtp.example:587", stage=stage, context={})
    assert type(error) is ours
    assert isinstance(error, builtin)
    assert isinstance(error, TemporaryDeliveryError)
    assert error.kind is FailureKind.TEMPORARY


def test_a_connection_error_of_ours_survives_pickling() -> None:
    """Across a process boundary (the relay's workers) the error keeps its class, text, hint and ids."""
    error = DeliveryConnectionError(
        "cannot connect to smtp.example:587", hint="Check {mailbox}.", context=CONTEXT
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes, made one line above
    assert type(copy) is DeliveryConnectionError
    assert (str(copy), copy.explain()) == (str(error), "Check sender@contoso.example.")
