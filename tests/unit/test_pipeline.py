"""The whole loop with recorded real event streams in place of ansible-runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, FIXTURES
from tests.unit.recorded import RecordedExecutor, hold_lease, recorded_report
from veris_remediate.audit import AuditLog
from veris_remediate.inventory import Inventory, parse_inventory_listing
from veris_remediate.pipeline import Remediator
from veris_remediate.settings import Settings

ALERT = (EXAMPLES / "alertmanager-nginx-down.json").read_bytes()


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def _remediator(tmp_path: Path, scenario: str) -> tuple[Remediator, RecordedExecutor]:
    executor = RecordedExecutor(scenario)
    return Remediator(_inventory(), Settings(state_dir=tmp_path), executor=executor), executor


@pytest.mark.parametrize(
    ("scenario", "outcome", "exit_code", "phases"),
    [
        ("resolved", "resolved", 0, ["check", "apply"]),
        ("not_needed", "not_needed", 0, ["check"]),
        ("bad_config", "escalated", 4, ["check"]),
        ("rolled_back", "rolled_back", 5, ["check", "apply", "rollback"]),
        ("unreachable", "failed", 6, ["check"]),
        # Likely causes decide: a restart is never run when a cause rules it out.
        ("port_held", "escalated", 4, ["check"]),
        ("start_limit", "escalated", 4, ["check"]),
        ("disk_full", "escalated", 4, ["check"]),
        ("dependency_order", "resolved", 0, ["check", "apply"]),
        ("dependency_failed", "rolled_back", 5, ["check", "apply", "rollback"]),
    ],
)
def test_recorded_scenarios_reach_the_recorded_outcome(
    tmp_path: Path, scenario: str, outcome: str, exit_code: int, phases: list[str]
) -> None:
    remediator, executor = _remediator(tmp_path, scenario)
    report = remediator.handle(ALERT)
    assert report.outcome == outcome
    assert report.exit_code == exit_code
    assert [r.phase for r in executor.requests] == phases
    assert report.outcome == recorded_report(scenario)["outcome"]
    assert report.rolled_back is (outcome == "rolled_back")
    assert report.hosts == ("lab1",)
    assert AuditLog(tmp_path / "audit.jsonl").verify().ok


def test_requests_carry_no_alert_data_and_vars_are_unsafe(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved")
    remediator.handle(ALERT)
    check, apply = executor.requests
    assert check.check is True
    assert apply.check is False
    assert check.playbook.name == apply.playbook.name == "service_restart.yml"
    assert check.inventories[-1].name == "target_inventory.yml"
    extravars = (apply.private_data_dir / "env" / "extravars").read_text()
    # The apply run is told the check run's diagnosis instead of repeating it.
    assert "veris_assessment:" in extravars
    assert "  healthy: false" in extravars
    # The root carries !unsafe: every value beneath it is data.
    assert "\n!unsafe\n" in extravars
    assert 'veris_alert_summary: "HTTP probe of http://lab1/ failing for 10s"' in extravars
    # The request itself holds only our paths and settings.
    dumped = apply.model_dump_json()
    assert "HTTP probe" not in dumped


def test_check_only_stops_before_apply(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved")
    report = remediator.handle(ALERT, check_only=True)
    assert report.outcome == "previewed"
    assert report.exit_code == 0
    assert [r.phase for r in executor.requests] == ["check"]


def test_a_rollback_makes_the_next_decision_escalate(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "rolled_back")
    assert remediator.handle(ALERT).outcome == "rolled_back"
    again, executor = _remediator(tmp_path, "resolved")
    report = again.handle(ALERT)
    assert report.outcome == "escalated"
    assert [r.phase for r in executor.requests] == ["check"]
    assert any("rolled back 1 time" in r for r in report.reasons)


def test_brake_previews_then_blocks(tmp_path: Path) -> None:
    """Under the brake, handle still diagnoses and previews; only the apply is refused."""
    remediator, executor = _remediator(tmp_path, "resolved")
    remediator.store.engage_brake("incident 42", by="alice", source="operator")
    report = remediator.handle(ALERT)
    assert report.outcome == "blocked"
    assert report.exit_code == 7
    assert [r.phase for r in executor.requests] == ["check"]
    assert report.preview
    assert any("engaged by alice" in r and "incident 42" in r for r in report.reasons)


def test_brake_lets_check_only_finish(tmp_path: Path) -> None:
    remediator, _executor = _remediator(tmp_path, "resolved")
    remediator.store.engage_brake("incident 42", by="alice", source="operator")
    report = remediator.handle(ALERT, check_only=True)
    assert report.outcome == "previewed"
    assert report.exit_code == 0


def test_busy_host_is_deferred(tmp_path: Path) -> None:
    remediator, executor = _remediator(tmp_path, "resolved")
    hold_lease(tmp_path, "lab1")
    report = remediator.handle(ALERT)
    assert report.outcome == "deferred"
    assert report.exit_code == 4
    assert "not run in parallel" in report.reasons[0]
    assert executor.requests == []


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        ALERT.replace(b'"service": "nginx"}', b"\"service\": \"{{ lookup('pipe', 'id') }}\"}"),
        ALERT.replace(b"http://lab1/", b"all"),
        ALERT.replace(b"http://lab1/", b"http://lab9/"),
    ],
)
def test_rejected_payloads_run_nothing_and_are_audited(tmp_path: Path, payload: bytes) -> None:
    remediator, executor = _remediator(tmp_path, "resolved")
    report = remediator.handle(payload)
    assert report.outcome == "rejected"
    assert report.exit_code == 3
    assert executor.requests == []
    kinds = [r["kind"] for r in AuditLog(tmp_path / "audit.jsonl").records()]
    assert "alert.rejected" in kinds
    assert kinds[-1] == "run.finished"


def test_resolved_only_payload_is_not_needed(tmp_path: Path) -> None:
    data = json.loads(ALERT)
    data["status"] = "resolved"
    data["alerts"][0]["status"] = "resolved"
    remediator, executor = _remediator(tmp_path, "resolved")
    report = remediator.handle(json.dumps(data))
    assert report.outcome == "not_needed"
    assert executor.requests == []


def test_blast_radius_cap(tmp_path: Path) -> None:
    data = json.loads(ALERT)
    second = json.loads(json.dumps(data["alerts"][0]))
    second["labels"]["instance"] = "http://lab2/"
    second["fingerprint"] = "1234567890abcdef"
    data["alerts"].append(second)
    executor = RecordedExecutor("resolved")
    remediator = Remediator(
        _inventory(), Settings(state_dir=tmp_path, max_hosts=1), executor=executor
    )
    report = remediator.handle(json.dumps(data))
    assert report.outcome == "escalated"
    assert "blast-radius" in report.reasons[0]
    assert executor.requests == []


def test_report_is_stored_and_reloadable(tmp_path: Path) -> None:
    from veris_remediate.report import RunReport, to_markdown

    remediator, _ = _remediator(tmp_path, "rolled_back")
    report = remediator.handle(ALERT)
    stored = RunReport.model_validate(remediator.workspace.read_record(report.run_id, "report"))
    assert stored == report
    md = to_markdown(stored)
    assert "**rolled_back**" in md
    assert "| rollback |" in md


def test_brake_during_apply_blocks_without_rollback(tmp_path: Path) -> None:
    """The brake cancels the apply run; the host is re-checked read-only, never rolled back."""
    remediator, executor = _remediator(tmp_path, "rolled_back")
    real_run = executor.run

    def braking_run(request: Any) -> Any:
        result = real_run(request)
        if request.phase == "apply":
            remediator.store.engage_brake("stop everything", by="bob", source="operator")
            return result.model_copy(update={"status": "canceled"})
        return result

    executor.run = braking_run  # type: ignore[method-assign]
    report = remediator.handle(ALERT)
    assert report.outcome == "blocked"
    assert report.exit_code == 7
    assert [r.phase for r in executor.requests] == ["check", "apply", "recheck"]
    assert any("nginx.service was inactive" in r for r in report.reasons)
    assert any(r.startswith("left as: problem present") for r in report.reasons)
    restore = f"to restore the snapshot: veris-remediate rollback {report.run_id}"
    assert report.reasons[-1] == restore


@pytest.mark.parametrize(
    ("scenario", "cause", "implied_fix"),
    [
        ("port_held", "port_held", None),
        ("start_limit", "start_limit_hit", None),
        ("disk_full", "disk_full", "cache_clear"),
        ("bad_config", "config_invalid", "config_repair"),
        ("dependency_order", "dependency_down", "service_restart"),
        ("resolved", "stopped", "service_restart"),
    ],
)
def test_the_report_carries_the_likely_cause(
    tmp_path: Path, scenario: str, cause: str, implied_fix: str | None
) -> None:
    remediator, _ = _remediator(tmp_path, scenario)
    report = remediator.handle(ALERT)
    assert [c.code for c in report.causes][:1] == [cause]
    assert report.causes[0].implied_fix == implied_fix
    assert report.causes[0].evidence
    recorded = recorded_report(scenario)["causes"]
    assert [c["code"] for c in recorded] == [c.code for c in report.causes]


def test_a_ruling_cause_escalates_with_it_as_the_reason(tmp_path: Path) -> None:
    remediator, _ = _remediator(tmp_path, "port_held")
    report = remediator.handle(ALERT)
    (result,) = report.remediations
    assert result.decision == "escalate"
    assert any(
        r.startswith("likely cause: port 80 is held by another process, python3 (pid ")
        and r.endswith("so service_restart cannot help")
        for r in result.reasons
    ), result.reasons


@pytest.mark.parametrize("as_given", [str, Path, lambda p: [str(p)], lambda p: (p,)])
def test_the_inventory_may_be_a_path_string_or_several(tmp_path: Path, as_given: Any) -> None:
    inventory = FIXTURES / "inventory" / "lab.yml"
    remediator = Remediator(as_given(inventory), Settings(state_dir=tmp_path))
    assert "lab1" in remediator.inventory.hosts
