"""Runs the stages in order: intake, route, plan, check, decide, apply, verify, rollback, report."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from .alerts import MAX_PAYLOAD_BYTES, Alert, AlertBatch, parse_payload
from .audit import AuditLog
from .baselines import BaselineEntry, BaselineResult, BaselineStore
from .causes import synthesize
from .decision import Action, Decision, Outcome, decide
from .events import HostSummary, RunSummary
from .exceptions import EscalatedError, NoRuleError, RejectedError, UsageError, VerisError
from .fixes import FixCatalog, FixSpec, load_fixes
from .guards import Guards, HostBusy, incident_key, preview_digest
from .inventory import Inventory, load_inventory
from .planner import (
    PlaybookStep,
    RemediationPlan,
    apply_step,
    build_plan,
    rollback_step,
)
from .progress import ProgressCallback, ProgressEvent, emit
from .report import PhaseRecord, PreviewChange, RemediationResult, RunReport, build_report
from .resources import playbooks_dir, roles_dir
from .role_reports import Assessment, Cause, Finding, Report, Snapshot
from .role_reports.baseline import BaselineReport
from .routing import WORKFLOWS, Route, RuleSet, dedupe_routes, load_rules, route_alert
from .runner import AnsibleRunnerExecutor, Executor, RunRequest, RunResult, close_control_masters
from .settings import Settings, settings_from_env
from .sshca import Certificate, run_certificate
from .store import Approval, StateStore, operator
from .targeting import resolve_target
from .verify import assess_apply, assess_rollback, findings, taken_snapshot
from .workspace import History, PreparedStep, Workspace

Mode = Literal["handle", "check_only", "diagnose"]
# What a payload may be handed in as (see ``payload_bytes``).
Payload = bytes | str | Mapping[str, Any] | os.PathLike[str]


def payload_bytes(payload: Payload) -> bytes:
    """The payload's bytes: JSON text, bytes, a decoded mapping, or a file path to read."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, Mapping):
        return json.dumps(payload).encode()
    if isinstance(payload, os.PathLike):
        try:
            with open(payload, "rb") as fh:
                return fh.read(MAX_PAYLOAD_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read the payload file {payload}: {exc.strerror}") from exc
    raise UsageError(
        f"a payload is JSON text, bytes, a mapping or a path, not {type(payload).__name__}"
    )


@dataclass(frozen=True)
class Access:
    """How one remediation's runs reach its host (see ``Remediator.access``)."""

    control_dir: Path
    certificate: Certificate | None


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
    """Times phases of one remediation, and reports their starts and ends to ``progress``."""

    def __init__(self, progress: ProgressCallback | None = None, host: str | None = None) -> None:
        self.records: list[PhaseRecord] = []
        self.progress = progress
        self.host = host

    @contextmanager
    def timed(self, name: str) -> Iterator[dict[str, Any]]:
        # A step may set state["tasks"]: the Ansible tasks its run reported (for progress).
        state: dict[str, Any] = {"status": "ok", "detail": ""}
        emit(self.progress, ProgressEvent(kind="start", phase=name, host=self.host))
        start = time.monotonic()
        try:
            yield state
        except Exception:
            state["status"] = "failed"
            raise
        finally:
            record = PhaseRecord(
                name=name,
                status=state["status"],
                seconds=round(time.monotonic() - start, 3),
                detail=str(state["detail"])[:300],
            )
            self.records.append(record)
            emit(self.progress, ProgressEvent(
                kind="end", phase=name, host=self.host, status=record.status,
                seconds=record.seconds, detail=record.detail, tasks=state.get("tasks"),
            ))  # fmt: skip


class Remediator:
    """The library entry point. ``handle`` runs the whole safety loop for one payload."""

    def __init__(
        self,
        inventory: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Inventory,
        settings: Settings | None = None,
        *,
        executor: Executor | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = settings or settings_from_env()
        # Called at each phase's start and end (veris_remediate.progress); None: silent.
        self.progress = progress
        self._inventory_arg = inventory
        self._inventory: Inventory | None = inventory if isinstance(inventory, Inventory) else None
        self._rules: RuleSet | None = None
        self.fixes: FixCatalog = load_fixes()
        self.workspace = Workspace(self.settings.state_dir)
        self.baselines = BaselineStore(self.settings.state_dir)
        self.audit = AuditLog.from_settings(self.settings)
        self.store = StateStore.from_settings(self.settings)
        self.guards = Guards(self.store, self.settings, self.audit)
        # Set by the CLI's SIGTERM handler: the fix run in flight is cancelled and rolled back.
        self.terminating = False
        # Fleet runs in flight (fleet.py): run dir → each host's slot dir, for live snapshots.
        self.fleet_slots: dict[Path, dict[str, Path]] = {}
        # The runner polls this while a run is in flight. Runs go to the execution node
        # the settings name, if any (execnode.py), else run here.
        from .execnode import ExecutionNode, StreamingExecutor

        node = ExecutionNode.from_settings(self.settings)
        self.executor: Executor = executor or (
            StreamingExecutor(node, cancel=self.should_cancel, on_report=self.on_report)
            if node is not None
            else AnsibleRunnerExecutor(cancel=self.should_cancel, on_report=self.on_report)
        )

    def on_report(self, request: RunRequest, host: str, report: Report) -> None:
        """A snapshot is kept the moment the fix run reports it: if this process dies
        mid-apply, recovery still knows what to restore."""
        if not request.check and isinstance(report, Snapshot):
            saved = {"host": host, "snapshot": report.model_dump(mode="json")}
            # A fleet run's hosts each keep theirs in their own slot, as a single run does.
            slot_dir = self.fleet_slots.get(request.private_data_dir, {}).get(
                host, request.private_data_dir.parent
            )
            self.workspace.write_file(
                slot_dir / "live-snapshot.json", json.dumps(saved, sort_keys=True) + "\n"
            )

    def should_cancel(self, request: RunRequest) -> bool:
        """Cancel a run in flight? Read-only runs always finish, brake or not.

        The brake cancels fix runs (apply and rollback: no automatic change while it is
        engaged); SIGTERM cancels an apply, which is then rolled back.
        """
        if request.check or request.phase not in ("apply", "rollback"):
            return False  # read-only runs, and a person's own ``rollback ID`` (restore)
        if self.terminating and request.phase == "apply":
            return True
        return self.store.brake() is not None

    # -- inputs -----------------------------------------------------------------

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            arg = self._inventory_arg
            assert not isinstance(arg, Inventory)
            # One path (str or path-like) or several: a str is a path, never its characters.
            paths = [arg] if isinstance(arg, str | os.PathLike) else list(arg)
            # The listing is reused while no input of it changed (inventory_cache.py).
            self._inventory = load_inventory(
                [Path(p) for p in paths], cache_dir=self.settings.state_dir / "cache"
            )
        return self._inventory

    @property
    def rules(self) -> RuleSet:
        if self._rules is None:
            self._rules = load_rules(self.settings.rules_file, self.fixes)
        return self._rules

    def _intake(self, run_id: str, payload: Payload) -> AlertBatch:
        raw = payload_bytes(payload)
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

    def handle(
        self,
        payload: Payload,
        *,
        check_only: bool = False,
        only: Collection[str] | None = None,
    ) -> RunReport:
        """The whole loop for one payload (one Alertmanager group, one Sentinel check…).

        ``payload``: JSON text (``str``), raw ``bytes``, an already-decoded mapping, or a
        path (``pathlib.Path`` / ``os.PathLike``) to a file holding it. ``only``: incident
        keys (``guards.incident_key``) to act on; other firing alerts of the payload are
        left alone (``serve`` queues each incident on its own).
        """
        mode: Mode = "check_only" if check_only else "handle"
        return self._process(payload, mode=mode, only=only)

    def diagnose(self, payload: Payload) -> RunReport:
        """Read-only diagnosis of every firing alert; nothing is changed."""
        return self._process(payload, mode="diagnose")

    def approve(self, approval_id: str) -> RunReport:
        """A person approves a pending fix: a fresh check, applied only on the same preview."""
        pending = self._pending(approval_id)
        self.audit.append("approval.given", {"id": pending.id, "by": operator()}, pending.run_id)
        return self._process(
            self.workspace.load_payload(pending.run_id), mode="handle", approval=pending
        )

    def reject(self, approval_id: str, reason: str = "") -> Approval:
        """A person says no: the pending fix is closed, nothing runs."""
        pending = self._pending(approval_id)
        self.store.decide_approval(pending.id, "rejected", by=operator())
        self.audit.append(
            "approval.rejected", {"id": pending.id, "by": operator(), "reason": reason},
            pending.run_id,
        )  # fmt: skip
        closed = self.store.approval(pending.id)
        assert closed is not None
        return closed

    def _pending(self, approval_id: str) -> Approval:
        found = self.store.approval(approval_id)
        if found is None:
            raise UsageError(f"no approval {approval_id[:60]!r} (see `approvals`)")
        if found.state != "pending":
            raise UsageError(f"approval {found.id} is {found.state}, not pending")
        return found

    def rollback(self, run_id: str) -> RunReport:
        """Restore the snapshot a run took before its fix, on demand, verified."""
        from .recovery import rollback_run

        return rollback_run(self, run_id)

    def recover(self) -> list[RunReport]:
        """Finish remediations a killed process left between snapshot and outcome."""
        from .recovery import recover_orphans

        return recover_orphans(self)

    def routes(self, payload: Payload, run_id: str) -> list[Route]:
        """The routes a payload takes now (what ``approve``, ``rollback`` and recovery redo)."""
        batch = parse_payload(payload_bytes(payload))
        routes, _ = self._route_all(run_id, batch.firing)
        return routes

    def plan(self, payload: Payload) -> list[RemediationPlan]:
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

    def _process(
        self,
        payload: Payload,
        *,
        mode: Mode,
        approval: Approval | None = None,
        only: Collection[str] | None = None,
    ) -> RunReport:
        if mode == "handle" and approval is None:
            self.recover()  # runs a killed process left half-done come first
        run_id = self.workspace.new_run_id()
        started = _now()
        head = _Phases(self.progress)
        results: list[RemediationResult] = []
        source: str | None = None
        try:
            with head.timed("intake"):
                batch = self._intake(run_id, payload)
            source = batch.source
            if only is not None:
                batch = batch.model_copy(
                    update={"firing": tuple(a for a in batch.firing if incident_key(a) in only)}
                )
            with head.timed("route") as ph:
                routes, refused = self._route_all(run_id, batch.firing)
                results += refused
                ph["detail"] = f"{len(routes)} remediation(s), {len(batch.resolved)} resolved"
            self.workspace.save_payload(run_id, payload_bytes(payload))
            for alert in batch.resolved:
                self._cleared(run_id, alert)
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
            slots = [(f"{i}-{r.target.host}", r) for i, r in enumerate(routes)]
            if approval is not None:
                picked = pick_slot(routes, approval.slot, approval.host, approval.fix)
                slots = [(approval.slot, picked)] if picked else []
            results += self._remediate_all(run_id, slots, mode, approval)
        except RejectedError as exc:
            self.audit.append("alert.rejected", {"reason": exc.message}, run_id)
            results.append(_payload_result("reject", "rejected", exc.message))
        if not results and approval is not None:
            reason = f"the alert of approval {approval.id} no longer routes to {approval.fix}"
            results.append(_payload_result("escalate", "escalated", reason))
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

    def _cleared(self, run_id: str, alert: Alert) -> None:
        """A resolved alert: record it, and close approvals still waiting about it."""
        self.audit.append("alert.cleared", {"fingerprint": alert.fingerprint}, run_id)
        try:
            host = resolve_target(alert, self.inventory).host
        except VerisError:
            return  # nothing of ours can wait on a host we do not know
        self.guards.close_approvals_for(alert, host, run_id)

    def _remediate_all(
        self,
        run_id: str,
        slots: Sequence[tuple[str, Route]],
        mode: Mode,
        approval: Approval | None,
    ) -> list[RemediationResult]:
        """Each slot's result, in order. Same-fix slots on several hosts run as one fleet
        (fleet.py) when the whole loop runs and no person's approval is being carried out."""
        from .fleet import batches, fleet_ready, remediate_fleet

        if mode != "handle" or approval is not None or not fleet_ready(self):
            return [self._remediate(run_id, s, r, mode, approval=approval) for s, r in slots]
        done: dict[str, RemediationResult] = {}
        for group in batches(slots):
            if len(group) == 1:
                slot, route = group[0]
                done[slot] = self._remediate(run_id, slot, route, mode)
            else:
                done.update(remediate_fleet(self, run_id, group))
        return [done[slot] for slot, _ in slots]

    def _remediate(
        self,
        run_id: str,
        slot: str,
        route: Route,
        mode: Mode,
        *,
        approval: Approval | None = None,
    ) -> RemediationResult:
        """One route under the host's lease: a busy host defers, never runs twice at once."""
        host = route.target.host
        try:
            with self.guards.lease(host, run_id):
                return _Remediation(self, run_id, slot, route, mode, approval=approval).run()
        except HostBusy as busy:
            self.audit.append(
                "decision", {"host": host, "action": "skip", "reason": busy.reason}, run_id
            )
            return _route_result(route, "skip", "deferred", busy.reason)
        except EscalatedError as exc:
            self.audit.append(
                "decision", {"host": host, "action": "escalate", "reason": exc.message}, run_id
            )
            return _route_result(route, "escalate", "escalated", exc.message)

    @contextmanager
    def access(self, run_id: str) -> Iterator[Access]:
        """SSH for one remediation's runs: one shared master, and with an SSH CA configured a
        certificate valid for the remediation only; both gone when it ends."""
        control = self.workspace.control_dir(run_id)
        try:
            with run_certificate(
                self.settings.ssh_ca_key,
                self.workspace.run_dir(run_id) / "ssh",
                minutes=self.settings.ssh_cert_minutes,
                identity=run_id,
            ) as cert:
                yield Access(control_dir=control, certificate=cert)
        finally:
            close_control_masters(control)

    def run_request(self, step: PlaybookStep, prepared: PreparedStep, access: Access) -> RunRequest:
        """What the executor runs for ``step`` (of one host, or of a fleet's hosts)."""
        return RunRequest(
            phase=step.phase,
            private_data_dir=prepared.private_data_dir,
            playbook=playbooks_dir() / step.playbook,
            inventories=(*self.inventory.sources, prepared.target_inventory),
            check=step.check,
            roles_path=roles_dir(),
            control_dir=access.control_dir,
            job_timeout=self.settings.job_timeout,
            ssh_identity=access.certificate.identity_file if access.certificate else None,
            ssh_certificate=access.certificate.certificate_file if access.certificate else None,
        )

    def run_step(
        self,
        run_id: str,
        slot: str,
        step: PlaybookStep,
        hosts: str | Sequence[str],
        access: Access,
    ) -> RunResult:
        targets = [hosts] if isinstance(hosts, str) else list(hosts)
        prepared = self.workspace.prepare_step(
            run_id, slot, step, targets, idle_timeout=self.settings.idle_timeout
        )
        request = self.run_request(step, prepared, access)
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
        with self.access(run_id) as access:
            run = self.run_step(run_id, "baseline", step, [h.name for h in hosts], access)
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


def pick_slot(routes: Sequence[Route], slot: str, host: str, fix: str) -> Route | None:
    """The route a past remediation's slot (``INDEX-HOST[+HANDED_TO]``) took."""
    index, _, handed = slot.partition("+")
    for i, route in enumerate(routes):
        if f"{i}-{route.target.host}" == index and route.target.host == host:
            taken = route
            if handed:  # the fix a rule's on_blocked handed off to
                taken = route.model_copy(update={"fix": handed, "fix_params": {}, "on_blocked": {}})
            return taken if taken.fix == fix else None
    return None


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


@dataclass(frozen=True)
class Ready:
    """A host whose check run and guards allow its fix to be applied."""

    decision: Decision
    assessment: Assessment


@dataclass(frozen=True)
class RollBack:
    """A host whose applied fix failed: what to restore from, and why."""

    snapshot: Snapshot | None
    why: tuple[str, ...]


class _Remediation:
    """One route through check → decide → apply → verify → rollback (or a hand-off)."""

    def __init__(
        self,
        owner: Remediator,
        run_id: str,
        slot: str,
        route: Route,
        mode: Mode,
        *,
        approval: Approval | None = None,
    ) -> None:
        self.o = owner
        self.approval = approval  # set when a person approved this fix (``approve ID``)
        self.trial = False  # a half-open breaker's one trial
        self.run_id = run_id
        self.slot = slot
        self.route = route
        self.mode = mode
        self.host = route.target.host
        self.phases = _Phases(owner.progress, route.target.host)
        self.findings: list[Finding] = []
        self.causes: list[Cause] = []
        self.preview: tuple[PreviewChange, ...] = ()
        self.prefix: list[str] = []  # reasons carried over from a fix that handed off

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
            result = self.o.run_step(self.run_id, slot, step, self.host, self.access)
            ph["tasks"] = len(result.summary.host(self.host).tasks)
            ph["detail"] = (
                f"{result.status}, {result.summary.host(self.host).count('changed')} changed"
            )
            if result.status != "successful":
                ph["status"] = "failed"
        return result

    def run(self) -> RemediationResult:
        with self.o.access(self.run_id) as self.access:
            return self._run()

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
        return self._fix(plan, self.slot, hand_off=self.approval is None)

    def _fix(self, plan: RemediationPlan, slot: str, *, hand_off: bool) -> RemediationResult:
        assert plan.preview is not None
        check = self.step(plan.preview, slot)
        ready = self.gate(plan, slot, check.summary, hand_off=hand_off)
        if isinstance(ready, RemediationResult):
            return ready
        return self._apply(plan, ready.decision, slot, ready.assessment, check.summary)

    def gate(
        self, plan: RemediationPlan, slot: str, check: RunSummary, *, hand_off: bool
    ) -> RemediationResult | Ready:
        """After the check run: the decision, and every guard between it and the apply run.
        A result when this host stops here; ``Ready`` when its fix may be applied."""
        fix, route = plan.fix, plan.route
        assert fix is not None
        hs = check.host(self.host)
        self.findings = findings(self.host, *hs.reports.values())
        self.causes = synthesize(hs.reports.values())
        assessment = hs.report(fix.reports.assess)
        self.preview = _preview(hs, fix, assessment)
        with self.phases.timed("decide") as ph:
            decision = self._decide(plan, check)
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
            reasons = list(decision.reasons)
            if decision.approvable and self.mode == "handle":
                reasons.append(self._ask(fix, slot, reasons))
            return self.result(decision, decision.action, outcome, reasons, route=route, fix=fix)
        if self.mode == "check_only":
            reasons = [*decision.reasons, "--check-only: nothing applied"]
            return self.result(decision, "apply", "previewed", reasons, route=route, fix=fix)
        brake = self.o.guards.brake()
        if brake is not None:
            reasons = [*decision.reasons, f"emergency brake {brake.describe()}: nothing applied"]
            return self.result(decision, "brake", "blocked", reasons, route=route, fix=fix)
        if self.o.terminating:
            reasons = [*decision.reasons, "interrupted (SIGTERM) before apply: nothing applied"]
            return self.result(decision, "escalate", "escalated", reasons, route=route, fix=fix)
        assert isinstance(assessment, Assessment)  # decide() applies only with one
        return Ready(decision=decision, assessment=assessment)

    def _decide(self, plan: RemediationPlan, check: RunSummary) -> Decision:
        """The score, then the guards a score cannot override: approval and the breaker."""
        fix = plan.fix
        assert fix is not None
        since = datetime.now(UTC) - timedelta(hours=self.o.settings.history_hours)
        past = self.o.store.history(host=self.host, fix=fix.name, since=since)
        history = History(
            resolved=sum(e.outcome == "resolved" for e in past),
            rolled_back=sum(e.outcome == "rolled_back" for e in past),
            failed=sum(e.outcome == "failed" for e in past),
        )
        decision = decide(
            check,
            self.host,
            fix,
            history,
            self.o.settings.confidence_threshold,
            scope=plan.scope,
        )
        if self.approval is not None:
            return self._approved(decision)
        if decision.action != "apply" or self.mode != "handle":
            return decision
        if "always" in (self.route.approval, self.o.settings.approval):
            where = (
                "rule " + self.route.rule if self.route.approval == "always" else "VERIS_APPROVAL"
            )
            reason = f"approval required for every application ({where}=always)"
            return decision.model_copy(
                update={"action": "escalate", "outcome": "escalated", "approvable": True,
                        "reasons": (*decision.reasons, reason)}
            )  # fmt: skip
        verdict = self.o.guards.admit(self.host, fix.name, self.route.alert, self.run_id)
        if not verdict.allow:
            return decision.model_copy(
                update={"action": "escalate", "outcome": "escalated", "approvable": True,
                        "reasons": (*decision.reasons, verdict.reason)}
            )  # fmt: skip
        if verdict.trial:
            self.trial = True
            return decision.model_copy(update={"reasons": (*decision.reasons, verdict.reason)})
        return decision

    def _approved(self, decision: Decision) -> Decision:
        """A person approved this fix: apply if the fresh preview is what they saw."""
        approval = self.approval
        assert approval is not None
        if decision.action != "apply" and not decision.approvable:
            return decision  # nothing to do now, or the fix cannot help: say so
        if preview_digest(self.preview) != approval.digest:
            return decision.model_copy(
                update={"action": "escalate", "outcome": "escalated", "approvable": True,
                        "reasons": (*decision.reasons,
                                    f"the preview changed since approval {approval.id} was "
                                    "asked: not applied; approve the new preview")}
            )  # fmt: skip
        reason = f"approved by {operator()} ({approval.id}); the fresh preview matches"
        return decision.model_copy(
            update={"action": "apply", "outcome": None, "reasons": (*decision.reasons, reason)}
        )

    def _ask(self, fix: FixSpec, slot: str, reasons: Sequence[str]) -> str:
        """Store an escalation a person may approve, with the preview they would approve."""
        pending = self.o.guards.request_approval(
            run_id=self.run_id, slot=slot, host=self.host, fix=fix.name,
            alert=self.route.alert, reasons=reasons, preview=self.preview,
        )  # fmt: skip
        return (
            f"waiting for approval: veris-remediate approve {pending.id} "
            f"(or reject {pending.id}); expires {pending.expires:%Y-%m-%d %H:%M} UTC"
        )

    def _apply(
        self,
        plan: RemediationPlan,
        decision: Decision,
        slot: str,
        assessment: Assessment,
        check: RunSummary,
    ) -> RemediationResult:
        """Apply under the journal; whatever happens after this, the state is restored or said."""
        assert plan.fix is not None
        self.begin_apply(plan.fix, slot)
        try:
            apply: RunResult | None = None
            failure: list[str] = []
            try:
                # apply_step cuts it to the plan's scope: the same view decide() scored.
                apply = self.step(apply_step(plan, assessment), slot)
            except VerisError as exc:  # runner or audit failure: the host may be half-changed
                failure = [f"the apply run broke off: {exc.message}"]
            after = self.after_apply(plan, decision, slot, check, apply, failure)
            if isinstance(after, RemediationResult):
                return after
            self.o.store.journal_update(self.run_id, slot, "rollback")
            return self._roll_back(plan, decision, slot, after.snapshot, after.why)
        finally:
            self.o.store.journal_end(self.run_id, slot)

    def begin_apply(self, fix: FixSpec, slot: str) -> None:
        """Open the journal entry (crash recovery finds it) and close the approval, if any."""
        self.o.store.journal_begin(
            self.run_id, slot, self.host, fix.name, "apply",
            {"fix": fix.name, "slot": slot, "alert": self.route.alert.name},
        )  # fmt: skip
        if self.approval is not None:
            self.o.store.decide_approval(
                self.approval.id, "approved", by=operator(), result_run=self.run_id
            )

    def after_apply(
        self,
        plan: RemediationPlan,
        decision: Decision,
        slot: str,
        check: RunSummary,
        apply: RunResult | None,
        failure: Sequence[str],
    ) -> RemediationResult | RollBack:
        """Keep the snapshot, verify this host; a result, or what to roll back and why."""
        fix, route = plan.fix, plan.route
        assert fix is not None
        failure = list(failure)
        summaries = (apply.summary, check) if apply else (check,)
        snapshot = taken_snapshot(self.host, fix, *summaries)
        if snapshot is not None:
            self._keep_snapshot(slot, fix, snapshot)
        if apply is not None and apply.status == "canceled" and self.o.guards.brake():
            return self._braked(plan, decision, slot, snapshot)
        if apply is not None and not failure:
            with self.phases.timed("verify") as ph:
                verdict = assess_apply(apply.summary, self.host, fix)
                ph["status"] = "ok" if verdict.ok else "failed"
                ph["detail"] = "; ".join(verdict.reasons)
            after = apply.summary.host(self.host)
            if verdict.ok:
                self.findings += [
                    f
                    for f in findings(self.host, *after.reports.values())
                    if f.severity == "info" and f not in self.findings
                ]
                self._account(fix, "resolved")
                reasons = [*decision.reasons, *verdict.reasons]
                return self.result(decision, "apply", "resolved", reasons, route=route, fix=fix)
            self.findings += [
                f for f in findings(self.host, *after.reports.values()) if f not in self.findings
            ]
            failure = list(verdict.reasons)
            if apply.status == "canceled" and self.o.terminating:
                failure.append("the apply run was cancelled by SIGTERM")
        return RollBack(snapshot=snapshot, why=tuple(failure))

    def _keep_snapshot(self, slot: str, fix: FixSpec, snapshot: Snapshot) -> None:
        """The snapshot outlives the run: ``rollback ID`` and crash recovery restore from it."""
        saved = {"fix": fix.name, "host": self.host, "snapshot": snapshot.model_dump(mode="json")}
        self.o.workspace.write_record(self.run_id, f"{slot}/snapshot", saved)
        self.o.store.journal_update(self.run_id, slot, "apply", {"snapshot": True})

    def _account(self, fix: FixSpec, outcome: str) -> None:
        self.o.guards.account(
            self.host, fix.name, outcome, self.route.alert, self.run_id, trial=self.trial
        )

    def _braked(
        self,
        plan: RemediationPlan,
        decision: Decision,
        slot: str,
        snapshot: Snapshot | None,
    ) -> RemediationResult:
        """The brake cancelled the fix in flight: no automatic change; re-check read-only."""
        fix = plan.fix
        assert fix is not None
        assert plan.preview is not None
        before = snapshot.describe() if snapshot else "no snapshot was taken"
        brake = self.o.guards.brake()
        who = brake.describe() if brake else "engaged, then released"
        reasons = [
            *decision.reasons,
            f"emergency brake during apply ({who}): the fix run was cancelled, "
            "nothing rolled back automatically",
            f"before the fix: {before}",
        ]
        recheck = self.step(plan.preview.model_copy(update={"phase": "recheck"}), slot)
        state = recheck.summary.host(self.host).report(fix.reports.assess)
        if isinstance(state, Assessment):
            verdict = "problem present" if state.problem_present() else "no problem found"
            reasons.append(f"left as: {verdict}: {state.describe()} (read-only re-check)")
        else:
            reasons.append("left as: unknown (the read-only re-check produced no report)")
        if snapshot is not None and fix.reversible:
            reasons.append(f"to restore the snapshot: veris-remediate rollback {self.run_id}")
        self._account(fix, "failed")
        return self.result(decision, "brake", "blocked", reasons, route=plan.route, fix=fix)

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
        refused = self.rollback_refused(plan, decision, snapshot, why)
        if refused is not None:
            return refused
        assert snapshot is not None
        try:
            rollback = self.step(rollback_step(plan, snapshot), slot)
        except VerisError as exc:
            return self.rollback_broke(plan, decision, why, exc)
        return self.rolled_back(plan, decision, snapshot, why, rollback.summary)

    def rollback_refused(
        self,
        plan: RemediationPlan,
        decision: Decision,
        snapshot: Snapshot | None,
        why: Sequence[str],
    ) -> RemediationResult | None:
        """Why this host cannot be rolled back automatically (a result), or None: go ahead."""
        fix, route = plan.fix, plan.route
        assert fix is not None
        reasons = [*decision.reasons, *why]
        if not fix.reversible:
            reasons.append(f"{fix.name} is irreversible: nothing could be rolled back")
            self._account(fix, "failed")
            return self.result(decision, "apply", "failed", reasons, route=route, fix=fix)
        if snapshot is None:
            reasons.append("no snapshot of the prior state: cannot roll back")
            self._account(fix, "failed")
            return self.result(decision, "apply", "failed", reasons, route=route, fix=fix)
        brake = self.o.guards.brake()
        if brake is not None:
            reasons += [
                f"emergency brake {brake.describe()}: not rolled back automatically",
                f"to restore the snapshot: veris-remediate rollback {self.run_id}",
            ]
            self._account(fix, "failed")
            return self.result(decision, "brake", "blocked", reasons, route=route, fix=fix)
        return None

    def rollback_broke(
        self, plan: RemediationPlan, decision: Decision, why: Sequence[str], exc: VerisError
    ) -> RemediationResult:
        assert plan.fix is not None
        reasons = [*decision.reasons, *why, f"the rollback run broke off: {exc.message}"]
        self._account(plan.fix, "failed")
        return self.result(decision, "apply", "failed", reasons, route=plan.route, fix=plan.fix)

    def rolled_back(
        self,
        plan: RemediationPlan,
        decision: Decision,
        snapshot: Snapshot,
        why: Sequence[str],
        rollback: RunSummary,
    ) -> RemediationResult:
        """This host's outcome from the rollback run's events."""
        fix = plan.fix
        assert fix is not None
        verdict = assess_rollback(rollback, self.host, fix, snapshot)
        reasons = [*decision.reasons, *why, *verdict.reasons]
        outcome: Outcome = "rolled_back" if verdict.ok else "failed"
        self._account(fix, outcome)
        return self.result(
            decision, "apply", outcome, reasons, route=plan.route, fix=fix, rolled_back=verdict.ok
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
