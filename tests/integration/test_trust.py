"""The guards against real lab hosts and real processes: brake, leases, SIGKILL, breaker.

Each test drives the real CLI as separate processes, the way two operators (or an
operator and Alertmanager) would meet on one host at 3 a.m.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, run_cli
from tests.integration.conftest import LabHandle
from veris_remediate.store import StateStore

pytestmark = pytest.mark.integration

SLOW_START = "/etc/systemd/system/nginx.service.d/veris-test-slow.conf"


def _payload(lab: LabHandle, incident: int = 0) -> str:
    data = json.loads((EXAMPLES / "alertmanager-nginx-down.json").read_text())
    text = json.dumps(data).replace("lab1", lab.name(1)).replace("lab2", lab.name(2))
    data = json.loads(text)
    data["alerts"][0]["startsAt"] = f"2026-12-01T03:{incident:02d}:00Z"
    return json.dumps(data)


def _cli(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "veris_remediate", "--state-dir", str(state), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _handle_async(state: Path, lab: LabHandle, payload: str, *extra: str) -> subprocess.Popen[str]:
    proc = _cli(state, "handle", "-", "-i", str(lab.inventory), "--json", *extra)
    assert proc.stdin is not None
    proc.stdin.write(payload)
    proc.stdin.close()
    proc.stdin = None  # so communicate() does not flush a closed pipe
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    try:
        return proc.returncode, json.loads(out)
    except ValueError:
        pytest.fail(f"no JSON report (rc {proc.returncode}): {out[-2000:]} {err[-2000:]}")


def _wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def slow_nginx(lab: LabHandle) -> Iterator[str]:
    """lab host 1 with nginx stopped and taking ~25 s to start (a slow fix to interrupt)."""
    host = lab.name(1)
    lab.ssh(host, "mkdir", "-p", str(Path(SLOW_START).parent))
    lab.ssh(host, "sh", "-c", f"printf '[Service]\\nExecStartPre=/bin/sleep 25\\n' > {SLOW_START}")
    lab.ssh(host, "systemctl", "daemon-reload")
    lab.ssh(host, "systemctl", "stop", "nginx")
    yield host
    lab.ssh(host, "rm", "-f", SLOW_START, check=False)
    lab.ssh(host, "systemctl", "daemon-reload", check=False)
    lab.ssh(host, "systemctl", "reset-failed", "nginx", check=False)
    lab.ssh(host, "systemctl", "start", "nginx", check=False)


@pytest.fixture
def nginx_stopped(lab: LabHandle) -> Iterator[str]:
    host = lab.name(1)
    lab.ssh(host, "systemctl", "stop", "nginx")
    yield host
    lab.ssh(host, "systemctl", "start", "nginx", check=False)


def _apply_started(state: Path) -> bool:
    return any(e.phase == "apply" for e in StateStore(state).journal())


def test_the_brake_cancels_a_slow_fix_from_another_process(
    lab: LabHandle, slow_nginx: str, state_dir: Path
) -> None:
    handle = _handle_async(state_dir, lab, _payload(lab))
    _wait_for(lambda: _apply_started(state_dir), "the apply run to start")
    time.sleep(2)  # well inside the 25 s start
    engaged = time.monotonic()
    assert run_cli(state_dir, "brake", "engage", "--reason", "operator takes over").rc == 0
    rc, report = _finish(handle)
    assert rc == 7, report
    assert report["outcome"] == "blocked"
    assert report["rolled_back"] is False
    phases = {p["name"]: p for p in report["phases"]}
    assert {"check", "apply", "recheck"} <= set(phases)
    assert "rollback" not in phases
    # Cancelled within 5 s of the brake, not after the 25 s start finished.
    assert time.monotonic() - engaged < 25
    assert phases["apply"]["seconds"] < 2 + 5 + 10  # from apply start: the 2 s wait, ≤5 s
    reasons = " ".join(report["reasons"])
    assert "emergency brake" in reasons
    assert "engaged by" in reasons
    assert "operator takes over" in reasons
    assert "left as:" in reasons
    assert f"veris-remediate rollback {report['run_id']}" in reasons
    status = run_cli(state_dir, "brake", "status", "--json").json
    assert status["engaged"] is True
    assert status["source"] == "operator"
    # The human restores the snapshot, under the brake.
    lab.ssh(slow_nginx, "rm", "-f", SLOW_START)
    lab.ssh(slow_nginx, "systemctl", "daemon-reload")
    back = run_cli(
        state_dir, "rollback", report["run_id"], "-i", str(lab.inventory), "--json"
    )
    assert back.rc == 5, back.stdout + back.stderr
    assert back.json["outcome"] == "rolled_back"
    # Not running, as before the fix (the cancelled start may leave the unit "failed").
    assert lab.is_active(slow_nginx, "nginx") in ("inactive", "failed")
    assert run_cli(state_dir, "audit", "verify").rc == 0


def test_read_only_work_runs_to_the_end_under_the_brake(
    lab: LabHandle, nginx_stopped: str, state_dir: Path
) -> None:
    assert run_cli(state_dir, "brake", "engage", "--reason", "change freeze").rc == 0
    inventory = str(lab.inventory)
    diagnose = run_cli(state_dir, "diagnose", "-", "-i", inventory, "--json", stdin=_payload(lab))
    assert diagnose.rc == 0, diagnose.stdout + diagnose.stderr
    assert diagnose.json["outcome"] == "previewed"
    assert all(p["status"] == "ok" for p in diagnose.json["phases"])
    assert any("problem found" in r for r in diagnose.json["reasons"])
    check_only = run_cli(
        state_dir, "handle", "-", "-i", inventory, "--check-only", "--json", stdin=_payload(lab)
    )
    assert check_only.rc == 0, check_only.stdout
    assert check_only.json["outcome"] == "previewed"
    handle = run_cli(state_dir, "handle", "-", "-i", inventory, "--json", stdin=_payload(lab))
    assert handle.rc == 7, handle.stdout
    assert handle.json["outcome"] == "blocked"
    assert handle.json["preview"], "the preview is in the blocked report"
    assert "apply" not in {p["name"] for p in handle.json["phases"]}
    assert lab.is_active(nginx_stopped, "nginx") == "inactive"


def test_two_processes_racing_for_one_host_never_run_in_parallel(
    lab: LabHandle, nginx_stopped: str, state_dir: Path
) -> None:
    first = _handle_async(state_dir, lab, _payload(lab, 1))
    second = _handle_async(state_dir, lab, _payload(lab, 2))
    results = sorted([_finish(first), _finish(second)], key=lambda r: r[1]["outcome"])
    (rc_deferred, deferred), (rc_resolved, resolved) = results
    assert resolved["outcome"] == "resolved", resolved
    assert rc_resolved == 0
    assert deferred["outcome"] == "deferred", deferred
    assert rc_deferred == 4
    assert "not run in parallel" in deferred["reasons"][0]
    assert deferred["phases"] == [] or "check" not in {p["name"] for p in deferred["phases"]}
    assert lab.is_active(nginx_stopped, "nginx") == "active"
    assert StateStore(state_dir).lease(nginx_stopped) is None  # released at the end


def test_sigkill_mid_apply_then_runs_recover(
    lab: LabHandle, slow_nginx: str, state_dir: Path
) -> None:
    handle = _handle_async(state_dir, lab, _payload(lab))
    # Killed mid-change: after the fix reported its snapshot, while nginx is starting.
    _wait_for(
        lambda: any((state_dir / "runs").glob("*/*/live-snapshot.json")), "the apply's snapshot"
    )
    time.sleep(2)
    os.kill(handle.pid, signal.SIGKILL)
    handle.communicate(timeout=30)
    (orphan,) = StateStore(state_dir).journal()
    assert orphan.host == slow_nginx
    # A second alert for the host now is not blocked by the dead process's lease.
    recovered = run_cli(state_dir, "runs", "recover", "-i", str(lab.inventory), "--json")
    assert recovered.rc in (0, 5), recovered.stdout + recovered.stderr
    (report,) = recovered.json["recovered"]
    assert report["run_id"] == orphan.run_id
    assert report["reasons"][0].startswith("recovered: the process running this fix")
    state = lab.is_active(slow_nginx, "nginx")
    if report["outcome"] == "rolled_back":
        assert state in ("inactive", "failed")
    else:
        assert report["outcome"] == "resolved", report
        assert state == "active"
    assert StateStore(state_dir).journal() == []
    assert run_cli(state_dir, "runs", "recover", "-i", str(lab.inventory)).stdout.strip() == (
        "nothing to recover"
    )
    stored = run_cli(state_dir, "report", orphan.run_id, "--format", "json")
    assert stored.json["outcome"] == report["outcome"]


def test_a_service_that_dies_after_every_restart_opens_the_breaker(
    lab: LabHandle, nginx_stopped: str, state_dir: Path
) -> None:
    env = {**os.environ, "VERIS_BREAKER_COOLDOWN_SECONDS": "0", "VERIS_BREAKER_OPEN_AFTER": "2"}
    inventory = str(lab.inventory)

    def handle(incident: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "veris_remediate", "--state-dir", str(state_dir),
             "handle", "-", "-i", inventory, "--json"],
            input=_payload(lab, incident), capture_output=True, text=True, env=env,
            timeout=300, check=False,
        )  # fmt: skip

    for incident in (1, 2):
        fixed = handle(incident)
        assert fixed.returncode == 0, fixed.stdout
        assert lab.is_active(nginx_stopped, "nginx") == "active"
        lab.ssh(nginx_stopped, "systemctl", "kill", "--signal=KILL", "nginx")  # dies again
    stormed = handle(3)
    assert stormed.returncode == 4, stormed.stdout
    report = json.loads(stormed.stdout)
    assert report["outcome"] == "escalated"
    assert any("breaker open" in r for r in report["reasons"])
    assert "apply" not in {p["name"] for p in report["phases"]}
    status = run_cli(state_dir, "breaker", "status", "--json").json["breakers"]
    assert [(b["host"], b["fix"], b["state"]) for b in status] == [
        (nginx_stopped, "service_restart", "open")
    ]


def test_a_fix_run_logs_in_with_a_certificate_made_for_it(
    lab: LabHandle, nginx_stopped: str, state_dir: Path
) -> None:
    env = {**os.environ, "VERIS_SSH_CA_KEY": str(lab.lab.ssh_ca_key())}
    proc = subprocess.run(
        [sys.executable, "-m", "veris_remediate", "--state-dir", str(state_dir),
         "handle", "-", "-i", str(lab.inventory), "--json"],
        input=_payload(lab, 7), capture_output=True, text=True, env=env, timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    # sshd names the certificate it accepted: the one signed for this run, and no other key.
    journal = lab.ssh(
        nginx_stopped, "journalctl", "-u", "ssh.service", "--no-pager", "-o", "cat"
    ).stdout
    accepted = [line for line in journal.splitlines() if f"ID {run_id} " in line]
    assert accepted, "sshd logged no login with this run's certificate"
    assert all("Accepted publickey" in line and "CERT" in line for line in accepted)
    # The certificate's key is gone with the remediation.
    assert not any((state_dir / "runs" / run_id / "ssh").rglob("*cert*"))
