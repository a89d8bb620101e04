from __future__ import annotations

from tests.unit.recorded import summary
from veris_remediate.verify import assess_apply, assess_rollback, findings, prior_states


def test_resolved_apply_is_healthy() -> None:
    v = assess_apply(summary("resolved", "apply"), "lab1")
    assert v.ok
    assert "healthy after the fix" in v.reasons[0]


def test_failed_start_is_not_ok_and_says_why() -> None:
    v = assess_apply(summary("rolled_back", "apply"), "lab1")
    assert not v.ok
    assert any("apply failed at" in r for r in v.reasons)
    assert any("no post-fix health check" in r for r in v.reasons)


def test_snapshot_prefers_the_apply_run() -> None:
    prior = prior_states("lab1", summary("rolled_back", "apply"), summary("rolled_back", "check"))
    assert prior == [
        {"unit": "nginx.service", "active_state": "inactive", "unit_file_state": "enabled"}
    ]
    assert prior_states("lab1", summary("unreachable", "check")) == []


def test_rollback_restored_the_prior_state() -> None:
    prior = prior_states("lab1", summary("rolled_back", "apply"))
    v = assess_rollback(summary("rolled_back", "rollback"), "lab1", prior)
    assert v.ok, v.reasons
    # Claiming the unit ran before makes the same rollback a failure.
    running = [{**prior[0], "active_state": "active"}]
    bad = assess_rollback(summary("rolled_back", "rollback"), "lab1", running)
    assert not bad.ok
    assert any("was active before" in r for r in bad.reasons)


def test_findings_from_a_failed_diagnosis() -> None:
    health = summary("bad_config", "check").host("lab1").reports["health"]
    messages = [(f.severity, f.message) for f in findings("lab1", health)]
    assert ("critical", "nginx.service is inactive (dead)") in messages
    assert any(sev == "critical" and m.startswith("configuration invalid") for sev, m in messages)
    assert any(m.startswith("journal:") for _, m in messages)
    assert findings("lab1", None) == []
