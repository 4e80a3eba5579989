"""``GraphTransport``: the ``Transport`` that sends through Microsoft Graph ``sendMail``.

::

    POST {graph.endpoint}/v1.0/users/{mailbox}/sendMail
    Content-Type: text/plain
    <the MIME message, base64>                      -> 202 Accepted

(https://learn.microsoft.com/graph/api/user-sendmail). 202 means accepted, as an SMTP 250 does:
later failures come back as non-delivery reports to the mailbox, and Graph saves a copy in Sent
Items (with MIME that cannot be turned off; SMTP AUTH does the same). The message gets its Bcc
and quoted-printable fixes from ``mime.py``; one over about 3 MB goes through a draft and upload
sessions (``large.py``), which needs Mail.ReadWrite. Requests go through a ``GraphClient``, shared
between transports so that the app's limits hold for all of them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

from smtp_oauth.errors import DeliveryError, DeliveryTimeoutError, SmtpOAuthError, TemporaryDeliveryError
from smtp_oauth.graph.client import GraphClient
from smtp_oauth.graph.errors import GraphMessageError
from smtp_oauth.graph.large import (
    REQUEST_LIMIT,
    UPLOAD_SESSION_MINIMUM,
    Attachment,
    base64_size,
    split_for_draft,
)
from smtp_oauth.graph.mime import for_graph
from smtp_oauth.mail.envelope import build_envelope
from smtp_oauth.transport import MessageSource, SendResult

Transcript = Callable[[str, str], None]  # (direction "C"/"S", line), as the SMTP transcript

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings
    from smtp_oauth.tokens.types import TokenProvider

__all__ = ["GraphTransport"]

logger = logging.getLogger("smtp_oauth.graph")

# Upload sessions take byte ranges in multiples of 320 KiB, at most 60 MiB; Microsoft recommends
# under 4 MiB per PUT (https://learn.microsoft.com/graph/api/attachment-createuploadsession).
UPLOAD_CHUNK = 12 * 320 * 1024
REDUCED_REQUEST_LIMIT = REQUEST_LIMIT // 2


class GraphTransport:
    """Sends as one mailbox through Microsoft Graph; ``async with`` closes the client it made."""

    def __init__(
        self,
        settings: Settings,
        *,
        mailbox: str | None = None,
        token_provider: TokenProvider | None = None,
        client: GraphClient | None = None,
        close_client: bool | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self._settings = settings
        self._mailbox = mailbox or settings.graph_mailbox
        # A client made here is closed by close(); a shared one only when the caller says so.
        self._owns_client = client is None if close_client is None else close_client
        self._client = client or GraphClient(settings, token_provider=token_provider)
        # smtp.from_address belongs to the configured mailbox; another mailbox sends as itself.
        configured = self._mailbox.casefold() == settings.graph_mailbox.casefold()
        self._default_sender = settings.smtp.sender if configured else self._mailbox
        self._context = {**settings.hint_context(), "mailbox": self._mailbox}
        self._base = f"/v1.0/users/{quote(self._mailbox, safe='@')}"
        self._transcript = transcript  # send-mail -v: one line per request and answer

    def __repr__(self) -> str:
        return f"GraphTransport(server={self.server!r}, mailbox={self._mailbox!r})"

    @property
    def server(self) -> str:
        """Graph's endpoint, as error messages name it."""
        return self._client.endpoint

    @property
    def mailbox(self) -> str:
        return self._mailbox

    async def __aenter__(self) -> GraphTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTPS connections of a client this transport made (a shared one stays open)."""
        if self._owns_client:
            await self._client.aclose()

    async def send(
        self,
        message: MessageSource,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the public interface: a bound on the whole send
    ) -> SendResult:
        """Send one message; 202 from Graph is success. Raises the smtp_oauth.errors tree only.

        A raw message (bytes, a path, a seekable binary file) needs ``recipients``; those not in
        its To/Cc are sent as Bcc. The envelope sender is reported but not sent: Graph sends from
        the mailbox (the From header must be one it may send as).
        """
        raw = await _read(message)
        envelope, message_id = build_envelope(
            raw, sender=sender, recipients=recipients, default_sender=self._default_sender
        )
        body = envelope.message
        data = body if isinstance(body, bytes) else body.as_bytes(policy=SMTP)
        mime = await asyncio.to_thread(for_graph, data, envelope.recipients)
        try:
            async with asyncio.timeout(timeout):
                reply = await self._deliver(mime)
        except SmtpOAuthError:
            raise  # ours, already saying what failed (a DeliveryTimeoutError is a TimeoutError too)
        except TimeoutError:
            if timeout is None:
                raise
            raise DeliveryTimeoutError(
                f"sending through {self.server} took longer than {timeout:g}s", context=self._context
            ) from None
        logger.debug("Graph accepted %s for %d recipient(s): %s", message_id, len(envelope.recipients), reply)
        return SendResult(
            message_id=message_id,
            sender=envelope.sender,
            accepted=list(envelope.recipients),
            reply=reply,
        )

    async def _deliver(self, mime: bytes) -> str:
        if base64_size(len(mime)) > REQUEST_LIMIT:
            return await self._send_large(mime, REQUEST_LIMIT)
        try:
            return await self._send_mail(mime)
        except GraphMessageError as error:
            if error.status != 413:
                raise
        # Graph took less than its documented limit (reports say ~2.2 MB at times): keep the
        # draft well under it.
        logger.info("Graph refused %d bytes in one request (413); sending through a draft", len(mime))
        return await self._send_large(mime, REDUCED_REQUEST_LIMIT)

    async def _send_mail(self, mime: bytes) -> str:
        response = await self._client.request(
            "POST",
            f"{self._base}/sendMail",
            what=f"sendMail for {self._mailbox}",
            context=self._context,
            transcript=self._transcript,
            content=base64.b64encode(mime),
            content_type="text/plain",
        )
        return _accepted(response.request_id)

    async def _send_large(self, mime: bytes, limit: int) -> str:
        draft_mime, attachments = await asyncio.to_thread(
            functools.partial(split_for_draft, mime, limit=limit)
        )
        what = f"the draft of a {len(mime)}-byte message for {self._mailbox}"
        created = await self._client.request(
            "POST",
            f"{self._base}/messages",
            what=what,
            context=self._context,
            transcript=self._transcript,
            content=base64.b64encode(draft_mime),
            content_type="text/plain",
            draft=True,
        )
        draft_id = str(created.json().get("id") or "")
        if not draft_id:
            raise TemporaryDeliveryError(
                f"Microsoft Graph created {what} without an id", context=self._context
            )
        message_url = f"{self._base}/messages/{quote(draft_id, safe='')}"
        try:
            for attachment in attachments:
                await self._attach(message_url, attachment)
            sent = await self._client.request(
                "POST",
                f"{message_url}/send",
                what=f"{what}: send",
                context=self._context,
                transcript=self._transcript,
                content=b"",
            )
        except (DeliveryError, asyncio.CancelledError):
            await asyncio.shield(self._discard_draft(message_url))
            raise
        return _accepted(sent.request_id)

    async def _attach(self, message_url: str, attachment: Attachment) -> None:
        what = f"attachment {attachment.name!r} ({attachment.size} bytes) for {self._mailbox}"
        item = {
            "name": attachment.name,
            "contentType": attachment.content_type,
            "isInline": attachment.is_inline,
            **({"contentId": attachment.content_id} if attachment.content_id else {}),
        }
        if attachment.size < UPLOAD_SESSION_MINIMUM:
            await self._client.request(
                "POST",
                f"{message_url}/attachments",
                what=what,
                context=self._context,
                transcript=self._transcript,
                json_body={
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    **item,
                    "contentBytes": base64.b64encode(attachment.content).decode("ascii"),
                },
                draft=True,
            )
            return
        session = await self._client.request(
            "POST",
            f"{message_url}/attachments/createUploadSession",
            what=what,
            context=self._context,
            transcript=self._transcript,
            json_body={"AttachmentItem": {"attachmentType": "file", "size": attachment.size, **item}},
            draft=True,
        )
        upload_url = str(session.json().get("uploadUrl") or "")
        if not upload_url.startswith("https://"):
            raise TemporaryDeliveryError(
                f"Microsoft Graph gave no upload URL for {what}", context=self._context
            )
        total = attachment.size
        for start in range(0, total, UPLOAD_CHUNK):
            chunk = attachment.content[start : start + UPLOAD_CHUNK]
            end = start + len(chunk) - 1
            # The URL is pre-authenticated: sending the bearer token to it would make it fail.
            await self._client.request(
                "PUT",
                upload_url,
                what=f"{what}: bytes {start}-{end}",
                context=self._context,
                transcript=self._transcript,
                content=chunk,
                content_type="application/octet-stream",
                headers={"Content-Range": f"bytes {start}-{end}/{total}"},
                authorized=False,
                draft=True,
            )

    async def _discard_draft(self, message_url: str) -> None:
        """Delete the draft of a message that could not be sent, so nothing lingers in Drafts."""
        try:
            await self._client.request(
                "DELETE",
                message_url,
                what=f"the unsent draft for {self._mailbox}",
                context=self._context,
                transcript=self._transcript,
            )
        except DeliveryError as error:
            logger.warning("could not delete the unsent draft in %s: %s", self._mailbox, error)


def _accepted(request_id: str | None) -> str:
    return "accepted by Microsoft Graph (HTTP 202" + (f", request-id {request_id})" if request_id else ")")


async def _read(message: MessageSource) -> EmailMessage | bytes:
    """The message in memory: Graph takes it base64 in one body (a relay spool file is read whole)."""
    if isinstance(message, EmailMessage):
        return message
    if isinstance(message, bytes | bytearray):
        return bytes(message)
    if isinstance(message, os.PathLike):
        return await asyncio.to_thread(_read_path, message)
    return await asyncio.to_thread(_read_file, message)


def _read_path(path: os.PathLike[str]) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _read_file(file: BinaryIO) -> bytes:
    if not (hasattr(file, "read") and callable(getattr(file, "seekable", None)) and file.seekable()):
        kind = type(file).__name__
        raise TypeError(
            f"message must be an EmailMessage, bytes, a path or a seekable binary file, not {kind}"
        )
    return file.read()
