"""``send-mail``: compose and send one message, or act as ``sendmail`` for legacy software.

A thin shell: parse the command line (send_mail_args), build the message (message,
sendmail_input), hand it on, and turn errors into sysexits codes with one line naming the cause
and a hint. With ``[send_mail] via = "relay"`` the message goes to the local relay's submission
socket (``relay/client.py``) and the relay owns delivery; otherwise the configured transport
(``create_transport``) sends it.

Legacy software runs this once per message, so start-up time matters. The settings come from the
snapshot the last full validation left (``settings/snapshot.py``) while nothing they depend on has
changed, so a send through the relay imports neither pydantic nor asyncio. So does a direct send
over SMTP while the token cache holds a valid token (``tokens/fastpath.py`` reads it without msal):
the stdlib client (``smtp/stdlib_client.py``) sends the one message, with the Mailer's dialogue and
error rules. Whatever that path cannot do (no valid cached token, a token the server refuses, Graph
or a fallback transport, a managed identity, -v, DEBUG logs, a big message or too many recipients
for the service) goes the full way: validated settings, MSAL, the Mailer over asyncio. Nothing of
the relay's server side, the sandbox or aiosmtpd is ever imported. EHLO needs no DNS look-up, the
cyclic garbage collector stays off for the run, and the console script ends a send it made itself
with ``os._exit`` once everything is flushed (see bench/bench_send_mail.py).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from smtp_oauth.cli.common import report_error
from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.cli.send_mail_args import SendMailArgs, UsageError, parse_args
from smtp_oauth.errors import FailureKind, MessageError, SmtpOAuthError

if TYPE_CHECKING:
    from email.headerregistry import Address
    from email.message import EmailMessage

    from smtp_oauth.settings.models import Settings
    from smtp_oauth.settings.snapshot import DirectView, SendMailView, SettingsProbe
    from smtp_oauth.tls import PreloadedTrust
    from smtp_oauth.tokens.types import TokenProvider

__all__ = ["console_main", "main"]

SENDMAIL_NAME = "sendmail"
# Names sendmail is also installed under (Postfix, sendmail): each is one mode, never composing.
_LINK_MODES = {"mailq": "queue", "newaliases": "aliases"}
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class InputFileError(SmtpOAuthError):
    """A file named on the command line cannot be read (exit 66, EX_NOINPUT)."""

    kind = FailureKind.INPUT


class Outgoing(NamedTuple):
    """What to send: the message (composed, or raw bytes in sendmail mode) and its envelope.

    A NamedTuple, not a dataclass: ``dataclasses`` is not worth its import on this path.
    """

    message: EmailMessage | bytes
    sender: str
    recipients: list[str]

    def __repr__(self) -> str:
        return f"Outgoing(message=..., sender={self.sender!r}, recipients={self.recipients!r})"


class CacheFirstTokenProvider:
    """The token the cache already holds, else (or when a fresh one is needed) MSAL's.

    Keeps msal out of the common case: a cron job sending with a cached, valid token.
    ``cached_token`` is for ``cached_scopes`` (None: identity.scopes); other scopes go to MSAL.
    ``refused``: the server has just refused the cached token (the stdlib path's first try), so
    the first token asked for is a fresh one.
    """

    def __init__(
        self,
        settings: Settings,
        cached_token: str | None,
        cached_scopes: Sequence[str] | None = None,
        *,
        refused: bool = False,
    ) -> None:
        from smtp_oauth.tokens.types import scope_key  # a direct send only

        self._settings = settings
        self._cached = cached_token
        self._cached_key = scope_key(cached_scopes or settings.smtp_scopes)
        self._provider: TokenProvider | None = None
        self._refresh_next = refused

    async def access_token(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        from smtp_oauth.tokens.types import scope_key

        key = scope_key(scopes or self._settings.smtp_scopes)
        if self._cached is not None and key == self._cached_key:
            if not force_refresh:
                return self._cached
            self._cached = None  # refused once (535, 401): never offer it again
        if self._refresh_next and key == self._cached_key:
            force_refresh, self._refresh_next = True, False
        if self._provider is None:
            from smtp_oauth.tokens.provider import create_token_provider

            self._provider = create_token_provider(self._settings)
        return await self._provider.access_token(force_refresh=force_refresh, scopes=scopes)


def _read_file(path: str, what: str) -> bytes:
    """A file named on the command line; InputFileError (exit 66) when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _decode_text(data: bytes) -> str:
    """UTF-8, or ISO-8859-1 for older files that are not (every byte string decodes as Latin-1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_stdin() -> bytes:
    """All of stdin (empty when the process was started without one)."""
    return sys.stdin.buffer.read() if sys.stdin is not None else b""


def _sender_addresses(args: SendMailArgs, default_sender: str | None) -> tuple[Address, Address]:
    """(envelope sender, From address): -f beats --from beats smtp.from_address/username."""
    from email.headerregistry import Address

    from smtp_oauth.mail.compose import parse_address

    header_from = parse_address(args.sender, what="--from") if args.sender else None
    # A bare local name (cron's `-f root`) is a local user, not an address Exchange can send as:
    # Postfix would qualify it with its own domain; here the configured mailbox sends instead.
    envelope_from = args.envelope_from if args.envelope_from and "@" in args.envelope_from else None
    if envelope_from:
        envelope = parse_address(envelope_from, what="envelope sender (-f)")
    elif header_from is not None:
        envelope = header_from
    elif default_sender is not None:
        envelope = parse_address(default_sender, what="smtp.from_address")
    else:  # unreachable: settings are loaded unless a sender was given
        raise MessageError("no sender: give --from or -f")
    if header_from is None:
        # One line: a name is never a place to smuggle in a second header.
        full_name = " ".join((args.full_name or "").split())
        header_from = Address(full_name, envelope.username, envelope.domain)
    return envelope, header_from


def _compose(args: SendMailArgs, envelope: Address, header_from: Address) -> Outgoing:
    """Build the message from the compose options; body from --body, --body-file or stdin."""
    from smtp_oauth.mail.compose import Attachment, build_message, dedupe_addresses, parse_addresses

    headers = []
    # "--header 'Cc: x'" means --cc x: written as a plain header, x would be named but never sent to.
    by_header: dict[str, list[str]] = {"to": [], "cc": [], "bcc": []}
    for header in args.header:
        name, colon, value = header.partition(":")
        name = name.strip()
        # RFC 5322 3.6.8: a field name is printable ASCII without ':' or spaces.
        if not colon or not name or not all("!" <= char <= "~" for char in name):
            raise UsageError(f"--header expects 'Name: value', got {header!r}")
        if name.lower() in by_header:
            by_header[name.lower()].append(value.strip())
        else:
            headers.append((name, value.strip()))
    to = parse_addresses([*args.to, *args.recipients, *by_header["to"]], what="To")
    cc = parse_addresses([*args.cc, *by_header["cc"]], what="Cc")
    bcc = parse_addresses([*args.bcc, *by_header["bcc"]], what="Bcc")
    recipients = dedupe_addresses([*to, *cc, *bcc])
    if not recipients:
        raise MessageError("no recipients", hint="Give addresses as arguments or with --to, --cc or --bcc.")
    html = _decode_text(_read_file(args.html, "HTML file")) if args.html else None
    attachments = [Attachment(Path(path).name, _read_file(path, "attachment")) for path in args.attach]
    if args.body is not None:
        text: str | None = args.body
    elif args.body_file:
        text = _decode_text(_read_file(args.body_file, "body file"))
    elif html is not None and sys.stdin is not None and sys.stdin.isatty():
        text = None  # --html alone from a terminal: nobody is going to type a text part
    else:
        text = _decode_text(_read_stdin())
    message = build_message(
        sender=header_from,
        to=to,
        cc=cc,
        reply_to=parse_addresses(args.reply_to, what="Reply-To"),
        subject=args.subject,
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
    )
    return Outgoing(message, envelope.addr_spec, recipients)


def _sendmail(args: SendMailArgs, envelope: Address, header_from: Address) -> Outgoing:
    """Read a finished message from stdin and prepare it the way sendmail does."""
    from smtp_oauth.mail.compose import parse_addresses
    from smtp_oauth.mail.sendmail_input import prepare_message, read_message

    extra = parse_addresses([*args.recipients, *args.to, *args.cc, *args.bcc])
    stdin = sys.stdin.buffer if sys.stdin is not None else []
    raw = read_message(stdin, ignore_dots=args.ignore_dots)
    prepared = prepare_message(
        raw,
        envelope_sender=envelope,
        recipients=extra,
        read_recipients=args.read_recipients,
        from_address=header_from,
    )
    if not prepared.recipients:
        hint = (
            "The message has no To, Cc or Bcc header and no recipients were given as arguments."
            if args.read_recipients
            else "Give recipients as arguments, or use -t to take them from To, Cc and Bcc."
        )
        raise MessageError("no recipients", hint=hint)
    return Outgoing(prepared.data, prepared.sender, prepared.recipients)


def _print_dry_run(outgoing: Outgoing, prog: str) -> None:
    """The message on stdout with this system's line endings; the envelope on stderr."""
    from email import policy

    from smtp_oauth.mail.compose import needs_smtputf8

    if isinstance(outgoing.message, bytes):
        data = outgoing.message.replace(b"\r\n", b"\n")
    else:
        utf8 = needs_smtputf8([outgoing.sender, *outgoing.recipients])
        data = outgoing.message.as_bytes(policy=policy.default.clone(utf8=utf8))
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    envelope = ", ".join(f"<{r}>" for r in outgoing.recipients)
    print(f"{prog}: dry run, nothing sent (envelope from <{outgoing.sender}> to {envelope})", file=sys.stderr)


def _print_transcript(direction: str, line: str) -> None:
    """``-v``: one line of the SMTP dialogue on stderr (Mailer already redacts; this is a second net)."""
    from smtp_oauth.logs import redact

    arrow = "-->" if direction == "C" else "<--"
    print(f"{arrow} {redact(line)}", file=sys.stderr)


def _print_refused(refused: dict[str, tuple[int, str]], prog: str) -> None:
    for address, (code, text) in refused.items():
        # sendmail's way: the message went to the others; say who did not get it.
        print(f"{prog}: {address} refused: {code} {text}", file=sys.stderr)


async def _deliver(
    settings: Settings,
    outgoing: Outgoing,
    provider: CacheFirstTokenProvider,
    *,
    trust: PreloadedTrust | None,
    verbose: bool,
) -> tuple[str, dict[str, tuple[int, str]]]:
    """Send through the configured transport (SMTP, or Graph); the service's reply and the refused."""
    from smtp_oauth.transport import create_transport

    transcript = _print_transcript if verbose else None
    async with create_transport(
        settings, token_provider=provider, transcript=transcript, trust=trust
    ) as transport:
        result = await transport.send(
            outgoing.message, sender=outgoing.sender, recipients=outgoing.recipients
        )
    return result.reply, result.refused


def _fast_path(view: SendMailView, args: SendMailArgs) -> DirectView | None:
    """The snapshot's direct part, when the stdlib path may try this send (None: the full path)."""
    if view.direct is None or args.verbose or view.log_level == "DEBUG":
        return None  # no SMTP (Graph, a fallback), no cached token to look for, or a transcript wanted
    return view.direct


def _message_bytes(outgoing: Outgoing) -> bytes:
    """The message as it goes on the wire: raw sendmail input as read, a composed one flattened."""
    if isinstance(outgoing.message, bytes):
        return outgoing.message
    from email import policy
    from email.generator import BytesGenerator
    from io import BytesIO

    from smtp_oauth.mail.compose import needs_smtputf8

    utf8 = needs_smtputf8([outgoing.sender, *outgoing.recipients])
    with BytesIO() as buffer:
        BytesGenerator(buffer, policy=policy.SMTPUTF8 if utf8 else policy.SMTP).flatten(outgoing.message)
        return buffer.getvalue()


def _submit(view: SendMailView, outgoing: Outgoing, *, verbose: bool, prog: str) -> int:
    """``via = "relay"``: hand the message to the local relay; 0 once it is stored there."""
    from smtp_oauth.relay.client import SubmissionClient
    from smtp_oauth.settings.discovery import submission_socket_candidates

    paths = submission_socket_candidates(view.submission_socket_path)
    with SubmissionClient(paths, timeout=view.smtp_timeout, context=view.hint_context) as client:
        reply, refused = client.send(
            _message_bytes(outgoing), sender=outgoing.sender, recipients=outgoing.recipients
        )
    for address, (code, text) in refused.items():
        print(f"{prog}: {address} refused: {code} {text}", file=sys.stderr)
    if verbose:
        print(f"{prog}: handed to the relay: {reply}", file=sys.stderr)
    return int(ExitCode.OK)


def _configure_logging(args: SendMailArgs, level: str, log_format: str) -> None:
    from smtp_oauth.logs import configure_logging

    # Programs that call sendmail mail whatever it prints (cron): stay quiet unless asked.
    quiet = "ERROR" if level == "ERROR" else "WARNING"
    configure_logging(level if args.verbose else quiet, log_format)


def _view_of(settings: Settings) -> SendMailView:
    from smtp_oauth.settings.snapshot import view_of
    from smtp_oauth.tokens.fastpath import cache_query

    token = cache_query(settings, scopes=settings.token_scopes(), min_validity=settings.refresh_margin)
    return view_of(settings, token=token)


def _load_settings(args: SendMailArgs, probe: SettingsProbe | None = None) -> Settings:
    """Settings from --config (or discovered), fully validated; kept as a snapshot for the next run."""
    from smtp_oauth.settings.loading import load_settings

    settings = load_settings(args.config, profile=args.profile)
    if probe is not None:
        probe.write(_view_of(settings))
    return settings


def _settings_view(args: SendMailArgs) -> tuple[SendMailView, Settings | None]:
    """What the send needs: from the snapshot of the last validation when nothing changed since
    (no pydantic), else from a full load (which refreshes the snapshot). Logging is set up by the
    caller, once it knows whether anything can log (the relay and the stdlib paths log nothing)."""
    from smtp_oauth.settings.snapshot import SettingsProbe

    probe = SettingsProbe(
        args.config, profile=args.profile
    )  # before loading: a file edited meanwhile is loaded again next time
    view = probe.read()
    if view is not None:
        return view, None
    settings = _load_settings(args, probe)
    return _view_of(settings), settings


def _other_mode(args: SendMailArgs, prog: str) -> int:
    """sendmail's -bs, -bp (mailq), -q, -bi (newaliases) and -bv: never composing a message."""
    from smtp_oauth.cli import sendmail_modes

    if args.mode == "aliases":
        return sendmail_modes.no_aliases(prog)
    if args.mode == "verify":
        raise UsageError(
            "-bv (verify addresses) is not supported: Exchange Online checks recipients only when it "
            "delivers; a refused one is reported then"
        )
    from smtp_oauth.settings.discovery import submission_socket_candidates

    view, _ = _settings_view(args)
    if view.via != "relay" or args.verbose:
        _configure_logging(args, view.log_level, view.log_format)
    paths = submission_socket_candidates(view.submission_socket_path)
    if args.mode == "smtp":
        return sendmail_modes.smtp_on_stdio(paths)
    if args.mode == "queue":
        return sendmail_modes.list_queue(paths, timeout=view.smtp_timeout)
    return sendmail_modes.flush_queue(paths, timeout=view.smtp_timeout, verbose=bool(args.verbose), prog=prog)


class _Outcome(NamedTuple):
    """What ``_run`` did: the exit code, and whether the stdlib path alone made it (exit at once)."""

    code: int
    exit_now: bool = False


def _run(args: SendMailArgs, *, as_sendmail: bool, prog: str) -> _Outcome:
    """Compose or read the message, then print it (--dry-run) or send it. Raises our errors."""
    sendmail_mode = as_sendmail or args.read_recipients or args.ignore_dots or args.sendmail_flags
    if sendmail_mode and args.compose_options:
        raise UsageError(
            f"{', '.join(args.compose_options)} cannot be used in sendmail mode "
            "(-t, -i/-oi, or when called as sendmail): the message on stdin is sent as it is"
        )
    if args.mode != "deliver":
        return _Outcome(_other_mode(args, prog))
    explicit_sender = bool(args.sender or (args.envelope_from and "@" in args.envelope_from))
    view, settings = (None, None) if args.dry_run and explicit_sender else _settings_view(args)
    via_relay = view is not None and view.via == "relay"
    fast = _fast_path(view, args) if view is not None and not via_relay and not args.dry_run else None
    trust = None
    if not args.dry_run and not via_relay and fast is None:
        from smtp_oauth.tls import PreloadedTrust

        # The CA bundle loads on another core while pydantic is imported and the message built.
        trust = PreloadedTrust()
    envelope, header_from = _sender_addresses(args, view.sender if view is not None else None)
    build = _sendmail if sendmail_mode else _compose
    outgoing = build(args, envelope, header_from)
    if args.dry_run:
        _print_dry_run(outgoing, prog)
        return _Outcome(int(ExitCode.OK))
    assert view is not None  # read whenever not a dry run
    return _hand_on(args, view, settings, outgoing, fast, trust=trust, prog=prog)


def _hand_on(
    args: SendMailArgs,
    view: SendMailView,
    settings: Settings | None,
    outgoing: Outgoing,
    fast: DirectView | None,
    *,
    trust: PreloadedTrust | None,
    prog: str,
) -> _Outcome:
    """To the relay's socket, or by the stdlib path, else the full way. The first two report their
    own failures, so that the console script can exit at once after them too."""
    try:
        if view.via == "relay":
            if args.verbose:  # nothing else logs on the way to the relay
                _configure_logging(args, view.log_level, view.log_format)
            code = _submit(view, outgoing, verbose=bool(args.verbose), prog=prog)
            return _Outcome(code, exit_now=_nothing_heavy_loaded())
        if fast is not None:
            from smtp_oauth.cli.send_mail_direct import send_direct

            def settings_now() -> Settings:  # only for a token the server refused: MSAL needs them
                loaded = settings if settings is not None else _load_settings(args)
                _configure_logging(args, loaded.log_level, loaded.log_format)
                return loaded

            delivered = send_direct(
                fast,
                view,
                outgoing.message,
                sender=outgoing.sender,
                recipients=outgoing.recipients,
                settings=settings_now,
            )
            if delivered is not None:
                _print_refused(delivered.refused, prog)
                return _Outcome(int(ExitCode.OK), exit_now=_nothing_heavy_loaded())
    except SmtpOAuthError as error:  # the error the full path would report for the same failure
        report_error(error, prog=prog)
        return _Outcome(exit_code_of(error), exit_now=_nothing_heavy_loaded())
    return _Outcome(_send_full(args, settings, outgoing, trust=trust, prog=prog))


def _nothing_heavy_loaded() -> bool:
    """True while neither MSAL nor asyncio ran (a token refused once brings both): then, after a
    send by the stdlib path or through the relay, nothing but our own output is left for the
    interpreter's shutdown to finish."""
    return "msal" not in sys.modules and "asyncio" not in sys.modules


def _send_full(
    args: SendMailArgs,
    settings: Settings | None,
    outgoing: Outgoing,
    *,
    trust: PreloadedTrust | None,
    prog: str,
) -> int:
    """The full path: validated settings, the token cache or MSAL, the configured transport."""
    if settings is None:  # the snapshot served: direct delivery needs the validated settings
        settings = _load_settings(args)
    _configure_logging(args, settings.log_level, settings.log_format)

    import asyncio

    from smtp_oauth.tokens.provider import cached_access_token

    # Read before the event loop starts: a small file, and no msal import when it serves.
    cached = cached_access_token(
        settings, scopes=settings.token_scopes(), min_validity=settings.refresh_margin
    )
    provider = CacheFirstTokenProvider(settings, cached, settings.token_scopes())
    reply, refused = asyncio.run(
        _deliver(settings, outgoing, provider, trust=trust, verbose=bool(args.verbose))
    )
    _print_refused(refused, prog)
    if args.verbose:
        print(f"{prog}: sent: {reply}", file=sys.stderr)
    return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of ``send-mail`` (and of ``sendmail`` when installed or linked under that name)."""
    return _guarded_main(argv, prog).code


def console_main() -> int:
    """The console script: ``main``, then, after a send the stdlib path or the relay's socket
    took alone, ``os._exit``.

    Such a run leaves nothing behind that the interpreter's shutdown would still do: no thread, no
    atexit handler of ours, no open file; what it skips is the final garbage collection over every
    object the run created, a good part of its CPU. Output is flushed first (the exit code and the
    error line are what cron reports).
    """
    outcome = _guarded_main(None, None)
    if outcome.exit_now:
        _flush_everything()
        os._exit(outcome.code)
    return outcome.code


def _flush_everything() -> None:
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()  # flushes and closes every handler, as atexit would
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
                stream.flush()


def _guarded_main(argv: Sequence[str] | None, prog: str | None) -> _Outcome:
    collecting = gc.isenabled()
    # One process per message: the imports and pydantic's model building allocate some 10^5
    # objects that all live until exit, and the cyclic collector would walk them again and again
    # (about a tenth of the run). Reference counting still frees everything else, messages included.
    gc.disable()
    try:
        return _main(argv, prog)
    finally:
        if collecting:
            gc.enable()


def _main(argv: Sequence[str] | None, prog: str | None) -> _Outcome:
    invoked_as = prog or os.path.basename(sys.argv[0])
    as_sendmail = invoked_as in {SENDMAIL_NAME, *_LINK_MODES}
    name = invoked_as if invoked_as in _LINK_MODES else SENDMAIL_NAME if as_sendmail else "send-mail"
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, prog=name)
        if invoked_as in _LINK_MODES:  # `mailq` lists the queue and `newaliases` rebuilds nothing
            args.mode = _LINK_MODES[invoked_as]
        return _run(args, as_sendmail=as_sendmail, prog=name)
    except UsageError as error:
        print(f"{name}: {error}\nusage: see `{name} --help`", file=sys.stderr)
        return _Outcome(int(ExitCode.USAGE))
    except SmtpOAuthError as error:
        report_error(error, prog=name)
        return _Outcome(exit_code_of(error))
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return _Outcome(INTERRUPTED)
    except BrokenPipeError:  # --dry-run piped into `head`
        return _Outcome(int(ExitCode.OK))
    except Exception:  # a bug of ours: say so, with the traceback, and use sendmail's EX_SOFTWARE
        import traceback

        print(f"{name}: internal error (please report it):", file=sys.stderr)
        traceback.print_exc()
        return _Outcome(int(ExitCode.SOFTWARE))


if __name__ == "__main__":
    sys.exit(console_main())
