"""One owner-only atomic writer: every file holding a secret or a spooled body is written alike."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from smtp_oauth.files import write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 000 the file is still 0600 (the spool's bodies were written with the umask's mode)."""
    old = os.umask(0)
    try:
        write_private(tmp_path / "secret", "s3cret")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "secret") == 0o600
    assert (tmp_path / "secret").read_text(encoding="utf-8") == "s3cret"


def test_an_existing_open_file_is_replaced_by_a_private_one(tmp_path: Path) -> None:
    """A 0644 file rewritten is 0600 afterwards (the sandbox's writer kept an old file's inode open)."""
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert (_mode(path), path.read_bytes()) == (0o600, b"new")


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """Nothing half-written: a write that fails leaves the previous content and no stray file."""
    path = tmp_path / "cache.json"
    write_private(path, "{}")
    with pytest.raises(TypeError):
        write_private(path, memoryview(b"x").tolist())  # type: ignore[arg-type]  # not bytes: fails mid-write
    assert path.read_text(encoding="utf-8") == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]
