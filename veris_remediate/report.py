"""Remediation results → the RunReport, its exit code, and its JSON and Markdown forms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field

from .decision import Action, Outcome
from .role_reports import Cause, Finding

PhaseStatus = Literal["ok", "failed", "skipped"]

EXIT_CODES: dict[str, int] = {
    "resolved": 0,
    "not_needed": 0,
    "previewed": 0,
    "rejected": 3,
    "escalated": 4,
    "deferred": 4,
    "rolled_back": 5,
    "failed": 6,
    "blocked": 7,
}
# When one payload yields several remediations, the report carries the worst outcome.
_SEVERITY: tuple[Outcome, ...] = (
    "previewed",
    "not_needed",
    "resolved",
    "rejected",
    "deferred",
    "escalated",
    "rolled_back",
    "failed",
    "blocked",
)


class PhaseRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    status: PhaseStatus
    seconds: float
    detail: str = ""


class PreviewChange(BaseModel):
    """A change the check run predicted: the task, its module and what --diff showed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    action: str
    diff: str = ""


class RemediationResult(BaseModel):
    """One alert on one host, from routing to outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None
    alert: str | None
    fingerprint: str | None
    workflow: str | None = None
    remediation: str | None = None
    service: str | None = None
    decision: Action
    confidence: float = 0.0
    outcome: Outcome
    rolled_back: bool = False
    reasons: tuple[str, ...] = ()
    phases: tuple[PhaseRecord, ...] = ()
    findings: tuple[Finding, ...] = ()
    # Likely root causes, with their evidence and the fix each implies (None: escalate).
    causes: tuple[Cause, ...] = ()
    # The check run's predicted changes (what apply would do, or did).
    preview: tuple[PreviewChange, ...] = ()
    # What was saved before the change (the fix spec's words), when a fix was applied.
    snapshot: str | None = None
    reversible: bool | None = None


class RunReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    started_at: str
    finished_at: str
    source: str | None
    check_only: bool
    alert_type: str | None
    remediation: str | None
    hosts: tuple[str, ...]
    decision: Action
    confidence: float
    outcome: Outcome
    rolled_back: bool
    exit_code: int
    reasons: tuple[str, ...]
    phases: tuple[PhaseRecord, ...]
    findings: tuple[Finding, ...]
    causes: tuple[Cause, ...] = ()
    preview: tuple[PreviewChange, ...] = ()
    remediations: tuple[RemediationResult, ...] = Field(default_factory=tuple)


def worst(results: Sequence[RemediationResult]) -> RemediationResult:
    return max(results, key=lambda r: _SEVERITY.index(r.outcome))


def build_report(
    *,
    run_id: str,
    started_at: str,
    finished_at: str,
    source: str | None,
    check_only: bool,
    results: Sequence[RemediationResult],
    phases: Sequence[PhaseRecord],
) -> RunReport:
    """One report per payload; top-level fields describe its worst remediation."""
    if not results:
        raise ValueError("a report needs at least one result")
    head = worst(results)
    return RunReport(
        run_id=run_id,
        started_at=started_at,
        finished_at=finished_at,
        source=source,
        check_only=check_only,
        alert_type=head.alert,
        remediation=head.remediation,
        hosts=tuple(dict.fromkeys(r.host for r in results if r.host)),
        decision=head.decision,
        confidence=head.confidence,
        outcome=head.outcome,
        rolled_back=any(r.rolled_back for r in results),
        exit_code=EXIT_CODES[head.outcome],
        reasons=head.reasons,
        phases=(*phases, *head.phases),
        findings=tuple(f for r in results for f in r.findings),
        causes=tuple(c for r in results for c in r.causes),
        preview=head.preview,
        remediations=tuple(results),
    )


def to_json(report: RunReport) -> str:
    return json.dumps(report.model_dump(mode="json"), sort_keys=False)


_MARKDOWN = jinja2.Environment(
    loader=jinja2.PackageLoader("veris_remediate", "templates"),
    # Markdown, not HTML; values are passed as data, never compiled as templates.
    autoescape=False,  # noqa: S701
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def to_markdown(report: RunReport) -> str:
    # Values containing "{{" stay text: they are passed as context, never compiled.
    return _MARKDOWN.get_template("report.md.j2").render(r=report)
