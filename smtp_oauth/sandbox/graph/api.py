"""What the fake Microsoft Graph answers: the mail-sending part of ``/v1.0/users/{id}``.

FOR TESTING ONLY. Endpoints (https://learn.microsoft.com/graph/api/user-sendmail and
https://learn.microsoft.com/graph/outlook-large-attachments)::

    POST   /v1.0/users/{id}/sendMail                              MIME, base64, text/plain -> 202
    POST   /v1.0/users/{id}/messages                              a draft from MIME        -> 201
    POST   /v1.0/users/{id}/messages/{mid}/attachments            a fileAttachment (JSON)  -> 201
    POST   /v1.0/users/{id}/messages/{mid}/attachments/createUploadSession                 -> 201
    PUT    /upload/{session}                                      byte ranges, no token    -> 200/201
    POST   /v1.0/users/{id}/messages/{mid}/send                                            -> 202
    DELETE /v1.0/users/{id}/messages/{mid}                                                 -> 204
    GET    /v1.0/users/{id}/mailFolders/{name}                    (Mail.ReadBasic and up)  -> 200

Every request but an upload needs a bearer token this tenant's key signed, for
``https://graph.microsoft.com``, not expired (401 otherwise). Sending needs ``Mail.Send``
(application role, or an RBAC for Applications grant of the mailbox, or the delegated scope
for the signed-in user's own mailbox); drafts and attachments need ``Mail.ReadWrite`` (403
ErrorAccessDenied). The From address must be the mailbox or one it may send as (403
ErrorSendAsDenied). Requests over 4 MiB get 413; more than 4 at once from one app get 429
ApplicationThrottled. Sent messages are stored as the fake Exchange stores them, recipients being
the message's To, Cc and Bcc, which is whom Graph delivers to.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import email.utils
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from smtp_oauth.sandbox.graph.faults import GraphFault, GraphFaults
from smtp_oauth.sandbox.idp.pages import HttpReply
from smtp_oauth.sandbox.keys import SigningKey, TokenInvalid
from smtp_oauth.sandbox.mail_store import MailStore

__all__ = ["GRAPH_AUDIENCES", "REQUEST_LIMIT", "GraphApi", "GraphRequest"]

GRAPH_AUDIENCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
REQUEST_LIMIT = 4 * 1024 * 1024
UPLOAD_MINIMUM = 3_000_000
UPLOAD_MAXIMUM = 150 * 1024 * 1024
MAX_CONCURRENT = 4
_READ_PERMISSIONS = ("Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite")


@dataclass(frozen=True)
class GraphRequest:
    """One request the fake Graph answered (for tests: when, what, and the outcome)."""

    at: float  # time.monotonic()
    method: str
    operation: str
    mailbox: str
    status: int


class _Refused(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Call:
    """A request, routed: which operation on which mailbox (draft, upload session)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = field(repr=False)
    operation: str = ""  # "" when no endpoint matches
    mailbox: str = ""
    draft_id: str = ""
    session: str = ""


_USER_OPERATIONS: dict[tuple[str, tuple[str, ...]], str] = {
    ("POST", ("sendMail",)): "sendMail",
    ("POST", ("messages",)): "createDraft",
}
_DRAFT_OPERATIONS: dict[tuple[str, tuple[str, ...]], str] = {
    ("POST", ("attachments",)): "attachment",
    ("POST", ("attachments", "createUploadSession")): "createUploadSession",
    ("POST", ("send",)): "send",
    ("DELETE", ()): "deleteDraft",
}


def _route(method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> _Call:
    parts = [unquote(part) for part in path.strip("/").split("/")]
    call = _Call(method, path, headers, body)
    if method == "PUT" and len(parts) == 2 and parts[0] == "upload":
        return replace(call, operation="upload", session=parts[1])
    if len(parts) < 4 or parts[:2] != ["v1.0", "users"]:
        return call
    mailbox, rest = parts[2], tuple(parts[3:])
    if (method, rest) in _USER_OPERATIONS:
        return replace(call, operation=_USER_OPERATIONS[(method, rest)], mailbox=mailbox)
    if rest[0] == "messages" and len(rest) >= 2 and (method, rest[2:]) in _DRAFT_OPERATIONS:
        return replace(
            call, operation=_DRAFT_OPERATIONS[(method, rest[2:])], mailbox=mailbox, draft_id=rest[1]
        )
    if method == "GET" and rest[0] == "mailFolders" and len(rest) == 2:
        return replace(call, operation="mailFolders", mailbox=mailbox)
    return replace(call, mailbox=mailbox)


@dataclass
class _Caller:
    client_id: str
    delegated: bool
    permissions: frozenset[str]
    user: str


@dataclass
class _Draft:
    mailbox: str
    client_id: str
    mime: bytes = field(repr=False)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list, repr=False)


