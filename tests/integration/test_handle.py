"""The whole loop against real lab hosts: real sshd, systemd, nginx, redis, ansible-runner."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

NGINX_DOWN = EXAMPLES / "alertmanager-nginx-down.json"


@pytest.fixture
def healthy(lab: LabHandle) -> Iterator[LabHandle]:
    """lab1 and lab2 with nginx and redis running, before and after each test."""
    for host in ("lab1", "lab2"):
        lab.ssh(host, "systemctl", "start", "nginx", "redis-server")
    yield lab
    for host in ("lab1", "lab2"):
        lab.ssh(host, "systemctl", "start", "nginx", "redis-server", check=False)


def _handle(state: Path, lab: LabHandle, payload: Path | str, *extra: str) -> Any:
    if isinstance(payload, Path):
        return run_cli(state, "handle", str(payload), "-i", str(lab.inventory), "--json", *extra)
    return run_cli(state, "handle", "-", "-i", str(lab.inventory), "--json", *extra, stdin=payload)


def _phases(report: dict[str, Any]) -> list[str]:
    return [p["name"] for p in report["phases"]]


def test_stopped_nginx_is_resolved(healthy: LabHandle, state_dir: Path) -> None:
    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    assert healthy.is_active("lab1", "nginx") == "inactive"

    result = _handle(state_dir, healthy, NGINX_DOWN)

    assert result.rc == 0, result.stderr
    report = result.json
    assert report["outcome"] == "resolved"
    assert report["decision"] == "apply"
    assert report["rolled_back"] is False
    assert report["hosts"] == ["lab1"]
    assert report["alert_type"] == "HttpProbeFailed"
    assert report["remediation"] == "service_restart"
    assert report["confidence"] >= 0.7
    assert {"check", "decide", "apply", "verify"} <= set(_phases(report))
    assert "rollback" not in _phases(report)
    assert any("nginx.service is inactive" in f["message"] for f in report["findings"])
    assert healthy.is_active("lab1", "nginx") == "active"
    # The audit log recorded the alert, the decision, each run and the outcome, untampered.
    kinds = [
        json.loads(line)["kind"] for line in (state_dir / "audit.jsonl").read_text().splitlines()
    ]
    assert {"alert.received", "decision", "run.check", "run.apply", "run.finished"} <= set(kinds)
    assert run_cli(state_dir, "audit", "verify").rc == 0


def test_healthy_nginx_is_not_needed_and_not_restarted(healthy: LabHandle, state_dir: Path) -> None:
    before = healthy.prop("lab1", "nginx", "ActiveEnterTimestampMonotonic")
    pid = healthy.prop("lab1", "nginx", "MainPID")

    result = _handle(state_dir, healthy, NGINX_DOWN)

    assert result.rc == 0, result.stderr
    assert result.json["outcome"] == "not_needed"
    assert result.json["decision"] == "skip"
    assert "apply" not in _phases(result.json)
    assert healthy.prop("lab1", "nginx", "ActiveEnterTimestampMonotonic") == before
    assert healthy.prop("lab1", "nginx", "MainPID") == pid


def test_check_only_previews_without_changing(healthy: LabHandle, state_dir: Path) -> None:
    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    result = _handle(state_dir, healthy, NGINX_DOWN, "--check-only")
    assert result.rc == 0, result.stderr
    assert result.json["outcome"] == "previewed"
    assert result.json["decision"] == "apply"
    assert healthy.is_active("lab1", "nginx") == "inactive"


def test_broken_config_is_never_resolved_and_host_left_as_it_was(
    healthy: LabHandle, state_dir: Path
) -> None:
    conf = "/etc/nginx/nginx.conf"
    original = healthy.ssh("lab1", "cat", conf).stdout
    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    healthy.ssh("lab1", "sh", "-c", f"echo 'this is not nginx syntax' >> {conf}")
    try:
        result = _handle(state_dir, healthy, NGINX_DOWN)
        assert result.rc in (4, 5, 6), result.stdout
        report = result.json
        assert report["outcome"] in ("escalated", "rolled_back", "failed")
        assert any("config" in r.lower() for r in report["reasons"]), report["reasons"]
        # No worse: still stopped (not crash-looping), config untouched by us.
        assert healthy.is_active("lab1", "nginx") in ("inactive", "failed")
        assert healthy.ssh("lab1", "cat", conf).stdout == original + "this is not nginx syntax\n"
    finally:
        healthy.ssh("lab1", "sh", "-c", f"printf '%s' \"$0\" > {conf}", original)


def test_start_failure_is_rolled_back(healthy: LabHandle, state_dir: Path) -> None:
    """Config validates, but nginx cannot bind port 80: the apply fails and is undone."""
    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    healthy.ssh(
        "lab1",
        "systemd-run",
        "--unit=squatter",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
        "--bind",
        "0.0.0.0",
        "--directory",
        "/tmp",
    )
    try:
        result = _handle(state_dir, healthy, NGINX_DOWN)
        report = result.json
        assert result.rc == 5, report
        assert report["outcome"] == "rolled_back"
        assert report["rolled_back"] is True
        assert "rollback" in _phases(report)
        assert healthy.is_active("lab1", "nginx") in ("inactive", "failed")
        # A rolled-back fix counts against the next decision for the same host.
        history = (state_dir / "history.jsonl").read_text()
        assert '"rolled_back"' in history
    finally:
        healthy.ssh("lab1", "systemctl", "stop", "squatter", check=False)


def test_unreachable_host_fails_without_applying(lab: LabHandle, state_dir: Path) -> None:
    payload = json.loads(NGINX_DOWN.read_text())
    payload["alerts"][0]["labels"]["instance"] = "http://lab2/"
    lab.ssh("lab2", "systemctl", "stop", "nginx")
    # Stop sshd in the background: our own session ends with it.
    lab.ssh(
        "lab2", "sh", "-c", "(sleep 0.2; systemctl stop ssh.socket ssh.service) >/dev/null 2>&1 &"
    )
    try:
        import time

        time.sleep(1.5)
        result = _handle(state_dir, lab, json.dumps(payload))
        assert result.rc == 6, result.stdout
        report = result.json
        assert report["outcome"] == "failed"
        assert "apply" not in _phases(report)
        assert any("unreachable" in r for r in report["reasons"])
    finally:
        lab.reset("lab2")
    assert lab.is_active("lab2", "nginx") == "active"


def _hostile_payloads(marker: str) -> dict[str, str]:
    base = json.loads(NGINX_DOWN.read_text())

    def with_labels(**labels: str) -> str:
        p = copy.deepcopy(base)
        p["alerts"][0]["labels"].update(labels)
        return json.dumps(p)

    touch = f"touch {marker}"
    return {
        "jinja-lookup": with_labels(service="{{ lookup('pipe', '" + touch + "') }}"),
        "jinja-statement": with_labels(service="{% set x = lookup('pipe', '" + touch + "') %}"),
        "shell-semicolon": with_labels(service=f"nginx; {touch}"),
        "shell-subst": with_labels(instance=f"$({touch})"),
        "newline-yaml": with_labels(service="nginx\nveris_units_in_order: [ssh.service]"),
        "undeclared-unit": with_labels(service="ssh"),
        "instance-all": with_labels(instance="all"),
        "instance-star": with_labels(instance="*"),
        "unknown-host": with_labels(instance="http://lab9/"),
        "invalid-json": '{"version": "4", "alerts": [',
    }


@pytest.mark.parametrize("name", list(_hostile_payloads("x")))
def test_hostile_payload_is_rejected_and_nothing_runs(
    healthy: LabHandle, state_dir: Path, name: str
) -> None:
    marker = f"/tmp/veris-pwned-{uuid.uuid4().hex}"
    payload = _hostile_payloads(marker)[name]
    healthy.ssh("lab1", "systemctl", "stop", "nginx")

    result = _handle(state_dir, healthy, payload)

    assert result.rc == 3, (result.stdout, result.stderr)
    report = result.json
    assert report["outcome"] == "rejected"
    assert report["decision"] == "reject"
    assert not any(p["name"] in ("check", "apply") for p in report["phases"])
    audit = [json.loads(x) for x in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "alert.rejected" for r in audit)
    assert not Path(marker).exists()
    for host in ("lab1", "lab2"):
        assert healthy.ssh(host, "test", "-e", marker, check=False).returncode == 1
    # Nothing ran: nginx is still stopped and no run directory has a playbook run in it.
    assert healthy.is_active("lab1", "nginx") == "inactive"
    assert not list((state_dir / "runs").glob("*/*/*/artifacts"))


def test_group_payload_handles_each_alert(healthy: LabHandle, state_dir: Path) -> None:
    """Two firing alerts on two hosts and one resolved: each firing one is handled."""
    healthy.ssh("lab2", "systemctl", "stop", "redis-server")
    result = _handle(state_dir, healthy, EXAMPLES / "alertmanager-group-mixed.json")
    report = result.json
    assert result.rc == 0, report
    by_host = {r["host"]: r for r in report["remediations"]}
    assert set(by_host) == {"lab1", "lab2"}
    assert by_host["lab1"]["outcome"] == "not_needed"
    assert by_host["lab1"]["service"] == "redis-server"
    assert by_host["lab2"]["outcome"] == "resolved"
    assert healthy.is_active("lab2", "redis-server") == "active"


def test_diagnose_is_read_only(healthy: LabHandle, state_dir: Path) -> None:
    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    result = run_cli(state_dir, "diagnose", str(NGINX_DOWN), "-i", str(healthy.inventory), "--json")
    assert result.rc == 0, result.stderr
    messages = [f["message"] for f in result.json["findings"]]
    assert any("nginx.service is inactive" in m for m in messages)
    assert any("port 80" in m for m in messages)
    assert healthy.is_active("lab1", "nginx") == "inactive"


def test_busy_host_escalates(healthy: LabHandle, state_dir: Path) -> None:
    import fcntl
    import os

    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    (state_dir / "locks").mkdir(parents=True)
    fd = os.open(state_dir / "locks" / "lab1.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = _handle(state_dir, healthy, NGINX_DOWN)
    finally:
        os.close(fd)
    assert result.rc == 4, result.stdout
    assert "in progress" in " ".join(result.json["reasons"])
    assert healthy.is_active("lab1", "nginx") == "inactive"


def test_brake_blocks_apply(healthy: LabHandle, state_dir: Path) -> None:
    healthy.ssh("lab1", "systemctl", "stop", "nginx")
    assert run_cli(state_dir, "brake", "engage", "--reason", "change freeze").rc == 0
    result = _handle(state_dir, healthy, NGINX_DOWN)
    assert result.rc == 7, result.stdout
    assert result.json["outcome"] == "blocked"
    assert healthy.is_active("lab1", "nginx") == "inactive"
    assert run_cli(state_dir, "brake", "release").rc == 0
