"""Likely causes of a service's ill health, named from reports recorded on real lab hosts.

Each recorded scenario (tests/fixtures/scenarios/service.yml) put lab1 in exactly one
state; the health report the check run emitted must name that cause, with its evidence,
and the decision must refuse a restart exactly when the cause rules it out. Rules that
the lab cannot stage (a unit's ``Result=oom-kill`` needs a memory controller systemd
manages; the nspawn hosts have none) are tested on a recorded report with that one fact
changed, and say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import role_module
from tests.unit.recorded import summary
from veris_remediate.causes import ruling_out, synthesize
from veris_remediate.decision import decide
from veris_remediate.fixes import load_fixes
from veris_remediate.role_reports import Cause
from veris_remediate.role_reports.service import (
    ContainerState,
    DependencyState,
    Filesystem,
    ServiceHealth,
)
from veris_remediate.workspace import History

FIX = load_fixes().fixes["service_restart"]
PROBE = role_module("service_health", "service_health_probe")


def _health(scenario: str, stem: str = "check", kind: str = "health") -> ServiceHealth:
    report = summary(scenario, stem).host("lab1").reports[kind]
    assert isinstance(report, ServiceHealth)
    return report


def _codes(report: ServiceHealth) -> list[str]:
    return [c.code for c in report.causes()]


def _only(report: ServiceHealth) -> Cause:
    causes = report.causes()
    assert len(causes) == 1, causes
    return causes[0]


# -- each cause, from the state it was recorded in ------------------------------------------


def test_a_squatted_port_names_the_process_pid_and_unit() -> None:
    report = _health("port_held")
    cause = _only(report)
    assert cause.code == "port_held"
    assert cause.confidence == 0.95  # nginx is not running: it cannot hold the port itself
    assert cause.implied_fix is None
    assert cause.rules_out == ("service_restart",)
    (squatter,) = report.foreign_listeners()
    assert squatter.process == "python3"
    assert squatter.pid > 0
    assert squatter.unit == "squatter.service"
    assert cause.evidence[0] == (
        f"port 80 is held by python3 (pid {squatter.pid}, squatter.service), not by nginx.service"
    )
    assert report.port_open is True  # something answers on 80, just not nginx
    assert report.healthy is False


def test_the_services_own_listeners_are_not_squatters() -> None:
    report = _health("not_needed")
    assert report.listeners
    assert all(item.ours and item.unit == "nginx.service" for item in report.listeners)
    assert report.unit_ports == (80,)
    assert report.causes() == []


def test_a_crash_loop_systemd_gave_up_on_is_start_limit_hit() -> None:
    report = _health("start_limit")
    cause = _only(report)
    assert cause.code == "start_limit_hit"
    # systemd kept Result=signal (the first failure); the counter says the limit was hit.
    assert report.result == "signal"
    assert cause.confidence == 0.85
    assert "NRestarts=5, StartLimitBurst=5 within 10s (Restart=always)" in cause.evidence
    assert "last run killed by signal 9" in cause.evidence
    assert cause.implied_fix is None
    assert cause.rules_out == ("service_restart",)
    # With systemd's own verdict it is surer.
    hit = report.model_copy(update={"result": "start-limit-hit"})
    assert _only(hit).confidence == 0.95


def test_a_full_filesystem_holding_the_cache_dir_implies_clearing_it() -> None:
    report = _health("disk_full")
    cause = _only(report)
    assert cause.code == "disk_full"
    assert cause.implied_fix == "cache_clear"
    assert cause.rules_out == ("service_restart",)
    assert cause.evidence[0].startswith("/var/cache/nginx: 100% used, 0 B free of 64.0 MiB")
    (full,) = report.full_filesystems()
    assert full.cache_dirs == ("/var/cache/nginx",)
    # The same filesystem without a declared cache dir on it: no safe fix, escalate.
    bare = report.model_copy(
        update={
            "filesystems": tuple(
                f.model_copy(update={"cache_dirs": (), "paths": ("/var/log",)}) if f.full else f
                for f in report.filesystems
            )
        }
    )
    cause = _only(bare)
    assert cause.implied_fix is None
    assert cause.rules_out == ("service_restart",)


def test_an_invalid_config_implies_config_repair_and_stays_the_blocker() -> None:
    report = _health("bad_config")
    cause = _only(report)
    assert cause.code == "config_invalid"
    assert cause.implied_fix == "config_repair"
    assert cause.rules_out == ("service_restart",)
    assert any("[emerg]" in line for line in cause.evidence)
    blocker = report.blocker()
    assert blocker is not None
    assert blocker.code == "config_invalid"  # how the default rules hand off to config_repair


def test_a_required_unit_down_implies_the_restart_dependencies_first() -> None:
    report = _health("dependency_order")
    cause = _only(report)
    assert cause.code == "dependency_down"
    assert cause.implied_fix == "service_restart"
    assert cause.rules_out == ()
    assert cause.confidence == 0.9
    assert cause.evidence[0] == (
        "redis-server.service is inactive (dead; its own Requires=/BindsTo=)"
    )
    # While the service runs anyway, a down dependency is a weaker explanation.
    running = report.model_copy(update={"active_state": "active", "sub_state": "running"})
    assert _only(running).confidence == 0.6


def test_a_finished_oneshot_dependency_is_not_down() -> None:
    report = _health("dependency_order")
    done = report.dependencies[0].model_copy(update={"type": "oneshot", "result": "success"})
    assert done.down() is False
    assert done.model_copy(update={"result": "exit-code"}).down() is True
    assert done.model_copy(update={"load_state": "not-found"}).down() is True


def test_a_cleanly_stopped_service_is_stopped() -> None:
    cause = _only(_health("resolved"))
    assert cause.code == "stopped"
    assert cause.implied_fix == "service_restart"
    assert cause.confidence == 0.7


def test_a_service_that_runs_but_fails_its_http_probe() -> None:
    # The verify report after the rolled-back start: nginx runs, docroot unreadable, 403.
    report = _health("rolled_back", "apply", "verify")
    cause = _only(report)
    assert cause.code == "http_failing"
    assert cause.confidence == 0.4
    assert cause.evidence == ("http://127.0.0.1/ answered 403",)
    assert report.rounds == 11  # 1 + veris_health_retries, all inside one probe task


def test_a_failed_unit_nothing_explains_crashed() -> None:
    report = _health("start_limit").model_copy(update={"n_restarts": 1})
    cause = _only(report)
    assert cause.code == "crashed"
    assert cause.confidence == 0.5
    assert "Result=signal" in cause.evidence


def test_an_oom_killed_unit_may_be_restarted_and_the_cause_says_for_how_long() -> None:
    # Not stageable in the lab (no memory controller for systemd in the nspawn hosts):
    # the recorded stopped nginx, with systemd's Result=oom-kill.
    report = _health("resolved").model_copy(
        update={"active_state": "failed", "sub_state": "failed", "result": "oom-kill"}
    )
    cause = _only(report)
    assert cause.code == "oom_kill"
    assert cause.implied_fix == "service_restart"
    assert cause.rules_out == ()
    assert "until memory runs out again" in cause.summary
    assert "Result=oom-kill" in cause.evidence


# -- containers ------------------------------------------------------------------------------

WEB = ContainerState(
    name="web", exists=True, status="exited", running=False, exit_code=137, oom_killed=True,
    restart_count=0, restart_policy="no", ports=(),
)  # fmt: skip


def _container(**state: Any) -> ServiceHealth:
    """The recorded stopped nginx as a container service: docker inspect fields as a lab
    Docker host reported them (exit 137 with OOMKilled after a memory limit; 143 after
    `docker stop`)."""
    return _health("resolved").model_copy(
        update={
            "unit": "web.service", "active_state": "inactive", "load_state": "not-found",
            "result": "", "port": 8080, "container": WEB.model_copy(update=state),
        }
    )  # fmt: skip


def test_a_container_killed_for_memory_is_oom_kill() -> None:
    report = _container()
    cause = _only(report)
    assert cause.code == "oom_kill"
    assert cause.evidence == ("OOMKilled=true", "container web is exited (exit code 137)")
    assert cause.summary.startswith("container web was killed for lack of memory")


def test_a_docker_stopped_container_is_stopped_and_a_crashed_one_crashed() -> None:
    assert _codes(_container(oom_killed=False, exit_code=143)) == ["stopped"]
    assert _codes(_container(oom_killed=False, exit_code=0)) == ["stopped"]
    assert _codes(_container(oom_killed=False, exit_code=1)) == ["crashed"]
    running = _container(oom_killed=False, status="running", running=True, exit_code=0)
    assert running.running is True
    assert running.state_text() == "container web is running"


def test_a_running_container_failing_its_own_health_check() -> None:
    report = _container(
        status="running", running=True, exit_code=0, oom_killed=False, health="unhealthy"
    ).model_copy(update={"http_ok": True, "http_status": 200, "port_open": True})
    cause = _only(report)
    assert cause.code == "container_unhealthy"
    assert cause.evidence == ("container web is running, health unhealthy",)


def test_a_containers_engine_down_is_a_dependency_down() -> None:
    engine = DependencyState(
        unit="docker.service", source="engine", container=None, active_state="inactive",
        sub_state="dead", result="success", load_state="loaded", type="notify",
    )  # fmt: skip
    report = _container(status="unknown", exists=False, oom_killed=False, exit_code=None)
    report = report.model_copy(update={"dependencies": (engine,)})
    cause = _only(report)
    assert cause.code == "dependency_down"
    assert cause.evidence == (
        "docker.service is inactive (dead; the Docker engine)",
        "container web: state unknown (its engine is not running)",
    )


# -- synthesis and the decision -------------------------------------------------------------


def test_several_causes_are_all_named_surest_first() -> None:
    report = _health("start_limit").model_copy(
        update={"listeners": _health("port_held").listeners, "port_open": True}
    )
    causes = synthesize([report])
    assert [c.code for c in causes] == ["port_held", "start_limit_hit"]
    ruling = ruling_out(causes, "service_restart")
    assert ruling is not None
    assert ruling.code == "port_held"
    # The fallbacks (stopped, crashed, http_failing) only name what nothing else explains.
    assert "crashed" not in [c.code for c in causes]


def test_the_same_cause_from_two_reports_is_merged() -> None:
    report = _health("port_held")
    again = report.model_copy(update={"recent_errors": ("Failed to start nginx.service",)})
    (merged,) = synthesize([report, again])
    assert merged.code == "port_held"
    assert "Failed to start nginx.service" in merged.evidence


@pytest.mark.parametrize(
    ("scenario", "action", "blocker"),
    [
        ("port_held", "escalate", "port_held"),
        ("start_limit", "escalate", "start_limit_hit"),
        ("disk_full", "escalate", "disk_full"),
        ("bad_config", "escalate", "config_invalid"),
        ("dependency_order", "apply", None),
        ("resolved", "apply", None),
    ],
)
def test_the_decision_follows_the_cause(scenario: str, action: str, blocker: str | None) -> None:
    d = decide(summary(scenario, "check"), "lab1", FIX, History(), 0.7)
    assert d.action == action
    assert (d.blocker.code if d.blocker else None) == blocker


def test_an_oom_kill_does_not_stop_the_restart() -> None:
    s = summary("resolved", "check")
    hs = s.host("lab1")
    oom = hs.reports["health"].model_copy(update={"result": "oom-kill", "active_state": "failed"})
    s2 = s.model_copy(
        update={"hosts": {"lab1": hs.model_copy(update={"reports": {**hs.reports, "health": oom}})}}
    )
    assert decide(s2, "lab1", FIX, History(), 0.7).action == "apply"


def test_findings_name_what_the_causes_rest_on() -> None:
    messages = [f.message for f in _health("port_held").findings("lab1")]
    assert any(m.startswith("port 80 is held by python3 (pid ") for m in messages)
    messages = [f.message for f in _health("start_limit").findings("lab1")]
    assert "start limit hit: 5 restarts, StartLimitBurst 5, Result=signal" in messages
    messages = [f.message for f in _health("dependency_order").findings("lab1")]
    assert "dependency redis-server.service is inactive (dead; its own Requires=/BindsTo=)" in (
        messages
    )
    messages = [f.message for f in _health("disk_full").findings("lab1")]
    assert any(m.startswith("filesystem full: /var/cache/nginx: 100% used") for m in messages)


# -- the probe module's readers -------------------------------------------------------------


def test_systemctl_show_blocks_and_spans() -> None:
    text = "Id=a.service\nActiveState=active\n\nId=b.service\nActiveState=failed\nX=a=b\n"
    assert PROBE.parse_show(text) == [
        {"Id": "a.service", "ActiveState": "active"},
        {"Id": "b.service", "ActiveState": "failed", "X": "a=b"},
    ]
    assert PROBE.parse_span("10s") == 10.0
    assert PROBE.parse_span("1min 30s") == 90.0
    assert PROBE.parse_span("500ms") == 0.5
    assert PROBE.parse_span("infinity") is None
    assert PROBE.parse_span("5000000") == 5.0
    assert PROBE.parse_span("2 fortnights") is None


def test_ss_listeners_and_cgroups() -> None:
    text = (
        'LISTEN 0 5 0.0.0.0:80 0.0.0.0:* users:(("python3",pid=74,fd=3))\n'
        'LISTEN 0 511 [::]:80 [::]:* users:(("nginx",pid=41,fd=6),("nginx",pid=42,fd=6))\n'
        "LISTEN 0 4096 127.0.0.53%lo:53 0.0.0.0:*\n"
    )
    assert PROBE.parse_listeners(text) == [
        {"address": "0.0.0.0", "port": 80, "pids": [74]},
        {"address": "[::]", "port": 80, "pids": [41, 42]},
        {"address": "127.0.0.53%lo", "port": 53, "pids": []},
    ]
    assert PROBE.cgroup_unit("/system.slice/squatter.service") == "squatter.service"
    assert PROBE.cgroup_unit("/system.slice/docker-0123abcd.scope") == "docker-0123abcd.scope"
    assert PROBE.cgroup_unit("/user.slice") == ""
    assert PROBE.message_text([104, 105]) == "hi"
    assert PROBE.message_text(None) == ""


def test_filesystems_are_reported_once_with_the_cache_dirs_on_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    found = PROBE.filesystems([str(tmp_path)], [str(cache), str(tmp_path / "not" / "yet")], 95, 0)
    assert len(found) == 1
    (fs,) = found
    assert fs["paths"] == [str(tmp_path)]
    assert fs["cache_dirs"] == [str(cache), str(tmp_path / "not" / "yet")]
    assert fs["full"] is False
    st = os.statvfs(tmp_path)
    assert fs["size_bytes"] == st.f_blocks * st.f_frsize
    # Below the free floor counts as full, whatever the percentage.
    (floor,) = PROBE.filesystems([str(tmp_path)], [], 95, fs["free_bytes"] + 1)
    assert floor["full"] is True
    assert Filesystem.model_validate(floor).full is True


def test_required_units_start_after_what_their_after_names() -> None:
    state = role_module("service_restart", "service_restart_state")
    ordered = state.after_first(
        ["b.service", "a.service", "c.service"],
        [{"After": "a.service sysinit.target"}, {"After": ""}, {"After": "b.service"}],
    )
    assert [unit for unit, _ in ordered] == ["a.service", "b.service", "c.service"]
    # A cycle keeps the listed order rather than dropping a unit.
    cycle = state.after_first(["a", "b"], [{"After": "b"}, {"After": "a"}])
    assert [unit for unit, _ in cycle] == ["a", "b"]
