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
from .decision import Action, Decision, History, Outcome, decide
from .exceptions import EscalatedError, NoRuleError, RejectedError
from .inventory import Inventory, load_inventory
from .planner import PlaybookStep, RemediationPlan, apply_step, build_plan, rollback_step
from .report import PhaseRecord, RemediationResult, RunReport, build_report
from .resources import playbooks_dir, roles_dir
from .routing import Route, RuleSet, dedupe_routes, load_rules, route_alert
from .runner import AnsibleRunnerExecutor, Executor, RunRequest, RunResult, close_control_masters
from .settings import Settings, settings_from_env
from .targeting import resolve_target
from .verify import Finding, assess_apply, assess_rollback, findings, prior_states
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
        service=route.service.name,
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
        self.workspace = Workspace(self.settings.state_dir)
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
            self._rules = load_rules(self.settings.rules_file)
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
                routes.append(route_alert(alert, target, self.inventory, self.rules))
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
        return [build_plan(r, self.inventory, self.settings, run_id) for r in routes]

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
        self, run_id: str, slot: str, step: PlaybookStep, host: str, control_dir: Path
    ) -> RunResult:
        prepared = self.workspace.prepare_step(
            run_id, slot, step, host, idle_timeout=self.settings.idle_timeout
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
        hs = result.summary.host(host)
        self.audit.append(
            f"run.{step.phase}",
            {
                "host": host,
                "playbook": step.playbook,
                "check": step.check,
                "status": result.status,
                "rc": result.rc,
                "seconds": result.seconds,
                "tasks": [
                    {"task": t.task, "action": t.action, "status": t.status, "msg": t.msg}
                    for t in hs.tasks
                ],
            },
            run_id,
        )
        return result


class _Remediation:
    """One route through check → decide → apply → verify → rollback."""

    def __init__(self, owner: Remediator, run_id: str, slot: str, route: Route, mode: Mode) -> None:
        self.o = owner
        self.run_id = run_id
        self.slot = slot
        self.route = route
        self.mode = mode
        self.host = route.target.host
        self.phases = _Phases()
        self.findings: list[Finding] = []
        self.control_dir = owner.workspace.control_dir(run_id)

    def result(
        self,
        decision: Decision | None,
        action: Action,
        outcome: Outcome,
        reasons: Sequence[str],
        rolled_back: bool = False,
    ) -> RemediationResult:
        return _route_result(
            self.route,
            action,
            outcome,
            reasons,
            confidence=decision.confidence if decision else 0.0,
            rolled_back=rolled_back,
            phases=tuple(self.phases.records),
            findings=tuple(self.findings),
        )

    def step(self, step: PlaybookStep) -> RunResult:
        with self.phases.timed(step.phase) as ph:
            result = self.o.run_step(self.run_id, self.slot, step, self.host, self.control_dir)
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

    def _run(self) -> RemediationResult:
        with self.phases.timed("plan"):
            try:
                plan = build_plan(self.route, self.o.inventory, self.o.settings, self.run_id)
            except NoRuleError as exc:
                return self.result(None, "escalate", "escalated", [exc.message])
        self.o.audit.append(
            "plan",
            {
                "host": self.host,
                "fix": self.route.fix,
                "workflow": plan.workflow,
                "service": plan.service.name,
                "units": list(plan.units),
            },
            self.run_id,
        )
        if self.mode == "diagnose" or plan.preview is None:
            return self._diagnose_only(plan)

        check = self.step(plan.preview)
        health = check.summary.host(self.host).reports.get("health")
        self.findings = findings(self.host, health)
        assert plan.fix is not None
        assert plan.apply is not None
        with self.phases.timed("decide") as ph:
            since = datetime.now(UTC) - timedelta(hours=self.o.settings.history_hours)
            past = self.o.workspace.history(self.host, plan.fix.name, since)
            decision = decide(
                check.summary,
                self.host,
                plan.fix,
                History(**past) if past else History(),
                self.o.settings.confidence_threshold,
            )
            ph["detail"] = f"{decision.action} ({decision.confidence:.2f})"
        self.o.audit.append(
            "decision", {"host": self.host, **decision.model_dump(mode="json")}, self.run_id
        )
        if decision.action != "apply":
            return self.result(
                decision, decision.action, decision.outcome or "escalated", decision.reasons
            )
        if self.mode == "check_only":
            return self.result(
                decision, "apply", "previewed", [*decision.reasons, "--check-only: nothing applied"]
            )
        if self.o.workspace.brake() is not None:
            return self.result(
                decision, "brake", "blocked", ["emergency brake engaged before apply"]
            )

        apply = self.step(apply_step(plan, bool((health or {}).get("healthy"))))
        with self.phases.timed("verify") as ph:
            verdict = assess_apply(apply.summary, self.host)
            ph["status"] = "ok" if verdict.ok else "failed"
            ph["detail"] = "; ".join(verdict.reasons)
        after = apply.summary.host(self.host).reports.get("verify")
        if apply.status == "canceled" and self.o.workspace.brake() is not None:
            # The operator pulled the brake mid-fix to take over: no automatic rollback
            # (it would be cancelled too); hand them the snapshot to restore from.
            prior = prior_states(self.host, apply.summary, check.summary)
            states = ", ".join(f"{u.get('unit')} was {u.get('active_state')}" for u in prior)
            reason = f"emergency brake engaged during apply; run cancelled; before: {states}"
            self.o.workspace.append_history(self.host, plan.fix.name, "failed")
            return self.result(decision, "brake", "blocked", [*decision.reasons, reason])
        if verdict.ok:
            self.findings += [
                f
                for f in findings(self.host, after)
                if f.severity == "info" and f not in self.findings
            ]
            self.o.workspace.append_history(self.host, plan.fix.name, "resolved")
            return self.result(decision, "apply", "resolved", [*decision.reasons, *verdict.reasons])
        return self._roll_back(plan, decision, check, apply, verdict.reasons)

    def _roll_back(
        self,
        plan: RemediationPlan,
        decision: Decision,
        check: RunResult,
        apply: RunResult,
        why: Sequence[str],
    ) -> RemediationResult:
        assert plan.fix is not None
        prior = prior_states(self.host, apply.summary, check.summary)
        reasons = [*decision.reasons, *why]
        if not prior:
            reasons.append("no snapshot of the prior state: cannot roll back")
            self.o.workspace.append_history(self.host, plan.fix.name, "failed")
            return self.result(decision, "apply", "failed", reasons)
        rollback = self.step(rollback_step(plan, prior))
        verdict = assess_rollback(rollback.summary, self.host, prior)
        reasons += verdict.reasons
        outcome: Outcome = "rolled_back" if verdict.ok else "failed"
        self.o.workspace.append_history(self.host, plan.fix.name, outcome)
        return self.result(decision, "apply", outcome, reasons, rolled_back=verdict.ok)

    def _diagnose_only(self, plan: RemediationPlan) -> RemediationResult:
        if plan.diagnose is None:
            return self.result(
                None,
                "escalate",
                "escalated",
                [f"no diagnosis or automatic fix for workflow {plan.workflow} yet"],
            )
        diag = self.step(plan.diagnose)
        hs = diag.summary.host(self.host)
        self.findings = findings(self.host, hs.reports.get("health"))
        if hs.unreachable:
            return self.result(None, "skip", "failed", [f"{self.host} is unreachable over SSH"])
        if self.mode == "diagnose":
            healthy = (hs.reports.get("health") or {}).get("healthy")
            return self.result(
                None,
                "skip",
                "previewed",
                [f"read-only diagnosis: {'healthy' if healthy else 'unhealthy'}"],
            )
        return self.result(
            None,
            "escalate",
            "escalated",
            [f"no automatic fix for this alert ({plan.workflow}); diagnosis attached"],
        )
