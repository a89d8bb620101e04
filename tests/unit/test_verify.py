from __future__ import annotations

from tests.unit.recorded import summary
from veris_remediate.fixes import load_fixes
from veris_remediate.role_reports.service import ServiceHealth, UnitsSnapshot, UnitState
from veris_remediate.verify import assess_apply, assess_rollback, findings, taken_snapshot

FIX = load_fixes().fixes["service_restart"]


def test_resolved_apply_is_healthy() -> None:
    v = assess_apply(summary("resolved", "apply"), "lab1", FIX)
    assert v.ok
    assert v.reasons[0].startswith("after the fix: nginx.service is active")


def test_unhealthy_after_the_fix_is_not_ok_and_says_why() -> None:
    v = assess_apply(summary("rolled_back", "apply"), "lab1", FIX)
    assert not v.ok
    assert v.reasons == (
        "after the fix: nginx.service is active (running), port 80 open, HTTP probe failing (403)",
    )


def test_a_dependency_that_did_not_start_stops_the_chain_and_says_why() -> None:
    v = assess_apply(summary("dependency_failed", "apply"), "lab1", FIX)
    assert not v.ok
    assert any(
        "redis-server.service did not start, so nothing that needs it was touched "
        "(nginx.service was neither started nor restarted)" in r
        for r in v.reasons
    ), v.reasons
    assert any("no post-fix check ran" in r for r in v.reasons)
    hs = summary("dependency_failed", "apply").host("lab1")
    # The chain stopped at redis: the task that starts nginx never ran.
    assert not any(t.task.startswith("Start the service") for t in hs.tasks)


def test_snapshot_prefers_the_apply_run() -> None:
    snap = taken_snapshot(
        "lab1", FIX, summary("rolled_back", "apply"), summary("rolled_back", "check")
    )
    nginx = UnitState(unit="nginx.service", active_state="inactive", unit_file_state="enabled")
    assert snap == UnitsSnapshot(kind="units.snapshot", units=(nginx,))
    assert taken_snapshot("lab1", FIX, summary("unreachable", "check")) is None


def test_snapshot_reports_the_required_units_it_may_start() -> None:
    snap = taken_snapshot("lab1", FIX, summary("dependency_order", "apply"))
    assert isinstance(snap, UnitsSnapshot)
    assert [u.unit for u in snap.units] == ["nginx.service"]
    assert [(u.unit, u.active_state) for u in snap.required] == [
        ("redis-server.service", "inactive")
    ]


def test_rollback_restored_the_prior_state() -> None:
    snap = taken_snapshot("lab1", FIX, summary("rolled_back", "apply"))
    assert isinstance(snap, UnitsSnapshot)
    v = assess_rollback(summary("rolled_back", "rollback"), "lab1", FIX, snap)
    assert v.ok, v.reasons
    # Claiming the unit ran before makes the same rollback a failure, on our side too.
    running = snap.model_copy(
        update={"units": (snap.units[0].model_copy(update={"active_state": "active"}),)}
    )
    bad = assess_rollback(summary("rolled_back", "rollback"), "lab1", FIX, running)
    assert not bad.ok
    assert any("was active before" in r for r in bad.reasons)


def test_findings_from_a_failed_diagnosis() -> None:
    health = summary("bad_config", "check").host("lab1").reports["health"]
    assert isinstance(health, ServiceHealth)
    messages = [(f.severity, f.message) for f in findings("lab1", health)]
    assert ("critical", "nginx.service is inactive (dead)") in messages
    assert any(sev == "critical" and m.startswith("configuration invalid") for sev, m in messages)
    assert any(m.startswith("journal:") for _, m in messages)
    assert findings("lab1", None) == []
    # Each finding once, however many reports repeat it.
    assert findings("lab1", health, health) == findings("lab1", health)
