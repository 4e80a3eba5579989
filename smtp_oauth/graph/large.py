"""Messages too large for one ``sendMail`` request: a draft plus its attachments, uploaded apart.

Graph takes at most about 4 MB per request, so a message over about 3 MB (before base64) is sent
as Microsoft describes for large attachments
(https://learn.microsoft.com/graph/outlook-large-attachments):

1. the message without its largest parts becomes a draft (``POST /users/{id}/messages`` with the
   MIME, base64, as ``text/plain``);
2. each part taken out is attached: under 3 MB with ``POST .../attachments``, from 3 MB (up to
   150 MB) through an upload session (``createUploadSession``, then ``PUT`` byte ranges to its
   pre-authenticated URL);
3. ``POST .../messages/{id}/send``.

Drafts need ``Mail.ReadWrite``, not just ``Mail.Send``; Exchange re-serialises the message, so it
is not byte-identical (the attachments' bytes are). This module only cuts the message up.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from smtp_oauth.errors import MessageError

__all__ = ["REQUEST_LIMIT", "UPLOAD_SESSION_MINIMUM", "Attachment", "base64_size", "split_for_draft"]

# Graph's request size limit for sendMail and message creation (413 above it): 4 MB of body,
# which base64 makes about 3 MB of message.
REQUEST_LIMIT = 4 * 1024 * 1024
# createUploadSession refuses smaller files (ErrorAttachmentSizeShouldNotBeLessThanMinimumSize);
# below it an attachment goes in one request, whose base64 (4 MB) still fits the request limit.
UPLOAD_SESSION_MINIMUM = 3_000_000
MAX_ATTACHMENT = 150 * 1024 * 1024
_DRAFT_MARGIN = 64 * 1024  # room for the headers Exchange adds to the draft


@dataclass(frozen=True)
class Attachment:
    """A part taken out of the message, to be attached to its draft."""

    name: str
    content_type: str
    content: bytes = field(repr=False)
    is_inline: bool = False
    content_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.content)


def base64_size(size: int) -> int:
    """How long ``size`` bytes are in base64, without line breaks."""
    return (size + 2) // 3 * 4


def _serialize(message: Message, eol: str) -> bytes:
    buffer = BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=email.policy.compat32.clone(linesep=eol)).flatten(
        message
    )
    return buffer.getvalue()


def _leaves(message: Message) -> list[tuple[Message, Message]]:
    """(parent, part) for every non-multipart part below the top, in order."""
    found: list[tuple[Message, Message]] = []
    for parent in message.walk():
        if not parent.is_multipart():
            continue
        for part in parent.get_payload():
            if isinstance(part, Message) and not part.is_multipart():
                found.append((parent, part))
    return found


def _attachment(part: Message, number: int) -> Attachment:
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)  # a leaf part decodes to bytes
    disposition = (part.get_content_disposition() or "").lower()
    content_id = part.get("Content-ID")
    return Attachment(
        name=part.get_filename() or f"attachment-{number}",
        content_type=part.get_content_type(),
        content=content,
        is_inline=disposition == "inline",
        content_id=str(content_id).strip().strip("<>") if content_id else None,
    )


def split_for_draft(mime: bytes, *, limit: int = REQUEST_LIMIT) -> tuple[bytes, list[Attachment]]:
    """The draft's MIME (fitting ``limit`` once base64) and the parts taken out, largest first.

    The message's first text part always stays in the draft. Raises MessageError when the message
    cannot be made to fit (one huge body, or an attachment over 150 MB).
    """
    eol = "\r\n" if b"\r\n" in mime[:4096] else "\n"
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(mime)
    leaves = _leaves(message)
    # Largest first; the first leaf (the body) stays.
    candidates = sorted(leaves[1:], key=lambda pair: len(pair[1].as_bytes()), reverse=True)
    taken: list[Attachment] = []
    draft = mime
    for number, (parent, part) in enumerate(candidates, start=1):
        if base64_size(len(draft)) + _DRAFT_MARGIN <= limit:
            break
        attachment = _attachment(part, number)
        if attachment.size > MAX_ATTACHMENT:
            raise MessageError(
                f"attachment {attachment.name!r} has {attachment.size} bytes; Microsoft Graph takes at "
                f"most {MAX_ATTACHMENT} bytes per attachment",
                enhanced_status="5.3.4",
                hint='Send a link instead, or send it through SMTP (transport = "smtp").',
            )
        siblings = parent.get_payload()
        assert isinstance(siblings, list)  # a multipart's payload is its list of parts
        siblings.remove(part)
        taken.append(attachment)
        draft = _serialize(message, eol)
    if base64_size(len(draft)) + _DRAFT_MARGIN > limit:
        raise MessageError(
            f"the message's text is {len(draft)} bytes without its attachments, more than Microsoft Graph "
            "takes in one request (about 3 MB)",
            enhanced_status="5.3.4",
            hint='Send it through SMTP (transport = "smtp"), which takes up to 35 MB.',
        )
    return draft, taken
