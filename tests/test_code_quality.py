"""The standards CI holds the code to: ruff-clean, formatted, and `mypy --strict` clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file(), reason="runs from a source checkout only"
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_ruff_finds_nothing() -> None:
    """Every lint rule in pyproject.toml holds for the package, tests and benchmarks."""
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted() -> None:
    """`ruff format` would change nothing."""
    result = _run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    """The package, its tests and bench/ type-check under `mypy --strict` (pyproject.toml)."""
    result = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_comments_cite_no_document_outside_the_repository() -> None:
    """A ``*.md`` named in code or tests is a file of this repository (public sources are URLs/RFCs)."""
    cited = re.compile(r"[\w./-]+\.md\b|\b[\w-]+ research\b")  # a file, or "the ... research" notes
    outside = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for folder in ("smtp_oauth", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for name in cited.findall(line)
        if name.startswith((".", "/")) or not (ROOT / name).is_file()
    ]
    assert not outside, "\n".join(outside)
