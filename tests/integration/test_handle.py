"""The whole loop against real lab hosts: real sshd, systemd, nginx, redis, ansible-runner.

Payloads come from examples/alerts with their lab1/lab2 renamed to this lab's hosts, so
the tests run under any VERIS_TEST_LAB_PREFIX.
"""

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
from veris_remediate.store import StateStore

pytestmark = pytest.mark.integration

NGINX_DOWN = "alertmanager-nginx-down.json"


def _example(lab: LabHandle, name: str) -> str:
    """An example payload, its lab1 and lab2 renamed to this lab's hosts 1 and 2."""
    text = (EXAMPLES / name).read_text()
    return text.replace("lab1", lab.name(1)).replace("lab2", lab.name(2))


@pytest.fixture
def healthy(lab: LabHandle) -> Iterator[LabHandle]:
    """Hosts 1 and 2 with nginx and redis running, before and after each test."""
    for host in (lab.name(1), lab.name(2)):
        lab.ssh(host, "systemctl", "start", "nginx", "redis-server")
    yield lab
    for host in (lab.name(1), lab.name(2)):
        lab.ssh(host, "systemctl", "start", "nginx", "redis-server", check=False)


def _handle(state: Path, lab: LabHandle, payload: str, *extra: str) -> Any:
    return run_cli(state, "handle", "-", "-i", str(lab.inventory), "--json", *extra, stdin=payload)


def _phases(report: dict[str, Any]) -> list[str]:
    return [p["name"] for p in report["phases"]]


def test_stopped_nginx_is_resolved(healthy: LabHandle, state_dir: Path) -> None:
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    assert healthy.is_active(h1, "nginx") == "inactive"

    result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))

    assert result.rc == 0, result.stderr
    report = result.json
    assert report["outcome"] == "resolved"
    assert report["decision"] == "apply"
    assert report["rolled_back"] is False
    assert report["hosts"] == [h1]
    assert report["alert_type"] == "HttpProbeFailed"
    assert report["remediation"] == "service_restart"
    assert report["confidence"] >= 0.7
    assert {"check", "decide", "apply", "verify"} <= set(_phases(report))
    assert "rollback" not in _phases(report)
    assert any("nginx.service is inactive" in f["message"] for f in report["findings"])
    assert healthy.is_active(h1, "nginx") == "active"
    # The audit log recorded the alert, the decision, each run and the outcome, untampered.
    kinds = [
        json.loads(line)["kind"] for line in (state_dir / "audit.jsonl").read_text().splitlines()
    ]
    assert {"alert.received", "decision", "run.check", "run.apply", "run.finished"} <= set(kinds)
    assert run_cli(state_dir, "audit", "verify").rc == 0


def test_healthy_nginx_is_not_needed_and_not_restarted(healthy: LabHandle, state_dir: Path) -> None:
    h1 = healthy.name(1)
    before = healthy.prop(h1, "nginx", "ActiveEnterTimestampMonotonic")
    pid = healthy.prop(h1, "nginx", "MainPID")

    result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))

    assert result.rc == 0, result.stderr
    assert result.json["outcome"] == "not_needed"
    assert result.json["decision"] == "skip"
    assert "apply" not in _phases(result.json)
    assert healthy.prop(h1, "nginx", "ActiveEnterTimestampMonotonic") == before
    assert healthy.prop(h1, "nginx", "MainPID") == pid


def test_check_only_previews_without_changing(healthy: LabHandle, state_dir: Path) -> None:
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN), "--check-only")
    assert result.rc == 0, result.stderr
    assert result.json["outcome"] == "previewed"
    assert result.json["decision"] == "apply"
    assert healthy.is_active(h1, "nginx") == "inactive"


