from __future__ import annotations

import pytest

from tests.unit.recorded import summary
from veris_remediate.decision import decide
from veris_remediate.events import RunSummary, TaskResult
from veris_remediate.fixes import load_fixes
from veris_remediate.role_reports import Assessment, Signal
from veris_remediate.workspace import History

FIX = load_fixes().fixes["service_restart"]


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
    # The config gate's failure is a blocker a rule can hand off on.
    assert d.blocker is not None
    assert d.blocker.code == "config_invalid"
    assert d.blocker.code in FIX.blockers


@pytest.mark.parametrize(
    ("scenario", "code"),
    [("port_held", "port_held"), ("start_limit", "start_limit_hit"), ("disk_full", "disk_full")],
)
def test_a_cause_that_rules_out_a_restart_escalates_with_it(scenario: str, code: str) -> None:
    s = summary(scenario, "check")
    d = _decide(s, threshold=0.0)
    assert d.action == "escalate"
    assert d.outcome == "escalated"
    assert d.confidence == 0.0
    assert d.blocker is not None
    assert d.blocker.code == code
    # A rule may hand off on it: the spec lists it among the blockers.
    assert code in FIX.blockers
    assert any(r.startswith("likely cause: ") and "cannot help" in r for r in d.reasons)
    # The check run predicted the restart, but the cause refuses it anyway.
    assert s.host("lab1").changed_tasks


def test_a_dependency_down_implies_the_restart_itself() -> None:
    d = _decide(summary("dependency_order", "check"))
    assert d.action == "apply"
    assert d.confidence == 1.0
    assert any(
        "Start the dependency redis-server.service" in r and "expected change" in r
        for r in d.reasons
    )


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


def _with_tasks(s: RunSummary, *extra: TaskResult) -> RunSummary:
    hs = s.host("lab1")
    return s.model_copy(
        update={"hosts": {"lab1": hs.model_copy(update={"tasks": hs.tasks + extra})}}
    )


def test_an_irreversible_fix_refuses_any_surprise_outright() -> None:
    irreversible = FIX.model_copy(update={"reversible": False})
    clean = decide(summary("resolved", "check"), "lab1", irreversible, History(), 0.7)
    assert clean.action == "apply"
    assert any("irreversible: no rollback" in r for r in clean.reasons)
    surprise = _with_tasks(
        summary("resolved", "check"),
        TaskResult(
            host="lab1", task="Edit a file", action="ansible.builtin.lineinfile", status="changed"
        ),
    )
    # A reversible fix only loses 0.25 for it (and could still apply below a lower
    # threshold); an irreversible one escalates whatever the threshold.
    assert decide(surprise, "lab1", FIX, History(), 0.5).action == "apply"
    d = decide(surprise, "lab1", irreversible, History(), 0.0)
    assert d.action == "escalate"
    assert d.confidence == 0.0
    assert any("exact preview" in r and "Edit a file" in r for r in d.reasons)
    past = decide(summary("resolved", "check"), "lab1", irreversible, History(failed=1), 0.0)
    assert past.action == "escalate"
    assert any("failed on lab1 recently" in r for r in past.reasons)


def test_signals_from_the_assessment_lower_confidence(monkeypatch: pytest.MonkeyPatch) -> None:
    s = summary("resolved", "check")
    health = type(s.host("lab1").reports["health"])
    monkeypatch.setattr(
        health, "signals", lambda self: [Signal(reason="2 clients would be cut", penalty=0.4)]
    )
    d = _decide(s)
    assert d.confidence == pytest.approx(0.6)
    assert d.action == "escalate"
    assert "2 clients would be cut (-0.40)" in d.reasons


def test_a_refused_report_escalates() -> None:
    s = summary("resolved", "check")
    hs = s.host("lab1").model_copy(update={"report_errors": ("report health: healthy: missing",)})
    d = _decide(s.model_copy(update={"hosts": {"lab1": hs}}), threshold=0.0)
    assert d.action == "escalate"
    assert "refused" in d.reasons[0]


def test_the_assessment_is_the_kind_the_spec_names() -> None:
    s = summary("resolved", "check")
    assert isinstance(s.host("lab1").report(FIX.reports.assess), Assessment)
    other = FIX.model_copy(update={"reports": FIX.reports.model_copy(update={"assess": "nope"})})
    d = decide(s, "lab1", other, History(), 0.0)
    assert d.action == "escalate"
    assert "no nope report" in d.reasons[0]
