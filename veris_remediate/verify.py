"""Run summaries → verdicts: did the fix work, did the rollback restore, what was found.

Which report answers each question is the fix spec's to say (``reports.verify``,
``reports.snapshot``, ``reports.rollback``); this module only reads them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .events import HostSummary, RunSummary
from .fixes import FixSpec
from .role_reports import Finding, Report, Restoration, Snapshot, Verification


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    reasons: tuple[str, ...]


def _failures(hs: HostSummary, phase: str) -> list[str]:
    if hs.unreachable:
        return [f"{hs.host} became unreachable during {phase}"]
    problems = [f"{phase} failed at {t.task!r}: {t.msg}" for t in hs.failed_tasks]
    return problems + [f"a role's report was refused: {e}" for e in hs.report_errors]


def assess_apply(apply: RunSummary, host: str, fix: FixSpec) -> Verdict:
    """The fix worked only if the run got through and its post-fix check passed."""
    hs = apply.host(host)
    reasons = _failures(hs, "apply")
    verification = hs.report(fix.reports.verify)
    if not isinstance(verification, Verification):
        reasons.append(
            f"no post-fix check ran (no {fix.reports.verify} report: the apply run stopped "
            "before it)"
        )
        return Verdict(ok=False, reasons=tuple(reasons))
    if verification.passed() and not reasons:
        return Verdict(ok=True, reasons=(f"after the fix: {verification.describe()}",))
    reasons.append(f"after the fix: {verification.describe()}")
    return Verdict(ok=False, reasons=tuple(reasons))


def taken_snapshot(host: str, fix: FixSpec, *summaries: RunSummary) -> Snapshot | None:
    """The snapshot of the state before the change, from the first summary that has one."""
    for summary in summaries:
        snap = summary.host(host).report(fix.reports.snapshot)
        if isinstance(snap, Snapshot):
            return snap
    return None


def assess_rollback(rollback: RunSummary, host: str, fix: FixSpec, snapshot: Snapshot) -> Verdict:
    """Restored means the role says so and the state matches the snapshot on our side too."""
    hs = rollback.host(host)
    reasons = _failures(hs, "rollback")
    restoration = hs.report(fix.reports.rollback)
    if not isinstance(restoration, Restoration):
        reasons.append(f"the rollback produced no {fix.reports.rollback} report")
        return Verdict(ok=False, reasons=tuple(reasons))
    reasons += restoration.mismatches(snapshot)
    if not reasons and restoration.is_restored():
        return Verdict(ok=True, reasons=(f"prior state restored: {restoration.describe()}",))
    if not restoration.is_restored():
        reasons.append(f"the rollback role reports the prior state is not restored: "
                       f"{restoration.describe()}")  # fmt: skip
    return Verdict(ok=False, reasons=tuple(reasons))


def findings(host: str, *reports: Report | None) -> list[Finding]:
    """What a person should know from these reports, each finding once."""
    out: list[Finding] = []
    for report in reports:
        if report is not None:
            out += [f for f in report.findings(host) if f not in out]
    return out
