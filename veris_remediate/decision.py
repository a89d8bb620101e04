"""Check-run summary + fix spec → Decision: apply, skip or escalate, with confidence and reasons.

The score starts at 1.0 and every signal that lowers it says why in the reasons:

- the fix's assessment (the report its spec names as ``assess``) decides whether there is
  a problem at all (no: ``not_needed``) and whether this fix can help (a blocker: escalate);
- the likely causes the check run's reports name (``causes.py``): a cause that rules this
  fix out (a port held by another process rules out a restart) escalates, with the cause;
- the preview must predict a change by one of the fix's ``expected_changes`` (none: it
  would not help), each predicted change by another module costs 0.25, each task check
  mode cannot predict 0.15, and each risk the role saw costs what it says (a firewall
  change that would shut out a connected client, …);
- the fix's risk class multiplies (low 1.0, medium 0.85, high 0.7), and each recent
  failure or rollback of this fix on this host halves it.

Anything unfinished, unreadable or unknown escalates rather than applies.

**Irreversible fixes** (``reversible: false``: nothing can be rolled back, e.g. deleting
cache files) are applied only on an exact preview: a predicted change by any other
module, a task check mode cannot predict, or any recent failure of the fix on this host
escalates outright instead of merely lowering the score.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .causes import ruling_out, synthesize
from .events import HostSummary, RunSummary
from .fixes import FixSpec
from .role_reports import Assessment, Blocker, Scope
from .workspace import History

Action = Literal["apply", "skip", "escalate", "reject", "brake"]
Outcome = Literal[
    "resolved",
    "not_needed",
    "previewed",
    "rejected",
    "escalated",
    "deferred",
    "rolled_back",
    "failed",
    "blocked",
]

RISK_FACTOR = {"low": 1.0, "medium": 0.85, "high": 0.7}
UNEXPECTED_CHANGE_PENALTY = 0.25
UNPREDICTABLE_PENALTY = 0.15
PAST_FAILURE_FACTOR = 0.5


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Action
    confidence: float = Field(ge=0.0, le=1.0)
    threshold: float
    reasons: tuple[str, ...]
    # Set when the decision already settles the outcome (nothing to apply).
    outcome: Outcome | None = None
    # Why the fix cannot help, when the assessment says so (a rule may hand off on it).
    blocker: Blocker | None = None
    # A person may approve it: the fix would help and only the score (or an irreversible
    # fix's inexact preview) holds it back. Unreachable hosts, failed check runs,
    # blockers and useless previews are never approvable.
    approvable: bool = False


def decide(
    check: RunSummary,
    host: str,
    fix: FixSpec,
    history: History,
    threshold: float,
    *,
    scope: Scope | None = None,
) -> Decision:
    """Score a previewed fix. Below ``threshold`` a human decides; nothing is applied.

    With ``scope``, the assessment is judged as the apply run would get it (cut down to
    the plan's scope), so nothing the host reported beyond the scope can make it apply.
    """

    def final(
        action: Action,
        confidence: float,
        reasons: list[str],
        outcome: Outcome | None,
        blocker: Blocker | None = None,
        *,
        approvable: bool = False,
    ) -> Decision:
        return Decision(
            action=action,
            confidence=round(max(0.0, min(1.0, confidence)), 3),
            threshold=threshold,
            reasons=tuple(reasons),
            outcome=outcome,
            blocker=blocker,
            approvable=approvable,
        )

    if not check.check:
        raise ValueError("decide() needs the summary of a --check run")
    hs = check.host(host)
    if hs.unreachable:
        msg = next((t.msg for t in hs.tasks if t.status == "unreachable"), "")
        return final("skip", 0.0, [f"{host} is unreachable over SSH: {msg}".strip()], "failed")
    if not hs.tasks:
        return final("skip", 0.0, [f"the check run returned no result for {host}"], "failed")
    if hs.report_errors:
        reasons = [f"a role's report was refused: {e}" for e in hs.report_errors]
        return final("escalate", 0.0, reasons, "escalated")

    assessment = hs.report(fix.reports.assess)
    if not isinstance(assessment, Assessment):
        reason = f"the check run produced no {fix.reports.assess} report (the diagnosis)"
        return final("escalate", 0.0, [reason], "escalated")
    if scope is not None:
        assessment = assessment.restricted(scope)
    if not assessment.problem_present():
        reason = f"no problem found: {assessment.describe()}; nothing to do"
        return final("skip", 1.0, [reason], "not_needed")

    reasons = [f"diagnosis: {assessment.describe()}"]
    if not check.completed:
        # Timed out or cancelled: the preview is partial, so it predicts nothing.
        reasons.append("the check run did not finish (timeout or cancelled): no full preview")
        return final("escalate", 0.0, reasons, "escalated")
    failed = hs.failed_tasks
    reasons += [f"check run failed at {t.task!r}: {t.msg}" for t in failed]
    blocker = assessment.blocker()
    if blocker is not None:
        reasons.append(blocker.reason)
        return final("escalate", 0.0, reasons, "escalated", blocker)
    cause = ruling_out(synthesize(hs.reports.values()), fix.name)
    if cause is not None:
        evidence = "; ".join(cause.evidence[:3])
        reason = f"likely cause: {cause.summary} ({evidence}), so {fix.name} cannot help"
        reasons.append(reason)
        return final("escalate", 0.0, reasons, "escalated", Blocker(code=cause.code, reason=reason))
    if failed:
        return final("escalate", 0.0, reasons, "escalated")

    score, outright = _score(hs, host, fix, assessment, history, reasons)
    if outright:  # the reasons say why
        approvable = outright == "inexact"
        return final("escalate", score, reasons, "escalated", approvable=approvable)
    score = max(0.0, min(1.0, score))
    if score >= threshold:
        reasons.append(f"confidence {score:.2f} >= threshold {threshold:.2f}: apply")
        return final("apply", score, reasons, None)
    reasons.append(f"confidence {score:.2f} < threshold {threshold:.2f}: needs approval")
    return final("escalate", score, reasons, "escalated", approvable=True)


def _score(
    hs: HostSummary,
    host: str,
    fix: FixSpec,
    assessment: Assessment,
    history: History,
    reasons: list[str],
) -> tuple[float, Literal["useless", "inexact"] | None]:
    """The preview's score, adding to ``reasons``, and why it must escalate outright, if so.

    ``useless``: the preview predicts none of the fix's changes; ``inexact``: an
    irreversible fix whose preview is not exact (a person may still approve it).
    """
    expected = [t for t in hs.changed_tasks if t.action in fix.expected_changes]
    unexpected = [t for t in hs.changed_tasks if t.action not in fix.expected_changes]
    unpredictable = hs.unpredictable_tasks
    if not expected:
        reasons.append("the preview predicts no change the fix is meant to make: it would not help")
        return 0.1, "useless"
    reasons.append(
        "preview predicts the expected change(s): "
        + ", ".join(dict.fromkeys(t.task for t in expected))
    )
    if not fix.reversible:
        refusals = []
        if unexpected:
            refusals.append("it predicts other changes: " + ", ".join(t.task for t in unexpected))
        if unpredictable:
            refusals.append(
                "check mode cannot predict: " + ", ".join(t.task for t in unpredictable)
            )
        if history.failed or history.rolled_back:
            refusals.append(f"it failed on {host} recently")
        if refusals:
            reasons += [
                f"irreversible fix, applied only on an exact preview: {r}" for r in refusals
            ]
            return 0.0, "inexact"

    score = 1.0
    if unexpected:
        score -= UNEXPECTED_CHANGE_PENALTY * len(unexpected)
        reasons.append("unexpected predicted change(s): " + ", ".join(t.task for t in unexpected))
    if unpredictable:
        score -= UNPREDICTABLE_PENALTY * len(unpredictable)
        reasons.append("check mode cannot predict: " + ", ".join(t.task for t in unpredictable))
    for signal in assessment.signals():
        score -= signal.penalty
        reasons.append(f"{signal.reason} (-{signal.penalty:.2f})")
    score *= RISK_FACTOR[fix.risk]
    reasons.append(
        f"risk class {fix.risk}" + ("" if fix.reversible else ", irreversible: no rollback")
    )
    bad = history.failed + history.rolled_back
    if bad:
        score *= PAST_FAILURE_FACTOR**bad
        reasons.append(f"this fix failed or was rolled back {bad} time(s) on {host} recently")
    elif history.resolved:
        reasons.append(f"this fix resolved {history.resolved} recent alert(s) on {host}")
    return score, None
