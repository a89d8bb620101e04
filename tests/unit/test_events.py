from __future__ import annotations

from typing import Any

import pytest

from tests.unit.recorded import SCENARIOS, events, summary
from veris_remediate.events import EventFolder, diff_text, fold_events
from veris_remediate.role_reports.service import ServiceHealth, UnitsSnapshot


def test_recorded_scenarios_are_all_there() -> None:
    assert set(SCENARIOS) >= {
        "bad_config", "not_needed", "resolved", "rolled_back", "unreachable",
        "port_held", "start_limit", "dependency_order", "dependency_failed", "disk_full",
    }  # fmt: skip


def test_diagnosis_is_one_probe_task() -> None:
    """Every probe of the diagnosis is one task: one SSH round trip, not one per probe."""
    hs = summary("resolved", "check").host("lab1")
    ran = [t for t in hs.tasks if t.status != "skipped"]
    probes = [t for t in ran if t.action.endswith("service_health_probe")]
    assert [t.task for t in probes] == ["Probe the service"]
    # The rest of the check run only predicts the start: its snapshot reuses the diagnosis's
    # reading of the units (service_restart_assessment), and no argument spec is re-checked.
    remote = [
        t for t in ran if not t.action.endswith(("debug", "set_fact", "validate_argument_spec"))
    ]
    assert [t.task for t in remote] == [
        "Probe the service",
        "Start the service, or restart it when it runs but is unhealthy",
    ]
    assert not [t for t in ran if t.action.endswith("validate_argument_spec")]


def test_check_run_of_a_required_dependency_predicts_it_first() -> None:
    hs = summary("dependency_order", "check").host("lab1")
    assert [t.task for t in hs.changed_tasks] == [
        "Start the dependency redis-server.service",
        "Start the service, or restart it when it runs but is unhealthy",
    ]
    snapshot = hs.reports["units.snapshot"]
    assert isinstance(snapshot, UnitsSnapshot)
    assert [(u.unit, u.active_state) for u in snapshot.required] == [
        ("redis-server.service", "inactive")
    ]
    health = hs.reports["health"]
    assert isinstance(health, ServiceHealth)
    assert "redis-server.service" in health.requires


def test_check_run_of_a_stopped_service_predicts_one_start() -> None:
    s = summary("resolved", "check")
    assert s.check is True
    assert s.completed is True
    hs = s.host("lab1")
    assert [t.task for t in hs.changed_tasks] == [
        "Start the service, or restart it when it runs but is unhealthy"
    ]
    assert hs.changed_tasks[0].action == "ansible.builtin.systemd_service"
    assert hs.failed_tasks == ()
    assert hs.stats["changed"] == 1
    health = hs.reports["health"]
    assert isinstance(health, ServiceHealth)
    assert health.active_state == "inactive"
    assert health.healthy is False
    assert health.port_open is False
    snapshot = hs.reports["units.snapshot"]
    assert isinstance(snapshot, UnitsSnapshot)
    assert snapshot.units[0].unit == "nginx.service"
    assert "verify" not in hs.reports
    assert hs.report_errors == ()


def test_apply_run_reports_verify_healthy() -> None:
    hs = summary("resolved", "apply").host("lab1")
    verify = hs.reports["verify"]
    assert isinstance(verify, ServiceHealth)
    assert verify.healthy is True
    assert verify.http_status == 200
    snapshot = hs.reports["units.snapshot"]
    assert isinstance(snapshot, UnitsSnapshot)
    assert snapshot.units[0].active_state == "inactive"


def test_failed_check_and_its_message() -> None:
    hs = summary("bad_config", "check").host("lab1")
    health = hs.reports["health"]
    assert isinstance(health, ServiceHealth)
    assert health.config_valid is False
    failed = hs.failed_tasks
    assert len(failed) == 1
    assert "invalid" in failed[0].msg


def test_unreachable_host() -> None:
    s = summary("unreachable", "check")
    hs = s.host("lab1")
    assert hs.unreachable
    assert hs.reports == {}
    assert any(t.status == "unreachable" and t.msg for t in hs.tasks)


