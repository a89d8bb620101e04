"""The database workflow and db_connection_relief: recorded real runs replayed through the loop,
the causes the diagnosis names from recorded findings, the report models, the decision's
irreversible rule, and the host-side modules' pure parts (eligibility, the plan, log parsing,
RESP)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, role_module
from tests.unit import recorded
from tests.unit.recorded import RecordedExecutor
from veris_remediate.audit import AuditLog
from veris_remediate.causes import ruling_out, synthesize
from veris_remediate.decision import decide
from veris_remediate.events import RunSummary, TaskResult
from veris_remediate.fixes import load_fixes
from veris_remediate.pipeline import Remediator
from veris_remediate.report import RunReport
from veris_remediate.role_reports import ReportError, Scope, parse_report
from veris_remediate.role_reports.database import (
    DatabaseDiagnosis,
    DbPlan,
    DbResult,
    PlanSession,
    limit_of,
)
from veris_remediate.routing import load_rules
from veris_remediate.settings import Settings
from veris_remediate.workspace import History

FIX = load_fixes().fixes["db_connection_relief"]
SCENARIOS = [s for s in recorded.SCENARIOS if s.startswith("db_")]
SCOPE = Scope(host="rdb1", services=("postgresql",), units=("postgresql@15-main.service",))
OLD = 14


def _handle(tmp_path: Path, scenario: str) -> tuple[RunReport, RecordedExecutor]:
    executor = RecordedExecutor(scenario)
    settings = Settings(state_dir=tmp_path, rules_file=recorded.rules_file(scenario))
    remediator = Remediator(recorded.inventory(scenario), settings, executor=executor)
    mode = (recorded.EVENTS / scenario / "mode").read_text().strip()
    if mode == "diagnose":
        return remediator.diagnose(recorded.payload(scenario)), executor
    return remediator.handle(recorded.payload(scenario), check_only=mode == "check_only"), executor


def _plan(scenario: str) -> DbPlan:
    report = recorded.summary(scenario, "check").host(recorded.host(scenario)).report("db.plan")
    assert isinstance(report, DbPlan)
    return report


def _result(scenario: str) -> DbResult:
    report = recorded.summary(scenario, "apply").host(recorded.host(scenario)).report("db.result")
    assert isinstance(report, DbResult)
    return report


def _diagnosis(scenario: str) -> DatabaseDiagnosis:
    summary = recorded.summary(scenario, "diagnose")
    report = summary.host(recorded.host(scenario)).report("diag.database")
    assert isinstance(report, DatabaseDiagnosis)
    return report


def _labels(sessions: Any) -> list[str]:
    return sorted(s.application_name.removeprefix("veris-test-") for s in sessions)


# -- the recorded runs, replayed through the whole loop ------------------------------------


def test_every_scenario_of_the_family_is_recorded() -> None:
    assert set(SCENARIOS) >= {
        "db_resolved", "db_nothing_idle_enough", "db_not_needed", "db_relief_server_down",
        "db_diag_exhausted", "db_diag_auth_failures", "db_diag_unreachable", "db_diag_disk_full",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "outcome", "exit_code", "phases", "playbook"),
    [
        ("db_resolved", "resolved", 0, ["check", "apply"], "db_connection_relief.yml"),
        ("db_nothing_idle_enough", "escalated", 4, ["check"], "db_connection_relief.yml"),
        ("db_not_needed", "not_needed", 0, ["check"], "db_connection_relief.yml"),
        ("db_relief_server_down", "escalated", 4, ["check"], "db_connection_relief.yml"),
        ("db_diag_exhausted", "previewed", 0, ["diagnose"], "diagnose_database.yml"),
        ("db_diag_auth_failures", "previewed", 0, ["diagnose"], "diagnose_database.yml"),
        ("db_diag_unreachable", "previewed", 0, ["diagnose"], "diagnose_database.yml"),
        ("db_diag_disk_full", "previewed", 0, ["diagnose"], "diagnose_database.yml"),
    ],
)
def test_recorded_scenarios_reach_the_recorded_outcome(
    tmp_path: Path, scenario: str, outcome: str, exit_code: int, phases: list[str], playbook: str
) -> None:
    report, executor = _handle(tmp_path, scenario)
    assert report.outcome == outcome == recorded.recorded_report(scenario)["outcome"]
    assert report.exit_code == exit_code
    assert [r.phase for r in executor.requests] == phases
    assert all(r.playbook.name == playbook for r in executor.requests)
    assert report.rolled_back is False  # irreversible or read-only: never
    assert AuditLog(tmp_path / "audit.jsonl").verify().ok


def test_resolved_terminates_exactly_the_previewed_sessions(tmp_path: Path) -> None:
    report, executor = _handle(tmp_path, "db_resolved")
    assert (report.decision, report.remediation) == ("apply", "db_connection_relief")
    # Irreversible, medium risk: 0.85 at best; reversible=False is said in the reasons.
    assert report.confidence == pytest.approx(0.85)
    assert any("irreversible: no rollback" in r for r in report.reasons)
    plan = _plan("db_resolved")
    assert (plan.connections, plan.max_connections, plan.limit) == (17, 20, 17)
    assert plan.after == 3
    assert not plan.restart
    doomed = plan.doomed()
    assert _labels(doomed) == sorted(f"old-{i}" for i in range(1, OLD + 1))
    kept = {s.application_name.removeprefix("veris-test-"): s.why for s in plan.sessions
            if not s.terminate}  # fmt: skip
    assert kept == {
        "active": "active, not idle",
        "su": "a superuser's session",
        "young": kept["young"],
    }
    assert kept["young"].startswith("idle ")
    assert kept["young"].endswith("younger than 300s")
    result = _result("db_resolved")
    assert result.passed()
    assert {(s.pid, s.backend_start_us) for s in result.terminated} == {
        (s.pid, s.backend_start_us) for s in doomed
    }
    assert result.skipped == result.failed == result.still_alive == ()
    assert (result.connections, result.limit, result.others_kept) == (3, 17, 3)
    assert not result.restarted
    # The preview shows the role's own list first: every doomed session by pid and start.
    first = report.preview[0]
    assert first.action == "db.plan"
    for s in doomed:
        assert f"-pid {s.pid} " in first.diff
        assert s.backend_start in first.diff
    assert report.preview[1].action == "veris_pg_terminate"
    # The apply run got exactly those sessions back (restricted), as data.
    extravars = (executor.requests[1].private_data_dir / "env" / "extravars").read_text()
    assert "veris_assessment" in extravars
    for s in doomed:
        assert f"backend_start_us: {s.backend_start_us}" in extravars


def test_resolved_report_names_the_cause_and_what_went(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "db_resolved")
    (cause,) = report.causes
    assert cause.code == "db_connections_exhausted"
    assert cause.implied_fix == "db_connection_relief"
    assert cause.rules_out == ("service_restart",)
    assert cause.evidence[0] == (
        "postgresql: 17 of max_connections 20 client connections (limit 17, 90%)"
    )
    messages = [f.message for f in report.findings]
    assert any(m.startswith(f"{OLD} idle session(s) would be terminated: pid ") for m in messages)
    assert any(m.startswith(f"terminated {OLD} idle session(s): pid ") for m in messages)
    assert "postgresql: 3 client connections now (limit 17)" in messages


def test_nothing_idle_enough_escalates_with_its_blocker(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "db_nothing_idle_enough")
    plan = _plan("db_nothing_idle_enough")
    assert plan.problem_present()
    assert plan.doomed() == []
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "nothing_idle_enough"
    assert blocker.code in FIX.blockers
    assert any("no idle session of postgresql has been idle 300 s" in r for r in report.reasons)
    # The check run predicted no change at all: nothing would have been touched.
    hs = recorded.summary("db_nothing_idle_enough", "check").host("rdb1")
    assert hs.changed_tasks == ()


def test_not_needed_below_the_limit(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "db_not_needed")
    plan = _plan("db_not_needed")
    assert not plan.problem_present()
    assert (plan.connections, plan.limit) == (3, 90)
    assert report.reasons[0].startswith("no problem found: postgresql: 3 of 100 connections")


def test_a_stopped_server_blocks_relief(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "db_relief_server_down")
    plan = _plan("db_relief_server_down")
    assert not plan.reachable
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "server_unreachable"
    assert "No such file or directory" in blocker.reason
    (cause,) = report.causes
    assert (cause.code, cause.implied_fix) == ("db_unreachable", "service_restart")


# -- causes named by the diagnosis, from recorded findings -----------------------------------


def test_diagnosis_names_connections_exhausted_with_evidence() -> None:
    diagnosis = _diagnosis("db_diag_exhausted")
    (pg,) = diagnosis.postgres
    assert (pg.connections, pg.max_connections, pg.reserved_connections) == (17, 20, 3)
    assert pg.limit(90) == 17 == limit_of(20, 90, 3)
    assert pg.all_slots_taken()
    causes = synthesize([diagnosis])
    assert [c.code for c in causes] == ["db_connections_exhausted"]
    (cause,) = causes
    assert cause.confidence == pytest.approx(0.95)
    assert cause.implied_fix == "db_connection_relief"  # the host declares veris_postgres
    assert cause.rules_out == ("service_restart",)
    assert cause.evidence[:2] == (
        "postgresql: 17 of max_connections 20 client connections (near the limit from 17, "
        "90%; 3 reserved for superusers)",
        "postgresql sessions by user: app 16, dba 1",
    )
    assert "0 idle session(s) relief may terminate (idle >= 300 s)" in cause.evidence[2]
    # Redis is declared and fine: named in the findings, not as a cause.
    assert [r.name for r in diagnosis.redis] == ["redis-server"]
    assert diagnosis.redis[0].reachable


def test_exhausted_without_the_opt_in_escalates() -> None:
    diagnosis = _diagnosis("db_diag_exhausted")
    (pg,) = diagnosis.postgres
    undeclared = diagnosis.model_copy(
        update={
            "postgres_policy_declared": False,
            "postgres": (pg.model_copy(update={"policy": False}),),
        }
    )
    (cause,) = undeclared.causes()
    assert cause.implied_fix is None
    assert "no connection relief is declared" in cause.summary


def test_diagnosis_names_auth_failures_with_evidence() -> None:
    diagnosis = _diagnosis("db_diag_auth_failures")
    (pg,) = diagnosis.postgres
    assert pg.auth is not None
    assert pg.auth.failures == 8
    assert [(u.name, u.count) for u in pg.auth.by_user] == [("app", 8)]
    assert any(source.startswith("log:/var/log/postgresql/") for source in pg.auth.sources)
    (cause,) = synthesize([diagnosis])
    assert cause.code == "db_auth_failures"
    assert cause.confidence == pytest.approx(0.7)
    assert cause.implied_fix is None
    assert cause.rules_out == ()
    assert cause.evidence[0].startswith("postgresql: 8 refused login(s) in 15 min (users: app x8)")
    assert 'password authentication failed for user "app"' in cause.evidence[1]


def test_diagnosis_names_unreachable_servers() -> None:
    diagnosis = _diagnosis("db_diag_unreachable")
    causes = {c.code: c for c in synthesize([diagnosis])}
    cause = causes["db_unreachable"]
    assert cause.confidence == pytest.approx(0.95)
    assert cause.implied_fix == "service_restart"
    assert cause.evidence[0].startswith(
        "postgresql: postgresql@15-main.service inactive (dead); the local connection failed"
    )
    assert cause.evidence[1].startswith("redis-server: redis-server.service inactive")
    (pg,) = diagnosis.postgres
    assert pg.tcp_ok is False
    assert pg.data_directory is not None  # from pg_lsclusters while the server is down


def test_diagnosis_names_a_full_data_directory() -> None:
    diagnosis = _diagnosis("db_diag_disk_full")
    causes = {c.code: c for c in synthesize([diagnosis])}
    cause = causes["disk_full"]
    assert cause.rules_out == ("service_restart",)
    assert cause.implied_fix is None
    data = "/var/lib/postgresql/15/main"
    assert cause.evidence[0].startswith(f"postgresql data: {data} on {data}: ")
    assert "db_unreachable" not in causes
    (pg,) = diagnosis.postgres
    assert pg.data_directory is not None
    assert pg.data_directory.used_percent >= 95


def test_disk_full_rules_out_a_restart_of_the_database() -> None:
    """A restart previewed while the data dir is full is refused, with this cause."""
    hs = recorded.summary("db_diag_disk_full", "diagnose").host("rdb1")
    cause = ruling_out(synthesize(hs.reports.values()), "service_restart")
    assert cause is not None
    assert cause.code == "disk_full"


# -- the decision on recorded streams: the irreversible rule ---------------------------------


def _with_task(summary: RunSummary, host: str, task: TaskResult) -> RunSummary:
    hs = summary.host(host)
    changed = hs.model_copy(update={"tasks": (*hs.tasks, task)})
    return summary.model_copy(update={"hosts": {**summary.hosts, host: changed}})


def test_an_unexpected_predicted_change_escalates_outright() -> None:
    check = recorded.summary("db_resolved", "check")
    extra = TaskResult(host="rdb1", task="Edit pg_hba.conf", action="ansible.builtin.lineinfile",
                       status="changed")  # fmt: skip
    decision = decide(_with_task(check, "rdb1", extra), "rdb1", FIX, History(), 0.7, scope=SCOPE)
    assert decision.action == "escalate"
    assert decision.confidence == 0.0
    assert any("irreversible fix, applied only on an exact preview" in r for r in decision.reasons)


def test_a_recent_failure_escalates_outright() -> None:
    check = recorded.summary("db_resolved", "check")
    decision = decide(check, "rdb1", FIX, History(failed=1), 0.7, scope=SCOPE)
    assert decision.action == "escalate"
    assert any("failed on rdb1 recently" in r for r in decision.reasons)


def test_the_recorded_preview_applies() -> None:
    check = recorded.summary("db_resolved", "check")
    decision = decide(check, "rdb1", FIX, History(), 0.7, scope=SCOPE)
    assert decision.action == "apply"
    assert decision.confidence == pytest.approx(0.85)


def test_outside_its_scope_the_plan_terminates_nothing() -> None:
    plan = _plan("db_resolved")
    other = Scope(host="rdb1", services=("redis-server",))
    cut = plan.restricted(other)
    assert cut.doomed() == []
    assert not cut.restart
    decision = decide(recorded.summary("db_resolved", "check"), "rdb1", FIX, History(), 0.7,
                      scope=other)  # fmt: skip
    assert decision.action == "escalate"  # nothing left to do, yet the problem is there


# -- DbPlan: restricted, blockers, restart, preview -------------------------------------------


def _session(pid: int, **kw: Any) -> PlanSession:
    values: dict[str, Any] = {
        "pid": pid, "user": "app", "database": "app", "client_addr": "10.0.0.5",
        "application_name": "web", "state": "idle", "backend_start": "2026-01-01 00:00:00+00",
        "backend_start_us": 1767225600000000 + pid, "state_age_seconds": 900.0,
        "superuser": False, "terminate": True, "why": "",
    }  # fmt: skip
    values.update(kw)
    return PlanSession.model_validate(values)


def _db_plan(sessions: list[PlanSession], **kw: Any) -> DbPlan:
    values: dict[str, Any] = {
        "kind": "db.plan", "service": "postgresql", "unit": "postgresql@15-main.service",
        "postgres_service": True,
        "policy": {"idle_age": 600, "near_limit_percent": 90, "terminate_superuser": False,
                   "restart_last_resort": False},
        "reachable": True, "error": "", "too_many_connections": False, "max_connections": 10,
        "reserved_connections": 3, "connections": len(sessions), "limit": 7,
        "sessions": [s.model_dump() for s in sessions], "sessions_truncated": False,
        "after": len([s for s in sessions if not s.terminate]), "restart": False,
        "restart_reason": "",
    }  # fmt: skip
    values.update(kw)
    report = parse_report(values)
    assert isinstance(report, DbPlan)
    return report


def test_restricted_drops_whatever_the_policy_does_not_allow() -> None:
    plan = _db_plan([
        _session(1),
        _session(2, superuser=True),  # a host claiming it may terminate a superuser's
        _session(3, state="active"),
        _session(4, state_age_seconds=30.0),
        _session(5, state="idle in transaction"),
        _session(6, terminate=False, why="kept"),
        _session(7),
    ])  # fmt: skip
    cut = plan.restricted(SCOPE)
    assert [s.pid for s in cut.doomed()] == [1, 7]
    allowed = plan.model_copy(
        update={"policy": plan.policy.model_copy(update={"terminate_superuser": True})}
    )
    assert [s.pid for s in allowed.restricted(SCOPE).doomed()] == [1, 2, 7]
    assert not plan.model_copy(update={"postgres_service": False}).restricted(SCOPE).doomed()


def test_blockers_and_the_gated_restart() -> None:
    young = [_session(i, terminate=False, why="young", state_age_seconds=5.0) for i in range(8)]
    plan = _db_plan(young, after=8)
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "nothing_idle_enough"
    some = [_session(1), *young[1:]]
    insufficient = _db_plan(some, after=7)
    blocker = insufficient.blocker()
    assert blocker is not None
    assert blocker.code == "relief_insufficient"
    # Declared and planned: no blocker, a signal, and the preview says so.
    restart = insufficient.model_copy(
        update={
            "restart": True,
            "restart_reason": "terminating 1 leaves 7",
            "policy": insufficient.policy.model_copy(update={"restart_last_resort": True}),
        }
    )
    assert restart.blocker() is None
    (signal,) = restart.signals()
    assert signal.penalty == pytest.approx(0.1)
    assert "+restart postgresql@15-main.service (last resort)" in restart.preview_diff()
    # Restricted, a restart the policy does not allow is dropped.
    assert not restart.model_copy(update={"policy": insufficient.policy}).restricted(SCOPE).restart
    for code in ("nothing_idle_enough", "relief_insufficient", "server_unreachable",
                 "too_many_to_connect", "not_policy_service"):  # fmt: skip
        assert code in FIX.blockers


def test_no_slot_left_is_a_problem_only_a_declared_restart_can_relieve() -> None:
    full = _db_plan([], reachable=False, too_many_connections=True, connections=None,
                    max_connections=None, limit=None, after=None,
                    error="FATAL:  sorry, too many clients already")  # fmt: skip
    assert full.problem_present()
    blocker = full.blocker()
    assert blocker is not None
    assert blocker.code == "too_many_to_connect"
    (cause,) = full.causes()
    assert (cause.code, cause.confidence) == ("db_connections_exhausted", 0.95)


def test_not_the_policy_service_is_refused() -> None:
    plan = _db_plan([], postgres_service=False, reachable=False, connections=None)
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "not_policy_service"


def test_result_passes_only_below_the_limit_with_nothing_left_alive() -> None:
    base: dict[str, Any] = {
        "kind": "db.result", "service": "postgresql", "unit": "postgresql@15-main.service",
        "reachable": True, "error": "", "terminated": [], "skipped": [], "failed": [],
        "still_alive": [], "others_ended": [], "others_kept": 2, "max_connections": 10,
        "connections": 2, "limit": 7, "still_near_limit": False, "restarted": False,
        "after_restart": None,
    }  # fmt: skip
    assert DbResult.model_validate(base).passed()
    assert not DbResult.model_validate({**base, "still_alive": [42]}).passed()
    assert not DbResult.model_validate({**base, "connections": 7}).passed()
    assert not DbResult.model_validate({**base, "reachable": False}).passed()
    restarted = {**base, "connections": 9, "restarted": True,
                 "after_restart": {"reachable": True, "error": "", "max_connections": 10,
                                   "connections": 0, "limit": 7}}  # fmt: skip
    result = DbResult.model_validate(restarted)
    assert result.passed()
    assert "the restart cut every other session" in result.describe()


def test_reports_are_validated_field_for_field() -> None:
    raw = json.loads(json.dumps(_plan("db_resolved").model_dump()))
    raw["unexpected"] = 1
    with pytest.raises(ReportError):
        parse_report(raw)


# -- rules: the proposed defaults load, and route as intended -------------------------------


def test_the_proposed_rules_load_against_the_catalog() -> None:
    rules = load_rules(FIXTURES / "rules" / "db-relief.yml")
    by_name = {r.name: r for r in rules.rules}
    assert by_name["postgres-too-many-connections"].fix == "db_connection_relief"
    assert by_name["postgres-down"].workflow == "database_connectivity"
    assert set(by_name["database-connectivity"].match_alertnames) >= {
        "S2-golden-fact-recall", "S6-backup-restore", "S9-graph-intent"
    }  # fmt: skip


# -- the host-side modules' pure parts ---------------------------------------------------------

TERMINATE = role_module("db_connection_relief", "veris_pg_terminate")
PROBE = role_module("diag_database", "diag_database_probe")


def _raw(
    pid: int, state: str = "idle", age: float | None = 900.0, su: bool = False
) -> dict[str, Any]:
    return {
        "pid": pid, "user": "app", "database": "app", "client_addr": None,
        "application_name": "", "state": state, "backend_start": "x",
        "backend_start_us": pid, "state_age_seconds": age, "superuser": su,
    }  # fmt: skip


def test_eligibility_never_takes_active_young_or_superuser_sessions() -> None:
    eligible = TERMINATE.eligibility
    assert eligible(_raw(1), 600, False) == (True, "")
    assert eligible(_raw(2, state="active"), 600, False) == (False, "active, not idle")
    assert eligible(_raw(3, state="idle in transaction"), 600, False)[0] is False
    assert eligible(_raw(4, age=599.9), 600, False) == (False, "idle 599s, younger than 600s")
    assert eligible(_raw(5, age=None), 600, False)[0] is False
    assert eligible(_raw(6, su=True), 600, False) == (False, "a superuser's session")
    assert eligible(_raw(6, su=True), 600, True) == (True, "")


def _params(**kw: Any) -> dict[str, Any]:
    values = {"service": "postgresql", "unit": "postgresql@15-main.service",
              "policy_service": True, "idle_age": 600, "near_limit_percent": 90,
              "terminate_superuser": False, "restart_last_resort": False,
              "sessions_max": 1000}  # fmt: skip
    values.update(kw)
    return values


def test_the_module_plans_the_restart_only_when_declared_and_terminating_is_not_enough() -> None:
    read = {"max_connections": 10, "reserved_connections": 3,
            "sessions": [_raw(1), *(_raw(i, state="active") for i in range(2, 9))]}  # fmt: skip
    plan = TERMINATE.build_plan(_params(), read, "", False)
    assert (plan["connections"], plan["limit"], plan["after"]) == (8, 7, 7)
    assert not plan["restart"]
    assert not TERMINATE.acts(plan)  # insufficient: nothing is done
    declared = TERMINATE.build_plan(_params(restart_last_resort=True), read, "", False)
    assert declared["restart"]
    assert TERMINATE.acts(declared)
    enough = {
        **read,
        "sessions": [_raw(1), _raw(2), *(_raw(i, state="active") for i in range(3, 9))],
    }
    relief = TERMINATE.build_plan(_params(restart_last_resort=True), enough, "", False)
    assert (relief["after"], relief["restart"]) == (6, False)
    assert TERMINATE.acts(relief)
    assert TERMINATE.limit_of(20, 90, 3) == 17
    assert TERMINATE.limit_of(100, 90, 3) == 90


def test_the_module_lists_eligible_sessions_first_and_bounds_the_list() -> None:
    read = {
        "max_connections": 100,
        "reserved_connections": 3,
        "sessions": [_raw(1, state="active"), _raw(2, age=700.0), _raw(3, age=900.0)],
    }
    plan = TERMINATE.build_plan(_params(sessions_max=2), read, "", False)
    assert [s["pid"] for s in plan["sessions"]] == [3, 2]
    assert plan["sessions_truncated"]
    assert plan["connections"] == 3


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('2026-12-01 23:39:07.510 UTC [119] app@db FATAL:  password authentication failed '
         'for user "app"', ("app", None)),
        ('... FATAL:  no pg_hba.conf entry for host "10.1.2.3", user "bob", database "x", '
         "no encryption", ("bob", "10.1.2.3")),
        ('... FATAL:  role "ghost" does not exist', ("ghost", None)),
        ('... FATAL:  Peer authentication failed for user "postgres"', ("postgres", None)),
        ("... LOG:  connection received: host=127.0.0.1", None),
        ('... FATAL:  database "nope" does not exist', None),
    ],
)  # fmt: skip
def test_refused_login_lines(line: str, expected: tuple[str, str | None] | None) -> None:
    assert PROBE.auth_failure(line) == expected


def test_the_text_log_is_read_from_the_cutoff_on(tmp_path: Path) -> None:
    log = tmp_path / "postgresql.log"
    fail = 'FATAL:  password authentication failed for user "app"'
    log.write_text(
        f"2026-12-01 10:00:00.000 UTC [1] app@db {fail}\n"
        f"2026-12-01 10:20:00.000 UTC [2] app@db {fail}\n"
        "2026-12-01 10:20:01.000 UTC [2] app@db DETAIL:  Connection matched pg_hba.conf line 1\n"
        f"2026-12-01 10:21:00.000 UTC [3] bob@db {fail.replace('app', 'bob')}\n"
    )
    count = PROBE.AuthCount()
    PROBE.read_text_log(str(log), "2026-12-01 10:15:00", 1 << 20, count)
    report = count.report(15)
    assert report["failures"] == 2
    assert report["by_user"] == [{"name": "app", "count": 1}, {"name": "bob", "count": 1}]
    assert report["sources"] == [f"log:{log}"]
    missing = PROBE.AuthCount()
    PROBE.read_text_log(str(tmp_path / "nope.log"), "2026", 1 << 20, missing)
    assert missing.report(15)["unreadable"] == [f"{tmp_path}/nope.log: No such file or directory"]


def test_jsonlog_and_csvlog_are_matched_by_sqlstate(tmp_path: Path) -> None:
    jsonlog = tmp_path / "pg.json"
    entries = [
        {"timestamp": "2026-12-01 10:20:00.000 UTC", "user": "app", "state_code": "28P01",
         "remote_host": "10.0.0.9", "message": "Passwort-Authentifizierung fehlgeschlagen"},
        {"timestamp": "2026-12-01 10:20:01.000 UTC", "user": "app", "state_code": "42P01",
         "message": "relation does not exist"},
        {"timestamp": "2026-12-01 09:00:00.000 UTC", "user": "old", "state_code": "28000"},
    ]  # fmt: skip
    jsonlog.write_text("".join(json.dumps(e) + "\n" for e in entries))
    count = PROBE.AuthCount()
    PROBE.read_json_log(str(jsonlog), "2026-12-01 10:15:00", 1 << 20, count)
    assert count.report(15)["failures"] == 1
    assert count.report(15)["by_host"] == [{"name": "10.0.0.9", "count": 1}]
    csvlog = tmp_path / "pg.csv"
    row = (
        '2026-12-01 10:20:00.000 UTC,"bob","db",77,"10.0.0.8:5555",x,1,"authentication",'
        '2026-12-01 10:20:00 UTC,,0,FATAL,28000,"no pg_hba.conf entry",,,,,,,,"",,\n'
    )
    csvlog.write_text(row)
    count = PROBE.AuthCount()
    PROBE.read_csv_log(str(csvlog), "2026-12-01 10:15:00", 1 << 20, count)
    report = count.report(15)
    assert (report["failures"], report["by_user"][0]["name"]) == (1, "bob")
    assert report["by_host"] == [{"name": "10.0.0.8", "count": 1}]


def test_idle_sessions_by_age_and_the_tcp_target() -> None:
    sessions = [_raw(1, age=5), _raw(2, age=61), _raw(3, age=4000), _raw(4, state="active")]
    buckets = PROBE.idle_by_age(sessions)
    assert [(b["min_seconds"], b["max_seconds"], b["count"]) for b in buckets] == [
        (0, 60, 1), (60, 300, 1), (300, 900, 0), (900, 3600, 0), (3600, None, 1),
    ]  # fmt: skip
    assert PROBE.tcp_target("*") == "127.0.0.1"
    assert PROBE.tcp_target("localhost") == "127.0.0.1"
    assert PROBE.tcp_target("10.0.0.5") == "10.0.0.5"
    assert PROBE.tcp_target("") is None


def test_redis_is_asked_in_resp() -> None:
    """A fake Redis on a socket pair: PING, INFO clients/stats/server, CONFIG GET."""
    ours, theirs = socket.socketpair()

    def bulk(text: str) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(text), text.encode())

    replies = [
        b"+PONG\r\n",
        bulk("# Clients\r\nconnected_clients:7\r\nmaxclients:8\r\n"),
        bulk("rejected_connections:3"),
        bulk("redis_version:7.0.15"),
        b"*2\r\n" + bulk("dir") + bulk("/var/lib/redis"),
    ]

    def serve() -> None:
        reader = theirs.makefile("rb")
        for reply in replies:
            count = int(reader.readline()[1:])
            for _ in range(count):
                size = int(reader.readline()[1:])
                reader.read(size + 2)
            theirs.sendall(reply)

    ours.settimeout(5)
    theirs.settimeout(5)
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    resp = PROBE.Resp(ours)
    assert resp.call("PING") == "PONG"
    fields = PROBE.info_fields(resp.call("INFO", "clients"))
    assert (fields["connected_clients"], fields["maxclients"]) == ("7", "8")
    assert PROBE.info_fields(resp.call("INFO", "stats")) == {"rejected_connections": "3"}
    assert PROBE.info_fields(resp.call("INFO", "server"))["redis_version"] == "7.0.15"
    assert resp.call("CONFIG", "GET", "dir") == ["dir", "/var/lib/redis"]
    server.join()
    ours.close()
    theirs.close()
    error = PROBE.RespError("NOAUTH Authentication required.")
    assert isinstance(error, str)


def test_services_are_picked_by_policy_port_or_unit() -> None:
    policy = {"service": "db"}
    assert PROBE.is_postgres({"name": "db", "port": 6000}, policy)
    assert PROBE.is_postgres({"name": "pg", "port": 5432}, None)
    assert PROBE.is_postgres({"name": "x", "unit": "postgresql@16-main.service"}, None)
    assert not PROBE.is_postgres({"name": "pg", "port": 5432, "container": "pg"}, None)
    assert PROBE.is_redis({"name": "cache", "port": 6379})
    assert PROBE.is_redis({"name": "r", "unit": "redis-server.service"})
    assert not PROBE.is_redis({"name": "nginx", "port": 80, "unit": "nginx.service"})
