from __future__ import annotations

from typing import Any

import pytest

from tests.unit.recorded import SCENARIOS, events, summary
from veris_remediate.events import EventFolder, fold_events


def test_recorded_scenarios_are_all_there() -> None:
    assert set(SCENARIOS) == {"bad_config", "not_needed", "resolved", "rolled_back", "unreachable"}


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
    assert health["active_state"] == "inactive"
    assert health["healthy"] is False
    assert health["port_open"] is False
    assert hs.reports["snapshot"]["units"][0]["unit"] == "nginx.service"
    assert "verify" not in hs.reports


def test_apply_run_reports_verify_healthy() -> None:
    hs = summary("resolved", "apply").host("lab1")
    assert hs.reports["verify"]["healthy"] is True
    assert hs.reports["verify"]["http_status"] == 200
    assert hs.reports["snapshot"]["units"][0]["active_state"] == "inactive"


def test_failed_check_and_its_message() -> None:
    hs = summary("bad_config", "check").host("lab1")
    assert hs.reports["health"]["config_valid"] is False
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
