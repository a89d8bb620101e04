"""The guards over recorded real runs: approvals, breaker, latch, errors, rollback, recovery."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, FIXTURES
from tests.unit.recorded import RecordedExecutor
from veris_remediate import breaker
from veris_remediate.exceptions import AuditError, RunnerError, UsageError
from veris_remediate.inventory import Inventory, parse_inventory_listing
from veris_remediate.pipeline import Remediator
from veris_remediate.settings import Settings
from veris_remediate.store import SCHEMA_VERSION, BreakerRow, StateError, StateStore

ALERT = (EXAMPLES / "alertmanager-nginx-down.json").read_bytes()
T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def _remediator(
    tmp_path: Path, scenario: str, **settings: Any
) -> tuple[Remediator, RecordedExecutor]:
    executor = RecordedExecutor(scenario)
    defaults: dict[str, Any] = {"state_dir": tmp_path, "breaker_cooldown_seconds": 0}
    remediator = Remediator(_inventory(), Settings(**(defaults | settings)), executor=executor)
    return remediator, executor


def _incident(n: int) -> bytes:
    """The same alert firing again: a new incident has a new start time."""
    data = json.loads(ALERT)
    data["alerts"][0]["startsAt"] = f"2026-12-01T03:{n:02d}:00Z"
    return json.dumps(data).encode()


def _phases(executor: RecordedExecutor) -> list[str]:
    return [r.phase for r in executor.requests]


# -- the breaker's rules ------------------------------------------------------------------


def _settings(**more: Any) -> Settings:
    return Settings(state_dir=Path("/nonexistent"), **more)


def test_cooldown_backs_off_exponentially() -> None:
    s = _settings(breaker_cooldown_seconds=60, breaker_backoff_max_seconds=200)
    row = BreakerRow(host="h", fix="f")
    waits = []
    at = T0
    for n in range(4):
        row = breaker.record(row, "resolved", f"a|x|{n}", s, at, trial=False)
        verdict = breaker.check(row, s, at + timedelta(seconds=1))
        assert not verdict.allow
        assert "cooling down" in verdict.reason
        seconds = 60 * 2 ** min(row.streak - 1, 20)
        waits.append(min(seconds, 200))
        assert breaker.check(row, s, at + timedelta(seconds=waits[-1] + 1)).allow
        at += timedelta(seconds=waits[-1] + 1)
    assert waits == [60, 120, 200, 200]


def test_three_failures_open_the_breaker_and_half_open_allows_one_trial() -> None:
    s = _settings(breaker_cooldown_seconds=0)
    row = BreakerRow(host="h", fix="f")
    for n in range(3):
        assert breaker.check(row, s, T0).allow
        row = breaker.record(row, "rolled_back", f"a|x|{n}", s, T0, trial=False)
    assert row.state == "open"
    assert not breaker.check(row, s, T0 + timedelta(minutes=29)).allow
    trial = breaker.check(row, s, T0 + timedelta(minutes=31))
    assert trial.allow
    assert trial.trial
    failed_again = breaker.record(row, "failed", "a|x|9", s, T0 + timedelta(minutes=31), trial=True)
    assert failed_again.state == "open"
    closed = breaker.record(row, "resolved", "a|x|9", s, T0 + timedelta(minutes=31), trial=True)
    assert closed.state == "closed"
    # one re-fire away from opening again
    refire = breaker.note_alert(closed, "a|x|10", s, T0 + timedelta(minutes=32))
    assert refire.state == "open"


def test_refires_after_resolved_count_as_ineffective() -> None:
    s = _settings(breaker_cooldown_seconds=0)
    row = BreakerRow(host="h", fix="f")
    at = T0
    for n in range(3):
        row = breaker.note_alert(row, f"a|x|{n}", s, at)
        assert row.state == "closed"
        row = breaker.record(row, "resolved", f"a|x|{n}", s, at, trial=False)
        at += timedelta(minutes=1)
    # the same incident delivered again is not a re-fire
    assert breaker.note_alert(row, "a|x|2", s, at).ineffective == 2
    opened = breaker.note_alert(row, "a|x|3", s, at)
    assert opened.state == "open"
    assert "fired again" in (opened.reason or "")
    assert not breaker.check(opened, s, at).allow


def test_a_quiet_period_forgets_the_streak() -> None:
    s = _settings(breaker_cooldown_seconds=60)
    row = breaker.record(BreakerRow(host="h", fix="f"), "rolled_back", "a|x|1", s, T0, trial=False)
    row = breaker.record(row, "rolled_back", "a|x|2", s, T0, trial=False)
    later = breaker.note_alert(row, "a|x|3", s, T0 + timedelta(hours=2))
    assert (later.failures, later.streak, later.ineffective) == (0, 0, 0)


# -- the store ------------------------------------------------------------------------------


def test_store_is_versioned_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.schema_version() == SCHEMA_VERSION
    assert oct((tmp_path / "state.db").stat().st_mode & 0o777) == "0o600"
    store.close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer than this"):
        StateStore(tmp_path).brake()


def test_a_dead_holders_lease_is_reclaimed_and_a_live_one_is_not(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from veris_remediate.store import StateStore;"
        "print(StateStore(Path(sys.argv[1])).acquire_lease('h1', sys.argv[2], 600) is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), "20260101T000000Z-aaaaaa"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "True"
    store = StateStore(tmp_path)
    held = store.lease("h1")
    assert held is not None
    assert held.run_id == "20260101T000000Z-aaaaaa"
    # That process has exited: its lease is reclaimed although its TTL has not run out.
    assert store.acquire_lease("h1", "20260101T000000Z-bbbbbb", 600) is not None
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with store._tx() as db:
            owner = f"{held.owner.rpartition(':')[0]}:{live.pid}"
            db.execute("UPDATE leases SET owner = ? WHERE host = 'h1'", (owner,))
        assert store.acquire_lease("h1", "20260101T000000Z-cccccc", 600) is None
        # …until its TTL runs out.
        with store._tx() as db:
            db.execute("UPDATE leases SET expires = '2000-01-01T00:00:00+00:00'")
        assert store.acquire_lease("h1", "20260101T000000Z-cccccc", 600) is not None
    finally:
        live.kill()
        live.wait()


# -- approvals ------------------------------------------------------------------------------


def test_approval_always_waits_then_approve_applies_the_same_preview(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved", approval="always")
    asked = remediator.handle(ALERT)
    assert asked.outcome == "escalated"
    assert asked.exit_code == 4
    assert _phases(executor) == ["check"]
    (pending,) = remediator.store.approvals("pending")
    assert pending.id == asked.run_id
    assert pending.preview
    assert any(f"approve {pending.id}" in r for r in asked.reasons)

    done = remediator.approve(pending.id)
    assert done.outcome == "resolved"
    assert _phases(executor) == ["check", "check", "apply"]
    assert any("the fresh preview matches" in r for r in done.reasons)
    decided = remediator.store.approval(pending.id)
    assert decided is not None
    assert decided.state == "approved"
    assert decided.result_run == done.run_id
    with pytest.raises(UsageError, match="approved, not pending"):
        remediator.approve(pending.id)


def test_a_changed_preview_asks_again(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved", approval="always")
    asked = remediator.handle(ALERT)
    with remediator.store._tx() as db:
        db.execute("UPDATE approvals SET digest = 'something else'")
    again = remediator.approve(asked.run_id)
    assert again.outcome == "escalated"
    assert any("preview changed since approval" in r for r in again.reasons)
    assert _phases(executor) == ["check", "check"]  # nothing applied
    (pending,) = remediator.store.approvals("pending")
    assert pending.run_id == again.run_id  # a new question, with the new preview


def test_reject_closes_and_a_resolved_alert_closes_pending(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "resolved", approval="always")
    first = remediator.handle(_incident(1))
    assert remediator.reject(first.run_id, "not at night").state == "rejected"
    with pytest.raises(UsageError, match="rejected"):
        remediator.approve(first.run_id)
    remediator.handle(_incident(2))
    assert len(remediator.store.approvals("pending")) == 1
    cleared = json.loads(_incident(2))
    cleared["status"] = "resolved"
    cleared["alerts"][0]["status"] = "resolved"
    remediator.handle(json.dumps(cleared))
    assert remediator.store.approvals("pending") == []
    assert [a.state for a in remediator.store.approvals()] == ["rejected", "resolved"]


def test_a_low_score_is_approvable_a_blocker_is_not(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "bad_config")
    report = remediator.handle(ALERT)
    assert report.outcome == "escalated"
    assert remediator.store.approvals() == []


def test_pending_approvals_expire(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "resolved", approval="always")
    asked = remediator.handle(ALERT)
    with remediator.store._tx() as db:
        db.execute("UPDATE approvals SET expires = '2000-01-01T00:00:00+00:00'")
    with pytest.raises(UsageError, match="expired"):
        remediator.approve(asked.run_id)


# -- breaker and latch in the loop -------------------------------------------------------------


def test_a_fix_that_does_not_last_opens_the_breaker(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved")
    outcomes = [remediator.handle(_incident(n)).outcome for n in range(1, 5)]
    assert outcomes == ["resolved", "resolved", "resolved", "escalated"]
    row = remediator.store.breaker("lab1", "service_restart")
    assert row.state == "open"
    assert _phases(executor).count("apply") == 3
    last = remediator.handle(_incident(5))
    assert any("breaker open" in r for r in last.reasons)
    assert _phases(executor).count("apply") == 3


def test_cooldown_escalates_a_second_fix_in_quick_succession(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved", breaker_cooldown_seconds=60)
    assert remediator.handle(_incident(1)).outcome == "resolved"
    second = remediator.handle(_incident(2))
    assert second.outcome == "escalated"
    assert any("cooling down" in r for r in second.reasons)
    assert _phases(executor).count("apply") == 1


def test_repeated_rollbacks_latch_the_brake(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "rolled_back", confidence_threshold=0.0)
    for n in range(3):
        assert remediator.handle(_incident(n)).outcome in ("rolled_back", "escalated")
    engaged = remediator.store.brake()
    assert engaged is not None
    assert engaged.source == "latch"
    assert "within 15 min" in engaged.reason
    remediator.store.reset_breaker("lab1")  # the breaker opened too; the brake still holds
    assert remediator.handle(_incident(9)).outcome == "blocked"


# -- no error escapes -----------------------------------------------------------------------


def test_a_runner_error_during_apply_is_rolled_back_and_reported(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "rolled_back", confidence_threshold=0.0)
    real = executor.run

    def broken(request: Any) -> Any:
        if request.phase == "apply":
            real(request)
            raise RunnerError("ansible-runner could not run service_restart.yml: boom")
        return real(request)

    executor.run = broken  # type: ignore[method-assign]
    report = remediator.handle(ALERT)
    # The check run's snapshot stands in for the one the broken apply run never returned.
    assert report.outcome == "rolled_back"
    assert _phases(executor) == ["check", "apply", "rollback"]
    assert any("the apply run broke off" in r for r in report.reasons)
    assert remediator.store.history(host="lab1")[-1].outcome == "rolled_back"
    assert remediator.store.journal() == []


def test_an_audit_failure_during_apply_is_rolled_back(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "rolled_back", confidence_threshold=0.0)
    real_append = remediator.audit.append

    def failing(kind: str, data: Any, run_id: str | None = None) -> dict[str, Any]:
        if kind == "run.apply":
            raise AuditError("cannot write the audit log: disk full")
        return real_append(kind, data, run_id)

    remediator.audit.append = failing  # type: ignore[method-assign]
    report = remediator.handle(ALERT)
    assert _phases(executor) == ["check", "apply", "rollback"]
    assert report.outcome == "rolled_back"
    assert any("disk full" in r for r in report.reasons)
    assert (tmp_path / "runs" / report.run_id / "report.json").exists()


# -- rollback on demand and recovery -------------------------------------------------------------


def test_rollback_id_restores_the_snapshot_of_a_resolved_run(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "rolled_back", confidence_threshold=0.0)
    resolved, _ = _remediator(tmp_path, "resolved")
    done = resolved.handle(ALERT)
    assert done.outcome == "resolved"
    back = remediator.rollback(done.run_id)
    assert back.outcome == "rolled_back"
    assert back.rolled_back
    assert _phases(executor) == ["restore"]
    assert any(f"rollback of {done.run_id} requested" in r for r in back.reasons)
    with pytest.raises(UsageError, match="kept no snapshot"):
        remediator.rollback(back.run_id)


def test_recover_rolls_back_a_run_whose_process_died(tmp_path: Path) -> None:
    resolved, _ = _remediator(tmp_path, "resolved")
    done = resolved.handle(ALERT)
    slot = next(p.parent.name for p in (tmp_path / "runs" / done.run_id).glob("*/snapshot.json"))
    store = StateStore(tmp_path)
    store.journal_begin(done.run_id, slot, "lab1", "service_restart", "apply", {})
    with store._tx() as db:  # its owner: a process that no longer exists
        db.execute(
            "UPDATE journal SET owner = 'elsewhere:0', updated = '2000-01-01T00:00:00+00:00'"
        )
    remediator, executor = _remediator(tmp_path, "rolled_back")
    (report,) = remediator.recover()
    # the recorded check says nginx is still down: roll back to the snapshot
    assert _phases(executor) == ["recover-check", "rollback"]
    assert report.run_id == done.run_id
    assert report.outcome == "rolled_back"
    assert report.reasons[0].startswith("recovered: the process running this fix")
    assert store.journal() == []
    assert remediator.recover() == []
