"""Installing smtp-oauth (which registers a pytest11 plugin) leaves other projects' pytest runs alone.

The plugin loads in every pytest session of an environment where smtp-oauth is installed, so it is
checked where users meet it: the built wheel and pytest, nothing else, in a fresh virtual environment
(no system site-packages, no pytest-asyncio).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtp_oauth.testing import NEEDS_PYTEST_ASYNCIO

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "pyproject.toml").is_file(), reason="builds the wheel from a source checkout"
    ),
    # Both tests share one virtual environment: building it once is most of their time.
    pytest.mark.xdist_group("fresh-venv"),
]

_UNRELATED_TEST = '''
def test_arithmetic() -> None:
    """A test that knows nothing of smtp-oauth."""
    assert 1 + 1 == 2
'''

_SANDBOX_TEST = '''
def test_wants_the_sandbox(smtp_oauth_sandbox) -> None:
    """Asks for the plugin's fixture where pytest-asyncio is missing."""
'''


@dataclass(frozen=True)
class FreshVenv:
    python: Path
    env: Mapping[str, str]


def _run(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """The wheel built from this checkout and pytest (from the configured index) in a new venv."""
    base = tmp_path_factory.mktemp("fresh-venv")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", base / "dist", ROOT, cwd=base
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (base / "dist").glob("smtp_oauth-*.whl")
    # No pip inside: the running pip installs into it (`pip --python`), which saves ensurepip's time.
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(base / "venv")
    python = base / "venv" / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python)
    installed = _run(*pip, "install", "--quiet", "--no-compile", wheel, "pytest", cwd=base)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # Nothing of this session's pytest (xdist, coverage, addopts, plugins) leaks into the inner run.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "COV_", "COVERAGE_", "PYTHON", "VIRTUAL_ENV"))
    }
    return FreshVenv(python=python, env=env)


def _project(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_an_unrelated_project_runs_green(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    """With only smtp-oauth and pytest installed, another project's test run loads and passes."""
    project = _project(tmp_path, **{"test_unrelated.py": _UNRELATED_TEST})
    result = _run(
        fresh_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project, env=fresh_venv.env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "Error while loading plugin" not in result.stdout + result.stderr


def test_the_sandbox_fixture_says_it_needs_pytest_asyncio(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    """The plugin is loaded there, and its async fixture fails the test naming pytest-asyncio."""
    project = _project(tmp_path, **{"test_sandbox.py": _SANDBOX_TEST})
    result = _run(
        fresh_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project, env=fresh_venv.env
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert NEEDS_PYTEST_ASYNCIO in result.stdout.replace("\n", "")
