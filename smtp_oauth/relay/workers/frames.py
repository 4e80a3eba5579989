"""What the relay's main process and its accept workers say to each other over a socketpair.

Each frame is a 4-byte big-endian length and a pickle. Pickle because the worker's setup is the
validated ``Settings`` (secrets included) and the two ends are the same program, started by each
other and connected by a socketpair no other process can reach: nothing untrusted is unpickled.

main -> worker: ``Setup`` once, then ``Reload`` on SIGHUP. worker -> main: ``Ready`` once it
accepts, ``Queued`` after each message it committed (delivery is woken, ``/metrics`` counts it),
``Connections`` when its number of open sessions changes.

The limits (``remote.py`` asks, ``authority.py`` answers in the main process): ``Admit`` ->
``Admission`` for each new connection and ``Release`` when it closes; ``LoginBegin`` -> ``LoginTurn``
once the address's turn is the attempt's, then ``LoginSucceeded``, or ``LoginFailed`` ->
``LoginDelay``, and ``LoginEnd`` (the turn is given back); ``Reserve`` -> ``Reserved`` before a
body's next part goes to disk, and ``GiveBack`` when the transfer ends. A ``ticket`` pairs a
question with its answer; it is unique within one worker's channel.
A worker stops on SIGTERM; the main process stops on the worker's end closing (it died).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtp_oauth.relay.listener.session import ListenerTuning
    from smtp_oauth.settings.models import RelaySettings, Settings

__all__ = [
    "Admission",
    "Admit",
    "Connections",
    "GiveBack",
    "LoginBegin",
    "LoginDelay",
    "LoginEnd",
    "LoginFailed",
    "LoginSucceeded",
    "LoginTurn",
    "Queued",
    "Ready",
    "Release",
    "Reload",
    "Reserve",
    "Reserved",
    "Setup",
    "read_frame",
    "tell",
    "write_frame",
]

_LENGTH = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # a setup with thousands of users is well below this


@dataclass(frozen=True)
class Setup:
    """Everything a worker needs to accept mail as the main process would."""

    settings: Settings = field(repr=False)  # secrets inside
    default_mailbox: str
    profile_mailboxes: dict[str, str]
    spool_dir: Path
    incoming_dir: Path
    tuning: ListenerTuning
    index: int  # 1..relay.workers: in the worker's log lines
    # The inherited sockets are only bound (SO_REUSEPORT): the worker listens on its own siblings.
    # False: they are listening, shared by all the workers.
    reuse_port: bool = False


@dataclass(frozen=True)
class Reload:
    """New users, sender rules, limits and TLS files for new sessions (validated by the main process)."""

    relay: RelaySettings = field(repr=False)


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Queued:
    queue_id: str
    mailbox: str


@dataclass(frozen=True)
class Connections:
    """How many SMTP sessions the worker has open (sent when it changes; tests, balance)."""

    open: int


@dataclass(frozen=True)
class Admit:
    """May a new connection from ``peer`` be served?"""

    ticket: int
    peer: str


@dataclass(frozen=True)
class Admission:
    ticket: int
    refusal: str | None  # the 421 reply, or None: counted, serve it


@dataclass(frozen=True)
class Release:
    """A connection from ``peer`` that was admitted has closed."""

    peer: str


@dataclass(frozen=True)
class LoginBegin:
    """An AUTH attempt for ``login`` from ``address``: wait for the address's turn."""

    ticket: int
    login: str
    address: str


@dataclass(frozen=True)
class LoginTurn:
    ticket: int
    refused: bool  # 454 without checking the password


@dataclass(frozen=True)
class LoginSucceeded:
    ticket: int
    user: str


@dataclass(frozen=True)
class LoginFailed:
    ticket: int


@dataclass(frozen=True)
class LoginDelay:
    ticket: int
    failures: int
    delay: float


@dataclass(frozen=True)
class LoginEnd:
    ticket: int


@dataclass(frozen=True)
class Reserve:
    """May ``size`` more bytes of an unfinished transfer from ``peer`` go to disk?"""

    ticket: int
    peer: str
    size: int


@dataclass(frozen=True)
class Reserved:
    ticket: int
    refusal: str | None  # why not (the allowance is used up), or None: charged


@dataclass(frozen=True)
class GiveBack:
    """A transfer from ``peer`` has ended: the ``size`` bytes it was charged no longer count."""

    peer: str
    size: int


def write_frame(writer: asyncio.StreamWriter, frame: object) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(data)) + data)


def tell(writer: asyncio.StreamWriter, frame: object) -> bool:
    """Write ``frame`` unless the channel has closed (the other process has gone); whether it was.

    A closed channel is not an error of the sender's: uvloop raises on a write to a closed
    transport, and a worker that has just committed a message must still answer 250 for it.
    """
    if writer.is_closing():
        return False
    write_frame(writer, frame)
    return True


async def read_frame(reader: asyncio.StreamReader) -> object | None:
    """The next frame, or None once the other end has closed (or sent something broken)."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        if length > MAX_FRAME:
            return None
        frame: object = pickle.loads(await reader.readexactly(length))  # noqa: S301  # our own peer, see above
    except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError, EOFError):
        return None
    return frame