def test_broken_config_is_never_resolved_and_host_left_as_it_was(
    healthy: LabHandle, state_dir: Path
) -> None:
    h1 = healthy.name(1)
    conf = "/etc/nginx/nginx.conf"
    original = healthy.ssh(h1, "cat", conf).stdout
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    healthy.ssh(h1, "sh", "-c", f"echo 'this is not nginx syntax' >> {conf}")
    try:
        result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))
        assert result.rc in (4, 5, 6), result.stdout
        report = result.json
        assert report["outcome"] in ("escalated", "rolled_back", "failed")
        assert any("config" in r.lower() for r in report["reasons"]), report["reasons"]
        # No worse: still stopped (not crash-looping), config untouched by us.
        assert healthy.is_active(h1, "nginx") in ("inactive", "failed")
        assert healthy.ssh(h1, "cat", conf).stdout == original + "this is not nginx syntax\n"
    finally:
        healthy.ssh(h1, "sh", "-c", f"printf '%s' \"$0\" > {conf}", original)


def test_squatted_port_escalates_and_nothing_is_touched(
    healthy: LabHandle, state_dir: Path
) -> None:
    """Config validates, but another process holds port 80: a restart cannot help, so
    nothing is restarted and the squatter, which veris does not own, is left alone."""
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    healthy.ssh(
        h1, "systemd-run", "--unit=squatter", "--", "python3", "-m", "http.server", "80",
        "--bind", "0.0.0.0", "--directory", "/tmp",
    )  # fmt: skip
    healthy.ssh(
        h1, "sh", "-c",
        "for i in $(seq 50); do ss -Htln 'sport = :80' | grep -q . && break; sleep 0.1; done",
    )  # fmt: skip
    squatter = healthy.prop(h1, "squatter", "MainPID")
    stopped_at = healthy.prop(h1, "nginx", "InactiveEnterTimestampMonotonic")
    try:
        result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))
        report = result.json
        assert result.rc == 4, report
        assert report["outcome"] == "escalated"
        assert report["decision"] == "escalate"
        assert "apply" not in _phases(report)
        (cause,) = [c for c in report["causes"] if c["code"] == "port_held"]
        assert f"python3 (pid {squatter}, squatter.service)" in cause["evidence"][0]
        assert healthy.is_active(h1, "nginx") == "inactive"
        assert healthy.prop(h1, "nginx", "InactiveEnterTimestampMonotonic") == stopped_at
        assert healthy.is_active(h1, "squatter") == "active"
        assert healthy.prop(h1, "squatter", "MainPID") == squatter
    finally:
        healthy.ssh(h1, "systemctl", "stop", "squatter", check=False)


def test_failed_verify_is_rolled_back(healthy: LabHandle, state_dir: Path) -> None:
    """nginx starts, but its docroot is unreadable (HTTP 403): the start is undone."""
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    healthy.ssh(h1, "chmod", "000", "/var/www/html")
    try:
        result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))
        report = result.json
        assert result.rc == 5, report
        assert report["outcome"] == "rolled_back"
        assert report["rolled_back"] is True
        assert "rollback" in _phases(report)
        assert any("HTTP probe failing (403)" in r for r in report["reasons"])
        # Back to stopped, as it was before the fix.
        assert healthy.is_active(h1, "nginx") == "inactive"
        # A rolled-back fix counts against the next decision for the same host.
        history = StateStore(state_dir).history(host=h1, fix="service_restart")
        assert [e.outcome for e in history] == ["rolled_back"]
    finally:
        healthy.ssh(h1, "chmod", "755", "/var/www/html")


def test_unreachable_host_fails_without_applying(lab: LabHandle, state_dir: Path) -> None:
    h2 = lab.name(2)
    payload = json.loads(_example(lab, NGINX_DOWN))
    payload["alerts"][0]["labels"]["instance"] = f"http://{h2}/"
    lab.ssh(h2, "systemctl", "stop", "nginx")
    # Stop sshd in the background: our own session ends with it.
    lab.ssh(h2, "sh", "-c", "(sleep 0.2; systemctl stop ssh.socket ssh.service) >/dev/null 2>&1 &")
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
        lab.reset(h2)
    assert lab.is_active(h2, "nginx") == "active"


