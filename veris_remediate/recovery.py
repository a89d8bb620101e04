"""Restoring on demand (``rollback ID``) and finishing runs a killed process left half-done.

Both start from what a remediation leaves behind before it changes anything: the payload
it was given (``runs/ID/payload``), the snapshot its fix reported (``runs/ID/SLOT/
snapshot.json``, or the apply run's own event files when the process died mid-run) and,
while it is between snapshot and outcome, its entry in the state store's journal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .decision import Outcome
from .events import RunSummary, fold_events
from .exceptions import UsageError, VerisError
from .fixes import FixSpec
from .guards import HostBusy
from .planner import RemediationPlan, rollback_step
from .report import PhaseRecord, RemediationResult, RunReport, build_report
from .role_reports import Assessment, ReportError, Snapshot, parse_report
from .routing import Route
from .runner import reap_run_processes
from .store import JournalEntry
from .verify import assess_rollback

if TYPE_CHECKING:
    from .pipeline import Remediator


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _result(
    route: Route, outcome: Outcome, reasons: list[str], phases: list[PhaseRecord], **more: object
) -> RemediationResult:
    return RemediationResult(
        host=route.target.host,
        alert=route.alert.name,
        fingerprint=route.alert.fingerprint,
        workflow=route.workflow,
        remediation=route.fix,
        service=route.service_name,
        decision="apply",
        outcome=outcome,
        reasons=tuple(reasons),
        phases=tuple(phases),
        **more,
    )


def _route_of(owner: Remediator, run_id: str, slot: str, fix: str) -> Route:
    """The route a slot of a past run took, from its saved payload (hand-offs included)."""
    from .pipeline import pick_slot

    routes = owner.routes(owner.workspace.load_payload(run_id), run_id)
    host = slot.split("+", 1)[0].split("-", 1)[1]
    found = pick_slot(routes, slot, host, fix)
    if found is None:
        raise UsageError(
            f"run {run_id}: its alert no longer routes to {fix} on {host} "
            "(inventory or rules changed); restore by hand"
        )
    return found


def _saved_snapshot(owner: Remediator, run_id: str, slot: str, fix: FixSpec) -> Snapshot | None:
    """The snapshot kept after the apply run, else the one in the apply run's event files."""
    slot_dir = owner.workspace.run_dir(run_id) / slot
    try:
        saved = json.loads((slot_dir / "snapshot.json").read_text(encoding="utf-8"))
        kept = parse_report(saved["snapshot"])
        return kept if isinstance(kept, Snapshot) else None
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, ReportError):
        return None
    try:  # kept the moment the apply run reported it
        live = json.loads((slot_dir / "live-snapshot.json").read_text(encoding="utf-8"))
        kept = parse_report(live["snapshot"])
        if isinstance(kept, Snapshot):
            return kept
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, ReportError):
        return None
    summary = _fold_artifacts(slot_dir / "apply")
    snap = summary.host(slot.split("+", 1)[0].split("-", 1)[1]).report(fix.reports.snapshot)
    return snap if isinstance(snap, Snapshot) else None


def _fold_artifacts(private_data_dir: Path) -> RunSummary:
    """Fold the event files ansible-runner wrote as a run went (all that is left of it)."""
    events = []
    for path in private_data_dir.glob("artifacts/*/job_events/*.json*"):  # and -partial
        try:
            events.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # the last file may be half-written
    events.sort(key=lambda e: int(e.get("counter", 0)) if isinstance(e, dict) else 0)
    return fold_events([e for e in events if isinstance(e, dict)], check=False)


def _restore(
    owner: Remediator,
    run_id: str,
    slot: str,
    plan: RemediationPlan,
    snapshot: Snapshot,
    phase: str,
    phases: list[PhaseRecord],
) -> tuple[bool, list[str]]:
    fix = plan.fix
    assert fix is not None
    step = rollback_step(plan, snapshot).model_copy(update={"phase": phase})
    try:
        with owner.access(run_id) as access:
            run = owner.run_step(run_id, slot, step, plan.host, access)
    except VerisError as exc:
        return False, [f"the {phase} run broke off: {exc.message}"]
    phases.append(PhaseRecord(
        name=phase, status="ok" if run.status == "successful" else "failed",
        seconds=run.seconds, detail=run.status,
    ))  # fmt: skip
    verdict = assess_rollback(run.summary, plan.host, fix, snapshot)
    return verdict.ok, list(verdict.reasons)


def _finish(
    owner: Remediator, run_id: str, started: str, results: list[RemediationResult], kind: str
) -> RunReport:
    report = build_report(
        run_id=run_id, started_at=started, finished_at=_now(), source=None, check_only=False,
        results=results, phases=(),
    )  # fmt: skip
    owner.workspace.write_record(run_id, "report", report.model_dump(mode="json"))
    owner.audit.append(
        kind,
        {"outcome": report.outcome, "hosts": list(report.hosts), "exit_code": report.exit_code},
        run_id,
    )
    return report


