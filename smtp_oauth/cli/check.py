"""``smtp-oauth check``: walk the chain step by step and say where it breaks and how to fix it.

A thin shell over :mod:`smtp_oauth.diagnostics`: each step is printed as soon as it is known
(a step waiting on a firewall's timeout should not look like a hang), with its explanation and
the fix filled in with the user's ids. ``--json`` prints one document for monitoring instead.
Exit 0 only if every step passed; otherwise the first failure's sysexits code.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any, TextIO

from smtp_oauth.cli.exit_codes import exit_code_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from smtp_oauth.diagnostics import CheckReport, StepResult
    from smtp_oauth.settings.models import Settings

__all__ = ["add_arguments", "format_step", "run"]

_LABELS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
_WIDTH = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smtp-oauth check``."""
    parser.add_argument(
        "--send-test",
        metavar="ADDR",
        help="after AUTH succeeds, also send a short test message to ADDR",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document (for monitoring)")
    parser.add_argument(
        "--all-profiles",
        action="store_true",
        help="check the top level and then every [profiles.NAME], one after the other",
    )


def format_step(step: StepResult) -> str:
    """``PASS  access token  issued by ...`` then indented ``fix:`` lines."""
    first, *more = step.detail.splitlines() or [""]
    lines = [f"{_LABELS[step.status.value]:<5} {step.title}: {first}"]
    lines.extend(f"      {line.strip()}" for line in more)
    if step.fix:
        label = "note" if step.status.value == "warn" else "fix"
        # Line by line: a fix may hold a script, whose lines must stay lines.
        for index, paragraph in enumerate(step.fix.splitlines()):
            lines.extend(
                textwrap.wrap(
                    paragraph,
                    width=_WIDTH,
                    initial_indent=f"      {label}: " if index == 0 else "           ",
                    subsequent_indent="           ",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
    return "\n".join(lines)


def _printer(stream: TextIO) -> Callable[[StepResult], None]:
    def show(step: StepResult) -> None:
        print(format_step(step), file=stream, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    """Run the checks; print each step (or the JSON report); exit with the first failure's code."""
    from smtp_oauth.cli.common import load_settings_from_args

    def load() -> Settings:
        return load_settings_from_args(args)

    if not args.all_profiles:
        report = _check(load, args)
        if args.json:
            print(json.dumps(_as_json(report), indent=2))
        return _exit_code(report)
    from smtp_oauth.settings.loading import settings_for_profile

    base = load_settings_from_args(args)
    names: list[str | None] = [None, *sorted(base.profiles)]
    reports = {}
    for name in names:
        if not args.json:
            print(f"== {f'profile {name}' if name else 'top level'}", flush=True)
        reports[name or ""] = _check(lambda name=name: settings_for_profile(base, name), args)  # type: ignore[misc]
        if not args.json:
            print()
    if args.json:
        print(
            json.dumps({"profiles": {name: _as_json(report) for name, report in reports.items()}}, indent=2)
        )
    return next((code for code in map(_exit_code, reports.values()) if code), 0)


def _exit_code(report: CheckReport) -> int:
    """0 when every step passed, else the exit status of the first failure's kind."""
    return 0 if report.failure is None else exit_code_for(report.failure)


def _as_json(report: CheckReport) -> dict[str, Any]:
    """The report's document, with the exit status of the whole check and of each failed step."""
    document = report.to_dict()
    document["exit_code"] = _exit_code(report)
    for step, entry in zip(report.steps, document["steps"], strict=True):
        entry["exit_code"] = exit_code_for(step.failure) if step.failure else 0
    return document


def _check(load: Callable[[], Settings], args: argparse.Namespace) -> CheckReport:
    import asyncio

    from smtp_oauth.diagnostics import run_checks

    def load_quietly() -> Settings:
        from smtp_oauth.logs import configure_logging

        settings = load()
        # The report says what happened; INFO lines (a retried token, an unencrypted cache) would
        # only interleave with it. Warnings still show, and DEBUG when asked for.
        level = settings.log_level if settings.log_level in {"DEBUG", "WARNING", "ERROR"} else "WARNING"
        configure_logging(level, settings.log_format)
        return settings

    on_step = None if args.json else _printer(sys.stdout)
    report = asyncio.run(run_checks(load_quietly, send_test=args.send_test, on_step=on_step))
    if args.json:
        return report
    if report.ok:
        print("\nAll checks passed.")
    else:
        failure = report.first_failure
        assert failure is not None
        print(f"\nCheck failed at: {failure.title} (exit {_exit_code(report)}).")
    return report
