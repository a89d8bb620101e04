"""Check-run summary + context → Decision: apply, skip or escalate, with confidence and reasons."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .events import RunSummary
from .planner import FixProfile

Action = Literal["apply", "skip", "escalate", "reject", "brake"]
Outcome = Literal[
    "resolved",
    "not_needed",
    "previewed",
    "rejected",
    "escalated",
    "rolled_back",
    "failed",
    "blocked",
]

_RISK_FACTOR = {"low": 1.0, "medium": 0.85, "high": 0.7}
_UNEXPECTED_CHANGE_PENALTY = 0.25
_UNPREDICTABLE_PENALTY = 0.15
_PAST_FAILURE_FACTOR = 0.5


class History(BaseModel):
    """This fix's recent outcomes on this host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolved: int = 0
    rolled_back: int = 0
    failed: int = 0


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Action
    confidence: float = Field(ge=0.0, le=1.0)
    threshold: float
    reasons: tuple[str, ...]
    # Set when the decision already settles the outcome (nothing to apply).
    outcome: Outcome | None = None


def describe_health(health: Mapping[str, Any]) -> str:
    """One line of what a health report (diagnosis or verify) says."""
    parts = [f"{health.get('unit')} is {health.get('active_state')} ({health.get('sub_state')})"]
    if health.get("port") is not None:
        parts.append(f"port {health.get('port')} {'open' if health.get('port_open') else 'closed'}")
    if health.get("health_url"):
        status = health.get("http_status") or "no answer"
        parts.append(f"HTTP probe {'ok' if health.get('http_ok') else 'failing'} ({status})")
    if health.get("config_valid") is False:
        parts.append("config invalid")
    return ", ".join(parts)


def decide(
    check: RunSummary, host: str, fix: FixProfile, history: History, threshold: float
) -> Decision:
    """Score a previewed fix. Below ``threshold`` a human decides; nothing is applied."""

    def final(
        action: Action, confidence: float, reasons: list[str], outcome: Outcome | None
    ) -> Decision:
        return Decision(
            action=action,
            confidence=round(max(0.0, min(1.0, confidence)), 3),
            threshold=threshold,
            reasons=tuple(reasons),
            outcome=outcome,
        )

    if not check.check:
        raise ValueError("decide() needs the summary of a --check run")
    hs = check.host(host)
    if hs.unreachable:
        msg = next((t.msg for t in hs.tasks if t.status == "unreachable"), "")
        return final("skip", 0.0, [f"{host} is unreachable over SSH: {msg}".strip()], "failed")
    if not hs.tasks:
        return final("skip", 0.0, [f"the check run returned no result for {host}"], "failed")

    health = hs.reports.get("health")
    if health is None:
        return final("escalate", 0.0, ["diagnosis produced no health report"], "escalated")
    if health.get("healthy") is True:
        reason = f"healthy before any change: {describe_health(health)}; nothing to do"
        return final("skip", 1.0, [reason], "not_needed")

    reasons = [f"diagnosis: {describe_health(health)}"]
    if not check.completed:
        # Timed out or cancelled: the preview is partial, so it predicts nothing.
        reasons.append("the check run did not finish (timeout or cancelled): no full preview")
        return final("escalate", 0.0, reasons, "escalated")
    failed = hs.failed_tasks
    if failed:
        reasons += [f"check run failed at {t.task!r}: {t.msg}" for t in failed]
        return final("escalate", 0.0, reasons, "escalated")
    if health.get("config_valid") is False:
        errors = "; ".join(str(e) for e in (health.get("config_errors") or [])[:3])
        reasons.append(f"configuration does not validate, a restart cannot help: {errors}")
        return final("escalate", 0.0, reasons, "escalated")

    expected = [t for t in hs.changed_tasks if t.action in fix.expected_actions]
    unexpected = [t for t in hs.changed_tasks if t.action not in fix.expected_actions]
    if not expected:
        reasons.append("the preview predicts no change the fix is meant to make: it would not help")
        return final("escalate", 0.1, reasons, "escalated")

    score = 1.0
    reasons.append(
        "preview predicts the expected change(s): " + ", ".join(t.task for t in expected)
    )
    if unexpected:
        score -= _UNEXPECTED_CHANGE_PENALTY * len(unexpected)
        reasons.append("unexpected predicted change(s): " + ", ".join(t.task for t in unexpected))
    unpredictable = hs.unpredictable_tasks
    if unpredictable:
        score -= _UNPREDICTABLE_PENALTY * len(unpredictable)
        reasons.append("check mode cannot predict: " + ", ".join(t.task for t in unpredictable))
    score *= _RISK_FACTOR[fix.risk]
    reasons.append(f"risk class {fix.risk}")
    bad = history.failed + history.rolled_back
    if bad:
        score *= _PAST_FAILURE_FACTOR**bad
        reasons.append(f"this fix failed or was rolled back {bad} time(s) on {host} recently")
    elif history.resolved:
        reasons.append(f"this fix resolved {history.resolved} recent alert(s) on {host}")

    score = max(0.0, min(1.0, score))
    if score >= threshold:
        reasons.append(f"confidence {score:.2f} >= threshold {threshold:.2f}: apply")
        return final("apply", score, reasons, None)
    reasons.append(f"confidence {score:.2f} < threshold {threshold:.2f}: needs approval")
    return final("escalate", score, reasons, "escalated")
