"""Runs the stages in order: intake, route, plan, check, decide, apply, verify, rollback, report."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from .alerts import Alert, AlertBatch, parse_payload
from .audit import AuditLog
from .baselines import BaselineEntry, BaselineResult, BaselineStore
from .causes import synthesize
from .decision import Action, Decision, Outcome, decide
from .events import HostSummary, RunSummary
from .exceptions import EscalatedError, NoRuleError, RejectedError, UsageError, VerisError
from .fixes import FixCatalog, FixSpec, load_fixes
from .inventory import Inventory, load_inventory
from .planner import (
    PlaybookStep,
    RemediationPlan,
    apply_step,
    build_plan,
    rollback_step,
)
from .report import PhaseRecord, PreviewChange, RemediationResult, RunReport, build_report
from .resources import playbooks_dir, roles_dir
from .role_reports import Assessment, Cause, Finding, Report, Snapshot
from .role_reports.baseline import BaselineReport
from .routing import WORKFLOWS, Route, RuleSet, dedupe_routes, load_rules, route_alert
from .runner import AnsibleRunnerExecutor, Executor, RunRequest, RunResult, close_control_masters
from .settings import Settings, settings_from_env
from .targeting import resolve_target
from .verify import assess_apply, assess_rollback, findings, taken_snapshot
from .workspace import Workspace

Mode = Literal["handle", "check_only", "diagnose"]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _route_result(
    route: Route,
    decision: Action,
    outcome: Outcome,
    reasons: str | Sequence[str],
    **more: Any,
) -> RemediationResult:
    """A result about one routed alert; ``more`` adds confidence, phases, findings…"""
    return RemediationResult(
        host=route.target.host,
        alert=route.alert.name,
        fingerprint=route.alert.fingerprint,
        workflow=route.workflow,
        remediation=route.fix,
        service=route.service_name,
        decision=decision,
        outcome=outcome,
        reasons=(reasons,) if isinstance(reasons, str) else tuple(reasons),
        **more,
    )


def _payload_result(decision: Action, outcome: Outcome, reason: str) -> RemediationResult:
    """A result about the payload as a whole, before any host is known."""
    return RemediationResult(
        host=None, alert=None, fingerprint=None, decision=decision, outcome=outcome,
        reasons=(reason,),
    )  # fmt: skip


class _Phases:
    """Times phases of one remediation."""

    def __init__(self) -> None:
        self.records: list[PhaseRecord] = []

    @contextmanager
    def timed(self, name: str) -> Iterator[dict[str, Any]]:
        state: dict[str, Any] = {"status": "ok", "detail": ""}
        start = time.monotonic()
        try:
            yield state
        except Exception:
            state["status"] = "failed"
            raise
        finally:
            self.records.append(
                PhaseRecord(
                    name=name,
                    status=state["status"],
                    seconds=round(time.monotonic() - start, 3),
                    detail=str(state["detail"])[:300],
                )
            )


class Remediator:
    """The library entry point. ``handle`` runs the whole safety loop for one payload."""

    def __init__(
        self,
        inventory: Path | Sequence[Path] | Inventory,
        settings: Settings | None = None,
        *,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings or settings_from_env()
        self._inventory_arg = inventory
        self._inventory: Inventory | None = inventory if isinstance(inventory, Inventory) else None
        self._rules: RuleSet | None = None
        self.fixes: FixCatalog = load_fixes()
        self.workspace = Workspace(self.settings.state_dir)
        self.baselines = BaselineStore(self.settings.state_dir)
        self.audit = AuditLog(self.settings.state_dir / "audit.jsonl")
        # Engaging the brake cancels fix runs in flight: the runner polls this.
        self.executor: Executor = executor or AnsibleRunnerExecutor(
            cancel=lambda: self.workspace.brake() is not None
        )

    # -- inputs -----------------------------------------------------------------

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            arg = self._inventory_arg
            assert not isinstance(arg, Inventory)
            self._inventory = load_inventory([arg] if isinstance(arg, Path) else list(arg))
        return self._inventory

    @property
    def rules(self) -> RuleSet:
        if self._rules is None:
            self._rules = load_rules(self.settings.rules_file, self.fixes)
        return self._rules

    def _intake(self, run_id: str, payload: bytes | str) -> AlertBatch:
        raw = payload.encode() if isinstance(payload, str) else payload
        self.audit.append(
            "alert.received",
            {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()},
            run_id,
        )
        batch = parse_payload(raw)
        for alert in (*batch.firing, *batch.resolved):
            self.audit.append(
                "alert.parsed",
                {
                    "source": alert.source,
                    "status": alert.status,
                    "name": alert.name,
                    "fingerprint": alert.fingerprint,
                    "labels": alert.labels,
                },
                run_id,
            )
        return batch

    def _route_all(
        self, run_id: str, alerts: Sequence[Alert]
    ) -> tuple[list[Route], list[RemediationResult]]:
        routes: list[Route] = []
        refused: list[RemediationResult] = []
        for alert in alerts:
            try:
                target = resolve_target(alert, self.inventory)
                routes.append(route_alert(alert, target, self.inventory, self.rules, self.fixes))
            except (RejectedError, EscalatedError) as exc:
                rejected = isinstance(exc, RejectedError)
                refused.append(
                    RemediationResult(
                        host=None,
                        alert=alert.name,
                        fingerprint=alert.fingerprint,
                        decision="reject" if rejected else "escalate",
                        outcome="rejected" if rejected else "escalated",
                        reasons=(exc.message,),
                    )
                )
                self.audit.append(
                    "alert.rejected" if rejected else "alert.escalated",
                    {"fingerprint": alert.fingerprint, "reason": exc.message},
                    run_id,
                )
        unique = dedupe_routes(routes)
        if len(unique) < len(routes):
            self.audit.append(
                "alert.deduplicated", {"routes": len(routes), "remediations": len(unique)}, run_id
            )
        return unique, refused

    # -- public API ---------------------------------------------------------------

    def handle(self, payload: bytes | str, *, check_only: bool = False) -> RunReport:
        """The whole loop for one payload (one Alertmanager group, one Sentinel check…)."""
        return self._process(payload, mode="check_only" if check_only else "handle")

    def diagnose(self, payload: bytes | str) -> RunReport:
        """Read-only diagnosis of every firing alert; nothing is changed."""
        return self._process(payload, mode="diagnose")

    def plan(self, payload: bytes | str) -> list[RemediationPlan]:
        """The plans a payload would run, without running anything."""
        run_id = self.workspace.new_run_id()
        batch = self._intake(run_id, payload)
        routes, refused = self._route_all(run_id, batch.firing)
        if not routes and refused:
            first = refused[0]
            if first.outcome == "rejected":
                raise RejectedError(first.reasons[0])
            raise EscalatedError(first.reasons[0])
        return [self.build_plan(r, run_id) for r in routes]

    def build_plan(self, route: Route, run_id: str) -> RemediationPlan:
        """The plan for one route, with the baseline copies its fix may need."""
        spec = self.fixes.get(route.fix) if route.fix else None
        baseline = []
        if spec is not None and "baseline" in spec.requires and route.service is not None:
            baseline = self.baselines.copies(route.target.host, route.service.config_files)
        return build_plan(
            route, self.inventory, self.settings, run_id, catalog=self.fixes, baseline=baseline
        )

    # -- the loop -----------------------------------------------------------------

    def _process(self, payload: bytes | str, *, mode: Mode) -> RunReport:
        run_id = self.workspace.new_run_id()
        started = _now()
        head = _Phases()
        results: list[RemediationResult] = []
        source: str | None = None
        try:
            with head.timed("intake"):
                batch = self._intake(run_id, payload)
            source = batch.source
            with head.timed("route") as ph:
                routes, refused = self._route_all(run_id, batch.firing)
                results += refused
                ph["detail"] = f"{len(routes)} remediation(s), {len(batch.resolved)} resolved"
            for alert in batch.resolved:
                # Nothing waits for approval in this version; record that it cleared.
                self.audit.append("alert.cleared", {"fingerprint": alert.fingerprint}, run_id)
            if not batch.firing:
                results.append(
                    _payload_result("skip", "not_needed", "only resolved alerts: nothing to do")
                )
            hosts = {r.target.host for r in routes}
            if len(hosts) > self.settings.max_hosts:
                reason = (
                    f"{len(hosts)} hosts in one payload exceeds the blast-radius cap "
                    f"of {self.settings.max_hosts}"
                )
                results += [_route_result(r, "escalate", "escalated", reason) for r in routes]
                routes = []
            for index, route in enumerate(routes):
                results.append(self._remediate(run_id, f"{index}-{route.target.host}", route, mode))
        except RejectedError as exc:
            self.audit.append("alert.rejected", {"reason": exc.message}, run_id)
            results.append(_payload_result("reject", "rejected", exc.message))
        report = build_report(
            run_id=run_id,
            started_at=started,
            finished_at=_now(),
            source=source,
            check_only=mode != "handle",
            results=results,
            phases=head.records,
        )
        self.workspace.write_record(run_id, "report", report.model_dump(mode="json"))
        self.audit.append(
            "run.finished",
            {
                "outcome": report.outcome,
                "decision": report.decision,
                "hosts": list(report.hosts),
                "exit_code": report.exit_code,
            },
            run_id,
        )
        return report

    def _remediate(self, run_id: str, slot: str, route: Route, mode: Mode) -> RemediationResult:
        host = route.target.host
        brake = self.workspace.brake() if mode == "handle" else None
        if brake is not None:
            reason = f"emergency brake engaged: {brake}"
            self.audit.append(
                "decision", {"host": host, "action": "brake", "reason": reason}, run_id
            )
            return _route_result(route, "brake", "blocked", reason)
        try:
            with self.workspace.host_lock(host):
                return _Remediation(self, run_id, slot, route, mode).run()
        except EscalatedError as exc:
            self.audit.append(
                "decision", {"host": host, "action": "escalate", "reason": exc.message}, run_id
            )
            return _route_result(route, "escalate", "escalated", exc.message)

    def run_step(
        self,
        run_id: str,
        slot: str,
        step: PlaybookStep,
        hosts: str | Sequence[str],
        control_dir: Path,
    ) -> RunResult:
        targets = [hosts] if isinstance(hosts, str) else list(hosts)
        prepared = self.workspace.prepare_step(
            run_id, slot, step, targets, idle_timeout=self.settings.idle_timeout
        )
        request = RunRequest(
            phase=step.phase,
            private_data_dir=prepared.private_data_dir,
            playbook=playbooks_dir() / step.playbook,
            inventories=(*self.inventory.sources, prepared.target_inventory),
            check=step.check,
            roles_path=roles_dir(),
            control_dir=control_dir,
            job_timeout=self.settings.job_timeout,
        )
        try:
            result = self.executor.run(request)
        finally:
            self.workspace.scrub(prepared)
        self.audit.append(
            f"run.{step.phase}",
            {
                "hosts": targets,
                "playbook": step.playbook,
                "check": step.check,
                "status": result.status,
                "rc": result.rc,
                "seconds": result.seconds,
                "tasks": [
                    {"host": h, "task": t.task, "action": t.action, "status": t.status,
                     "msg": t.msg}
                    for h in targets
                    for t in result.summary.host(h).tasks
                ],
            },
            run_id,
        )  # fmt: skip
        return result

    # -- baseline -------------------------------------------------------------------------

    def baseline(self, limit: str | None = None) -> BaselineResult:
        """Record last-known-good config copies of healthy services (``baseline`` command)."""
        if limit is not None and limit not in self.inventory.hosts:
            raise UsageError(f"--limit {limit[:80]!r} is not a host of the inventory")
        hosts = [
            h
            for h in self.inventory.hosts.values()
            if limit in (None, h.name) and any(s.config_files for s in h.services.values())
        ]
        run_id = self.workspace.new_run_id()
        entries: list[BaselineEntry] = []
        if not hosts:
            return BaselineResult(run_id=run_id, entries=(), exit_code=0)
        step = PlaybookStep(
            phase="baseline",
            playbook="baseline.yml",
            check=False,
            extravars={
                "veris_run_id": run_id,
                "veris_baseline_hosts": [
                    {"host": h.name,
                     "services": [s.model_dump(mode="json") for s in h.services.values()]}
                    for h in hosts
                ],
            },
        )  # fmt: skip
        control_dir = self.workspace.control_dir(run_id)
        try:
            run = self.run_step(run_id, "baseline", step, [h.name for h in hosts], control_dir)
        finally:
            close_control_masters(control_dir)
        fetched_root = self.workspace.run_dir(run_id) / "baseline" / "files"
        for host in hosts:
            entries += self._record_baseline(run_id, host.name, run.summary, fetched_root)
        result = BaselineResult(
            run_id=run_id,
            entries=tuple(entries),
            exit_code=6 if any(e.status == "failed" for e in entries) else 0,
        )
        self.audit.append("baseline", result.model_dump(mode="json"), run_id)
        return result

    def _record_baseline(
        self, run_id: str, host: str, summary: RunSummary, fetched_root: Path
    ) -> list[BaselineEntry]:
        hs = summary.host(host)
        report = hs.report("baseline")
        if not isinstance(report, BaselineReport):
            failures = [t.msg for t in hs.failed_tasks] + list(hs.report_errors)
            why = "unreachable" if hs.unreachable else "; ".join(failures) or "no baseline report"
            return [BaselineEntry(host=host, status="failed", reason=why)]
        entries = []
        for service in report.services:
            if not service.recorded:
                entries.append(BaselineEntry(
                    host=host, service=service.name, status="skipped", reason=service.why_not()
                ))  # fmt: skip
                continue
            for f in service.files:
                fetched = Path(f.fetched)
                if not f.exists or f.sha256 is None:
                    entries.append(BaselineEntry(
                        host=host, service=service.name, path=f.path, status="skipped",
                        reason="file does not exist",
                    ))  # fmt: skip
                    continue
                # The path came back from the host: only a file fetched into this run's
                # own directory is ever stored.
                if not fetched.resolve().is_relative_to(fetched_root.resolve()):
                    raise VerisError(
                        f"baseline of {host}: {f.path} was not fetched into {fetched_root}"
                    )
                copy, new = self.baselines.record(
                    host=host, service=service.name, path=f.path, fetched=fetched,
                    sha256=f.sha256, mode=f.mode or "0644", owner=f.owner or "root",
                    group=f.group or "root", run_id=run_id,
                )  # fmt: skip
                entries.append(BaselineEntry(
                    host=host, service=service.name, path=f.path, sha256=copy.sha256,
                    status="recorded" if new else "confirmed",
                ))  # fmt: skip
        return entries


def _preview(hs: HostSummary, fix: FixSpec, assessment: Report | None) -> tuple[PreviewChange, ...]:
    """The check run's predicted changes with their diffs, the role's own view first.

    A role may render the change it computed (``preview_diff``), for modules that show
    no diff of their own (community.general.ufw).
    """
    changes = [PreviewChange(task=t.task, action=t.action, diff=t.diff) for t in hs.changed_tasks]
    if isinstance(assessment, Assessment) and assessment.preview_diff():
        role_view = PreviewChange(
            task=assessment.describe(), action=fix.reports.assess, diff=assessment.preview_diff()
        )
        changes.insert(0, role_view)
    return tuple(changes)


class _Remediation:
    """One route through check → decide → apply → verify → rollback (or a hand-off)."""

    def __init__(self, owner: Remediator, run_id: str, slot: str, route: Route, mode: Mode) -> None:
        self.o = owner
        self.run_id = run_id
        self.slot = slot
        self.route = route
        self.mode = mode
        self.host = route.target.host
        self.phases = _Phases()
        self.findings: list[Finding] = []
        self.causes: list[Cause] = []
        self.preview: tuple[PreviewChange, ...] = ()
        self.prefix: list[str] = []  # reasons carried over from a fix that handed off
        self.control_dir = owner.workspace.control_dir(run_id)

    def result(
        self,
        decision: Decision | None,
        action: Action,
        outcome: Outcome,
        reasons: Sequence[str],
        *,
        route: Route | None = None,
        fix: FixSpec | None = None,
        rolled_back: bool = False,
    ) -> RemediationResult:
        applied = action == "apply" and outcome not in ("previewed", "escalated")
        return _route_result(
            route or self.route,
            action,
            outcome,
            [*self.prefix, *reasons],
            confidence=decision.confidence if decision else 0.0,
            rolled_back=rolled_back,
            phases=tuple(self.phases.records),
            findings=tuple(self.findings),
            causes=tuple(self.causes),
            preview=self.preview,
            snapshot=fix.snapshot if fix and applied else None,
            reversible=fix.reversible if fix else None,
        )

    def step(self, step: PlaybookStep, slot: str) -> RunResult:
        with self.phases.timed(step.phase) as ph:
            result = self.o.run_step(self.run_id, slot, step, self.host, self.control_dir)
            ph["detail"] = (
                f"{result.status}, {result.summary.host(self.host).count('changed')} changed"
            )
            if result.status != "successful":
                ph["status"] = "failed"
        return result

    def run(self) -> RemediationResult:
        try:
            return self._run()
        finally:
            close_control_masters(self.control_dir)

    def _plan(self, route: Route) -> RemediationPlan | RemediationResult:
        refused: NoRuleError | None = None
        with self.phases.timed("plan") as ph:
            try:
                plan = self.o.build_plan(route, self.run_id)
            except NoRuleError as exc:
                refused = exc
                ph["detail"] = exc.message
        if refused is not None:  # after the timer, so the plan phase is in the result
            return self.result(None, "escalate", "escalated", [refused.message], route=route)
        self.o.audit.append(
            "plan",
            {
                "host": self.host,
                "fix": route.fix,
                "workflow": plan.workflow,
                "service": route.service_name,
                "units": list(plan.units),
                "scope": plan.scope.model_dump(mode="json"),
            },
            self.run_id,
        )
        return plan

    def _run(self) -> RemediationResult:
        plan = self._plan(self.route)
        if isinstance(plan, RemediationResult):
            return plan
        if self.mode == "diagnose" or plan.preview is None:
            return self._diagnose_only(plan)
        return self._fix(plan, self.slot, hand_off=True)

    def _fix(self, plan: RemediationPlan, slot: str, *, hand_off: bool) -> RemediationResult:
        fix, route = plan.fix, plan.route
        assert fix is not None
        assert plan.preview is not None
        check = self.step(plan.preview, slot)
        hs = check.summary.host(self.host)
        self.findings = findings(self.host, *hs.reports.values())
        self.causes = synthesize(hs.reports.values())
        assessment = hs.report(fix.reports.assess)
        self.preview = _preview(hs, fix, assessment)
        with self.phases.timed("decide") as ph:
            since = datetime.now(UTC) - timedelta(hours=self.o.settings.history_hours)
            history = self.o.workspace.history(self.host, fix.name, since)
            decision = decide(
                check.summary,
                self.host,
                fix,
                history,
                self.o.settings.confidence_threshold,
                scope=plan.scope,
            )
            ph["detail"] = f"{fix.name}: {decision.action} ({decision.confidence:.2f})"
        self.o.audit.append(
            "decision",
            {"host": self.host, "fix": fix.name, **decision.model_dump(mode="json")},
            self.run_id,
        )
        other = route.on_blocked.get(decision.blocker.code) if decision.blocker else None
        if other and hand_off:
            return self._hand_off(plan, decision, other)
        if decision.action != "apply":
            outcome = decision.outcome or "escalated"
            return self.result(
                decision, decision.action, outcome, decision.reasons, route=route, fix=fix
            )
        if self.mode == "check_only":
            reasons = [*decision.reasons, "--check-only: nothing applied"]
            return self.result(decision, "apply", "previewed", reasons, route=route, fix=fix)
        if self.o.workspace.brake() is not None:
            reasons = ["emergency brake engaged before apply"]
            return self.result(decision, "brake", "blocked", reasons, route=route, fix=fix)

        assert isinstance(assessment, Assessment)  # decide() applies only with one
        # apply_step cuts it to the plan's scope: the same view decide() scored.
        apply = self.step(apply_step(plan, assessment), slot)
        with self.phases.timed("verify") as ph:
            verdict = assess_apply(apply.summary, self.host, fix)
            ph["status"] = "ok" if verdict.ok else "failed"
            ph["detail"] = "; ".join(verdict.reasons)
        after = apply.summary.host(self.host)
        snapshot = taken_snapshot(self.host, fix, apply.summary, check.summary)
        if apply.status == "canceled" and self.o.workspace.brake() is not None:
            # The operator pulled the brake mid-fix to take over: no automatic rollback
            # (it would be cancelled too); hand them the snapshot to restore from.
            before = snapshot.describe() if snapshot else "no snapshot was taken"
            reason = f"emergency brake engaged during apply; run cancelled; before: {before}"
            self.o.workspace.append_history(self.host, fix.name, "failed")
            return self.result(
                decision, "brake", "blocked", [*decision.reasons, reason], route=route, fix=fix
            )
        if verdict.ok:
            self.findings += [
                f
                for f in findings(self.host, *after.reports.values())
                if f.severity == "info" and f not in self.findings
            ]
            self.o.workspace.append_history(self.host, fix.name, "resolved")
            reasons = [*decision.reasons, *verdict.reasons]
            return self.result(decision, "apply", "resolved", reasons, route=route, fix=fix)
        self.findings += [
            f for f in findings(self.host, *after.reports.values()) if f not in self.findings
        ]
        return self._roll_back(plan, decision, slot, snapshot, verdict.reasons)

    def _hand_off(self, plan: RemediationPlan, decision: Decision, other: str) -> RemediationResult:
        """The fix cannot help for a reason its rule hands to another fix: try that one."""
        assert decision.blocker is not None
        assert plan.fix is not None
        self.prefix = [
            f"{plan.fix.name} cannot help: {decision.blocker.reason}",
            f"rule {self.route.rule}: on {decision.blocker.code}, try {other}",
        ]
        self.o.audit.append(
            "handoff",
            {
                "host": self.host,
                "from": plan.fix.name,
                "to": other,
                "blocker": decision.blocker.code,
            },
            self.run_id,
        )
        # The other fix takes its own defaults: the rule's params were for the first one.
        route = self.route.model_copy(update={"fix": other, "fix_params": {}, "on_blocked": {}})
        handed = self._plan(route)
        if isinstance(handed, RemediationResult):
            return handed
        return self._fix(handed, f"{self.slot}+{other}", hand_off=False)

    def _roll_back(
        self,
        plan: RemediationPlan,
        decision: Decision,
        slot: str,
        snapshot: Snapshot | None,
        why: Sequence[str],
    ) -> RemediationResult:
        fix, route = plan.fix, plan.route
        assert fix is not None
        reasons = [*decision.reasons, *why]
        if not fix.reversible:
            reasons.append(f"{fix.name} is irreversible: nothing could be rolled back")
            self.o.workspace.append_history(self.host, fix.name, "failed")
            return self.result(decision, "apply", "failed", reasons, route=route, fix=fix)
        if snapshot is None:
            reasons.append("no snapshot of the prior state: cannot roll back")
            self.o.workspace.append_history(self.host, fix.name, "failed")
            return self.result(decision, "apply", "failed", reasons, route=route, fix=fix)
        rollback = self.step(rollback_step(plan, snapshot), slot)
        verdict = assess_rollback(rollback.summary, self.host, fix, snapshot)
        reasons += verdict.reasons
        outcome: Outcome = "rolled_back" if verdict.ok else "failed"
        self.o.workspace.append_history(self.host, fix.name, outcome)
        return self.result(
            decision, "apply", outcome, reasons, route=route, fix=fix, rolled_back=verdict.ok
        )

    def _diagnose_only(self, plan: RemediationPlan) -> RemediationResult:
        """Read-only: the workflow's diagnosis, else the fix's check run (which diagnoses)."""
        step = plan.diagnose or (plan.preview if self.mode == "diagnose" else None)
        if step is None:
            return self.result(
                None,
                "escalate",
                "escalated",
                [f"no diagnosis or automatic fix for workflow {plan.workflow} yet"],
            )
        diag = self.step(step, self.slot)
        hs = diag.summary.host(self.host)
        self.findings = findings(self.host, *hs.reports.values())
        self.causes = synthesize(hs.reports.values())
        if hs.unreachable:
            return self.result(None, "skip", "failed", [f"{self.host} is unreachable over SSH"])
        if self.mode != "diagnose":
            return self.result(
                None,
                "escalate",
                "escalated",
                [f"no automatic fix for this alert ({plan.workflow}); diagnosis attached"],
            )
        if step is plan.diagnose:
            kind = WORKFLOWS[plan.workflow].report
        else:
            kind = plan.fix.reports.assess if plan.fix else ""
        report = hs.report(kind)
        if isinstance(report, Assessment):
            verdict = "problem found" if report.problem_present() else "no problem found"
            reason = f"read-only diagnosis: {verdict}: {report.describe()}"
        elif report is not None:
            reason = f"read-only diagnosis: {report.describe()}"
        else:
            reason = f"read-only diagnosis: no {kind} report"
        return self.result(None, "skip", "previewed", [reason])
