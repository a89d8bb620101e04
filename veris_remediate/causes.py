"""Reports → likely root causes: each report names its own, this merges them across reports.

Rule-based and explainable: a cause is named by the report model that saw its evidence
(``Report.causes``), never guessed from prose. The same cause seen by two reports (a port
held, seen by the service and the security diagnosis) is one cause with both evidences.
The surest come first.
"""

from __future__ import annotations

from collections.abc import Iterable

from .role_reports import Cause, Report


def synthesize(reports: Iterable[Report]) -> list[Cause]:
    """The likely causes all ``reports`` point to, merged by code, surest first."""
    merged: dict[str, Cause] = {}
    for report in reports:
        for cause in report.causes():
            seen = merged.get(cause.code)
            merged[cause.code] = seen.merged(cause) if seen else cause
    return sorted(merged.values(), key=lambda c: (-c.confidence, c.code))


def ruling_out(causes: Iterable[Cause], fix: str) -> Cause | None:
    """The surest cause under which ``fix`` cannot help, if any."""
    return next((c for c in causes if fix in c.rules_out), None)
