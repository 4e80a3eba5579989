"""Dependencies point one way: the import-linter contracts in pyproject.toml hold for smtp_oauth.

Each contract is its own test, so a failure names the rule that broke and lists the offending
imports (module, line). `lint-imports` in the checkout runs the same contracts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
pytestmark = pytest.mark.skipif(not PYPROJECT.is_file(), reason="runs from a source checkout only")


def _contracts() -> dict[str, str]:
    if not PYPROJECT.is_file():
        return {}
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return {contract["id"]: contract["name"] for contract in config["tool"]["importlinter"]["contracts"]}


CONTRACTS = _contracts()

# import-linter puts the working directory first on sys.path, so it reads this checkout's package.
_LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename='pyproject.toml', limit_to_contracts=(sys.argv[1],), "
    "no_cache=True, no_logo=True))"
)


@pytest.mark.parametrize("contract_id", sorted(CONTRACTS))
def test_import_contract_holds(contract_id: str) -> None:
    """The import-linter contract holds for the package (its name says the rule)."""
    result = subprocess.run(
        [sys.executable, "-c", _LINT, contract_id],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},  # no wrapped lines in the report
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{CONTRACTS[contract_id]}:\n{result.stdout}{result.stderr}"
    assert "1 kept, 0 broken" in result.stdout


def test_every_contract_has_an_id() -> None:
    """Contracts are run one by one by their id: a contract without one would be skipped silently."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    assert len(CONTRACTS) == len(contracts) >= 7


_IMPORT_EVERYTHING = """
import importlib, pkgutil, warnings
# requests and urllib3 add filters of their own at import: load the dependencies first.
for dependency in ("requests", "msal", "httpx", "aiosmtplib", "aiosmtpd", "pydantic_settings", "psycopg"):
    try:
        importlib.import_module(dependency)
    except ImportError:
        pass
before = list(warnings.filters)
import smtp_oauth
for module in pkgutil.walk_packages(smtp_oauth.__path__, "smtp_oauth."):
    if module.name not in {"smtp_oauth.__main__", "smtp_oauth.testing"}:  # a program, a pytest plugin
        importlib.import_module(module.name)
print([f for f in warnings.filters if f not in before] or "unchanged")
"""


def test_importing_every_module_leaves_the_warning_filters_alone() -> None:
    """No module of smtp_oauth changes the host program's warnings.filters when imported."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "unchanged"
