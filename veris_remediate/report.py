"""Remediation results → the RunReport, its exit code, and its JSON, Markdown and HTML forms.

Markdown is ready to paste as an issue or pull-request body; HTML is one self-contained
page (inline style, a Content-Security-Policy that forbids every fetch, no script).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

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


def run_level_phases(report: RunReport) -> Sequence[PhaseRecord]:
    """The payload's own phases: ``build_report`` appends the worst remediation's phases to
    them (so a reader of ``phases`` sees that remediation's too); this takes them off."""
    if not report.remediations:
        return report.phases
    head = worst(report.remediations).phases
    if head and report.phases[-len(head) :] == head:
        return report.phases[: -len(head)]
    return report.phases


def to_json(report: RunReport) -> str:
    return json.dumps(report.model_dump(mode="json"), sort_keys=False)


# -- for people: the words the CLI, Markdown and HTML share ---------------------------------

OUTCOME_TEXT: dict[str, str] = {
    "resolved": "fixed, and health verified after the fix",
    "not_needed": "nothing was wrong: nothing changed",
    "previewed": "previewed only: nothing was applied",
    "rejected": "rejected: nothing was run",
    "escalated": "escalated: a person decides; nothing was applied",
    "deferred": "deferred: the host was busy; nothing was applied",
    "rolled_back": "the fix did not make it healthy: rolled back to the prior state",
    "failed": "failed: could not fix, or could not restore",
    "blocked": "blocked by the emergency brake: nothing was applied",
}
# The prefixes decision.py and verify.py give the health they saw (see ``health``).
_BEFORE, _AFTER, _RESTORED = "diagnosis: ", "after the fix: ", "prior state restored: "


class TimelineEntry(BaseModel):
    """One phase on the run's clock: it started ``at`` seconds after the run began."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: float
    name: str
    host: str | None
    status: PhaseStatus
    seconds: float
    detail: str


class Health(BaseModel):
    """What the run saw of the host's health: before the fix, after it, after a rollback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()


def headline(report: RunReport) -> str:
    """ "HttpProbeFailed on lab1: resolved" (no "on" when no host was resolved)."""
    what = report.alert_type or (f"{report.source} payload" if report.source else "payload")
    where = f" on {', '.join(report.hosts)}" if report.hosts else ""
    return f"{what}{where}: {report.outcome}"


def decision_text(decision: str, confidence: float, outcome: str) -> str:
    """The decision in words; a check-only run "would apply", it never "applied"."""
    if outcome == "previewed" and decision == "apply":
        return f"would apply (confidence {confidence:.2f}); --check-only: nothing applied"
    if decision in ("reject", "brake", "skip") and confidence == 0.0:
        return decision
    return f"{decision} (confidence {confidence:.2f})"


def applied(result: RemediationResult) -> bool:
    """Whether this remediation changed the host (its fix ran, whatever came after)."""
    return result.decision == "apply" and result.outcome in ("resolved", "rolled_back", "failed")


def health(result: RemediationResult) -> Health:
    """Health before and after, from the reasons the decision and verification gave."""

    def picked(prefix: str) -> tuple[str, ...]:
        return tuple(r.removeprefix(prefix) for r in result.reasons if r.startswith(prefix))

    return Health(before=picked(_BEFORE), after=picked(_AFTER), restored=picked(_RESTORED))


def duration(report: RunReport) -> float | None:
    try:
        started = datetime.fromisoformat(report.started_at)
        finished = datetime.fromisoformat(report.finished_at)
    except ValueError:
        return None
    return round((finished - started).total_seconds(), 2)


def timeline(report: RunReport) -> tuple[TimelineEntry, ...]:
    """The payload's phases, then each remediation's, one after the other (they run in turn)."""
    head: Sequence[PhaseRecord] = report.phases
    if report.remediations:
        own = worst(report.remediations).phases
        if own and tuple(report.phases[-len(own) :]) == own:
            head = report.phases[: -len(own)]
    entries: list[TimelineEntry] = []
    clock = 0.0
    for host, phases in [(None, head), *((m.host, m.phases) for m in report.remediations)]:
        for p in phases:
            entry = TimelineEntry(
                at=round(clock, 3), name=p.name, host=host, status=p.status,
                seconds=p.seconds, detail=p.detail,
            )  # fmt: skip
            entries.append(entry)
            clock += p.seconds
    return tuple(entries)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def md_text(value: object) -> str:
    """Text from a host or an alert, inert in Markdown: no links, images, HTML or tables."""
    text = " ".join(str(value).split())
    return _MD_SPECIAL.sub(r"\\\1", text.replace("&", "&amp;"))


def md_fence(value: str) -> str:
    """A code fence longer than any run of backticks inside ``value``."""
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    return "`" * max(3, longest + 1)


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("veris_remediate", "templates"),
        # HTML escapes every value; Markdown escapes alert and host text with `md` instead.
        autoescape=autoescape,  # noqa: S701
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_text
    env.filters["fence"] = md_fence
    env.globals.update(
        OUTCOME_TEXT=OUTCOME_TEXT, headline=headline, decision_text=decision_text,
        applied=applied, health=health, timeline=timeline, duration=duration,
    )  # fmt: skip
    return env


# Values are passed as context, never compiled: "{{" in alert data stays text.
_MARKDOWN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def _context(report: RunReport) -> dict[str, Any]:
    return {"r": report, "multi": len(report.remediations) > 1}


def to_markdown(report: RunReport) -> str:
    """The report as Markdown, ready to paste as an issue or pull-request body."""
    return _MARKDOWN.get_template("report.md.j2").render(**_context(report))


def to_html(report: RunReport) -> str:
    """The report as one self-contained HTML page: no script, nothing fetched."""
    return _HTML.get_template("report.html.j2").render(**_context(report))
