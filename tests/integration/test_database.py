"""The database workflow and PostgreSQL connection relief for real: the CLI against the feature
lab's host (PostgreSQL 15 and Redis under systemd), each test putting the host in exactly one
state (connections near the limit, refused logins, servers stopped, a full data directory) and
checking what the diagnosis names and what is left on the host afterwards.

Sessions run on the host as transient units (``veris-db-*``) that connect over TCP to
127.0.0.1 with a password, named ``veris-test-<label>`` (application_name); the tests find them
by that name and compare them by pid and backend_start.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, CliResult, run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

UNIT = "postgresql@15-main.service"
RULES = FIXTURES / "rules" / "db-relief.yml"
TOO_MANY = FIXTURES / "payloads" / "db-too-many-connections.json"
DOWN = FIXTURES / "payloads" / "db-down.json"
AUTH = FIXTURES / "payloads" / "db-auth-failures.json"
SENTINEL = FIXTURES / "payloads" / "db-sentinel-s6-backup-restore.json"
POLICY = FIXTURES / "inventory" / "db-relief.yml"  # veris_postgres {idle_age: 20}
RESTART_POLICY = FIXTURES / "inventory" / "db-restart.yml"  # ... and restart_last_resort
IDLE_AGE = 20  # the young session must stay younger across diagnose and the check run, under load
SESSION_SCRIPT = """\
import sys, time, psycopg2
mode, user, label = sys.argv[1:4]
c = psycopg2.connect(host="127.0.0.1", user=user, password=user + "-secret",
                     dbname="postgres", application_name="veris-test-" + label)
c.autocommit = True
if mode == "active":
    c.cursor().execute("select pg_sleep(86400)")
else:
    c.cursor().execute("select 1")
    time.sleep(86400)
"""
OLD = 14  # with one active, one superuser's and one young session: 17, every ordinary slot


def _sh(lab: LabHandle, host: str, script: str, *, check: bool = True) -> str:
    return lab.ssh(host, "sh", "-c", script, check=check).stdout


def _psql(lab: LabHandle, host: str, sql: str) -> str:
    command = shlex.join(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c", sql])
    return _sh(lab, host, f"cd / && {command}").strip()


@pytest.fixture
def host(feature_lab: LabHandle) -> Iterator[str]:
    """The feature lab's host, with the session script on it; rebooted clean afterwards
    (other tests share the host: nothing a test changes may outlive it)."""
    name = feature_lab.name(1)
    quoted = shlex.quote(SESSION_SCRIPT)
    _sh(feature_lab, name, f"printf %s {quoted} > /root/veris_db_session.py")
    try:
        yield name
    finally:
        feature_lab.reset(name)


def _roles(lab: LabHandle, host: str, *, limit: bool) -> None:
    """Roles app and dba (a superuser); with ``limit``, max_connections 20 (17 ordinary slots)."""
    _psql(lab, host, "CREATE ROLE app LOGIN PASSWORD 'app-secret'")
    _psql(lab, host, "CREATE ROLE dba SUPERUSER LOGIN PASSWORD 'dba-secret'")
    if limit:
        _psql(lab, host, "ALTER SYSTEM SET max_connections = 20")
        _sh(lab, host, f"systemctl restart {UNIT}")


def _open(lab: LabHandle, host: str, label: str, *, mode: str = "idle", user: str = "app") -> None:
    _sh(
        lab,
        host,
        f"systemd-run --quiet --collect --unit=veris-db-{label} "
        f"python3 /root/veris_db_session.py {mode} {user} {label}",
    )


def _sessions(lab: LabHandle, host: str) -> dict[str, dict[str, Any]]:
    """The test sessions by label: pid, backend_start, state."""
    rows = _psql(
        lab,
        host,
        "SELECT coalesce(json_agg(json_build_object('label', substr(application_name, 12), "
        "'pid', pid, 'backend_start', backend_start::text, 'state', state)), '[]') "
        "FROM pg_stat_activity WHERE application_name LIKE 'veris-test-%'",
    )
    return {row["label"]: row for row in json.loads(rows)}


def _wait_for(lab: LabHandle, host: str, count: int) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        found = _sessions(lab, host)
        if len(found) == count:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"expected {count} test sessions on {host}, found {sorted(found)}")
        time.sleep(0.2)


def _crowd(
    lab: LabHandle, host: str, *, age: float, mode: str = "idle"
) -> dict[str, dict[str, Any]]:
    """14 idle sessions of app, one active, one idle superuser session, and ``age`` seconds
    later one young idle session: 17 client connections, every slot ordinary roles have.
    With ``mode="active"`` the 14 and the young one are busy instead of idle."""
    for index in range(1, OLD + 1):
        _open(lab, host, f"old-{index}", mode=mode)
    _open(lab, host, "active", mode="active")
    _open(lab, host, "su", user="dba")
    _wait_for(lab, host, OLD + 2)
    time.sleep(age)
    _open(lab, host, "young", mode=mode)
    return _wait_for(lab, host, OLD + 3)


def _inventory(tmp_path: Path, lab: LabHandle, host: str, policy: Path | None) -> list[str]:
    """The lab's inventory, then the host's test policy (host vars of a later source win);
    without one, the lab's own veris_postgres (idle_age 300)."""
    if policy is None:
        return ["-i", str(lab.inventory)]
    override = tmp_path / policy.name
    override.write_text(policy.read_text().replace("lab1", host))
    return ["-i", str(lab.inventory), "-i", str(override)]


