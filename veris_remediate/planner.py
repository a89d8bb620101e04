"""Route → RemediationPlan: which reviewed playbooks run, in which mode, with which data.

Every fix run gets the same data, whatever the family; the fix's entry playbook picks
what its role needs (``playbooks/*.yml``). All of it comes from the inventory, the
settings, the rule and the validated alert, and reaches Ansible only as ``!unsafe`` data:

- ``veris_run_id``; ``veris_alert`` (name, severity, summary, labels as name/value
  pairs) and ``veris_alert_summary``;
- ``veris_host``: the host's declarations (``services``, ``firewall``, ``cache``,
  ``postgres``);
- ``veris_service``: the routed service, or null for a host-wide fix;
- ``veris_units_in_order``: the service's units, dependencies first (empty without one);
- ``veris_scope``: what the plan may touch (units, config files, cache dirs);
- ``veris_health_retries``/``_delay``, ``veris_settle_seconds``;
- ``veris_baseline``: last-known-good config copies, for fixes that require them;
- the rule's params, as the role variables they set (checked against argument_specs);
- in the apply run ``veris_assessment`` (the check run's assessment), in the rollback run
  ``veris_snapshot`` (the apply run's snapshot) — both cut down to the plan's scope first;
- ``veris_controller_dir`` (added by the workspace): a private directory on the
  controller where a run may fetch files (snapshots) and the rollback finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .baselines import BaselineCopy
from .exceptions import NoRuleError
from .fixes import FixCatalog, FixSpec, Requirement, load_fixes
from .inventory import Inventory, InventoryHost, ServiceSpec, dependency_order
from .redaction import redact, redact_text
from .role_reports import Assessment, Scope, Snapshot
from .routing import WORKFLOWS, Route
from .settings import Settings

Phase = Literal["diagnose", "check", "apply", "rollback", "baseline"]


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
    service: ServiceSpec | None
    units: tuple[str, ...]
    fix: FixSpec | None
    scope: Scope
    diagnose: PlaybookStep | None
    preview: PlaybookStep | None  # the fix in --check --diff (with its diagnosis inside)
    apply: PlaybookStep | None  # the same playbook for real (with snapshot and verify inside)


def _summary(route: Route) -> str:
    notes = route.alert.annotations
    return notes.get("summary") or notes.get("description") or notes.get("message") or ""


def _scope(
    host: InventoryHost, service: ServiceSpec | None, units: Sequence[str],
    baseline: Sequence[BaselineCopy],
) -> Scope:  # fmt: skip
    services = [service] if service else list(host.services.values())
    return Scope(
        host=host.name,
        services=tuple(s.name for s in services),
        units=tuple(units),
        config_files=service.config_files if service else (),
        cache_dirs=tuple(d for s in services for d in s.cache_dirs),
        baseline_sha256=tuple(copy.sha256 for copy in baseline),
    )


def _unmet(requirement: Requirement, scope: Scope, host: InventoryHost,
           service: ServiceSpec | None) -> str | None:  # fmt: skip
    """Why ``requirement`` is not met, or None when it is."""
    if requirement == "service":
        return None if service else "the alert names no declared service"
    if requirement == "firewall_policy":
        if host.firewall is not None:
            return None
        return (
            f"host {host.name} does not declare veris_firewall (the opt-in to hardening, "
            "with the ports it must keep open)"
        )
    if requirement == "cache_dirs":
        return None if scope.cache_dirs else "no cache_dirs are declared for it"
    if requirement == "postgres_policy":
        if host.postgres is not None and host.postgres.service in host.services:
            return None
        return (
            f"host {host.name} does not declare veris_postgres (the opt-in to connection "
            "relief) naming a declared service"
        )
    if requirement == "config_validator":
        if service and service.config_files and service.validate:
            return None
        return "no config_files with a validate command are declared for it"
    # baseline
    if scope.baseline_sha256:
        return None
    return (
        "no last-known-good copy of its config files is recorded "
        "(`veris-remediate baseline` records them while the service is healthy)"
    )


def build_plan(
    route: Route,
    inventory: Inventory,
    settings: Settings,
    run_id: str,
    *,
    catalog: FixCatalog | None = None,
    baseline: Sequence[BaselineCopy] = (),
) -> RemediationPlan:
    """The runs for one route. Raises NoRuleError when the fix's requirements are not met."""
    host = inventory.hosts[route.target.host]
    service = route.service
    fix = (catalog or load_fixes()).get(route.fix) if route.fix else None
    if route.fix and fix is None:
        raise NoRuleError(f"fix {route.fix!r} has no implementation in this version")
    units = tuple(s.unit for s in dependency_order(host, service.name)) if service else ()
    wanted = [b for b in baseline if service and b.path in service.config_files]
    scope = _scope(host, service, units, wanted if fix and "baseline" in fix.requires else ())
    if fix is not None:
        target = f"{host.name}/{service.name}" if service else host.name
        for requirement in fix.requires:
            problem = _unmet(requirement, scope, host, service)
            if problem:
                raise NoRuleError(f"fix {fix.name} cannot run on {target}: {problem}")
    # Alert text is masked where it enters a run: a token in a label never reaches disk.
    summary = redact_text(_summary(route))
    labels = redact(dict(route.alert.labels))
    data: dict[str, Any] = {
        "veris_run_id": run_id,
        "veris_alert_summary": summary,
        "veris_alert": {
            "name": route.alert.name,
            "severity": route.alert.severity,
            "summary": summary,
            # Pairs, not a mapping: label names are not all plain lowercase identifiers.
            "labels": [{"name": k, "value": v} for k, v in sorted(labels.items())],
        },
        "veris_host": {
            "name": host.name,
            "services": [s.model_dump(mode="json") for s in host.services.values()],
            "firewall": host.firewall.model_dump(mode="json") if host.firewall else None,
            "cache": host.cache.model_dump(mode="json"),
            "postgres": host.postgres.model_dump(mode="json") if host.postgres else None,
        },
        "veris_service": service.model_dump(mode="json") if service else None,
        "veris_units_in_order": list(units),
        "veris_scope": scope.model_dump(mode="json"),
        "veris_health_retries": settings.health_retries,
        "veris_health_delay": settings.health_delay,
        "veris_settle_seconds": settings.settle_seconds,
    }
    if fix is not None and "baseline" in fix.requires:
        data["veris_baseline"] = [b.model_dump(mode="json") for b in wanted]
    fix_data = {**data, **route.fix_params}
    workflow = WORKFLOWS.get(route.workflow)
    diagnosable = workflow is not None and (service is not None or not workflow.needs_service)
    return RemediationPlan(
        run_id=run_id,
        host=host.name,
        route=route,
        workflow=route.workflow,
        service=service,
        units=units,
        fix=fix,
        scope=scope,
        # Diagnosis runs in check mode too: its probes opt out of check mode themselves,
        # and anything else it might do is previewed, never done.
        diagnose=PlaybookStep(
            phase="diagnose", playbook=workflow.playbook, check=True, extravars=data
        )
        if workflow and diagnosable
        else None,
        preview=PlaybookStep(phase="check", playbook=fix.playbook, check=True, extravars=fix_data)
        if fix
        else None,
        apply=PlaybookStep(phase="apply", playbook=fix.playbook, check=False, extravars=fix_data)
        if fix
        else None,
    )


def apply_step(plan: RemediationPlan, assessment: Assessment) -> PlaybookStep:
    """The apply run, given the check run's assessment so it need not diagnose again."""
    if plan.apply is None:
        raise ValueError("a plan without a fix has nothing to apply")
    seen = assessment.restricted(plan.scope).model_dump(mode="json")
    return plan.apply.model_copy(
        update={"extravars": {**plan.apply.extravars, "veris_assessment": seen}}
    )


def rollback_step(plan: RemediationPlan, snapshot: Snapshot) -> PlaybookStep:
    """The fix's rollback entry point, fed the snapshot the apply run reported."""
    if plan.fix is None or plan.apply is None or plan.fix.rollback_playbook is None:
        raise ValueError("a plan without a reversible fix has nothing to roll back")
    saved = snapshot.restricted(plan.scope).model_dump(mode="json")
    return PlaybookStep(
        phase="rollback",
        playbook=plan.fix.rollback_playbook,
        check=False,
        extravars={**plan.apply.extravars, "veris_snapshot": saved},
    )
