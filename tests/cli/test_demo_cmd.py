"""`smtp-oauth demo`: the whole chain on its own sandbox, with nothing configured, exits 0."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tests.cli.admin_cli import clean_env, run_cli

RELAY_INSTALLED = importlib.util.find_spec("smtp_oauth.relay.service") is not None


def test_demo_passes_every_step_with_nothing_configured(tmp_path: Path) -> None:
    """In an empty directory with no configuration, every numbered step passes and the mail is on disk."""
    # A stray setting in the shell must not leak into the demo (the environment beats files).
    env = clean_env(tmp_path, TMPDIR=str(tmp_path), SMTP_OAUTH_SMTP__PORT="1")
    done = run_cli("demo", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = re.findall(r"^\[(\d)/(\d)\] (PASS|FAIL)", done.stdout, flags=re.MULTILINE)
    expected = 6 if RELAY_INSTALLED else 5
    assert [status for _, _, status in steps] == ["PASS"] * expected
    assert "ignoring SMTP_OAUTH_SMTP__PORT" in done.stdout
    mail_dir = Path(re.search(r"^Delivered messages \(\d+, .*\): (.+)$", done.stdout, re.MULTILINE)[1])  # type: ignore[index]
    assert mail_dir.is_relative_to(tmp_path)
    # Every step after the token sends one: through Exchange, but the Graph step through Graph.
    assert len(list(mail_dir.glob("*.eml"))) == expected - 3
    assert len(list((mail_dir.parent / "graph-mail").glob("*.eml"))) == 1
