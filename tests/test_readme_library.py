"""The README's library example runs as written when pasted into a file."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"


def library_example() -> str:
    section = README.read_text(encoding="utf-8").split("## The library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_library_example_runs_from_a_file(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """Pasted into example.py and run against the sandbox, it sends twice and exits 0."""
    script = tmp_path / "example.py"
    script.write_text(library_example(), encoding="utf-8")
    env = clean_env(tmp_path, SMTP_OAUTH_CONFIG=str(smtp_oauth_sandbox.config_path))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().startswith("250")
    assert len(smtp_oauth_sandbox.delivered()) == 2
