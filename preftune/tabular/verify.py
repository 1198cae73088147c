"""`preftune verify`: run every registered method's exact tabular check and report it.

Each method either registers a check beside its function (`@tabular_check`) or says in its
registration why it has none (`no_check_reason`). verify prints one row per measured property
(method, property, expected, measured, error, result), lists methods without a check as
"NO CHECK" with their reason (never as passed), and flags a method with neither as MISSING.
The exit code is 0 only when every check passed and nothing is missing.

Run it as `preftune verify [METHOD ...] [--json]` or `python -m preftune.tabular.verify ...`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from preftune.methods import all_methods, get
from preftune.methods.registry import CheckResult, MethodSpec
from preftune.tabular.expected import single_threaded

PASSED, FAILED, NO_CHECK, MISSING, ERROR = "passed", "failed", "no_check", "missing", "error"
_RESULT_LABEL = {PASSED: "PASS", FAILED: "FAIL", NO_CHECK: "NO CHECK", MISSING: "MISSING", ERROR: "ERROR"}


@dataclass
class MethodReport:
    """The outcome of one method: its status, its check rows, and why it has no rows if it has none."""

    name: str
    status: str
    checks: list[CheckResult] = field(default_factory=list)
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, NO_CHECK)


def verify_method(spec: MethodSpec) -> MethodReport:
    """Run one method's check. A check that raises, or returns no results, is an error, not a pass."""
    if spec.check is None:
        if spec.no_check_reason:
            return MethodReport(spec.name, NO_CHECK, reason=spec.no_check_reason)
        return MethodReport(spec.name, MISSING, reason="no tabular check and no no_check_reason in its registration")
    start = time.perf_counter()
    try:
        results = list(spec.check())
    except Exception as error:  # a crashing check must show up as a failure, with its message
        return MethodReport(spec.name, ERROR, reason=f"{type(error).__name__}: {error}",
                            seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if not results:
        return MethodReport(spec.name, ERROR, reason="the check returned no results", seconds=seconds)
    passed = all(r.passed for r in results)
    return MethodReport(spec.name, PASSED if passed else FAILED, results, seconds=seconds)


def verify_methods(names: list[str] | None = None) -> list[MethodReport]:
    """Reports for the named methods (all registered methods when names is empty or None)."""
    specs = [get(n) for n in names] if names else all_methods()
    with single_threaded():
        return [verify_method(spec) for spec in specs]


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def render_table(reports: list[MethodReport], seconds: float) -> str:
    """The human-readable table, one row per measured property, then a summary line."""
    rows = [("method", "property", "expected", "measured", "error", "result")]
    for report in reports:
        if report.checks:
            for r in report.checks:
                rows.append((report.name, r.property, _number(r.expected), _number(r.measured),
                             f"{r.error:.2e} (tol {r.tolerance:.0e})", "PASS" if r.passed else "FAIL"))
        if report.status in (NO_CHECK, MISSING, ERROR):
            prefix = {NO_CHECK: "no check: ", MISSING: "", ERROR: "check crashed: "}[report.status]
            rows.append((report.name, prefix + (report.reason or ""), "-", "-", "-", _RESULT_LABEL[report.status]))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {status: sum(r.status == status for r in reports) for status in _RESULT_LABEL}
    checks = sum(len(r.checks) for r in reports)
    failed_checks = sum(not c.passed for r in reports for c in r.checks)
    lines.append("")
    lines.append(f"{len(reports)} methods: {counts[PASSED]} passed, {counts[FAILED]} failed, "
                 f"{counts[NO_CHECK]} without a check, {counts[MISSING]} missing, {counts[ERROR]} errors; "
                 f"{checks - failed_checks}/{checks} properties within tolerance; {seconds:.1f} s")
    return "\n".join(lines)


def _json_number(value: float) -> float | str:
    """Strict JSON has no NaN or infinity: a failed measurement is written as the string "nan"/"inf"."""
    return value if math.isfinite(value) else str(value)


def to_json(reports: list[MethodReport], seconds: float) -> dict:
    """The machine-readable report that the README cites as the correctness evidence."""
    return {
        "passed": all(r.ok for r in reports),
        "seconds": round(seconds, 3),
        "methods": [{
            "name": r.name,
            "status": r.status,
            "reason": r.reason,
            "seconds": round(r.seconds, 3),
            "checks": [{"property": c.property, "expected": _json_number(c.expected),
                        "measured": _json_number(c.measured), "error": _json_number(c.error),
                        "tolerance": c.tolerance, "passed": c.passed} for c in r.checks],
        } for r in reports],
    }


def run_verify(names: list[str] | None = None, as_json: bool = False, stream: TextIO | None = None) -> int:
    """Run the checks of `names` (all methods if None), write the table or JSON to stream (stdout).

    Returns the exit code: 0 if every check passed and no method is missing a check or a reason,
    1 otherwise, 2 if a name is not a registered method.
    """
    stream = sys.stdout if stream is None else stream
    start = time.perf_counter()
    try:
        reports = verify_methods(names)
    except KeyError as error:
        print(f"preftune verify: {error.args[0]}", file=stream)
        return 2
    seconds = time.perf_counter() - start
    if as_json:
        json.dump(to_json(reports, seconds), stream, indent=2)
        stream.write("\n")
    else:
        print(render_table(reports, seconds), file=stream)
    return 0 if all(r.ok for r in reports) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preftune verify",
                                     description="Check every method against exact tabular ground truth.")
    parser.add_argument("methods", nargs="*", metavar="METHOD", help="methods to check (default: all)")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    args = parser.parse_args(argv)
    return run_verify(args.methods or None, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
