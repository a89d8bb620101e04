"""Fleets: one fix on several hosts of one payload, checked in one run and applied in one.

When a payload holds the same fix (same rule params) for several hosts, running each
host's remediation one after another costs two or three Ansible runs per host. A fleet
runs the check over all of them at once, lets each host decide on its own summary of that
run's events (confidence, breaker, history, approval rules), applies in one run limited to
the hosts that decided to apply, verifies each host on its own, and rolls back, in one run,
only the hosts whose fix failed. Everything else stays per host, exactly as a single
remediation does it (``pipeline._Remediation``, whose pieces run here): lease, plan,
snapshot, journal entry, result, audit records, history and breaker accounting.

Each host's run data (its service, alert, assessment, snapshot) reach Ansible as its own
``!unsafe`` host vars in the run's target inventory (``workspace.prepare_fleet_step``).
Ansible's default linear strategy keeps running the other hosts when one fails (no
``any_errors_fatal``, no ``max_fail_percentage`` in the playbooks); forks are one per host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import EscalatedError, VerisError
from .guards import HostBusy
from .planner import PlaybookStep, RemediationPlan, apply_step, rollback_step
from .report import RemediationResult
from .routing import Route
from .runner import RunResult

if TYPE_CHECKING:
    from .pipeline import Ready, Remediator, RollBack, _Remediation

Slot = tuple[str, Route]  # (INDEX-HOST, route), as pipeline._process numbers them


def _key(route: Route) -> str | None:
    """What makes two routes one fleet: the same fix, workflow and rule params."""
    if route.fix is None:
        return None
    params = json.dumps(route.fix_params, sort_keys=True, default=str)
    return f"{route.fix}\0{route.workflow}\0{route.rule}\0{params}"


def batches(slots: Sequence[Slot]) -> list[list[Slot]]:
    """The slots grouped into fleets (in order of their first slot); a group of one runs
    alone. A host appears at most once in a fleet: a second route to it runs on its own."""
    groups: list[list[Slot]] = []
    open_groups: dict[str, list[list[Slot]]] = {}
    for slot, route in slots:
        key = _key(route)
        if key is None:
            groups.append([(slot, route)])
            continue
        host = route.target.host
        for group in open_groups.get(key, []):
            if all(r.target.host != host for _, r in group):
                group.append((slot, route))
                break
        else:
            group = [(slot, route)]
            open_groups.setdefault(key, []).append(group)
            groups.append(group)
    return groups


def remediate_fleet(
    owner: Remediator, run_id: str, members: Sequence[Slot]
) -> dict[str, RemediationResult]:
    """Take every member's lease first (a busy host defers alone), then run the rest."""
    results: dict[str, RemediationResult] = {}
    with ExitStack() as leases:
        held: list[Slot] = []
        for slot, route in members:
            host = route.target.host
            try:
                leases.enter_context(owner.guards.lease(host, run_id))
            except HostBusy as busy:
                owner.audit.append(
                    "decision", {"host": host, "action": "skip", "reason": busy.reason}, run_id
                )
                results[slot] = _deferred(route, busy.reason)
                continue
            held.append((slot, route))
        fleet = _Fleet(owner, run_id, held)
        try:
            fleet.run()
        except EscalatedError as exc:
            for slot, route in held:
                if slot not in fleet.results:
                    owner.audit.append(
                        "decision",
                        {"host": route.target.host, "action": "escalate", "reason": exc.message},
                        run_id,
                    )
                    fleet.results[slot] = _escalated(route, exc.message)
        results.update(fleet.results)
    return results


def _deferred(route: Route, reason: str) -> RemediationResult:
    from .pipeline import _route_result

    return _route_result(route, "skip", "deferred", reason)


def _escalated(route: Route, reason: str) -> RemediationResult:
    from .pipeline import _route_result

    return _route_result(route, "escalate", "escalated", reason)


