"""Reports of the service roles: a service's health, and its units' snapshot and rollback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict

from .base import (
    Assessment,
    Blocker,
    Finding,
    Restoration,
    Scope,
    Snapshot,
    Verification,
    report_kind,
)

RUNNING = frozenset({"active", "activating", "reloading"})


@report_kind("health", "verify")
class ServiceHealth(Assessment, Verification):
    """service_health's probes of one unit: ``health`` before a fix, ``verify`` after it."""

    kind: Literal["health", "verify"]
    unit: str
    active_state: str
    sub_state: str
    unit_file_state: str
    load_state: str
    port: int | None
    port_open: bool | None
    health_url: str | None
    http_status: int | None
    http_ok: bool | None
    config_valid: bool | None
    config_errors: tuple[str, ...]
    journal_tail: tuple[str, ...]
    healthy: bool

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING

    def describe(self) -> str:
        parts = [f"{self.unit} is {self.active_state} ({self.sub_state})"]
        if self.port is not None:
            parts.append(f"port {self.port} {'open' if self.port_open else 'closed'}")
        if self.health_url:
            status = self.http_status or "no answer"
            parts.append(f"HTTP probe {'ok' if self.http_ok else 'failing'} ({status})")
        if self.config_valid is False:
            parts.append("config invalid")
        return ", ".join(parts)

    def problem_present(self) -> bool:
        return not self.healthy

    def blocker(self) -> Blocker | None:
        if self.config_valid is False:
            errors = "; ".join(self.config_errors[:3])
            return Blocker(
                code="config_invalid",
                reason=f"configuration does not validate, a restart cannot help: {errors}",
            )
        return None

    def passed(self) -> bool:
        # A validator that ran after the fix and failed means the fix left it broken.
        return self.healthy and self.config_valid is not False

    def findings(self, host: str) -> list[Finding]:
        out: list[Finding] = []
        if not self.running:
            message = f"{self.unit} is {self.active_state} ({self.sub_state})"
            out.append(Finding(host=host, severity="critical", message=message))
        else:
            out.append(
                Finding(host=host, severity="info", message=f"{self.unit} is {self.active_state}")
            )
        if self.port is not None and not self.port_open:
            message = f"port {self.port} is not accepting connections"
            out.append(Finding(host=host, severity="critical", message=message))
        if self.health_url and self.http_ok is False:
            message = f"HTTP probe {self.health_url} failed ({self.http_status or 'no answer'})"
            out.append(Finding(host=host, severity="critical", message=message))
        if self.config_valid is False:
            errors = "; ".join(self.config_errors[:3])
            message = f"configuration invalid: {errors}"
            out.append(Finding(host=host, severity="critical", message=message))
        elif self.config_valid is True:
            out.append(Finding(host=host, severity="info", message="configuration validates"))
        tail = self.journal_tail[-5:]
        if tail and not self.running:
            message = "journal: " + " | ".join(tail)
            out.append(Finding(host=host, severity="warning", message=message))
        return out


class UnitState(BaseModel):
    """A unit's state as systemd reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str
    active_state: str
    unit_file_state: str

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING


def unit_mismatches(before: Sequence[UnitState], after: Sequence[UnitState]) -> list[str]:
    """Units of ``before`` that are missing from ``after`` or run where they did not (or v.v.)."""
    now = {u.unit: u for u in after}
    problems: list[str] = []
    for was in before:
        state = now.get(was.unit)
        if state is None:
            problems.append(f"rollback did not report {was.unit}")
        elif was.running != state.running:
            problems.append(
                f"{was.unit} was {was.active_state} before, is {state.active_state} now"
            )
    return problems


@report_kind("units.snapshot")
class UnitsSnapshot(Snapshot):
    """service_restart's record of its units before it starts or restarts any."""

    kind: Literal["units.snapshot"]
    units: tuple[UnitState, ...]

    def describe(self) -> str:
        return ", ".join(f"{u.unit} was {u.active_state}" for u in self.units) or "no units"

    def restricted(self, scope: Scope) -> Self:
        # Only units this plan owns are ever restored, whatever the host reported.
        return self.model_copy(
            update={"units": tuple(u for u in self.units if u.unit in scope.units)}
        )


@report_kind("units.rollback")
class UnitsRollback(Restoration):
    """service_restart's rollback: the units' states now, and whether they match the snapshot."""

    kind: Literal["units.rollback"]
    units: tuple[UnitState, ...]
    # The role's own verdict: the running units are exactly those running in the snapshot.
    restored: bool

    def describe(self) -> str:
        return ", ".join(f"{u.unit}={u.active_state}" for u in self.units) or "no units"

    def is_restored(self) -> bool:
        return self.restored

    def mismatches(self, snapshot: Snapshot) -> list[str]:
        if not isinstance(snapshot, UnitsSnapshot):
            return [f"a {snapshot.kind} snapshot cannot be compared with unit states"]
        return unit_mismatches(snapshot.units, self.units)