def rollback_run(owner: Remediator, run_id: str) -> RunReport:
    """``rollback ID``: restore each snapshot the run kept; a person's act, so no brake stops it."""
    slots = sorted(p.parent.name for p in owner.workspace.run_dir(run_id).glob("*/snapshot.json"))
    if not slots:
        raise UsageError(f"run {run_id} kept no snapshot: nothing to roll back")
    new_run = owner.workspace.new_run_id()
    started = _now()
    owner.audit.append("rollback.requested", {"of": run_id}, new_run)
    results = []
    for slot in slots:
        saved = json.loads((owner.workspace.run_dir(run_id) / slot / "snapshot.json").read_text())
        fix = owner.fixes.get(saved["fix"])
        if fix is None or not fix.reversible:
            raise UsageError(f"run {run_id}: fix {saved['fix']} cannot be rolled back")
        route = _route_of(owner, run_id, slot, fix.name)
        plan = owner.build_plan(route, new_run)
        snapshot = _saved_snapshot(owner, run_id, slot, fix)
        if snapshot is None:
            raise UsageError(f"run {run_id}: the snapshot of {slot} is unreadable")
        phases: list[PhaseRecord] = []
        try:
            with owner.guards.lease(route.target.host, new_run):
                ok, reasons = _restore(owner, new_run, slot, plan, snapshot, "restore", phases)
        except HostBusy as busy:
            results.append(_result(route, "deferred", [busy.reason], phases))
            continue
        outcome: Outcome = "rolled_back" if ok else "failed"
        owner.store.add_history(
            route.target.host, fix.name, "reverted" if ok else "failed",
            run_id=new_run, alert=route.alert.name,
        )  # fmt: skip
        head = f"rollback of {run_id} requested: restoring {snapshot.describe()}"
        results.append(_result(
            route, outcome, [head, *reasons], phases, rolled_back=ok,
            snapshot=fix.snapshot, reversible=True,
        ))  # fmt: skip
    return _finish(owner, new_run, started, results, "rollback.finished")


def recover_orphans(owner: Remediator) -> list[RunReport]:
    """Every remediation whose process died after its snapshot: re-verify, then finish."""
    reports = []
    for entry in owner.store.orphans(owner.settings.lease_ttl_seconds):
        if entry.host not in owner.inventory.hosts:
            continue  # another inventory's host: whoever runs that one recovers it
        try:
            with owner.guards.lease(entry.host, entry.run_id):
                reports.append(_recover(owner, entry))
        except HostBusy:
            continue  # its host is busy again: the holder's next start recovers it
    return reports


def _recover(owner: Remediator, entry: JournalEntry) -> RunReport:
    started = _now()
    run_id, slot = entry.run_id, entry.slot
    # The killed process's ansible-playbook may still be changing the host: stop it first.
    # A host of a fleet was changed by the fleet's shared apply run (fleet.py): stop that too.
    run_dir = owner.workspace.run_dir(run_id)
    reaped = [
        pid
        for private in [run_dir / slot / "apply", *sorted(run_dir.glob("fleet-*/apply"))]
        for pid in reap_run_processes(private)
    ]
    owner.workspace.scrub_run(run_id)  # what the killed process could not clean up
    owner.audit.append(
        "run.recovering", {"host": entry.host, "fix": entry.fix, "phase": entry.phase,
                           "owner": entry.owner, "reaped": reaped}, run_id,
    )  # fmt: skip
    fix = owner.fixes.get(entry.fix)
    try:
        if fix is None:
            raise UsageError(f"fix {entry.fix} is no longer installed")
        route = _route_of(owner, run_id, slot, fix.name)
    except VerisError as exc:
        owner.store.journal_end(run_id, slot)
        owner.audit.append("run.recovered", {"outcome": "failed", "reason": exc.message}, run_id)
        raise
    plan = owner.build_plan(route, run_id)
    assert plan.preview is not None
    phases: list[PhaseRecord] = []
    reasons = [
        f"recovered: the process running this fix ({entry.owner}) stopped during {entry.phase}"
        + (f"; stopped its leftover processes {reaped}" if reaped else "")
    ]
    with owner.access(run_id) as access:
        check = owner.run_step(
            run_id, slot, plan.preview.model_copy(update={"phase": "recover-check"}),
            entry.host, access,
        )  # fmt: skip
    phases.append(PhaseRecord(name="recover-check", status="ok", seconds=check.seconds))
    state = check.summary.host(entry.host).report(fix.reports.assess)
    snapshot = _saved_snapshot(owner, run_id, slot, fix)
    outcome: Outcome
    rolled_back = False
    if isinstance(state, Assessment) and not state.problem_present():
        outcome = "resolved"
        reasons.append(f"re-verified read-only: {state.describe()}; the fix had completed")
    elif snapshot is not None and fix.reversible and owner.guards.brake() is None:
        reasons.append("re-verified read-only: the problem is still there; rolling back")
        rolled_back, why = _restore(owner, run_id, slot, plan, snapshot, "rollback", phases)
        reasons += why
        outcome = "rolled_back" if rolled_back else "failed"
    elif snapshot is None:
        # Killed before the fix reported its snapshot, which it does before any change.
        outcome = "escalated"
        seen = state.describe() if isinstance(state, Assessment) else "no diagnosis report"
        reasons += [
            f"re-verified read-only: {seen}",
            "the fix was stopped before it took its snapshot, so before it changed anything: "
            "nothing to restore; the next alert (or `approve`) runs it again",
        ]
    else:
        outcome = "failed"
        seen = state.describe() if isinstance(state, Assessment) else "no diagnosis report"
        why_not = (
            "the brake is engaged" if owner.guards.brake() is not None
            else f"{fix.name} is irreversible"
        )  # fmt: skip
        reasons += [f"re-verified read-only: {seen}", f"not rolled back: {why_not}"]
    owner.guards.account(entry.host, fix.name, outcome, route.alert, run_id, trial=False)
    owner.store.journal_end(run_id, slot)
    result = _result(
        route, outcome, reasons, phases, rolled_back=rolled_back,
        snapshot=fix.snapshot, reversible=fix.reversible,
    )  # fmt: skip
    return _finish(owner, run_id, started, [result], "run.recovered")