@pytest.mark.parametrize("scenario", ["resolved", "rolled_back"])
def test_folding_streams_equals_folding_at_once(scenario: str) -> None:
    folder = EventFolder(check=True)
    count = 0
    for event in events(scenario, "check"):
        folder(event)
        count += 1
    assert folder.summary() == fold_events(events(scenario, "check"), check=True)
    assert folder.summary().events == count


def test_folder_keeps_no_events() -> None:
    """Memory grows with tasks, not events: the folder holds only TaskResults."""
    folder = EventFolder(check=False)
    noise: dict[str, Any] = {"event": "verbose", "event_data": {"stdout": "x" * 10_000}}
    for _ in range(1000):
        folder(noise)
    assert folder.summary().events == 1000
    assert folder.summary().hosts == {}


def test_check_mode_unpredictable_tasks_are_flagged() -> None:
    skipped = {
        "event": "runner_on_skipped",
        "event_data": {
            "host": "h",
            "task": "Run a script",
            "task_action": "ansible.builtin.command",
            "res": {"skipped": True, "msg": "Command would have run if not in check mode"},
        },
    }
    ok = {
        "event": "runner_on_ok",
        "event_data": {"host": "h", "task": "t", "res": {"changed": True}},
    }
    s = fold_events([skipped, ok], check=True)
    assert [t.task for t in s.host("h").unpredictable_tasks] == ["Run a script"]
    assert fold_events([skipped], check=False).host("h").unpredictable_tasks == ()


def test_ignored_failures_do_not_count_and_reports_need_a_kind() -> None:
    ignored = {
        "event": "runner_on_failed",
        "event_data": {"host": "h", "task": "t", "ignore_errors": True, "res": {"msg": "no"}},
    }
    kindless = {
        "event": "runner_on_ok",
        "event_data": {"host": "h", "task": "r", "res": {"veris_report": {"x": 1}}},
    }
    hs = fold_events([ignored, kindless], check=False).host("h")
    assert hs.failed_tasks == ()
    assert hs.reports == {}
    assert hs.report_errors == ("report of unknown kind 'None'",)


def _report_event(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "runner_on_ok",
        "event_data": {"host": "h", "task": "r", "res": {"veris_report": report}},
    }


def test_reports_are_validated_against_their_kinds_model() -> None:
    good = next(
        e["event_data"]["res"]["veris_report"]
        for e in events("resolved", "check")
        if e["event"] == "runner_on_ok" and "veris_report" in e["event_data"].get("res", {})
        and e["event_data"]["res"]["veris_report"]["kind"] == "health"
    )  # fmt: skip
    extra = {**good, "smuggled": "x"}
    wrong = {**good, "healthy": "very"}
    missing = {k: v for k, v in good.items() if k != "unit"}
    hs = fold_events([_report_event(r) for r in (good, extra, wrong, missing)], check=True).host(
        "h"
    )
    assert isinstance(hs.reports["health"], ServiceHealth)  # the good one
    assert len(hs.report_errors) == 3
    assert any("smuggled" in e for e in hs.report_errors)
    assert any("healthy" in e for e in hs.report_errors)
    assert any("unit" in e for e in hs.report_errors)


def test_diffs_become_text_for_the_preview() -> None:
    before_after = {"before": "a\nb\n", "after": "a\nc\n", "before_header": "/etc/x"}
    text = diff_text([before_after, {"prepared": "+ allow 22/tcp"}, "junk"])
    assert "--- /etc/x" in text
    assert "-b\n+c\n" in text
    assert text.endswith("+ allow 22/tcp\n")
    state = diff_text({"before": {"state": "absent"}, "after": {"state": "file"}})
    assert '-  "state": "absent"' in state
    assert "cut short" in diff_text({"prepared": "x" * 10_000})
    ok = {
        "event": "runner_on_ok",
        "event_data": {"host": "h", "task": "t", "res": {"changed": True, "diff": before_after}},
    }
    assert "+c" in fold_events([ok], check=True).host("h").tasks[0].diff