def _run(
    command: str,
    tmp_path: Path,
    lab: LabHandle,
    host: str,
    payload: Path,
    policy: Path | None = POLICY,
) -> CliResult:
    text = payload.read_text().replace("lab1", host)
    inventory = _inventory(tmp_path, lab, host, policy)
    args = [command, "-", *inventory, "--rules", str(RULES), "--json"]
    return run_cli(tmp_path / "state", *args, stdin=text)


def _cause(report: dict[str, Any], code: str) -> dict[str, Any]:
    causes = {c["code"]: c for c in report["causes"]}
    assert code in causes, f"no cause {code} in {report['causes']}; reasons {report['reasons']}"
    cause: dict[str, Any] = causes[code]
    return cause


def _kept(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], label: str) -> bool:
    """The session is the very one it was: same pid, same backend_start."""
    return label in after and (after[label]["pid"], after[label]["backend_start"]) == (
        before[label]["pid"],
        before[label]["backend_start"],
    )


def test_near_the_limit_diagnose_names_it_and_relief_terminates_only_old_idle_sessions(
    tmp_path: Path, feature_lab: LabHandle, host: str
) -> None:
    _roles(feature_lab, host, limit=True)
    before = _crowd(feature_lab, host, age=IDLE_AGE + 2)

    diagnosis = _run("diagnose", tmp_path, feature_lab, host, TOO_MANY)
    assert diagnosis.rc == 0, diagnosis.stderr
    report = diagnosis.json
    assert report["alert_type"] == "PostgresqlTooManyConnections"
    cause = _cause(report, "db_connections_exhausted")
    assert cause["implied_fix"] == "db_connection_relief"
    assert cause["rules_out"] == ["service_restart"]
    assert cause["confidence"] == pytest.approx(0.95)  # every ordinary slot is taken
    evidence = " | ".join(cause["evidence"])
    assert "17 of max_connections 20 client connections" in evidence
    assert "sessions by user: app 16, dba 1" in evidence
    assert f"{OLD} idle session(s) relief may terminate (idle >= {IDLE_AGE} s)" in evidence
    assert _sessions(feature_lab, host) == before  # diagnosis changed nothing

    started = time.monotonic()
    handled = _run("handle", tmp_path, feature_lab, host, TOO_MANY)
    loop = time.monotonic() - started
    assert handled.rc == 0, handled.stdout + handled.stderr
    report = handled.json
    assert (report["outcome"], report["decision"], report["remediation"]) == (
        "resolved", "apply", "db_connection_relief",
    )  # fmt: skip
    assert report["confidence"] == pytest.approx(0.85)  # medium risk, irreversible
    assert any("irreversible: no rollback" in r for r in report["reasons"])
    # The preview listed exactly the old idle sessions, by pid and backend_start.
    preview = report["preview"][0]["diff"]
    doomed = [line for line in preview.splitlines() if line.startswith("-pid ")]
    assert len(doomed) == OLD
    for index in range(1, OLD + 1):
        s = before[f"old-{index}"]
        assert any(f"-pid {s['pid']} " in d and s["backend_start"] in d for d in doomed)

    after = _sessions(feature_lab, host)
    assert sorted(after) == ["active", "su", "young"]
    for label in ("active", "su", "young"):
        assert _kept(before, after, label), f"{label}: {before[label]} -> {after.get(label)}"
    assert after["active"]["state"] == "active"
    sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    connections = int(_psql(feature_lab, host, sql))
    assert connections == 4  # the three left and this query's own
    phases = {p["name"]: p["seconds"] for p in report["phases"]}
    print(f"\nrelief loop: {loop:.1f} s (check {phases['check']:.1f} s, "
          f"apply {phases['apply']:.1f} s)")  # fmt: skip


def test_nothing_idle_long_enough_escalates(
    tmp_path: Path, feature_lab: LabHandle, host: str
) -> None:
    _roles(feature_lab, host, limit=True)
    before = _crowd(feature_lab, host, age=0)
    # The lab's own policy: idle_age 300, which none of them has reached.
    refused = _run("handle", tmp_path, feature_lab, host, TOO_MANY, None)
    assert refused.rc == 4, refused.stdout + refused.stderr
    report = refused.json
    assert report["outcome"] == "escalated"
    assert any("no idle session of postgresql has been idle 300 s" in r for r in report["reasons"])
    after = _sessions(feature_lab, host)
    assert all(_kept(before, after, label) for label in before)  # nothing was terminated


