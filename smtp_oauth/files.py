"""One way to write a file that holds a secret or must survive a crash: owner-only and atomic.

``write_private(path, data)`` puts ``data`` in a temporary file beside ``path`` (``mkstemp``
creates it 0600 whatever the umask), fsyncs it, renames it over ``path`` and fsyncs the directory,
so that a reader (another process, send-mail's fast path) sees the old file or the new one, never
half of one, and a crash right after the call keeps the new one (POSIX rename(2); the directory's
fsync makes the rename itself durable). A file that already existed with a wider mode is replaced
by a 0600 one. The token cache, send-mail's settings snapshot, the relay's spool files and the
sandbox's keys and secrets are written with it.

Imports nothing of smtp_oauth.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["PRIVATE_FILE_MODE", "write_private"]

PRIVATE_FILE_MODE = 0o600


def write_private(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8), readable and writable by the owner only.

    ``durable=False`` skips both fsyncs, for a file that only saves time when it survives a crash.
    """
    content = data.encode("utf-8") if isinstance(data, str) else data
    directory = path.parent
    # ".tmp" at the end: what a crash leaves behind is recognisable (the spool removes such files).
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every file system can fsync a directory
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
