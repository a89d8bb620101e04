"""The restart-storm breaker: per (host, fix), pure rules over the row the store keeps.

A fix that "works" but does not last is the storm: the service dies again, the alert
re-fires, the fix runs again, forever. The breaker stops it the way systemd's start
limit and Kubernetes' crash-loop back-off do, at the level of the remediation:

- **cooldown with exponential back-off**: after an applied fix, the next application of
  the same fix to the same host waits ``cooldown * 2^(streak-1)``, capped at
  ``backoff_max`` (60 s, 120 s, 240 s … 30 min by default; Kubernetes: 10 s doubling
  to 5 min);
- **ineffective**: the same alert firing again (a new incident) within
  ``ineffective_minutes`` of a fix that reported ``resolved`` counts against the fix;
- **open** after ``open_after`` failed/rolled-back fixes or ineffective fixes (3, like
  systemd's default burst of 5 in 10 s but at the scale of remediations): every
  alert escalates, nothing is applied;
- **half-open** after ``half_open_minutes``: one trial is allowed; it closes the
  breaker if it resolves, re-opens it if it fails or the alert re-fires.

A quiet period (no fix for ``half_open_minutes``) forgets the streak and the counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from .settings import Settings
from .store import BreakerRow


class BreakerVerdict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: bool
    reason: str
    trial: bool = False  # a half-open trial


def _backoff(row: BreakerRow, settings: Settings) -> timedelta:
    if settings.breaker_cooldown_seconds == 0 or row.streak == 0:
        return timedelta(0)
    seconds = settings.breaker_cooldown_seconds * 2 ** min(row.streak - 1, 20)
    return timedelta(seconds=min(seconds, settings.breaker_backoff_max_seconds))


def _quiet(row: BreakerRow, settings: Settings, at: datetime) -> bool:
    return row.last_fix_at is None or at - row.last_fix_at > timedelta(
        minutes=settings.breaker_half_open_minutes
    )


def note_alert(row: BreakerRow, incident: str, settings: Settings, at: datetime) -> BreakerRow:
    """Account for an alert arriving for this fix; returns the row to store.

    ``incident`` names one firing of one alert (fingerprint and start time): the same
    incident delivered twice is not a re-fire.
    """
    if row.state == "closed" and _quiet(row, settings, at):
        return row.model_copy(update={"failures": 0, "ineffective": 0, "streak": 0})
    refired = (
        row.last_outcome == "resolved"
        and row.last_alert is not None
        and row.last_alert != incident
        and row.last_fix_at is not None
        and at - row.last_fix_at <= timedelta(minutes=settings.breaker_ineffective_minutes)
    )
    if not refired:
        return row
    count = row.ineffective + 1
    update: dict[str, object] = {"ineffective": count, "last_outcome": "ineffective"}
    if count >= settings.breaker_open_after or row.state == "half_open":
        update |= {
            "state": "open",
            "opened_at": at,
            "reason": f"the alert fired again after {count} fix(es) that reported resolved",
        }
    return row.model_copy(update=update)


def check(row: BreakerRow, settings: Settings, at: datetime) -> BreakerVerdict:
    """May this fix be applied to this host now?"""
    if row.state == "open":
        assert row.opened_at is not None
        retry = row.opened_at + timedelta(minutes=settings.breaker_half_open_minutes)
        if at < retry:
            return BreakerVerdict(
                allow=False,
                reason=(
                    f"restart-storm breaker open for {row.fix} on {row.host} since "
                    f"{row.opened_at:%H:%M:%S} UTC ({row.reason}); one trial allowed after "
                    f"{retry:%H:%M:%S} UTC"
                ),
            )
        return BreakerVerdict(
            allow=True,
            trial=True,
            reason=f"restart-storm breaker half-open: one trial of {row.fix} on {row.host}",
        )
    if row.last_fix_at is not None:
        until = row.last_fix_at + _backoff(row, settings)
        if at < until:
            return BreakerVerdict(
                allow=False,
                reason=(
                    f"{row.fix} ran on {row.host} at {row.last_fix_at:%H:%M:%S} UTC; cooling "
                    f"down until {until:%H:%M:%S} UTC (fix #{row.streak} in a row, back-off "
                    f"{int((until - row.last_fix_at).total_seconds())} s)"
                ),
            )
    return BreakerVerdict(allow=True, reason="")


def record(
    row: BreakerRow,
    outcome: str,
    incident: str | None,
    settings: Settings,
    at: datetime,
    *,
    trial: bool,
) -> BreakerRow:
    """Account for an applied fix's outcome; returns the row to store."""
    streak = 1 if _quiet(row, settings, at) else row.streak + 1
    update: dict[str, object] = {
        "streak": streak,
        "last_fix_at": at,
        "last_outcome": outcome,
        "last_alert": incident,
    }
    if outcome == "resolved":
        if trial:
            # Closed again, one re-fire away from opening.
            update |= {
                "state": "closed",
                "opened_at": None,
                "reason": None,
                "ineffective": max(0, settings.breaker_open_after - 1),
                "failures": 0,
            }
        else:
            update["failures"] = 0
        return row.model_copy(update=update)  # fmt: skip
    failures = row.failures + 1
    update["failures"] = failures
    if trial or failures >= settings.breaker_open_after:
        update |= {
            "state": "open",
            "opened_at": at,
            "reason": f"{failures} fix(es) in a row ended {outcome}",
        }
    return row.model_copy(update=update)