def test_the_declared_restart_is_the_last_resort(
    tmp_path: Path, feature_lab: LabHandle, host: str
) -> None:
    """Busy sessions only: terminating idle ones cannot help, whatever their age."""
    _roles(feature_lab, host, limit=True)
    before = _crowd(feature_lab, host, age=0, mode="active")
    refused = _run("handle", tmp_path, feature_lab, host, TOO_MANY)
    assert refused.rc == 4, refused.stdout + refused.stderr
    after = _sessions(feature_lab, host)
    assert all(_kept(before, after, label) for label in before)  # no restart undeclared

    restart = _run("handle", tmp_path, feature_lab, host, TOO_MANY, RESTART_POLICY)
    assert restart.rc == 0, restart.stdout + restart.stderr
    report = restart.json
    assert report["outcome"] == "resolved"
    assert any("restart" in c["task"].lower() for c in report["preview"]), report["preview"]
    assert any("last resort" in r for r in report["reasons"])
    # The restart cut every session; the server is back and accepts connections.
    assert feature_lab.is_active(host, UNIT) == "active"
    assert _psql(feature_lab, host, "SELECT 1") == "1"
    assert _wait_for(feature_lab, host, 0) == {}


def test_refused_logins_are_named_with_their_evidence(
    tmp_path: Path, feature_lab: LabHandle, host: str
) -> None:
    _roles(feature_lab, host, limit=False)
    for _ in range(8):  # sslmode=disable: one attempt, one log line each
        _sh(
            feature_lab,
            host,
            "psql 'host=127.0.0.1 user=app password=wrong dbname=postgres sslmode=disable' "
            "-c 'select 1' 2>/dev/null; true",
        )
    result = _run("diagnose", tmp_path, feature_lab, host, AUTH)
    assert result.rc == 0, result.stderr
    report = result.json
    cause = _cause(report, "db_auth_failures")
    assert cause["implied_fix"] is None
    assert cause["confidence"] == pytest.approx(0.7)  # 8: at least 5, less than 10
    assert cause["evidence"][0].startswith(
        "postgresql: 8 refused login(s) in 15 min (users: app x8"
    )
    assert any('password authentication failed for user "app"' in e for e in cause["evidence"])
    assert "db_connections_exhausted" not in {c["code"] for c in report["causes"]}


def test_stopped_servers_are_named_unreachable_and_relief_cannot_ask(
    tmp_path: Path, feature_lab: LabHandle, host: str
) -> None:
    _sh(feature_lab, host, f"systemctl stop {UNIT} redis-server.service")
    result = _run("diagnose", tmp_path, feature_lab, host, DOWN)
    assert result.rc == 0, result.stderr
    cause = _cause(result.json, "db_unreachable")
    assert cause["implied_fix"] == "service_restart"
    assert cause["confidence"] == pytest.approx(0.95)  # the units are not active
    evidence = " | ".join(cause["evidence"])
    assert f"postgresql: {UNIT} inactive (dead)" in evidence
    assert "redis-server: redis-server.service inactive" in evidence

    # A Sentinel check that needs the database is routed to the same workflow.
    sentinel = _run("diagnose", tmp_path, feature_lab, host, SENTINEL)
    assert sentinel.rc == 0, sentinel.stderr
    assert sentinel.json["alert_type"] == "S6-backup-restore"
    assert _cause(sentinel.json, "db_unreachable")["implied_fix"] == "service_restart"

    relief = _run("handle", tmp_path, feature_lab, host, TOO_MANY)
    assert relief.rc == 4, relief.stdout
    assert relief.json["outcome"] == "escalated"
    assert any("postgresql cannot be asked" in r for r in relief.json["reasons"])
    assert feature_lab.is_active(host, UNIT) == "inactive"  # nothing was started or changed


def test_a_full_data_directory_is_named_disk_full(
    tmp_path: Path, feature_lab: LabHandle, host: str
) -> None:
    data = "/var/lib/postgresql/15/main"
    _sh(
        feature_lab,
        host,
        f"set -e; D={data}; systemctl stop {UNIT}; mv $D $D.orig; mkdir -m 0700 $D; "
        "mount -t tmpfs -o size=96M,mode=0700,uid=postgres,gid=postgres veris-pgdata $D; "
        f"cp -a $D.orig/. $D/; systemctl start {UNIT}; "
        "avail=$(df -B1 --output=avail $D | tail -1); "
        "head -c $((avail - 2097152)) /dev/zero > $D/veris-fill",
    )
    result = _run("diagnose", tmp_path, feature_lab, host, DOWN)
    assert result.rc == 0, result.stderr
    cause = _cause(result.json, "disk_full")
    assert cause["rules_out"] == ["service_restart"]
    assert cause["implied_fix"] is None
    first = cause["evidence"][0]
    assert first.startswith(f"postgresql data: {data} on {data}: ")
    used = re.search(r": ([0-9.]+)% used, ([0-9.]+) MiB available", first)
    assert used is not None, first
    assert float(used[1]) >= 95
    assert float(used[2]) < 3
    assert "db_unreachable" not in {c["code"] for c in result.json["causes"]}