def _hostile_payloads(marker: str, host: str = "lab1") -> dict[str, str]:
    """Hostile variants of a payload that is otherwise about ``host``, a host of the lab."""
    base = json.loads((EXAMPLES / NGINX_DOWN).read_text().replace("lab1", host))

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
    h1, h2 = healthy.name(1), healthy.name(2)
    marker = f"/tmp/veris-pwned-{uuid.uuid4().hex}"
    payload = _hostile_payloads(marker, h1)[name]
    healthy.ssh(h1, "systemctl", "stop", "nginx")

    result = _handle(state_dir, healthy, payload)

    assert result.rc == 3, (result.stdout, result.stderr)
    report = result.json
    assert report["outcome"] == "rejected"
    assert report["decision"] == "reject"
    assert not any(p["name"] in ("check", "apply") for p in report["phases"])
    audit = [json.loads(x) for x in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "alert.rejected" for r in audit)
    assert not Path(marker).exists()
    for host in (h1, h2):
        assert healthy.ssh(host, "test", "-e", marker, check=False).returncode == 1
    # Nothing ran: nginx is still stopped and no run directory has a playbook run in it.
    assert healthy.is_active(h1, "nginx") == "inactive"
    assert not list((state_dir / "runs").glob("*/*/*/artifacts"))


def test_group_payload_handles_each_alert(healthy: LabHandle, state_dir: Path) -> None:
    """Two firing alerts on two hosts and one resolved: each firing one is handled."""
    h1, h2 = healthy.name(1), healthy.name(2)
    healthy.ssh(h2, "systemctl", "stop", "redis-server")
    result = _handle(state_dir, healthy, _example(healthy, "alertmanager-group-mixed.json"))
    report = result.json
    assert result.rc == 0, report
    by_host = {r["host"]: r for r in report["remediations"]}
    assert set(by_host) == {h1, h2}
    assert by_host[h1]["outcome"] == "not_needed"
    assert by_host[h1]["service"] == "redis-server"
    assert by_host[h2]["outcome"] == "resolved"
    assert healthy.is_active(h2, "redis-server") == "active"


def test_diagnose_is_read_only(healthy: LabHandle, state_dir: Path) -> None:
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    payload = _example(healthy, NGINX_DOWN)
    result = run_cli(
        state_dir, "diagnose", "-", "-i", str(healthy.inventory), "--json", stdin=payload
    )
    assert result.rc == 0, result.stderr
    messages = [f["message"] for f in result.json["findings"]]
    assert any("nginx.service is inactive" in m for m in messages)
    assert any("port 80" in m for m in messages)
    assert healthy.is_active(h1, "nginx") == "inactive"


def test_busy_host_is_deferred(healthy: LabHandle, state_dir: Path) -> None:
    """This test process holds the host's lease: the CLI's handle defers, runs nothing."""
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    store = StateStore(state_dir)
    assert store.acquire_lease(h1, "20261201T000000Z-abcdef", 600) is not None
    try:
        result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))
    finally:
        store.release_lease(h1)
    assert result.rc == 4, result.stdout
    assert result.json["outcome"] == "deferred"
    assert "not run in parallel" in " ".join(result.json["reasons"])
    assert healthy.is_active(h1, "nginx") == "inactive"


def test_brake_blocks_apply(healthy: LabHandle, state_dir: Path) -> None:
    h1 = healthy.name(1)
    healthy.ssh(h1, "systemctl", "stop", "nginx")
    assert run_cli(state_dir, "brake", "engage", "--reason", "change freeze").rc == 0
    result = _handle(state_dir, healthy, _example(healthy, NGINX_DOWN))
    assert result.rc == 7, result.stdout
    assert result.json["outcome"] == "blocked"
    assert healthy.is_active(h1, "nginx") == "inactive"
    assert run_cli(state_dir, "brake", "release").rc == 0
