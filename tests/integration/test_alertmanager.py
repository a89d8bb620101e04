"""The real alerting stack end to end: a lab host's nginx stops, Prometheus's blackbox
probe fails, Alertmanager posts its webhook (with our Bearer token), and that exact body
goes to ``veris-remediate handle``; then the same for the ``resolved`` webhook.

Needs Debian's prometheus, prometheus-alertmanager and prometheus-blackbox-exporter.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.alertstack import ALERT_NAME, AlertStack, AlertStackError
from tests.helpers import run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

TARGET = "http://198.18.1.2/"  # lab1


def _wait(stack: AlertStack, status: str, timeout: float) -> bytes:
    try:
        return stack.wait_for_alert(status, timeout=timeout)
    except AlertStackError as exc:
        pytest.fail(f"{exc}\n{stack.log_tails()}")


def _handle(state: Path, lab: LabHandle, body: bytes) -> Any:
    return run_cli(
        state, "handle", "-", "-i", str(lab.inventory), "--json", stdin=body.decode("utf-8")
    )


def _phases(report: dict[str, Any]) -> list[str]:
    return [p["name"] for p in report["phases"]]


def _refused_status(stack: AlertStack, token: str) -> int:
    request = urllib.request.Request(
        stack.webhook_url,
        data=b"{}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_real_alertmanager_webhooks_are_handled(
    lab: LabHandle, state_dir: Path, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    lab.ssh("lab1", "systemctl", "stop", "nginx")
    try:
        with AlertStack(tmp_path / "stack", [TARGET], token) as stack:
            # The receiver only takes our token, so a body it kept came with it.
            assert _refused_status(stack, "not-" + token) == 401
            assert stack.rejected == 1

            firing = _wait(stack, "firing", timeout=45)
            payload = json.loads(firing)
            assert payload["version"] == "4"
            assert payload["status"] == "firing"
            labels = payload["alerts"][0]["labels"]
            assert labels["alertname"] == ALERT_NAME
            assert labels["instance"] == TARGET
            assert labels["service"] == "nginx"

            result = _handle(state_dir, lab, firing)
            assert result.rc == 0, (result.stdout, result.stderr)
            report = result.json
            assert report["outcome"] == "resolved", report
            assert report["hosts"] == ["lab1"]  # the address, mapped through ansible_host
            assert "apply" in _phases(report)
            assert lab.is_active("lab1", "nginx") == "active"

            # nginx answers again: Alertmanager says so within a group interval.
            cleared = _wait(stack, "resolved", timeout=30)
            assert json.loads(cleared)["alerts"][0]["labels"]["instance"] == TARGET
            assert stack.rejected == 1

        result = _handle(state_dir, lab, cleared)
        assert result.rc == 0, (result.stdout, result.stderr)
        report = result.json
        assert report["outcome"] == "not_needed", report
        assert not {"check", "apply", "verify", "rollback"} & set(_phases(report))
        runs = [
            json.loads(line)["kind"]
            for line in (state_dir / "audit.jsonl").read_text().splitlines()
            if json.loads(line)["kind"].startswith("run.")
        ]
        assert runs.count("run.apply") == 1  # the firing alert's, none for the resolved one
        assert lab.is_active("lab1", "nginx") == "active"
    finally:
        lab.ssh("lab1", "systemctl", "start", "nginx", check=False)
