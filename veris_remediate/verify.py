"""Run summaries → health verdicts: did the fix work, did the rollback restore, what was found."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .decision import describe_health
from .events import HostSummary, RunSummary

Severity = Literal["info", "warning", "critical"]
_ACTIVE = {"active", "activating", "reloading"}


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    severity: Severity
    message: str


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    reasons: tuple[str, ...]


def _failures(hs: HostSummary, phase: str) -> list[str]:
    if hs.unreachable:
        return [f"{hs.host} became unreachable during {phase}"]
    return [f"{phase} failed at {t.task!r}: {t.msg}" for t in hs.failed_tasks]


def assess_apply(apply: RunSummary, host: str) -> Verdict:
    """The fix worked only if the run got through and the post-fix probe says healthy."""
    hs = apply.host(host)
    reasons = _failures(hs, "apply")
    verify = hs.reports.get("verify")
    if verify is None:
        reasons.append("no post-fix health check ran (the apply run stopped before it)")
        return Verdict(ok=False, reasons=tuple(reasons))
    if verify.get("healthy") is True and not reasons:
        return Verdict(ok=True, reasons=(f"healthy after the fix: {describe_health(verify)}",))
    reasons.append(f"unhealthy after the fix: {describe_health(verify)}")
    return Verdict(ok=False, reasons=tuple(reasons))


def prior_states(host: str, *summaries: RunSummary) -> list[dict[str, Any]]:
    """The snapshot taken before the change, from the first summary that has one."""
    for summary in summaries:
        snap = summary.host(host).reports.get("snapshot")
        if snap and isinstance(snap.get("units"), list):
            return [dict(u) for u in snap["units"] if isinstance(u, Mapping)]
    return []


def assess_rollback(rollback: RunSummary, host: str, prior: Sequence[Mapping[str, Any]]) -> Verdict:
    """Restored means every unit runs, or does not, exactly as it did before the fix."""
    hs = rollback.host(host)
    reasons = _failures(hs, "rollback")
    report = hs.reports.get("rollback")
    if report is None:
        reasons.append("the rollback produced no report")
        return Verdict(ok=False, reasons=tuple(reasons))
    now = {u.get("unit"): u for u in report.get("units", []) if isinstance(u, Mapping)}
    for before in prior:
        unit = before.get("unit")
        after = now.get(unit)
        if after is None:
            reasons.append(f"rollback did not report {unit}")
            continue
        was = before.get("active_state") in _ACTIVE
        is_ = after.get("active_state") in _ACTIVE
        if was != is_:
            reasons.append(
                f"{unit} was {before.get('active_state')} before, "
                f"is {after.get('active_state')} now"
            )
    ok = not reasons and report.get("restored") is True
    if ok:
        states = ", ".join(f"{u}={s.get('active_state')}" for u, s in now.items())
        return Verdict(ok=True, reasons=(f"prior state restored: {states}",))
    if report.get("restored") is not True:
        reasons.append("the rollback role reports the prior state is not restored")
    return Verdict(ok=False, reasons=tuple(reasons))


def findings(host: str, health: Mapping[str, Any] | None) -> list[Finding]:
    """Human-readable findings from a health report (diagnosis or verify)."""
    if health is None:
        return []
    out: list[Finding] = []
    unit = health.get("unit")
    active = health.get("active_state")
    if active not in _ACTIVE:
        out.append(
            Finding(
                host=host,
                severity="critical",
                message=f"{unit} is {active} ({health.get('sub_state')})",
            )
        )
    else:
        out.append(Finding(host=host, severity="info", message=f"{unit} is {active}"))
    if health.get("port") is not None and not health.get("port_open"):
        out.append(
            Finding(
                host=host,
                severity="critical",
                message=f"port {health.get('port')} is not accepting connections",
            )
        )
    if health.get("health_url") and health.get("http_ok") is False:
        out.append(
            Finding(
                host=host,
                severity="critical",
                message=(
                    f"HTTP probe {health.get('health_url')} failed "
                    f"({health.get('http_status') or 'no answer'})"
                ),
            )
        )
    if health.get("config_valid") is False:
        errs = "; ".join(str(e) for e in (health.get("config_errors") or [])[:3])
        out.append(
            Finding(host=host, severity="critical", message=f"configuration invalid: {errs}")
        )
    elif health.get("config_valid") is True:
        out.append(Finding(host=host, severity="info", message="configuration validates"))
    tail = [str(line) for line in (health.get("journal_tail") or [])][-5:]
    if tail and active not in _ACTIVE:
        out.append(Finding(host=host, severity="warning", message="journal: " + " | ".join(tail)))
    return out