class _Fleet:
    """The leased members of one fleet through check → decide → apply → verify → rollback."""

    def __init__(self, owner: Remediator, run_id: str, members: Sequence[Slot]) -> None:
        from .pipeline import _Remediation

        self.o = owner
        self.run_id = run_id
        self.group = f"fleet-{members[0][0].split('-', 1)[0]}" if members else "fleet"
        self.rems: dict[str, _Remediation] = {
            slot: _Remediation(owner, run_id, slot, route, "handle") for slot, route in members
        }
        self.results: dict[str, RemediationResult] = {}

    def run(self) -> None:
        if len(self.rems) == 1:  # nothing to share: the single path, as it always ran
            (slot, rem), = self.rems.items()  # fmt: skip
            self.results[slot] = rem.run()
            return
        with self.o.access(self.run_id) as access:
            self.access = access
            for rem in self.rems.values():
                rem.access = access
            self._run()

    def _run(self) -> None:
        plans: dict[str, RemediationPlan] = {}
        for slot, rem in self.rems.items():
            plan = rem._plan(rem.route)
            if isinstance(plan, RemediationResult):
                self.results[slot] = plan
            elif plan.preview is None:
                self.results[slot] = rem._diagnose_only(plan)
            else:
                plans[slot] = plan
        if not plans:
            return
        check = self.shared({s: p.preview for s, p in plans.items() if p.preview is not None})
        ready: dict[str, Ready] = {}
        for slot, plan in plans.items():
            gated = self.rems[slot].gate(plan, slot, check.summary, hand_off=True)
            if isinstance(gated, RemediationResult):
                self.results[slot] = gated
            else:
                ready[slot] = gated
        if ready:
            self._apply(plans, ready, check)

    def _apply(
        self, plans: Mapping[str, RemediationPlan], ready: Mapping[str, Ready], check: RunResult
    ) -> None:
        store = self.o.store
        for slot in ready:
            fix = plans[slot].fix
            assert fix is not None
            self.rems[slot].begin_apply(fix, slot)
        try:
            apply: RunResult | None = None
            failure: list[str] = []
            try:
                apply = self.shared(
                    {s: apply_step(plans[s], r.assessment) for s, r in ready.items()}
                )
            except VerisError as exc:  # runner or audit failure: hosts may be half-changed
                failure = [f"the apply run broke off: {exc.message}"]
            back: dict[str, RollBack] = {}
            for slot, go in ready.items():
                rem, plan = self.rems[slot], plans[slot]
                after = rem.after_apply(plan, go.decision, slot, check.summary, apply, failure)
                if isinstance(after, RemediationResult):
                    self.results[slot] = after
                    continue
                store.journal_update(self.run_id, slot, "rollback")
                refused = rem.rollback_refused(plan, go.decision, after.snapshot, after.why)
                if refused is not None:
                    self.results[slot] = refused
                else:
                    back[slot] = after
            if back:
                self._roll_back(plans, ready, back)
        finally:
            for slot in ready:
                store.journal_end(self.run_id, slot)

    def _roll_back(
        self,
        plans: Mapping[str, RemediationPlan],
        ready: Mapping[str, Ready],
        back: Mapping[str, RollBack],
    ) -> None:
        steps: dict[str, PlaybookStep] = {}
        for slot, rb in back.items():
            assert rb.snapshot is not None  # rollback_refused said so
            steps[slot] = rollback_step(plans[slot], rb.snapshot)
        try:
            run = self.shared(steps)
        except VerisError as exc:
            for slot, rb in back.items():
                rem, decision = self.rems[slot], ready[slot].decision
                self.results[slot] = rem.rollback_broke(plans[slot], decision, rb.why, exc)
            return
        for slot, rb in back.items():
            assert rb.snapshot is not None
            self.results[slot] = self.rems[slot].rolled_back(
                plans[slot], ready[slot].decision, rb.snapshot, rb.why, run.summary
            )

    # -- one run over the members' hosts ------------------------------------------------

    def shared(self, steps: Mapping[str, PlaybookStep]) -> RunResult:
        """One run of ``steps`` (slot → that host's step, all of one playbook and mode),
        timed as a phase of every member in it, each with its own tasks and status."""
        with ExitStack() as stack:
            timers = {
                slot: stack.enter_context(self.rems[slot].phases.timed(step.phase))
                for slot, step in steps.items()
            }
            result = self._run_step(steps)
            for slot, ph in timers.items():
                hs = result.summary.host(self.rems[slot].host)
                ph["tasks"] = len(hs.tasks)
                bad = bool(hs.failed_tasks) or hs.unreachable or not hs.tasks
                status: str = result.status if result.status != "failed" else "successful"
                status = "failed" if bad and status == "successful" else status
                ph["detail"] = f"{status}, {hs.count('changed')} changed"
                if status != "successful":
                    ph["status"] = "failed"
        return result

    def _run_step(self, steps: Mapping[str, PlaybookStep]) -> RunResult:
        first = next(iter(steps.values()))
        if any((s.playbook, s.phase, s.check) != (first.playbook, first.phase, first.check)
               for s in steps.values()):  # fmt: skip
            raise ValueError("a fleet run is one playbook in one mode")
        o = self.o
        by_host = {self.rems[slot].host: (slot, step.extravars) for slot, step in steps.items()}
        prepared = o.workspace.prepare_fleet_step(
            self.run_id, self.group, first.phase, first.check, by_host,
            idle_timeout=o.settings.idle_timeout,
        )  # fmt: skip
        request = o.run_request(first, prepared, self.access)
        slot_dirs = {h: o.workspace.run_dir(self.run_id) / slot for h, (slot, _) in by_host.items()}
        try:
            with _reports_to(o, prepared.private_data_dir, slot_dirs):
                result = o.executor.run(request)
        finally:
            o.workspace.scrub(prepared)
            o.workspace.scrub_files(self.run_id, [slot for slot, _ in by_host.values()])
        hosts = list(by_host)
        for host in hosts:  # one record per host, as a single remediation writes it
            o.audit.append(
                f"run.{first.phase}",
                {
                    "hosts": [host],
                    "fleet": hosts,
                    "playbook": first.playbook,
                    "check": first.check,
                    "status": result.status,
                    "rc": result.rc,
                    "seconds": result.seconds,
                    "tasks": [
                        {"host": host, "task": t.task, "action": t.action, "status": t.status,
                         "msg": t.msg}
                        for t in result.summary.host(host).tasks
                    ],
                },
                self.run_id,
            )  # fmt: skip
        return result


@contextmanager
def _reports_to(owner: Remediator, pdd: Path, slot_dirs: dict[str, Path]) -> Iterator[None]:
    """While a fleet run is in flight, each host's live snapshot goes to its own slot."""
    owner.fleet_slots[pdd] = slot_dirs
    try:
        yield
    finally:
        owner.fleet_slots.pop(pdd, None)


def fleet_ready(owner: Remediator) -> bool:
    """Fleets need the local runner: an execution node stages inventories on its own."""
    from .execnode import StreamingExecutor

    return not isinstance(owner.executor, StreamingExecutor)
