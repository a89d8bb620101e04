from __future__ import annotations

import pytest

from tests.unit.recorded import summary
from veris_remediate.decision import History, decide
from veris_remediate.events import RunSummary, TaskResult
from veris_remediate.planner import FIXES

FIX = FIXES["service_restart"]


def _decide(s: RunSummary, history: History | None = None, threshold: float = 0.7):  # type: ignore[no-untyped-def]
    return decide(s, "lab1", FIX, history or History(), threshold)


def test_stopped_service_with_expected_change_applies() -> None:
    d = _decide(summary("resolved", "check"))
    assert d.action == "apply"
    assert d.confidence == 1.0
    assert d.outcome is None
    assert any("expected change" in r for r in d.reasons)


def test_healthy_service_is_not_needed() -> None:
    d = _decide(summary("not_needed", "check"))
    assert d.action == "skip"
    assert d.outcome == "not_needed"
    assert "nothing to do" in d.reasons[0]


def test_failed_check_escalates_with_the_reason() -> None:
    d = _decide(summary("bad_config", "check"))
    assert d.action == "escalate"
    assert d.confidence == 0.0
    assert any("invalid" in r for r in d.reasons)


def test_unreachable_host_fails_without_apply() -> None:
    d = _decide(summary("unreachable", "check"))
    assert d.action == "skip"
    assert d.outcome == "failed"
    assert "unreachable" in d.reasons[0]


def test_past_rollbacks_lower_confidence_below_threshold() -> None:
    s = summary("resolved", "check")
    once = _decide(s, History(rolled_back=1))
    assert once.action == "escalate"
    assert once.confidence == 0.5
    assert any("rolled back 1 time" in r for r in once.reasons)
    assert _decide(s, History(resolved=3)).action == "apply"


def test_unexpected_and_unpredictable_changes_lower_confidence() -> None:
    s = summary("resolved", "check")
    hs = s.host("lab1")
    extra = (
        TaskResult(
            host="lab1", task="Edit a file", action="ansible.builtin.lineinfile", status="changed"
        ),
        TaskResult(
            host="lab1",
            task="Run a script",
            action="ansible.builtin.command",
            status="skipped",
            unpredictable=True,
        ),
    )
    s2 = s.model_copy(update={"hosts": {"lab1": hs.model_copy(update={"tasks": hs.tasks + extra})}})
    d = _decide(s2)
    assert d.confidence == pytest.approx(0.6)
    assert d.action == "escalate"
    assert any("unexpected predicted change" in r for r in d.reasons)
    assert any("cannot predict" in r for r in d.reasons)
    assert _decide(s2, threshold=0.5).action == "apply"


def test_no_predicted_change_means_the_fix_would_not_help() -> None:
    s = summary("resolved", "check")
    hs = s.host("lab1")
    quiet = tuple(t.model_copy(update={"status": "ok"}) for t in hs.tasks)
    s2 = s.model_copy(update={"hosts": {"lab1": hs.model_copy(update={"tasks": quiet})}})
    d = _decide(s2)
    assert d.action == "escalate"
    assert "would not help" in d.reasons[-1]


def test_decide_refuses_an_apply_summary() -> None:
    with pytest.raises(ValueError, match="--check"):
        _decide(summary("resolved", "apply"))


def test_an_unfinished_check_run_never_applies() -> None:
    s = summary("resolved", "check").model_copy(update={"completed": False})
    d = _decide(s, threshold=0.0)
    assert d.action == "escalate"
    assert "did not finish" in d.reasons[-1]
