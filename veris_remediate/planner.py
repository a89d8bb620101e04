"""Route → RemediationPlan: which reviewed playbooks run, in which mode, with which data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .exceptions import NoRuleError
from .inventory import Inventory, ServiceSpec, dependency_order
from .routing import Route
from .settings import Settings

Phase = Literal["diagnose", "check", "apply", "rollback"]
Risk = Literal["low", "medium", "high"]


class FixProfile(BaseModel):
    """What a fix is allowed to change, how risky it is, and its playbooks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    risk: Risk
    playbook: str
    rollback_playbook: str
    # Module names whose changes are this fix's job; a predicted change by any other
    # module is a surprise and lowers confidence.
    expected_actions: frozenset[str]


FIXES: Mapping[str, FixProfile] = {
    "service_restart": FixProfile(
        name="service_restart",
        risk="low",
        playbook="service_restart.yml",
        rollback_playbook="service_restart_rollback.yml",
        expected_actions=frozenset(
            {"ansible.builtin.systemd_service", "ansible.builtin.systemd", "systemd_service"}
        ),
    ),
}

# Read-only diagnosis playbooks per workflow; a workflow without one cannot be diagnosed yet.
DIAGNOSE_PLAYBOOKS: Mapping[str, str] = {"service_health": "service_diagnose.yml"}


class PlaybookStep(BaseModel):
    """One ansible-runner run: a static playbook, its mode, and its (untrusted) data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: Phase
    playbook: str
    check: bool
    extravars: dict[str, Any]


class RemediationPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    host: str
    route: Route
    workflow: str
    service: ServiceSpec
    units: tuple[str, ...]
    fix: FixProfile | None
    diagnose: PlaybookStep | None
    preview: PlaybookStep | None  # the fix in --check --diff (with diagnosis inside)
    apply: PlaybookStep | None  # the same playbook for real (with snapshot and verify inside)


def _summary(route: Route) -> str:
    notes = route.alert.annotations
    return notes.get("summary") or notes.get("description") or notes.get("message") or ""


def _service_vars(service: ServiceSpec) -> dict[str, Any]:
    return {
        "name": service.name,
        "unit": service.unit,
        "port": service.port,
        "health_url": service.health_url,
        "config_files": list(service.config_files),
        "validate": service.validate,
    }


def _base_vars(
    run_id: str, route: Route, units: Sequence[str], settings: Settings
) -> dict[str, Any]:
    return {
        "veris_run_id": run_id,
        "veris_alert_summary": _summary(route),
        "veris_service": _service_vars(route.service),
        "veris_units_in_order": list(units),
        "veris_health_retries": settings.health_retries,
        "veris_health_delay": settings.health_delay,
        "veris_settle_seconds": settings.settle_seconds,
    }


def build_plan(
    route: Route, inventory: Inventory, settings: Settings, run_id: str
) -> RemediationPlan:
    host = inventory.hosts[route.target.host]
    units = tuple(s.unit for s in dependency_order(host, route.service.name))
    base = _base_vars(run_id, route, units, settings)
    fix = FIXES.get(route.fix) if route.fix else None
    if route.fix and fix is None:
        raise NoRuleError(f"fix {route.fix!r} has no implementation in this version")
    diagnose_pb = DIAGNOSE_PLAYBOOKS.get(route.workflow)
    return RemediationPlan(
        run_id=run_id,
        host=host.name,
        route=route,
        workflow=route.workflow,
        service=route.service,
        units=units,
        fix=fix,
        # Diagnosis runs in check mode too: its probes opt out of check mode themselves,
        # and anything else it might do is previewed, never done.
        diagnose=PlaybookStep(phase="diagnose", playbook=diagnose_pb, check=True, extravars=base)
        if diagnose_pb
        else None,
        preview=PlaybookStep(phase="check", playbook=fix.playbook, check=True, extravars=base)
        if fix
        else None,
        apply=PlaybookStep(phase="apply", playbook=fix.playbook, check=False, extravars=base)
        if fix
        else None,
    )


def apply_step(plan: RemediationPlan, target_healthy: bool) -> PlaybookStep:
    """The apply run, told the check run's verdict so it need not diagnose again."""
    if plan.apply is None:
        raise ValueError("a plan without a fix has nothing to apply")
    return plan.apply.model_copy(
        update={"extravars": {**plan.apply.extravars, "veris_target_healthy": target_healthy}}
    )


def rollback_step(plan: RemediationPlan, prior_states: Sequence[Mapping[str, Any]]) -> PlaybookStep:
    """The fix's rollback entry point, fed the snapshot the apply run reported."""
    if plan.fix is None or plan.apply is None:
        raise ValueError("a plan without a fix has nothing to roll back")
    prior = [
        {
            "unit": str(s.get("unit", "")),
            "active_state": str(s.get("active_state", "")),
            "unit_file_state": str(s.get("unit_file_state", "")),
        }
        for s in prior_states
        # The snapshot comes back from the host: only units this plan owns are restored.
        if s.get("unit") in plan.units
    ]
    return PlaybookStep(
        phase="rollback",
        playbook=plan.fix.rollback_playbook,
        check=False,
        extravars={**plan.apply.extravars, "veris_prior_states": prior},
    )