@dataclass
class _Upload:
    draft_id: str
    client_id: str
    name: str
    content_type: str
    size: int
    received: bytearray = field(default_factory=bytearray, repr=False)


def _json_reply(
    status: int, body: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
) -> HttpReply:
    content = json.dumps(body).encode() if body is not None else b""
    return HttpReply(status, content, "application/json", dict(headers or {}))


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> HttpReply:
    return _json_reply(status, {"error": {"code": code, "message": message}}, headers)


class GraphApi:
    """The fake Graph's decisions; ``dispatch`` is called on the server's threads."""

    def __init__(
        self,
        *,
        signing_key: SigningKey,
        tenant_id: str,
        mailboxes: Iterable[str],
        store: MailStore,
        faults: GraphFaults,
        rbac_grants: Mapping[str, Iterable[str]] | None = None,
        send_as: Mapping[str, Iterable[str]] | None = None,
        max_concurrent: int = MAX_CONCURRENT,
        request_limit: int = REQUEST_LIMIT,
    ) -> None:
        self._key = signing_key
        self._tenant_id = tenant_id
        self._mailboxes = {address.casefold(): address for address in mailboxes}
        self.store = store
        self.faults = faults
        # RBAC for Applications: client id -> mailboxes its "Application Mail.Send" role covers.
        self.rbac_grants: dict[str, set[str]] = {
            client: {m.casefold() for m in granted} for client, granted in (rbac_grants or {}).items()
        }
        self.send_as = {
            m.casefold(): {a.casefold() for a in allowed} for m, allowed in (send_as or {}).items()
        }
        self.max_concurrent = max_concurrent
        self.request_limit = request_limit
        self.latency = 0.0  # seconds each send takes, so that tests can see concurrency
        self.base_url = ""
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self.max_in_flight = 0
        self.requests: list[GraphRequest] = []
        self._drafts: dict[str, _Draft] = {}
        self._uploads: dict[str, _Upload] = {}

    # --- bookkeeping ---------------------------------------------------------------------------

    def _record(self, method: str, operation: str, mailbox: str, status: int) -> None:
        with self._lock:
            self.requests.append(GraphRequest(time.monotonic(), method, operation, mailbox, status))

    def requests_for(self, operation: str) -> list[GraphRequest]:
        with self._lock:
            return [request for request in self.requests if request.operation == operation]

    @property
    def drafts(self) -> int:
        with self._lock:
            return len(self._drafts)

    def _enter(self, client_id: str) -> None:
        with self._lock:
            count = self._in_flight.get(client_id, 0) + 1
            if count > self.max_concurrent:
                raise _Refused(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "1"},
                )
            self._in_flight[client_id] = count
            self.max_in_flight = max(self.max_in_flight, count)

    def _leave(self, client_id: str) -> None:
        with self._lock:
            self._in_flight[client_id] -= 1

    # --- the entry point -------------------------------------------------------------------------

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> HttpReply:
        """Answer one request; ``headers`` have lower-case names, ``body`` is None when it was too large."""
        call = _route(method, urlsplit(target).path, headers, body)
        try:
            reply = self._answer(call)
        except _Refused as refused:
            reply = _error(refused.status, refused.code, refused.message, refused.headers)
        reply.headers["request-id"] = str(uuid.uuid4())
        self._record(method, call.operation or call.path, call.mailbox, reply.status)
        return reply

    def _answer(self, call: _Call) -> HttpReply:
        fault = self.faults.take(call.operation) if call.operation else None
        if fault is not None:
            raise _fault_refusal(fault)
        if not call.operation:
            raise _Refused(400, "BadRequest", f"Resource not found for the segment '{call.path}'.")
        if call.body is None or (len(call.body) > self.request_limit and call.operation != "upload"):
            raise _Refused(
                413, "RequestEntityTooLarge", f"The request body is larger than {self.request_limit} bytes."
            )
        if call.operation == "upload":
            return self._upload(call.session, call.headers, call.body)
        caller = self._authenticate(call.headers)
        mailbox = self._mailbox(call.mailbox)
        self._enter(caller.client_id)
        try:
            if self.latency and call.operation in {"sendMail", "send"}:
                time.sleep(self.latency)
            return self._operate(call, caller, mailbox, call.body)
        finally:
            self._leave(caller.client_id)

    def _operate(  # noqa: PLR0911  # one return per operation reads best
        self, call: _Call, caller: _Caller, mailbox: str, body: bytes
    ) -> HttpReply:
        operation = call.operation
        if operation == "sendMail":
            self._require(caller, mailbox, "Mail.Send")
            message = self._mime(call.headers, body)
            self._check_sender(message, mailbox)
            self._deliver(mailbox, message)
            return _json_reply(202, None)
        if operation == "mailFolders":
            self._require(caller, mailbox, *_READ_PERMISSIONS)
            return _json_reply(200, {"id": "drafts", "displayName": "Drafts", "totalItemCount": 0})
        self._require(caller, mailbox, "Mail.ReadWrite")
        if operation == "createDraft":
            return self._create_draft(caller, mailbox, call.headers, body)
        draft = self._draft(call.draft_id, mailbox)
        if operation == "attachment":
            return self._attach(draft, body)
        if operation == "createUploadSession":
            return self._create_upload_session(call.draft_id, caller, body)
        with self._lock:
            self._drafts.pop(call.draft_id, None)
        if operation == "deleteDraft":
            return _json_reply(204, None)
        self._require(caller, mailbox, "Mail.Send")  # send
        self._deliver(mailbox, _assemble(draft))
        return _json_reply(202, None)

    def _create_draft(
        self, caller: _Caller, mailbox: str, headers: Mapping[str, str], body: bytes
    ) -> HttpReply:
        message = self._mime(headers, body)
        self._check_sender(message, mailbox)
        new_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        with self._lock:
            self._drafts[new_id] = _Draft(mailbox, caller.client_id, message)
        return _json_reply(201, {"id": new_id, "isDraft": True})

    # --- checks ----------------------------------------------------------------------------------

    def _authenticate(self, headers: Mapping[str, str]) -> _Caller:
        authorization = headers.get("authorization", "")
        if not authorization.lower().startswith("bearer "):
            raise _Refused(401, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            claims = self._key.verify(authorization[7:].strip(), audience=list(GRAPH_AUDIENCES))
        except TokenInvalid as exc:
            raise _Refused(
                401, "InvalidAuthenticationToken", f"Access token validation failure: {exc}."
            ) from exc
        if claims.get("tid") != self._tenant_id:
            raise _Refused(
                401, "InvalidAuthenticationToken", "Access token validation failure. Invalid issuer."
            )
        client_id = str(claims.get("appid") or claims.get("azp") or "")
        if "scp" in claims:
            scopes = frozenset(str(claims["scp"]).split())
            user = str(claims.get("upn") or claims.get("unique_name") or "")
            return _Caller(client_id, delegated=True, permissions=scopes, user=user)
        roles = claims.get("roles")
        granted = frozenset(roles) if isinstance(roles, list) else frozenset()
        return _Caller(client_id, delegated=False, permissions=granted, user="")

    def _mailbox(self, mailbox: str) -> str:
        found = self._mailboxes.get(mailbox.casefold())
        if found is None:
            raise _Refused(404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.")
        return found

    def _require(self, caller: _Caller, mailbox: str, *permissions: str) -> None:
        if caller.delegated:
            if caller.permissions.isdisjoint(permissions) or caller.user.casefold() != mailbox.casefold():
                raise _Refused(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            return
        if not caller.permissions.isdisjoint(permissions):
            return  # an application permission: every mailbox of the tenant
        if "Mail.Send" in permissions and mailbox.casefold() in self.rbac_grants.get(caller.client_id, set()):
            return  # RBAC for Applications: this mailbox is in the role assignment's scope
        raise _Refused(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    def _mime(self, headers: Mapping[str, str], body: bytes) -> bytes:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "text/plain":
            raise _Refused(
                400,
                "ErrorInvalidRequest",
                "The sandbox takes messages in MIME format only (Content-Type: text/plain).",
            )
        try:
            decoded = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise _Refused(
                400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."
            )
        return decoded

    def _check_sender(self, mime: bytes, mailbox: str) -> None:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(mime)
        _, sender = email.utils.parseaddr(str(headers.get("From", "")))
        if (
            sender
            and sender.casefold() != mailbox.casefold()
            and sender.casefold() not in self.send_as.get(mailbox.casefold(), set())
        ):
            raise _Refused(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right to send "
                "mail on behalf of the specified sending account.",
            )

    # --- storing ---------------------------------------------------------------------------------

    def _deliver(self, mailbox: str, mime: bytes) -> None:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(mime)
        values = [str(v) for name in ("To", "Cc", "Bcc") for v in headers.get_all(name, [])]
        recipients = [address for _, address in email.utils.getaddresses(values) if address]
        if not recipients:
            raise _Refused(400, "ErrorInvalidRecipients", "At least one recipient is required.")
        _, sender = email.utils.parseaddr(str(headers.get("From", "")))
        self.store.save(
            auth_user=mailbox,
            mail_from=sender or mailbox,
            rcpt_tos=list(dict.fromkeys(recipients)),
            data=mime,
            message_id=str(headers.get("Message-ID", "")).strip(),
        )

    def _draft(self, draft_id: str, mailbox: str) -> _Draft:
        with self._lock:
            draft = self._drafts.get(draft_id)
        if draft is None or draft.mailbox != mailbox:
            raise _Refused(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return draft

    def _attach(self, draft: _Draft, body: bytes) -> HttpReply:
        item = _json_body(body)
        if item.get("@odata.type") != "#microsoft.graph.fileAttachment":
            raise _Refused(400, "ErrorInvalidRequest", "Only fileAttachment is supported by the sandbox.")
        try:
            content = base64.b64decode(str(item.get("contentBytes", "")), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Refused(400, "ErrorInvalidRequest", "contentBytes is not base64.") from exc
        with self._lock:
            draft.attachments.append((str(item.get("name")), str(item.get("contentType")), content))
        return _json_reply(201, {"id": uuid.uuid4().hex, "size": len(content)})

    def _create_upload_session(self, draft_id: str, caller: _Caller, body: bytes) -> HttpReply:
        item = _json_body(body).get("AttachmentItem")
        if not isinstance(item, dict) or item.get("attachmentType") != "file":
            raise _Refused(
                400, "ErrorInvalidRequest", "AttachmentItem with attachmentType 'file' is required."
            )
        size = item.get("size")
        if not isinstance(size, int) or size < UPLOAD_MINIMUM:
            raise _Refused(
                400,
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                f"Attachment size must be at least {UPLOAD_MINIMUM} bytes.",
            )
        if size > UPLOAD_MAXIMUM:
            raise _Refused(
                400, "ErrorAttachmentSizeLimitExceeded", "The attachment exceeds the maximum size."
            )
        token = secrets.token_urlsafe(24)
        upload = _Upload(
            draft_id, caller.client_id, str(item.get("name")), str(item.get("contentType")), size
        )
        with self._lock:
            self._uploads[token] = upload
        return _json_reply(
            201,
            {
                "uploadUrl": f"{self.base_url}/upload/{token}",
                "expirationDateTime": "",
                "nextExpectedRanges": ["0-"],
            },
        )

    def _upload(self, token: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        if "authorization" in headers:
            # The upload URL is pre-authenticated; Microsoft: do not send the Authorization header.
            raise _Refused(
                401, "InvalidAuthenticationToken", "The upload URL does not take an Authorization header."
            )
        with self._lock:
            upload = self._uploads.get(token)
        if upload is None:
            raise _Refused(404, "ErrorItemNotFound", "The upload session does not exist or has expired.")
        start, end, total = _content_range(headers.get("content-range", ""))
        if total != upload.size or start != len(upload.received) or end - start + 1 != len(body):
            raise _Refused(
                416, "InvalidRange", f"Expected bytes from {len(upload.received)} of {upload.size}."
            )
        upload.received.extend(body)
        if len(upload.received) < upload.size:
            return _json_reply(200, {"nextExpectedRanges": [f"{len(upload.received)}-"]})
        with self._lock:
            self._uploads.pop(token, None)
            draft = self._drafts.get(upload.draft_id)
            if draft is not None:
                draft.attachments.append((upload.name, upload.content_type, bytes(upload.received)))
        return _json_reply(201, None, {"Location": f"{self.base_url}/attachments/{uuid.uuid4().hex}"})


def _fault_refusal(fault: GraphFault) -> _Refused:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    return _Refused(fault.status, fault.code, fault.message, headers)


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise _Refused(400, "ErrorInvalidRequest", "The body is not JSON.") from exc
    if not isinstance(value, dict):
        raise _Refused(400, "ErrorInvalidRequest", "The body is not a JSON object.")
    return value


def _content_range(value: str) -> tuple[int, int, int]:
    """``bytes 0-327679/1048576`` as (0, 327679, 1048576)."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    start, _, end = span.partition("-")
    if unit != "bytes" or not (start.isdigit() and end.isdigit() and total.isdigit()):
        raise _Refused(400, "InvalidRange", f"Bad Content-Range {value!r}.")
    return int(start), int(end), int(total)


def _assemble(draft: _Draft) -> bytes:
    """The draft with its attachments, as Exchange re-serialises a message it sends."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(draft.mime)
    assert isinstance(message, EmailMessage)  # policy.default parses to EmailMessage
    for name, content_type, content in draft.attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(
            content, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=name
        )
    return message.as_bytes(policy=email.policy.SMTP)
