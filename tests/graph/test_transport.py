"""The Graph transport against the sandbox's fake Microsoft Graph (HTTPS, real MSAL, real tokens)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from email.message import EmailMessage

import pytest

from smtp_oauth.cli.exit_codes import exit_code_of
from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryConnectionError,
    DeliveryTimeoutError,
    MessageError,
    TemporaryDeliveryError,
)
from smtp_oauth.graph.client import GraphClient
from smtp_oauth.graph.transport import GraphTransport
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.models import Settings
from smtp_oauth.transport import create_transport


def _message(sandbox: Sandbox, **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sandbox.tenant.mailbox
    message["To"] = "rcpt@example.test"
    message["Subject"] = "through Graph"
    for name, value in headers.items():
        message[name] = value
    message.set_content("Hello through Microsoft Graph.\n")
    return message


def _raw(sandbox: Sandbox) -> bytes:
    return (
        f"From: {sandbox.tenant.mailbox}\r\nTo: rcpt@example.test\r\nSubject: raw\r\n"
        "Message-ID: <raw-1@sandbox.test>\r\n\r\nraw body\r\n"
    ).encode()


async def test_create_transport_picks_graph_from_settings(graph_settings: Settings) -> None:
    """transport = "graph" gives the Graph transport, naming Graph's endpoint as its server."""
    async with create_transport(graph_settings) as transport:
        assert isinstance(transport, GraphTransport)
        assert transport.server == graph_settings.graph_endpoint


