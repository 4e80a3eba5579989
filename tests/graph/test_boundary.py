"""httpx stays inside smtp_oauth/graph/, as msal stays in tokens/ and aiosmtplib in smtp/."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "smtp_oauth"


def test_only_the_graph_package_imports_httpx() -> None:
    """No module outside smtp_oauth/graph/ imports httpx."""
    importing = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(import httpx|from httpx\b)", path.read_text(encoding="utf-8"), re.M)
    }
    assert importing
    assert all(name.startswith("graph/") for name in importing), importing
