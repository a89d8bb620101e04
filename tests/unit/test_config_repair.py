"""config_repair: its report models, its spec and role interface, and recorded real runs.

The recorded scenarios (tests/fixtures/scenarios/config.yml) are real hand-offs from
service_restart to config_repair on a lab host; each replays through the whole loop with
the baseline copies it was recorded with put back into a fresh store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.recorded import EVENTS, RecordedExecutor, hold_lease, recorded_report, summary
from tests.unit.recorded import host as recorded_host
from tests.unit.recorded import inventory as recorded_inventory
from tests.unit.recorded import payload as recorded_payload
from tests.unit.recorded import rules_file as recorded_rules
from veris_remediate.audit import AuditLog
from veris_remediate.baselines import BaselineCopy, BaselineStore, file_sha256
from veris_remediate.fixes import load_fixes
from veris_remediate.pipeline import Remediator
from veris_remediate.report import RunReport
from veris_remediate.resources import roles_dir
from veris_remediate.role_reports import Scope, parse_report
from veris_remediate.role_reports.config import (
    CandidateCopy,
    ConfigPlan,
    ConfigRollback,
    ConfigSnapshot,
    PlannedFile,
    SavedFile,
)
from veris_remediate.role_reports.service import ServiceHealth, UnitsSnapshot
from veris_remediate.routing import load_rules
from veris_remediate.runner import RunRequest, RunResult
from veris_remediate.settings import Settings
from veris_remediate.store import StateStore

GOOD = "48c6a4ec1e1fd28ccf968490f07e34a1d7f755793b2108a3ed8670b1ee2a0aa2"  # packaged nginx.conf
BROKEN = "0e489374a84ed5ef6ca389f8f73193354846da265a4ad4b9e1e474f050ac818a"  # + one bad line
OLDER = "1" * 64
CONF = "/etc/nginx/nginx.conf"
RESTART_RULES = (
    "blackbox-probe-failed",
    "systemd-unit-failed",
    "service-down",
    "nginx-down",
    "redis-down",
    "sentinel-probes",
)


# -- report models -----------------------------------------------------------------------


def _copy(sha256: str, valid: bool, last_seen: str = "2026-12-01T00:00:00+00:00") -> dict[str, Any]:
    errors = [] if valid else ["nginx: [emerg] unknown directive"]
    return {"sha256": sha256, "last_seen": last_seen, "valid": valid, "errors": errors}


def _plan(*files: dict[str, Any]) -> ConfigPlan:
    report = parse_report({"kind": "config.plan", "files": list(files)})
    assert isinstance(report, ConfigPlan)
    return report


def _file(
    path: str = CONF, *, valid: bool = False, tried: tuple[dict[str, Any], ...] = ()
) -> dict[str, Any]:
    candidate = next((t for t in tried if t["valid"]), None)
    return {
        "path": path,
        "exists": True,
        "sha256": BROKEN,
        "valid": valid,
        "errors": [] if valid else ["nginx: [emerg] unexpected end of file"],
        "tried": list(tried),
        "candidate": candidate,
    }


def _scope(*shas: str, files: tuple[str, ...] = (CONF,)) -> Scope:
    return Scope(
        host="lab1",
        services=("nginx",),
        units=("nginx.service",),
        config_files=files,
        baseline_sha256=shas,
    )


def test_plan_with_a_validating_copy_is_a_problem_the_fix_can_help() -> None:
    plan = _plan(_file(tried=(_copy(GOOD, True),)))
    assert plan.problem_present()
    assert plan.blocker() is None
    assert plan.signals() == []
    assert f"copy {GOOD[:12]}" in plan.describe()
    severities = [f.severity for f in plan.findings("lab1")]
    assert severities == ["critical", "info"]


def test_plan_when_every_file_validates_is_not_needed() -> None:
    plan = _plan(_file(valid=True))
    assert not plan.problem_present()
    assert plan.describe() == "every declared config file validates"


@pytest.mark.parametrize("tried", [(), (_copy(GOOD, False),)])
def test_an_invalid_file_without_a_validating_copy_blocks(
    tried: tuple[dict[str, Any], ...],
) -> None:
    plan = _plan(_file(tried=tried), _file("/etc/nginx/conf.d/ok.conf", valid=True))
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "no_valid_baseline"
    assert CONF in blocker.reason
    assert "ok.conf" not in blocker.reason
    assert blocker.code in load_fixes().fixes["config_repair"].blockers
    assert any(f.severity == "critical" and "no last-known-good" in f.message
               for f in plan.findings("lab1"))  # fmt: skip


def test_falling_back_to_an_older_copy_lowers_confidence() -> None:
    plan = _plan(_file(tried=(_copy(GOOD, False), _copy(OLDER, True))))
    assert plan.blocker() is None
    [signal] = plan.signals()
    assert OLDER[:12] in signal.reason
    assert signal.penalty > 0
    assert any(f.severity == "warning" for f in plan.findings("lab1"))


def test_restricted_plan_keeps_only_declared_files_and_handed_out_copies() -> None:
    plan = _plan(
        _file(tried=(_copy(OLDER, True), _copy(GOOD, True))),
        _file("/etc/shadow", tried=(_copy(GOOD, True),)),
    )
    seen = plan.restricted(_scope(GOOD))
    assert [f.path for f in seen.files] == [CONF]
    # The host chose OLDER, which the planner never handed out: nothing is left to restore.
    assert seen.files[0].candidate is None
    assert [t.sha256 for t in seen.files[0].tried] == [GOOD]
    assert plan.restricted(_scope(OLDER, GOOD)).files[0].candidate == plan.files[0].candidate


def test_report_models_refuse_what_the_role_must_not_send() -> None:
    planned = _file(tried=(_copy(GOOD, True),))
    planned["candidate"] = {**planned["candidate"], "sha256": "../../etc/passwd"}
    raw = {"kind": "config.plan", "files": [planned]}
    with pytest.raises(ValueError, match=r"report config\.plan"):
        parse_report(raw)
    with pytest.raises(ValueError, match=r"report config\.plan"):
        parse_report({"kind": "config.plan", "files": [], "extra": 1})


def _snapshot(existed: bool = True) -> ConfigSnapshot:
    snap = parse_report({
        "kind": "config.snapshot",
        "files": [{"path": CONF, "existed": existed, "sha256": BROKEN if existed else None,
                   "mode": "0644", "owner": "root", "group": "root"}],
        "units": [{"unit": "nginx.service", "active_state": "inactive",
                   "unit_file_state": "enabled"}],
    })  # fmt: skip
    assert isinstance(snap, ConfigSnapshot)
    return snap


def _rollback(sha256: str | None, state: str = "inactive", restored: bool = True) -> ConfigRollback:
    report = parse_report({
        "kind": "config.rollback",
        "files": [{"path": CONF, "exists": sha256 is not None, "sha256": sha256}],
        "units": [{"unit": "nginx.service", "active_state": state, "unit_file_state": "enabled"}],
        "restored": restored,
    })  # fmt: skip
    assert isinstance(report, ConfigRollback)
    return report


def test_snapshot_restricted_to_the_scope() -> None:
    snap = _snapshot()
    assert snap.restricted(_scope(GOOD)) == snap
    empty = snap.restricted(Scope(host="lab1"))
    assert empty.files == ()
    assert empty.units == ()
    assert BROKEN[:12] in snap.describe()
    assert "nginx.service was inactive" in snap.describe()


def test_rollback_matches_only_when_every_file_hashes_as_before() -> None:
    snap = _snapshot()
    assert _rollback(BROKEN).mismatches(snap) == []
    assert _rollback(BROKEN).is_restored()
    [problem] = _rollback(GOOD).mismatches(snap)
    assert f"hashes {GOOD[:12]} now" in problem
    [problem] = _rollback(None).mismatches(snap)
    assert "was present before, is absent now" in problem
    [problem] = _rollback(BROKEN, state="active").mismatches(snap)
    assert "nginx.service was inactive before, is active now" in problem
    assert _rollback(BROKEN).mismatches(UnitsSnapshot(kind="units.snapshot", units=()))


def test_rollback_of_a_file_that_did_not_exist_wants_it_gone() -> None:
    snap = _snapshot(existed=False)
    assert _rollback(None).mismatches(snap) == []
    [problem] = _rollback(GOOD).mismatches(snap)
    assert "was absent before, is present now" in problem


# -- the spec, the role's interface, the rules --------------------------------------------


def _argument_specs() -> dict[str, Any]:
    path = roles_dir() / "config_repair" / "meta" / "argument_specs.yml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())["argument_specs"]
    return data


def test_spec_of_config_repair() -> None:
    spec = load_fixes().fixes["config_repair"]
    assert spec.scope == "service"
    assert spec.risk == "medium"
    assert spec.reversible
    assert spec.requires == ("service", "config_validator", "baseline")
    assert {"ansible.builtin.copy", "ansible.builtin.systemd_service"} <= spec.expected_changes
    assert spec.reports.assess == "config.plan"
    assert spec.reports.verify == "verify"
    assert spec.reports.snapshot == "config.snapshot"
    assert spec.reports.rollback == "config.rollback"


def test_argument_specs_follow_the_models_field_for_field() -> None:
    specs = _argument_specs()
    main = specs["main"]["options"]
    # veris_baseline is passed as is: every BaselineCopy field must be an option.
    assert set(main["config_repair_baseline"]["options"]) == set(BaselineCopy.model_fields)
    plan = main["config_repair_plan"]["options"]
    assert set(plan) == set(ConfigPlan.model_fields)
    assert set(plan["files"]["options"]) == set(PlannedFile.model_fields)
    for name in ("tried", "candidate"):
        assert set(plan["files"]["options"][name]["options"]) == set(CandidateCopy.model_fields)
    prior = specs["rollback"]["options"]["config_repair_prior"]["options"]
    assert set(prior) == set(ConfigSnapshot.model_fields)
    assert set(prior["files"]["options"]) == set(SavedFile.model_fields)


def test_every_option_has_a_documented_default() -> None:
    text = (roles_dir() / "config_repair" / "defaults" / "main.yml").read_text()
    specs = _argument_specs()
    assert set(yaml.safe_load(text)) == {*specs["main"]["options"], *specs["rollback"]["options"]}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("config_repair_"):
            # A comment right above it (or above the variable it is paired with).
            above = next(x for x in reversed(lines[:index]) if not x.startswith("config_repair_"))
            assert above.startswith("#"), f"{line} is not documented"


def test_restart_rules_hand_an_invalid_config_to_config_repair() -> None:
    rules = {r.name: r for r in load_rules(None).rules}
    for name in RESTART_RULES:
        assert rules[name].fix == "service_restart"
        assert rules[name].on_blocked == {"config_invalid": "config_repair"}


# -- recorded real runs ------------------------------------------------------------------


class _UnsafeLoader(yaml.SafeLoader):
    """Reads env/extravars; its ``!unsafe`` root comes back as a plain mapping."""


_UnsafeLoader.add_constructor(
    "!unsafe",
    lambda loader, node: loader.construct_mapping(node, deep=True),  # type: ignore[arg-type]
)


def _extravars(request: RunRequest) -> dict[str, Any]:
    text = (request.private_data_dir / "env" / "extravars").read_text()
    data: dict[str, Any] = yaml.load(text, Loader=_UnsafeLoader)
    return data


def _store_recorded_baseline(scenario: str, state: Path) -> list[BaselineCopy]:
    """Put the copies the scenario was recorded with into a fresh baseline store."""
    directory = EVENTS / scenario / "baseline"
    if not directory.is_dir():
        return []
    store = BaselineStore(state)
    copies = []
    for raw in json.loads((directory / "index.json").read_text()):
        recorded = BaselineCopy.model_validate(raw)
        copy, _ = store.record(
            host=recorded_host(scenario), service=recorded.service, path=recorded.path,
            fetched=directory / recorded.sha256, sha256=recorded.sha256, mode=recorded.mode,
            owner=recorded.owner, group=recorded.group, run_id=recorded.run_id,
        )  # fmt: skip
        copies.append(copy)
    return copies


def _replay(
    scenario: str, state: Path, *, baseline: bool = True
) -> tuple[RunReport, RecordedExecutor]:
    if baseline:
        _store_recorded_baseline(scenario, state)
    executor = RecordedExecutor(scenario)
    settings = Settings(state_dir=state, rules_file=recorded_rules(scenario))
    remediator = Remediator(recorded_inventory(scenario), settings, executor=executor)
    mode = (EVENTS / scenario / "mode").read_text().strip()
    return remediator.handle(recorded_payload(scenario), check_only=mode == "check_only"), executor


def _stems(executor: RecordedExecutor) -> list[str]:
    return [
        f"{r.playbook.name}:{r.phase}" + (":check" if r.check else "") for r in executor.requests
    ]


@pytest.mark.parametrize(
    ("scenario", "outcome", "exit_code", "runs"),
    [
        ("cr_resolved", "resolved", 0,
         ["service_restart.yml:check:check", "config_repair.yml:check:check",
          "config_repair.yml:apply"]),
        ("cr_previewed", "previewed", 0,
         ["service_restart.yml:check:check", "config_repair.yml:check:check"]),
        ("cr_no_baseline", "escalated", 4, ["service_restart.yml:check:check"]),
        ("cr_no_valid_baseline", "escalated", 4,
         ["service_restart.yml:check:check", "config_repair.yml:check:check"]),
        ("cr_rolled_back", "rolled_back", 5,
         ["service_restart.yml:check:check", "config_repair.yml:check:check",
          "config_repair.yml:apply", "config_repair_rollback.yml:rollback"]),
        ("cr_verify_failed", "rolled_back", 5,
         ["service_restart.yml:check:check", "config_repair.yml:check:check",
          "config_repair.yml:apply", "config_repair_rollback.yml:rollback"]),
    ],
)  # fmt: skip
def test_recorded_scenarios_replay_to_their_outcome(
    tmp_path: Path, scenario: str, outcome: str, exit_code: int, runs: list[str]
) -> None:
    report, executor = _replay(scenario, tmp_path)
    assert report.outcome == outcome == recorded_report(scenario)["outcome"]
    assert report.exit_code == exit_code
    assert _stems(executor) == runs
    assert report.rolled_back is (outcome == "rolled_back")
    assert AuditLog(tmp_path / "audit.jsonl").verify().ok
    result = report.remediations[0]
    if len(runs) > 1:
        # Handed off: the remediation is config_repair, and says why.
        assert result.remediation == "config_repair"
        assert result.reasons[0].startswith("service_restart cannot help: configuration")
        assert (
            result.reasons[1] == "rule blackbox-probe-failed: on config_invalid, try config_repair"
        )


def test_handoff_plans_config_repair_with_the_recorded_copies(tmp_path: Path) -> None:
    report, executor = _replay("cr_resolved", tmp_path)
    _, check, apply = executor.requests
    host = recorded_host("cr_resolved")
    data = _extravars(check)
    [copy] = data["veris_baseline"]
    assert (copy["path"], copy["sha256"]) == (CONF, GOOD)
    assert Path(copy["src"]).is_relative_to(tmp_path / "baselines" / host)
    assert data["veris_scope"]["baseline_sha256"] == [GOOD]
    assert data["veris_scope"]["config_files"] == [CONF]
    # The apply run restores what the check run chose, nothing it has to work out again.
    seen = _extravars(apply)["veris_assessment"]
    assert seen["kind"] == "config.plan"
    assert seen["files"][0]["candidate"]["sha256"] == GOOD
    assert seen["files"][0]["sha256"] == BROKEN
    assert report.remediations[0].snapshot == load_fixes().fixes["config_repair"].snapshot


def test_the_apply_run_never_sees_a_copy_the_planner_did_not_hand_out(tmp_path: Path) -> None:
    # The store holds a different copy than the one the host reported as validating.
    other = tmp_path / "other.conf"
    other.write_text("events {}\n")
    BaselineStore(tmp_path).record(
        host=recorded_host("cr_resolved"), service="nginx", path=CONF, fetched=other,
        sha256=file_sha256(other), mode="0644", owner="root", group="root", run_id="r",
    )  # fmt: skip
    report, executor = _replay("cr_resolved", tmp_path, baseline=False)
    # The decision judges the plan as the apply run would see it: no handed-out copy
    # validates, so nothing is applied at all.
    assert [r.phase for r in executor.requests] == ["check", "check"]
    assert report.outcome == "escalated"
    assert any("no last-known-good copy validates" in r for r in report.reasons)


def test_without_a_recorded_copy_the_handoff_escalates_with_both_reasons(tmp_path: Path) -> None:
    report, _ = _replay("cr_resolved", tmp_path, baseline=False)
    assert report.outcome == "escalated"
    reasons = report.remediations[0].reasons
    assert "config_invalid" in reasons[1]
    assert "fix config_repair cannot run" in reasons[2]
    assert "no last-known-good copy of its config files is recorded" in reasons[2]


def test_check_only_preview_shows_the_restore_diff(tmp_path: Path) -> None:
    report, _ = _replay("cr_previewed", tmp_path)
    assert report.outcome == "previewed"
    restore = next(p for p in report.preview if p.action == "ansible.builtin.copy")
    assert restore.task == f"Restore the last-known-good copy of {CONF}"
    assert f"--- {CONF}" in restore.diff
    assert "-this is not nginx syntax" in restore.diff
    assert any(p.action == "ansible.builtin.systemd_service" for p in report.preview)


def test_no_valid_baseline_escalates_with_the_blocker(tmp_path: Path) -> None:
    report, _ = _replay("cr_no_valid_baseline", tmp_path)
    reasons = " | ".join(report.remediations[0].reasons)
    assert "no last-known-good copy validates on the host for /etc/nginx/nginx.conf" in reasons
    assert "mime.types" in " ".join(f.message for f in report.remediations[0].findings)


def test_check_run_of_a_repair_probes_and_predicts_only_the_fix() -> None:
    hs = summary("cr_resolved", "config_repair.check").host(recorded_host("cr_resolved"))
    assert hs.failed_tasks == ()
    assert hs.unpredictable_tasks == ()
    assert [t.action for t in hs.changed_tasks] == [
        "ansible.builtin.copy",
        "ansible.builtin.systemd_service",
    ]
    plan = hs.report("config.plan")
    assert isinstance(plan, ConfigPlan)
    [planned] = plan.files
    assert (planned.valid, planned.sha256) == (False, BROKEN)
    assert planned.candidate is not None
    assert planned.candidate.sha256 == GOOD
    assert "config.snapshot" not in hs.reports  # nothing is saved in check mode


def test_apply_run_saves_before_it_replaces_and_verifies_the_config() -> None:
    hs = summary("cr_resolved", "config_repair.apply").host(recorded_host("cr_resolved"))
    tasks = [t.task for t in hs.tasks]
    snapshot_at = tasks.index("Emit veris_report config.snapshot")
    restore_at = tasks.index(f"Restore the last-known-good copy of {CONF}")
    assert tasks.index("Fetch each file to the controller") < snapshot_at < restore_at
    snap = hs.report("config.snapshot")
    assert isinstance(snap, ConfigSnapshot)
    assert [(f.path, f.sha256, f.mode) for f in snap.files] == [(CONF, BROKEN, "0644")]
    assert [(u.unit, u.active_state) for u in snap.units] == [("nginx.service", "inactive")]
    verify = hs.report("verify")
    assert isinstance(verify, ServiceHealth)
    assert verify.passed()
    assert verify.config_valid is True


@pytest.mark.parametrize("scenario", ["cr_rolled_back", "cr_verify_failed"])
def test_rollback_puts_the_pre_repair_file_back_byte_identically(scenario: str) -> None:
    host = recorded_host(scenario)
    snap = summary(scenario, "config_repair.apply").host(host).report("config.snapshot")
    restoration = summary(scenario, "config_repair.rollback").host(host).report("config.rollback")
    assert isinstance(snap, ConfigSnapshot)
    assert isinstance(restoration, ConfigRollback)
    assert restoration.is_restored()
    assert restoration.mismatches(snap) == []
    assert [f.sha256 for f in restoration.files] == [BROKEN]
    assert [u.active_state for u in restoration.units] == ["inactive"]


def test_verify_failed_is_a_failed_verification_not_a_failed_apply() -> None:
    hs = summary("cr_verify_failed", "config_repair.apply").host(recorded_host("cr_verify_failed"))
    assert hs.failed_tasks == ()
    verify = hs.report("verify")
    assert isinstance(verify, ServiceHealth)
    assert verify.config_valid is True
    assert verify.http_status == 403
    assert not verify.passed()


class _BrakeAfterCheck(RecordedExecutor):
    """Engages the brake once config_repair's check run is back (before its apply)."""

    def __init__(self, scenario: str, state: Path) -> None:
        super().__init__(scenario)
        self.state = state

    def run(self, request: RunRequest) -> RunResult:
        result = super().run(request)
        if request.playbook.name == "config_repair.yml" and request.check:
            StateStore(self.state).engage_brake("operator takes over", by="op", source="operator")
        return result


def test_the_brake_stops_a_handed_off_repair_before_apply(tmp_path: Path) -> None:
    _store_recorded_baseline("cr_resolved", tmp_path)
    executor = _BrakeAfterCheck("cr_resolved", tmp_path)
    remediator = Remediator(
        recorded_inventory("cr_resolved"), Settings(state_dir=tmp_path), executor=executor
    )
    report = remediator.handle(recorded_payload("cr_resolved"))
    assert report.outcome == "blocked"
    assert report.exit_code == 7
    assert [r.phase for r in executor.requests] == ["check", "check"]


def test_a_busy_host_is_not_repaired(tmp_path: Path) -> None:
    _store_recorded_baseline("cr_resolved", tmp_path)
    executor = RecordedExecutor("cr_resolved")
    remediator = Remediator(
        recorded_inventory("cr_resolved"), Settings(state_dir=tmp_path), executor=executor
    )
    hold_lease(tmp_path, recorded_host("cr_resolved"))
    report = remediator.handle(recorded_payload("cr_resolved"))
    assert report.outcome == "deferred"
    assert "not run in parallel" in report.reasons[0]
    assert executor.requests == []