async def test_a_composed_message_is_accepted_for_to_and_bcc(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """202 from sendMail: every To and Bcc recipient accepted, Graph delivers to both."""
    async with create_transport(graph_settings) as transport:
        result = await transport.send(_message(smtp_oauth_sandbox, Bcc="hidden@example.test"))
    assert result.accepted == ["rcpt@example.test", "hidden@example.test"]
    assert "accepted by Microsoft Graph" in result.reply
    [delivered] = smtp_oauth_sandbox.graph_delivered()
    assert delivered.rcpt_tos == ["rcpt@example.test", "hidden@example.test"]
    assert delivered.auth_user == smtp_oauth_sandbox.tenant.mailbox


async def test_a_raw_message_arrives_byte_identical_apart_from_the_added_bcc(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """Envelope-only recipients are added as one Bcc header; every other byte is the sender's."""
    raw = _raw(smtp_oauth_sandbox)
    async with create_transport(graph_settings) as transport:
        await transport.send(raw, recipients=["rcpt@example.test", "bcc@example.test"])
    [delivered] = smtp_oauth_sandbox.graph_delivered()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert delivered.data == head + b"\r\nBcc: bcc@example.test\r\n\r\n" + body
    assert delivered.rcpt_tos == ["rcpt@example.test", "bcc@example.test"]


async def test_a_header_recipient_left_out_of_the_envelope_is_refused_before_any_request(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """Graph would reach To: rcpt@ although only other@ was asked for: MessageError, no request."""
    async with create_transport(graph_settings) as transport:
        with pytest.raises(MessageError):
            await transport.send(_raw(smtp_oauth_sandbox), recipients=["other@example.test"])
    assert smtp_oauth_sandbox.graph.requests() == []


async def test_a_short_retry_after_is_waited_and_the_request_repeated(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """429 with Retry-After: 1 -> no request before the second has passed, then the message goes out."""
    smtp_oauth_sandbox.inject_graph("sendMail", 429, "ApplicationThrottled", retry_after=1)
    async with create_transport(graph_settings) as transport:
        await transport.send(_message(smtp_oauth_sandbox))
    first, second = smtp_oauth_sandbox.graph.requests("sendMail")
    assert (first.status, second.status) == (429, 202)
    assert second.at - first.at >= 1.0
    assert len(smtp_oauth_sandbox.graph_delivered()) == 1


async def test_a_long_retry_after_is_a_temporary_error_carrying_the_wait(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """429 with Retry-After: 120 -> GraphTemporaryError at once (exit 75), retry_after 120 s, one request."""
    smtp_oauth_sandbox.inject_graph(
        "sendMail", 429, "ApplicationThrottled", "Application is over its limit.", retry_after=120
    )
    started = time.monotonic()
    async with create_transport(graph_settings) as transport:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await transport.send(_message(smtp_oauth_sandbox))
    assert time.monotonic() - started < 10
    error = caught.value
    assert exit_code_of(error) == 75
    assert error.retry_after is not None
    assert 120 <= error.retry_after <= 150
    assert error.code is None
    assert error.reply == ""
    assert "429 ApplicationThrottled" in str(error)
    assert "wait" in str(error)
    assert len(smtp_oauth_sandbox.graph.requests("sendMail")) == 1


async def test_while_throttled_no_request_of_the_app_goes_out(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """After a long Retry-After, the next message on the shared client fails at once, sending nothing."""
    smtp_oauth_sandbox.inject_graph("sendMail", 429, "ApplicationThrottled", retry_after=60)
    client = GraphClient(graph_settings)
    try:
        for _ in range(2):
            async with create_transport(graph_settings, graph_client=client) as transport:
                with pytest.raises(TemporaryDeliveryError):
                    await transport.send(_message(smtp_oauth_sandbox))
    finally:
        await client.aclose()
    assert len(smtp_oauth_sandbox.graph.requests("sendMail")) == 1


async def test_503_without_retry_after_is_temporary(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """503 with no Retry-After: temporary, with a default wait."""
    smtp_oauth_sandbox.inject_graph("sendMail", 503, "ServiceUnavailable")
    async with create_transport(graph_settings) as transport:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await transport.send(_message(smtp_oauth_sandbox))
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 30


async def test_a_401_is_retried_once_with_a_new_token(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """401 InvalidAuthenticationToken -> a token fetched with force_refresh, and the message goes out."""
    smtp_oauth_sandbox.inject_graph("sendMail", 401, "InvalidAuthenticationToken")
    async with create_transport(graph_settings) as transport:
        await transport.send(_message(smtp_oauth_sandbox))
    assert smtp_oauth_sandbox.idp.token_requests["client_credentials"] == 2
    assert len(smtp_oauth_sandbox.graph_delivered()) == 1


@pytest.mark.smtp_oauth_sandbox(graph_permissions=())
async def test_missing_mail_send_names_both_permission_models(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """403 without Mail.Send -> exit 77; the fix names the Graph permission and RBAC for Applications."""
    async with create_transport(graph_settings) as transport:
        with pytest.raises(AuthenticationError) as caught:
            await transport.send(_message(smtp_oauth_sandbox))
    error = caught.value
    assert exit_code_of(error) == 77
    assert "403 ErrorAccessDenied" in str(error)
    hint = error.explain() or ""
    app = smtp_oauth_sandbox.tenant.app
    assert "Mail.Send" in hint
    assert "Grant admin consent" in hint
    assert f"New-ManagementRoleAssignment -App {app.client_id} -Role 'Application Mail.Send'" in hint
    assert f"-ObjectId {app.service_principal_id}" in hint
    assert smtp_oauth_sandbox.tenant.mailbox in hint


@pytest.mark.smtp_oauth_sandbox(graph_permissions=())
async def test_rbac_for_applications_sends_without_a_graph_permission(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """A token without roles is accepted for a mailbox in the app's RBAC scope."""
    smtp_oauth_sandbox.graph.api.rbac_grants[smtp_oauth_sandbox.tenant.app.client_id] = {
        smtp_oauth_sandbox.tenant.mailbox.casefold()
    }
    async with create_transport(graph_settings) as transport:
        await transport.send(_message(smtp_oauth_sandbox))
    assert len(smtp_oauth_sandbox.graph_delivered()) == 1


async def test_a_foreign_from_address_is_send_as_denied(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """From: someone the mailbox may not send as -> ErrorSendAsDenied, exit 77, the SendAs fix."""
    message = _message(smtp_oauth_sandbox)
    message.replace_header("From", "boss@example.test")
    async with create_transport(graph_settings) as transport:
        with pytest.raises(AuthenticationError) as caught:
            await transport.send(message)
    assert "ErrorSendAsDenied" in str(caught.value)
    assert "Add-RecipientPermission" in (caught.value.explain() or "")


def _large(sandbox: Sandbox, size: int) -> tuple[EmailMessage, bytes]:
    message = _message(sandbox)
    content = bytes(range(256)) * (size // 256)
    message.add_attachment(content, maintype="application", subtype="octet-stream", filename="big.bin")
    return message, content


async def test_a_10_mb_message_goes_through_a_draft_and_an_upload_session(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """10 MB: draft, createUploadSession, ranged PUTs, send; the attachment arrives intact, no draft left."""
    message, content = _large(smtp_oauth_sandbox, 10 * 1024 * 1024)
    async with create_transport(graph_settings) as transport:
        await transport.send(message)
    operations = [request.operation for request in smtp_oauth_sandbox.graph.requests()]
    assert operations[:2] == ["createDraft", "createUploadSession"]
    assert operations.count("upload") == 3
    assert operations[-1] == "send"
    [delivered] = smtp_oauth_sandbox.graph_delivered()
    [attachment] = list(delivered.message.iter_attachments())
    assert attachment.get_filename() == "big.bin"
    assert attachment.get_content() == content
    assert smtp_oauth_sandbox.graph.api.drafts == 0


async def test_a_413_sends_the_message_through_a_draft(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """A Graph whose limit is lower than expected answers 413; the message then goes as a draft."""
    smtp_oauth_sandbox.graph.api.request_limit = 2 * 1024 * 1024
    message, content = _large(smtp_oauth_sandbox, 1024 * 1024)
    message.add_attachment(
        b"second" * 170_000, maintype="application", subtype="octet-stream", filename="b.bin"
    )
    async with create_transport(graph_settings) as transport:
        await transport.send(message)
    statuses = [(r.operation, r.status) for r in smtp_oauth_sandbox.graph.requests()]
    assert statuses[0] == ("sendMail", 413)
    assert ("send", 202) in statuses
    [delivered] = smtp_oauth_sandbox.graph_delivered()
    received = {part.get_filename(): part.get_content() for part in delivered.message.iter_attachments()}
    assert received == {"big.bin": content, "b.bin": b"second" * 170_000}


@pytest.mark.smtp_oauth_sandbox(graph_permissions=("Mail.Send",))
async def test_a_large_message_without_mail_readwrite_is_a_permanent_message_error(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """No Mail.ReadWrite: the draft is refused -> MessageError (65) naming Mail.ReadWrite; nothing sent."""
    message, _ = _large(smtp_oauth_sandbox, 5 * 1024 * 1024)
    async with create_transport(graph_settings) as transport:
        with pytest.raises(MessageError) as caught:
            await transport.send(message)
    assert exit_code_of(caught.value) == 65
    assert "Mail.ReadWrite" in (caught.value.explain() or "")
    assert smtp_oauth_sandbox.graph_delivered() == []


async def test_sends_through_one_client_never_exceed_four_at_once(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """Ten transports sharing a GraphClient send at once: at most 4 requests in flight, none throttled."""
    smtp_oauth_sandbox.graph.api.latency = 0.2
    client = GraphClient(graph_settings)

    async def send_one() -> None:
        async with create_transport(graph_settings, graph_client=client) as transport:
            await transport.send(_message(smtp_oauth_sandbox))

    try:
        await asyncio.gather(*(send_one() for _ in range(10)))
    finally:
        await client.aclose()
    assert smtp_oauth_sandbox.graph.max_in_flight == 4
    assert all(r.status == 202 for r in smtp_oauth_sandbox.graph.requests("sendMail"))
    assert len(smtp_oauth_sandbox.graph_delivered()) == 10


async def test_an_unreachable_endpoint_is_temporary_and_names_it(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """Nothing listening at graph.endpoint: TemporaryDeliveryError naming the endpoint, no httpx error."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = graph_settings.model_copy(
        update={"graph": graph_settings.graph.model_copy(update={"endpoint": f"https://127.0.0.1:{port}"})}
    )
    async with create_transport(settings) as transport:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await transport.send(_message(smtp_oauth_sandbox))
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert type(caught.value.__cause__).__module__.startswith("httpx")
    assert isinstance(caught.value, DeliveryConnectionError)
    assert isinstance(caught.value, ConnectionError)


async def test_an_endpoint_that_never_answers_is_a_timeout_in_its_own_words(
    smtp_oauth_sandbox: Sandbox, graph_settings: Settings
) -> None:
    """graph.timeout running out inside a longer send(timeout=): a TimeoutError naming the endpoint."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    graph = graph_settings.graph.model_copy(update={"endpoint": f"https://127.0.0.1:{port}", "timeout": 0.3})
    async with server:
        async with create_transport(graph_settings.model_copy(update={"graph": graph})) as transport:
            with pytest.raises(DeliveryTimeoutError) as caught:
                await transport.send(_message(smtp_oauth_sandbox), timeout=30)
        for writer in held:
            writer.close()
    assert isinstance(caught.value, TimeoutError)
    assert f"127.0.0.1:{port} did not answer in time" in str(caught.value)


def test_email_parsing_of_stored_mail_is_the_default_policy() -> None:
    """Sanity: the stored .eml parses with the default policy (used by the tests above)."""
    assert email.message_from_bytes(b"To: a@b\r\n\r\nx", policy=email.policy.default)["To"] == "a@b"
