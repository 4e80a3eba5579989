"""The coverage gate: a full run of the suite prints line and branch coverage and fails below the floor.

pytest-cov measures (configured in pyproject.toml: branch coverage, subprocesses included) and prints
its table, whose "Cover" column mixes lines and branches; the floor is on lines alone, so the figures
are read back from the combined data file here. Runs of a part of the suite (a path, ``-k``,
``--lf``) print the table but are not held to the floor, nor is a run whose tests failed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

COVERAGE_FLOOR = 90.0  # per cent of the lines of smtp_oauth

_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Figures:
    """Line and branch coverage of the combined data, in per cent."""

    lines: float
    branches: float
    whole_suite: bool = False


def _figures() -> Figures | None:
    import coverage

    measured = coverage.Coverage(config_file=str(_ROOT / "pyproject.toml"))
    if not Path(measured.config.data_file).is_file():
        return None
    measured.load()
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "coverage.json"
        measured.json_report(outfile=str(report), ignore_errors=True)
        totals = json.loads(report.read_text(encoding="utf-8"))["totals"]
    return Figures(lines=totals["percent_statements_covered"], branches=totals["percent_branches_covered"])


def _whole_suite(session: pytest.Session) -> bool:
    config = session.config
    return (
        config.args_source is pytest.Config.ArgsSource.TESTPATHS
        and not config.getoption("keyword")
        and not config.getoption("markexpr")
        and not config.getoption("lf", False)
        and not config.getoption("stepwise", False)
        and not session.testsfailed
    )


def _measuring(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("_cov") and not config.getoption("no_cov", False)


_FIGURES = pytest.StashKey[Figures]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[None]:
    """Reads the figures after pytest-cov has combined the data (its wrapper runs inside this one)."""
    result = yield
    config = session.config
    if hasattr(config, "workerinput") or not _measuring(config) or config.getoption("collectonly"):
        return result
    figures = _figures()
    if figures is None:
        return result
    figures = dataclasses.replace(figures, whole_suite=_whole_suite(session))
    config.stash[_FIGURES] = figures
    if figures.whole_suite and figures.lines < COVERAGE_FLOOR:
        session.testsfailed += 1
    return result


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The two figures under pytest-cov's table, and the verdict."""
    figures = config.stash.get(_FIGURES, None)
    if figures is None:
        return
    line = f"smtp_oauth coverage: lines {figures.lines:.1f}%, branches {figures.branches:.1f}%"
    if not figures.whole_suite:
        terminalreporter.write_line(
            f"{line} (part of the suite: the {COVERAGE_FLOOR:.0f}% floor does not apply)"
        )
    elif figures.lines < COVERAGE_FLOOR:
        terminalreporter.write_line(
            f"{line}: FAIL, below the floor of {COVERAGE_FLOOR:.0f}% of lines", red=True
        )
    else:
        terminalreporter.write_line(f"{line} (floor: {COVERAGE_FLOOR:.0f}% of lines)", green=True)
