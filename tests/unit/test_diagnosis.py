"""The host-wide diagnosis workflows: recorded real runs replayed through the loop, the report
models' causes and findings (on recorded reports, varied one fact at a time), and the probe
modules' parsing of machine-readable sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import role_module
from tests.unit import recorded
from tests.unit.recorded import RecordedExecutor, summary
from veris_remediate.causes import ruling_out, synthesize
from veris_remediate.pipeline import Remediator
from veris_remediate.role_reports import Cause, Report, ReportError, parse_report
from veris_remediate.role_reports.diagnosis import (
    FirewallDiagnosis,
    GeneralDiagnosis,
    PerformanceDiagnosis,
    SecurityDiagnosis,
)
from veris_remediate.routing import WORKFLOWS
from veris_remediate.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [s for s in recorded.SCENARIOS if s.startswith("dg_")]
R = TypeVar("R", bound=Report)

WORKFLOW_OF = {
    "dg_ssh_brute_force": "security",
    "dg_sudo": "security",
    "dg_unexpected_listener": "security",
    "dg_firewall_inactive": "firewall",
    "dg_port_blocked": "firewall",
    "dg_disk_full": "general",
    "dg_data_full": "general",
    "dg_general_healthy": "general",
    "dg_performance_healthy": "performance",
    "dg_oom_kill": "performance",
    "dg_memory_pressure": "performance",
}
MODEL = {
    "performance": PerformanceDiagnosis,
    "security": SecurityDiagnosis,
    "firewall": FirewallDiagnosis,
    "general": GeneralDiagnosis,
}


def _report(scenario: str, model: type[R]) -> R:
    hs = summary(scenario, "diagnose").host(recorded.host(scenario))
    assert hs.report_errors == ()
    report = hs.reports[WORKFLOWS[WORKFLOW_OF[scenario]].report]
    assert isinstance(report, model)
    return report


def _cause(report: Report, code: str) -> Cause:
    found = [c for c in report.causes() if c.code == code]
    assert found, f"no {code} in {[c.code for c in report.causes()]}"
    return found[0]


def _codes(report: Report) -> set[str]:
    return {c.code for c in report.causes()}


def _evidence(cause: Cause) -> str:
    return "\n".join(cause.evidence)


def _messages(report: Report) -> list[str]:
    return [f.message for f in report.findings("h")]


def _vary(report: R, **changes: Any) -> R:
    """The report with some fields changed, validated again as the role would have sent it."""
    data = {**report.model_dump(mode="json"), **changes}
    varied = parse_report(data)
    assert isinstance(varied, type(report))
    return varied


# -- the recorded runs, replayed ------------------------------------------------------------


def test_every_scenario_is_recorded() -> None:
    assert set(SCENARIOS) == set(WORKFLOW_OF)


@pytest.mark.parametrize("scenario", sorted(WORKFLOW_OF))
def test_replayed_diagnosis_names_the_recorded_causes(scenario: str, tmp_path: Path) -> None:
    executor = RecordedExecutor(scenario)
    settings = Settings(state_dir=tmp_path, rules_file=recorded.rules_file(scenario))
    remediator = Remediator(recorded.inventory(scenario), settings, executor=executor)
    report = remediator.diagnose(recorded.payload(scenario))
    assert [r.phase for r in executor.requests] == ["diagnose"]
    assert executor.requests[0].playbook.name == f"diagnose_{WORKFLOW_OF[scenario]}.yml"
    assert executor.requests[0].check is True
    assert report.outcome == "previewed"
    assert report.exit_code == 0
    assert report.remediations[0].workflow == WORKFLOW_OF[scenario]
    as_recorded = recorded.recorded_report(scenario)
    assert [c.model_dump(mode="json") for c in report.causes] == as_recorded["causes"]
    assert [f.model_dump(mode="json") for f in report.findings] == as_recorded["findings"]
    assert report.reasons[0].startswith("read-only diagnosis: ")


@pytest.mark.parametrize("scenario", sorted(WORKFLOW_OF))
def test_the_workflow_run_changes_nothing(scenario: str) -> None:
    s = summary(scenario, "diagnose")
    hs = s.host(recorded.host(scenario))
    assert s.completed
    assert hs.changed_tasks == ()
    assert hs.failed_tasks == ()
    assert hs.stats.get("changed", 0) == 0
    # One probe task (two for the firewall: the controller's connects) and the emit task.
    probes = [t for t in hs.tasks if t.action.startswith("diag_")]
    assert len(probes) == (2 if WORKFLOW_OF[scenario] == "firewall" else 1)


def test_handle_without_a_fix_escalates_with_the_causes(tmp_path: Path) -> None:
    scenario = "dg_ssh_brute_force"
    settings = Settings(state_dir=tmp_path, rules_file=recorded.rules_file(scenario))
    remediator = Remediator(
        recorded.inventory(scenario), settings, executor=RecordedExecutor(scenario)
    )
    report = remediator.handle(recorded.payload(scenario))
    assert report.outcome == "escalated"
    assert report.exit_code == 4
    assert "ssh_brute_force" in {c.code for c in report.causes}
    assert any("diagnosis attached" in r for r in report.reasons)


def test_a_report_that_does_not_match_its_model_is_refused() -> None:
    report = _report("dg_general_healthy", GeneralDiagnosis)
    data = report.model_dump(mode="json")
    with pytest.raises(ReportError, match=r"diag\.general"):
        parse_report({**data, "surprise": 1})
    del data["thresholds"]
    with pytest.raises(ReportError):
        parse_report(data)


# -- security ---------------------------------------------------------------------------------


def test_ssh_brute_force_from_the_recorded_run() -> None:
    report = _report("dg_ssh_brute_force", SecurityDiagnosis)
    cause = _cause(report, "ssh_brute_force")
    assert cause.confidence == 0.85
    assert cause.implied_fix is None
    assert cause.rules_out == ()
    assert "30 failed SSH login(s) from 127.0.0.1 in 60 min (30 connection(s), 30 for " in (
        _evidence(cause)
    )
    assert "threshold: 20 failed logins from one address in 60 min" in cause.evidence
    (source,) = report.ssh_failures
    assert sorted(source.users) == ["intruder0", "intruder1", "intruder2"]
    assert any(f.severity == "critical" and "30 failed" in f.message for f in report.findings("h"))


def test_brute_force_threshold_and_confidence_follow_the_reported_threshold() -> None:
    report = _report("dg_ssh_brute_force", SecurityDiagnosis)
    above = _vary(report, thresholds={"brute_force_attempts": 31})
    assert "ssh_brute_force" not in _codes(above)
    thrice = _vary(report, thresholds={"brute_force_attempts": 10})
    assert _cause(thrice, "ssh_brute_force").confidence == 0.95


def test_a_successful_login_after_the_failures_is_a_possible_compromise() -> None:
    report = _report("dg_ssh_brute_force", SecurityDiagnosis)
    source = report.ssh_failures[0]
    login = {"address": source.address, "user": "root", "count": 1, "last_seen": source.last_seen}
    varied = _vary(report, ssh_logins=[login], controller_address="198.18.156.1")
    assert "possible compromise" in _cause(varied, "ssh_brute_force").summary
    assert any("possible compromise" in m for m in _messages(varied))
    # The same address being this run's own controller is not a compromise.
    own = _vary(report, ssh_logins=[login], controller_address=source.address)
    assert "possible compromise" not in _cause(own, "ssh_brute_force").summary
    assert f"{source.address} is the address this diagnosis itself connected from" in (
        _cause(own, "ssh_brute_force").evidence
    )


def test_distributed_brute_force_below_the_per_source_threshold() -> None:
    report = _report("dg_ssh_brute_force", SecurityDiagnosis)
    base = report.ssh_failures[0].model_dump(mode="json")
    sources = [dict(base, address=f"203.0.113.{n}", attempts=19, connections=19) for n in range(6)]
    cause = _cause(_vary(report, ssh_failures=sources), "ssh_brute_force")
    assert cause.confidence == 0.6
    assert cause.summary.startswith("distributed SSH brute force: 114 failed logins from 6")
    few = _vary(report, ssh_failures=sources[:4])
    assert "ssh_brute_force" not in _codes(few)


def test_sudo_use_is_reported_per_user() -> None:
    report = _report("dg_sudo", SecurityDiagnosis)
    users = {u.user: u for u in report.sudo}
    assert (users["alice"].commands, users["alice"].denied) == (2, 1)
    assert users["alice"].last_command == "/usr/bin/id"
    assert (users["bob"].commands, users["bob"].denied) == (0, 1)
    assert "ssh_brute_force" not in _codes(report)  # 3 failures, threshold 20
    messages = _messages(report)
    assert "sudo by 'bob': 0 command(s), 0 authentication failure(s), 1 refused" in messages


def test_an_undeclared_listener_names_process_pid_and_unit() -> None:
    report = _report("dg_unexpected_listener", SecurityDiagnosis)
    cause = _cause(report, "unexpected_listener")
    (listener,) = [item for item in report.listeners if not item.declared]
    assert (listener.port, listener.process, listener.unit) == (
        8081, "python3", "squatter.service"
    )  # fmt: skip
    assert listener.pid is not None
    assert f"8081/tcp (python3, pid {listener.pid}, squatter.service) on 0.0.0.0: reachable " in (
        _evidence(cause)
    )
    assert (cause.confidence, cause.implied_fix) == (0.8, "ufw_harden")
    # Without veris_firewall the host has not opted in to hardening: escalate.
    bare = _vary(report, firewall_declared=False)
    assert _cause(bare, "unexpected_listener").implied_fix is None
    # Kept out by ufw: still worth a person's look, nothing to fix.
    kept = [item.model_dump(mode="json") | {"exposed": False} for item in report.listeners]
    quiet = _cause(_vary(report, listeners=kept), "unexpected_listener")
    assert (quiet.confidence, quiet.implied_fix) == (0.5, None)


def test_declared_listeners_are_expected() -> None:
    report = _report("dg_ssh_brute_force", SecurityDiagnosis)
    assert {(item.port, item.expected_as) for item in report.listeners} == {
        (22, "ssh"), (80, "service nginx")
    }  # fmt: skip
    assert "unexpected_listener" not in _codes(report)


# -- firewall ---------------------------------------------------------------------------------


def test_firewall_inactive_from_the_recorded_run() -> None:
    report = _report("dg_firewall_inactive", FirewallDiagnosis)
    cause = _cause(report, "firewall_inactive")
    assert (cause.confidence, cause.implied_fix) == (0.9, "ufw_harden")
    assert "ufw is inactive (ENABLED=no in /etc/ufw/ufw.conf" in _evidence(cause)
    assert "reachable from anywhere: 22/tcp (ssh), 80/tcp (nginx)" in cause.evidence
    assert [p.reachable for p in report.reachability] == [True, True]
    assert _codes(report) == {"firewall_inactive"}


def test_firewall_inactive_with_another_firewall_in_charge_is_doubtful() -> None:
    report = _report("dg_firewall_inactive", FirewallDiagnosis)
    policy = {"source": "nft", "family": "inet", "table": "filter", "chain": "input",
              "policy": "drop", "rules": 4}  # fmt: skip
    cause = _cause(_vary(report, policies=[policy]), "firewall_inactive")
    assert cause.confidence == 0.5
    assert "filtered outside ufw: nft inet filter/input policy drop, 4 rule(s)" in (
        _evidence(cause)
    )
    assert _cause(_vary(report, firewall_declared=False), "firewall_inactive").implied_fix is None


def test_ufw_blocking_a_declared_port_from_the_recorded_run() -> None:
    report = _report("dg_port_blocked", FirewallDiagnosis)
    cause = _cause(report, "firewall_blocks_declared_port")
    assert (cause.confidence, cause.implied_fix) == (0.9, "ufw_harden")
    evidence = _evidence(cause)
    assert "80/tcp (nginx): listening on the host, but a TCP connect from the controller to " in (
        evidence
    )
    assert "failed (timed out after 1s)" in evidence
    assert "80/tcp (nginx): no ufw rule lets 198.18.156.1 in; default incoming deny" in evidence
    assert "firewall_inactive" not in _codes(report)
    # The undeclared listener ufw keeps out: named, but nothing to fix.
    listener = _cause(report, "unexpected_listener")
    assert (listener.confidence, listener.implied_fix) == (0.5, None)
    assert "8081/tcp (python3, pid " in _evidence(listener)
    assert "squatter.service) on 0.0.0.0: ufw keeps it out" in _evidence(listener)


def test_a_declared_port_unreachable_although_ufw_allows_it() -> None:
    report = _report("dg_port_blocked", FirewallDiagnosis)
    declared = [p.model_dump(mode="json") | {"ufw_allows": True} for p in report.declared]
    cause = _cause(_vary(report, declared=declared), "firewall_blocks_declared_port")
    assert (cause.confidence, cause.implied_fix) == (0.5, None)
    assert "although ufw lets them in" in cause.summary


def test_unprobed_ports_are_not_judged() -> None:
    report = _report("dg_port_blocked", FirewallDiagnosis)
    assert "firewall_blocks_declared_port" not in _codes(_vary(report, reachability=[]))


# -- general ----------------------------------------------------------------------------------


def test_a_full_declared_cache_dir_from_the_recorded_run() -> None:
    report = _report("dg_disk_full", GeneralDiagnosis)
    disk = _cause(report, "disk_full")
    assert (disk.confidence, disk.implied_fix, disk.rules_out) == (
        0.95, "cache_clear", ("service_restart",)
    )  # fmt: skip
    assert "/var/cache/nginx (tmpfs) 100% full: 16.0 MiB used, 0 B available of 16.0 MiB" in (
        _evidence(disk)
    )
    full = _cause(report, "cache_dir_full")
    assert (full.confidence, full.implied_fix) == (0.9, "cache_clear")
    assert "the cache dir(s) hold 100% of what is used on /var/cache/nginx" in full.evidence
    # The decision refuses a restart while the disk is full.
    causes = synthesize([report])
    ruled = ruling_out(causes, "service_restart")
    assert ruled is not None
    assert ruled.code in ("disk_full", "cache_dir_full")


def test_a_full_data_filesystem_escalates() -> None:
    report = _report("dg_data_full", GeneralDiagnosis)
    disk = _cause(report, "disk_full")
    assert (disk.implied_fix, disk.rules_out) == (None, ("service_restart",))
    assert "escalate: no declared cache dir is on it" in disk.summary
    assert "/srv/data (tmpfs) 100% full" in _evidence(disk)
    assert "cache_dir_full" not in _codes(report)
    # nginx's cache dir exists, on the root filesystem, which is not full.
    (cache,) = report.cache_dirs
    assert (cache.exists, cache.mountpoint, cache.bytes) == (True, "/", 1048576)


def test_a_cache_holding_little_of_a_full_filesystem_is_a_weak_cause() -> None:
    report = _report("dg_disk_full", GeneralDiagnosis)
    caches = [c.model_dump(mode="json") | {"bytes": 1024 * 1024} for c in report.cache_dirs]
    full = _cause(_vary(report, cache_dirs=caches), "cache_dir_full")
    assert full.confidence == 0.4


def test_full_thresholds_inodes_and_read_only_filesystems() -> None:
    report = _report("dg_general_healthy", GeneralDiagnosis)
    assert _codes(report) & {"disk_full", "cache_dir_full"} == set()
    root = report.filesystems[0].model_dump(mode="json")
    assert root["mountpoint"] == "/"
    exhausted = dict(root, inodes_used_percent=96.0)
    cause = _cause(_vary(report, filesystems=[exhausted]), "disk_full")
    assert (cause.confidence, cause.implied_fix) == (0.8, None)
    assert "inodes 96% used" in _evidence(cause)
    full_ro = dict(root, used_percent=100.0, avail_bytes=0, read_only=True)
    assert "disk_full" not in _codes(_vary(report, filesystems=[full_ro]))
    # Every filesystem is "full" at a threshold of 0: the reported threshold decides.
    zero = _vary(report, thresholds={"full_percent": 0, "inodes_full_percent": 100})
    assert "threshold: 0% used or 100% of inodes" in _cause(zero, "disk_full").evidence


def test_general_findings_of_a_healthy_lab_host() -> None:
    report = _report("dg_general_healthy", GeneralDiagnosis)
    assert report.container == "systemd-nspawn"
    assert [fs.mountpoint for fs in report.filesystems][:1] == ["/"]
    assert not any(fs.mountpoint.startswith(("/proc", "/sys", "/dev", "/run/host"))
                   for fs in report.filesystems)  # fmt: skip
    messages = _messages(report)
    assert "clock: kept by the systemd-nspawn container's host" in messages
    assert "no default route: only directly connected networks are reachable" in messages
    assert f"resolves {report.hostname}: 127.0.1.1" in messages
    assert "dns_failure" not in _codes(report)


def test_a_failed_lookup_is_a_dns_failure() -> None:
    report = _report("dg_general_healthy", GeneralDiagnosis)
    lookup = {"name": report.hostname, "ok": False, "addresses": [], "seconds": 2.0,
              "error": "timed out after 2s"}  # fmt: skip
    dns = report.dns.model_dump(mode="json") | {"lookups": [lookup]}
    cause = _cause(_vary(report, dns=dns), "dns_failure")
    assert (cause.confidence, cause.implied_fix) == (0.8, None)
    assert f"cannot resolve {report.hostname}: timed out after 2s" in cause.evidence


# -- performance ------------------------------------------------------------------------------


def test_an_oom_kill_from_the_recorded_run() -> None:
    report = _report("dg_oom_kill", PerformanceDiagnosis)
    cause = _cause(report, "oom_kill")
    assert (cause.confidence, cause.implied_fix) == (0.75, None)
    assert "this host's memory cgroup (/) counted 1 OOM kill(s) since it was created" in (
        cause.evidence
    )
    assert "diag-hog.service main process was killed by SIGKILL" in _evidence(cause)
    assert "the OOM killer ended diag-hog.service" in cause.summary


def test_oom_kill_confidence_follows_its_sources() -> None:
    report = _report("dg_oom_kill", PerformanceDiagnosis)
    oom = report.oom.model_dump(mode="json")
    event = {"source": "kernel", "time": "2026-12-01T10:00:00+00:00", "pid": 4242,
             "process": "python3", "unit": "diag-hog.service"}  # fmt: skip
    kernel = _cause(_vary(report, oom=oom | {"events": [event]}), "oom_kill")
    assert kernel.confidence == 0.95
    assert ("the kernel OOM killer killed python3 (pid 4242, diag-hog.service) at "
            "2026-12-01T10:00:00+00:00") in kernel.evidence  # fmt: skip
    counter = {"cgroup": "/system.slice/diag-hog.service", "unit": "diag-hog.service", "kills": 2}
    by_unit = _vary(report, oom=oom | {"counters": [counter], "units": []})
    assert _cause(by_unit, "oom_kill").confidence == 0.9
    alone = _vary(report, oom=oom | {"units": []})
    assert _cause(alone, "oom_kill").confidence == 0.6
    # A unit killed by SIGKILL without any OOM record is not an OOM kill.
    assert "oom_kill" not in _codes(_vary(report, oom=oom | {"counters": []}))


def test_an_oom_killed_declared_service_that_is_down_may_be_restarted_for_now() -> None:
    report = _report("dg_oom_kill", PerformanceDiagnosis)
    unit = report.oom.units[0].model_dump(mode="json") | {
        "unit": "redis-server.service", "declared": True, "result": "oom-kill",
        "killed_by_sigkill": False,
    }  # fmt: skip
    oom = report.oom.model_dump(mode="json") | {"units": [unit]}
    cause = _cause(_vary(report, oom=oom), "oom_kill")
    assert (cause.confidence, cause.implied_fix) == (0.95, "service_restart")
    assert "brings it back for now" in cause.summary
    running = oom | {"units": [unit | {"active_state": "active"}]}
    assert _cause(_vary(report, oom=running), "oom_kill").implied_fix is None


def test_memory_pressure_from_the_recorded_run() -> None:
    report = _report("dg_memory_pressure", PerformanceDiagnosis)
    cause = _cause(report, "memory_pressure")
    assert (cause.confidence, cause.implied_fix) == (0.8, None)
    assert "threshold 60%" in _evidence(cause)
    assert cause.evidence[1].startswith("largest: python3 (pid ")
    assert "diag-hog.service" in cause.evidence[1]
    # At the role's default threshold (90%) the same host is not under pressure.
    relaxed = report.thresholds.model_dump() | {"cgroup_memory_percent": 90}
    assert "memory_pressure" not in _codes(_vary(report, thresholds=relaxed))


def test_memory_pressure_signals_add_up() -> None:
    report = _report("dg_performance_healthy", PerformanceDiagnosis)
    assert _codes(report) & {"memory_pressure", "oom_kill"} == set()
    low = report.memory.model_dump() | {"available_bytes": report.memory.total_bytes // 20}
    one = _cause(_vary(report, memory=low), "memory_pressure")
    assert one.confidence == 0.8
    assert "MemAvailable" in one.evidence[0]
    stalled = [p.model_dump() | ({"full_avg60": 25.0} if p.resource == "memory" else {})
               for p in report.pressure]  # fmt: skip
    both = _cause(_vary(report, memory=low, pressure=stalled), "memory_pressure")
    assert both.confidence == 0.95


def test_cpu_saturation_and_io_wait() -> None:
    report = _report("dg_performance_healthy", PerformanceDiagnosis)
    busy = _vary(
        report,
        load={"one": 9.0, "five": 8.0, "fifteen": 7.0},
        cpu=report.cpu.model_dump() | {"busy_percent": 97.0, "iowait_percent": 35.0},
    )
    cpu = _cause(busy, "cpu_saturation")
    assert cpu.confidence == 0.8
    assert "4.5 per CPU" in cpu.evidence[0]
    io = _cause(busy, "io_wait")
    assert (io.confidence, io.implied_fix) == (0.7, None)


# -- merged across workflows ------------------------------------------------------------------


def test_firewall_inactive_from_two_workflows_is_one_cause() -> None:
    security = _report("dg_unexpected_listener", SecurityDiagnosis)
    firewall = _report("dg_firewall_inactive", FirewallDiagnosis)
    causes = synthesize([security, firewall])
    (inactive,) = [c for c in causes if c.code == "firewall_inactive"]
    assert inactive.confidence == 0.9  # the surer of 0.8 (security) and 0.9 (firewall)
    assert "reachable from anywhere: 22/tcp (ssh), 80/tcp (nginx)" in inactive.evidence
    assert any("8081/tcp (python3" in e for e in inactive.evidence)
    assert [c.code for c in causes] == sorted(
        (c.code for c in causes), key=lambda code: (-next(
            x.confidence for x in causes if x.code == code), code)
    )  # fmt: skip


def test_every_cause_names_evidence_and_a_known_fix() -> None:
    fixes = {"service_restart", "ufw_harden", "cache_clear", "config_repair", None}
    for scenario in WORKFLOW_OF:
        report = _report(scenario, MODEL[WORKFLOW_OF[scenario]])
        for cause in report.causes():
            assert cause.evidence, (scenario, cause.code)
            assert cause.implied_fix in fixes
            assert 0 < cause.confidence <= 1
        assert report.describe()


# -- the probe modules' parsing ---------------------------------------------------------------

SECURITY = role_module("diag_security", "diag_security_probe")
PERFORMANCE = role_module("diag_performance", "diag_performance_probe")
FIREWALL = role_module("diag_firewall", "diag_firewall_probe")
GENERAL = role_module("diag_general", "diag_general_probe")


def _journal(*entries: tuple[str, str, str]) -> list[str]:
    return [
        json.dumps({"SYSLOG_IDENTIFIER": ident, "_PID": pid, "MESSAGE": message,
                    "__REALTIME_TIMESTAMP": str(1796167000000000 + n * 1000000)})
        for n, (ident, pid, message) in enumerate(entries)
    ]  # fmt: skip


def test_sshd_message_forms_count_failed_connections_by_source() -> None:
    lines = _journal(
        ("sshd", "10", "Invalid user admin from 203.0.113.5 port 40000"),
        ("sshd", "10", "Failed password for invalid user admin from 203.0.113.5 port 40000 ssh2"),
        ("sshd", "10", "Failed password for invalid user admin from 203.0.113.5 port 40000 ssh2"),
        ("sshd", "10", "Connection closed by invalid user admin 203.0.113.5 port 40000 [preauth]"),
        ("sshd", "11", "Failed password for root from 203.0.113.5 port 40002 ssh2"),
        ("sshd", "11", "error: maximum authentication attempts exceeded for root from "
                       "203.0.113.5 port 40002 ssh2 [preauth]"),
        ("sshd-session", "12", "Disconnected from authenticating user git 203.0.113.5 port "
                               "40004 [preauth]"),
        # The same source port again, a new connection (another sshd process).
        ("sshd", "13", "Connection reset by invalid user a b 203.0.113.5 port 40000 [preauth]"),
        ("sshd", "14", "Failed publickey for deploy from 2001:db8::7 port 5000 ssh2: ED25519 x"),
        ("sshd", "14", "Accepted publickey for deploy from 2001:db8::7 port 5000 ssh2: ED25519 x"),
        ("sshd", "15", "Accepted password for root from ::ffff:198.51.100.9 port 6000 ssh2"),
        ("sshd", "16", "Connection closed by 198.51.100.10 port 7000 [preauth]"),
        ("sshd", "17", "Received disconnect from 198.51.100.10 port 7000:11: Bye [preauth]"),
        ("cron", "18", "Failed password for root from 203.0.113.99 port 1 ssh2"),
    )  # fmt: skip
    failures, logins = SECURITY.ssh_logins(SECURITY.journal_entries(lines))
    (source,) = failures
    assert source["address"] == "203.0.113.5"
    assert source["connections"] == 4
    assert source["attempts"] == 2 + 1 + 1 + 1  # two Failed lines, one, and two at least one
    assert source["invalid_user_connections"] == 2
    assert source["users"] == ["admin", "root", "git", "a b"]
    assert source["first_seen"] < source["last_seen"]
    assert {(x["address"], x["user"], x["count"]) for x in logins} == {
        ("2001:db8::7", "deploy", 1), ("198.51.100.9", "root", 1)
    }  # fmt: skip


def test_hostile_user_names_stay_bounded_printable_text() -> None:
    hostile = "Invalid user \x1b[31m{{x}}" + "y" * 100 + " from 192.0.2.1 port 1"
    lines = _journal(("sshd", "1", hostile))
    (source,), _ = SECURITY.ssh_logins(SECURITY.journal_entries(lines))
    (user,) = source["users"]
    assert len(user) == 32
    assert "\x1b" not in user


def test_sudo_lines() -> None:
    parse = SECURITY.parse_sudo
    assert parse("   alice : PWD=/root ; USER=root ; COMMAND=/usr/bin/id -u") == (
        "alice", None, {"COMMAND": "/usr/bin/id -u", "PWD": "/root", "USER": "root"}
    )  # fmt: skip
    user, event, fields = parse("bob : user NOT in sudoers ; TTY=pts/0 ; PWD=/ ; USER=root ; "
                                "COMMAND=/bin/sh -c a ; b")  # fmt: skip
    assert (user, event, fields["COMMAND"]) == ("bob", "user NOT in sudoers", "/bin/sh -c a ; b")
    pam = "pam_unix(sudo:session): session opened for user root(uid=0) by (uid=1000)"
    assert parse(pam) is None
    entries = SECURITY.journal_entries(_journal(
        ("sudo", "1", "carol : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/ ; USER=root ; "
                      "COMMAND=/bin/ls"),
        ("sudo", "2", "carol : TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/bin/true"),
    ))  # fmt: skip
    (carol,) = SECURITY.sudo_use(entries)
    assert (carol["commands"], carol["failures"], carol["denied"]) == (1, 1, 0)
    assert carol["last_command"] == "/bin/true"
    (dave,) = SECURITY.sudo_use(SECURITY.journal_entries(_journal(
        ("sudo", "1", "dave : TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/usr/bin/mysql -pSECRET"),
    )))  # fmt: skip
    assert dave["last_command"] == "/usr/bin/mysql"


def test_listeners_and_what_is_expected_to_listen() -> None:
    ss = (
        'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=41,fd=3))\n'
        'tcp LISTEN 0 511 [::]:80 [::]:* users:(("nginx",pid=40,fd=6),("nginx",pid=38,fd=6))\n'
        "udp UNCONN 0 0 0.0.0.0%eth0:68 0.0.0.0:*\n"
        "tcp LISTEN 0 5 127.0.0.1:6379 0.0.0.0:*\n"
    )
    listeners = SECURITY.parse_listeners(ss)
    assert [(x["proto"], x["address"], x["port"], x["process"], x["pid"]) for x in listeners] == [
        ("tcp", "0.0.0.0", 22, "sshd", 41), ("tcp", "::", 80, "nginx", 38),
        ("udp", "0.0.0.0", 68, "", None), ("tcp", "127.0.0.1", 6379, "", None),
    ]  # fmt: skip
    params = {"services": [{"name": "nginx", "port": 80}], "allow": [
        {"port": "9100:9101", "proto": "any"}], "expected": ["68/udp"]}  # fmt: skip
    wanted = SECURITY.expected_ports(params, 2222)
    assert wanted[("tcp", 2222)] == "ssh"
    assert wanted[("udp", 9101)] == "veris_firewall.allow"
    assert wanted[("udp", 68)] == "expected"
    assert ("tcp", 22) not in wanted


def test_ufw_tuples_and_what_they_let_in() -> None:
    rules = [
        FIREWALL.parse_tuple("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in", False),
        FIREWALL.parse_tuple(
            "### tuple ### deny tcp 80 0.0.0.0/0 any 203.0.113.0/24 in comment=776562", False
        ),
        FIREWALL.parse_tuple("### tuple ### allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in", False),
        FIREWALL.parse_tuple(
            "### tuple ### allow_log any 5000:5010 0.0.0.0/0 any 10.0.0.0/8 in_eth0", False
        ),
    ]
    assert rules[1]["comment"] == "web"
    ranged = rules[3]
    assert (ranged["log"], ranged["interface"], ranged["port"]) == ("log", "eth0", "5000:5010")
    ufw = {"active": True, "default_incoming": "deny"}
    allows = FIREWALL.ufw_allows
    assert allows(ufw, rules, "tcp", 22, "198.51.100.1", False)
    assert not allows(ufw, rules, "tcp", 80, "203.0.113.9", False)  # the deny comes first
    assert allows(ufw, rules, "tcp", 80, "198.51.100.1", False)
    assert not allows(ufw, rules, "tcp", 5005, "10.1.1.1", False)  # bound to an interface
    assert not allows(ufw, rules, "tcp", 443, None, False)
    assert allows({"active": False, "default_incoming": "deny"}, rules, "tcp", 443, None, False)


def test_input_policies_of_iptables_and_nft() -> None:
    save = (
        "*nat\n:INPUT ACCEPT [0:0]\n*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n"
        "-A INPUT -j ufw-before-input\n-A INPUT -i lo -j ACCEPT\n-A FORWARD -j x\nCOMMIT\n"
    )
    assert FIREWALL.iptables_policies(save, "iptables") == [
        {"source": "iptables", "family": "ipv4", "table": "filter", "chain": "INPUT",
         "policy": "drop", "rules": 2}
    ]  # fmt: skip
    assert FIREWALL.iptables_policies("", "ip6tables") == []
    nft = json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "inet", "table": "fw", "name": "in", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "fw", "name": "out", "hook": "output"}},
        {"rule": {"family": "inet", "table": "fw", "chain": "in", "expr": []}},
    ]})  # fmt: skip
    assert FIREWALL.nft_policies(nft) == [
        {"source": "nft", "family": "inet", "table": "fw", "chain": "in", "policy": "drop",
         "rules": 1}
    ]  # fmt: skip
    assert FIREWALL.nft_policies("not json") == []


def test_declared_ports_follow_ufw_hardening_order() -> None:
    declared = FIREWALL.declared_ports(
        [{"name": "nginx", "port": 80, "public": True}, {"name": "redis", "port": 6379}],
        [{"port": "9100", "proto": "tcp", "source": "198.18.0.0/15"},
         {"port": 80, "proto": "tcp", "source": "any"}],
        22,
    )  # fmt: skip
    assert [d["label"] for d in declared] == [
        "22/tcp (ssh)", "80/tcp (nginx)", "9100/tcp from 198.18.0.0/15"
    ]  # fmt: skip
    assert FIREWALL.covers("198.18.0.0/15", "198.18.5.1")
    assert not FIREWALL.covers("10.0.0.0/8", "198.18.5.1")
    assert not FIREWALL.covers("10.0.0.0/8", None)


def test_connects_from_the_controller_tell_refused_from_answered() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_port = server.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]  # bound, never listening: refused
            results = FIREWALL.connect_all("127.0.0.1", [open_port, closed_port], 1.0)
    assert [(r["port"], r["reachable"]) for r in results] == [
        (open_port, True), (closed_port, False)
    ]  # fmt: skip
    assert results[1]["error"] == "Connection refused"


def test_proc_parsing() -> None:
    stat = "1234 (a (weird) name) S 1 1 1 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 777 1000 300 x"
    assert PERFORMANCE.parse_pid_stat(stat) == ("a (weird) name", 200, "777", 300)
    assert PERFORMANCE.parse_cpu_line("cpu  100 0 50 800 40 0 0 10 0 0\ncpu0 1 2") == (
        1000, 800, 40, 10
    )  # fmt: skip
    usage = PERFORMANCE.cpu_usage((1000, 800, 40, 10), (2000, 1500, 240, 20), 0.5)
    assert usage == {"interval": 0.5, "busy_percent": 10.0, "iowait_percent": 20.0,
                     "steal_percent": 1.0}  # fmt: skip
    assert PERFORMANCE.unit_of("0::/system.slice/nginx.service\n") == "nginx.service"
    assert PERFORMANCE.unit_of("9:name=systemd:/user.slice/user-0.slice/session-3.scope\n"
                               "0::/\n") == "session-3.scope"  # fmt: skip
    assert PERFORMANCE.unit_of("0::/init.scope") == "init.scope"
    assert PERFORMANCE.unit_of("0::/system.slice") is None
    assert PERFORMANCE.parse_pressure(
        "memory", "some avg10=1.50 avg60=2.00 avg300=0.10 total=9\n"
        "full avg10=0.50 avg60=1.00 avg300=0.00 total=3\n"
    ) == {"resource": "memory", "some_avg10": 1.5, "some_avg60": 2.0, "some_avg300": 0.1,
          "full_avg10": 0.5, "full_avg60": 1.0, "full_avg300": 0.0}  # fmt: skip
    assert PERFORMANCE.parse_pressure("io", "") is None


def test_oom_sources_in_the_journal_and_systemd() -> None:
    lines = [json.dumps(e) for e in (
        {"_TRANSPORT": "kernel", "__REALTIME_TIMESTAMP": "1796167000000000",
         "MESSAGE": "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
                    "mems_allowed=0,oom_memcg=/system.slice/app.service,"
                    "task_memcg=/system.slice/app.service,task=app,pid=4242,uid=0"},
        {"_TRANSPORT": "kernel", "__REALTIME_TIMESTAMP": "1796167000000100",
         "MESSAGE": "Memory cgroup out of memory: Killed process 4242 (app) total-vm:1kB"},
        {"_TRANSPORT": "kernel", "MESSAGE": "eth0: link up"},
        {"MESSAGE_ID": PERFORMANCE.SD_MESSAGE_UNIT_OOM, "UNIT": "app.service",
         "__REALTIME_TIMESTAMP": "1796167000200000",
         "MESSAGE": "app.service: A process of this unit has been killed by the OOM killer."},
    )]  # fmt: skip
    events = PERFORMANCE.parse_oom_journal(lines)
    assert [(e["source"], e["pid"], e["process"], e["unit"]) for e in events] == [
        ("systemd", None, None, "app.service"), ("kernel", 4242, "app", "app.service")
    ]  # fmt: skip
    show = (
        "Id=app.service\nResult=oom-kill\nActiveState=failed\nExecMainCode=2\n"
        "ExecMainStatus=9\nExecMainExitTimestamp=@1796100000\n\n"
        "Id=old.service\nResult=signal\nActiveState=failed\nExecMainCode=2\nExecMainStatus=9\n"
        "ExecMainExitTimestamp=@1000\n\n"
        "Id=new.service\nResult=signal\nActiveState=failed\nExecMainCode=2\nExecMainStatus=9\n"
        "ExecMainExitTimestamp=@1796160000\n\n"
        "Id=term.service\nResult=signal\nActiveState=failed\nExecMainCode=2\nExecMainStatus=15\n"
        "ExecMainExitTimestamp=@1796160000\n"
    )
    units = PERFORMANCE.oom_units(PERFORMANCE.parse_show(show), {"app.service"}, 1796150000)
    assert [(u["unit"], u["result"], u["declared"]) for u in units] == [
        ("app.service", "oom-kill", True), ("new.service", "signal", False)
    ]  # fmt: skip
    assert PERFORMANCE.parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")["oom_kill"] == 3


def test_mountinfo_keeps_real_filesystems_once() -> None:
    text = "\n".join([
        "24 1 0:21 / / rw - overlay overlay rw",
        "25 24 0:22 / /proc rw - proc proc rw",
        "26 24 0:23 / /sys/fs/cgroup ro - tmpfs tmpfs ro",
        "27 24 0:24 / /srv/my\\040data rw - ext4 /dev/vdb rw",
        "28 24 0:24 /sub /mnt/bind rw - ext4 /dev/vdb rw",
        "29 24 0:25 / /run/host/incoming rw - ext4 /dev/vda rw",
        "30 24 0:26 / /media/cd ro - iso9660 /dev/sr0 ro",
        "31 24 0:27 / /var/cache/nginx rw,nosuid - tmpfs diag-cache rw,size=16384k",
        "32 24 0:28 / /etc/hostname ro - ext4 /dev/vdc rw",
        "33 24 0:29 / /data rw - ext4 /dev/vdd rw",
        "34 24 0:30 / /data ro - ext4 /dev/vde ro",
    ])  # fmt: skip
    mounts = GENERAL.parse_mountinfo(text)
    assert mounts[3][:4] == ("/srv/my data", "ext4", "/dev/vdb", "0:24")
    real = GENERAL.real_mounts(mounts, isdir=lambda point: point != "/etc/hostname")
    assert [(point, device, read_only) for point, _, _, device, read_only in real] == [
        ("/", "0:21", False), ("/srv/my data", "0:24", False),
        ("/var/cache/nginx", "0:27", False), ("/data", "0:30", True),
    ]  # fmt: skip


def test_routes_and_resolv_conf() -> None:
    route = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "vt1\t008C12C6\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    )
    ipv6 = (
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n"
    )
    assert GENERAL.default_routes(route, ipv6) == {
        "ipv4": {"gateway": "192.168.2.1", "interface": "eth0"},
        "ipv6": {"gateway": "fe80::1", "interface": "eth0"},
    }
    assert GENERAL.default_routes(route.splitlines()[0], "") == {"ipv4": None, "ipv6": None}
    conf = "# x\nnameserver 10.0.0.2\nnameserver ::1\nsearch a.example b\n"
    assert GENERAL.resolv_conf(conf) == (["10.0.0.2", "::1"], ["a.example", "b"])
