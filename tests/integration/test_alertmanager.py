"""The real alerting stack end to end, into ``veris-remediate serve``: a lab host's nginx
stops, Prometheus's blackbox probe fails, Alertmanager posts its webhook (with our bearer
token) to serve, serve queues and fixes it, and the ``resolved`` webhook that follows
closes the incident.

Needs Debian's prometheus, prometheus-alertmanager and prometheus-blackbox-exporter.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.alertstack import ALERT_NAME, AlertStack, AlertStackError
from tests.helpers import run_cli
from tests.integration.conftest import LabHandle
from tests.serving import ServeProcess

pytestmark = pytest.mark.integration


def _wait_for(
    what: str,
    check: Callable[[], list[dict[str, Any]]],
    timeout: float,
    stack: AlertStack,
    serve: ServeProcess,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s\n{serve.log()}\n{stack.log_tails()}")
        time.sleep(0.5)


def test_real_alertmanager_posts_to_serve_which_fixes_and_closes_the_incident(
    lab: LabHandle, state_dir: Path, tmp_path: Path
) -> None:
    host, target = lab.name(1), f"http://{lab.address(1)}/"
    token = secrets.token_urlsafe(24)
    lab.ssh(host, "systemctl", "stop", "nginx")
    try:
        with (
            ServeProcess(state_dir, lab.inventory, token=token) as serve,
            AlertStack(tmp_path / "stack", [target], token, serve.alerts_url, ports=None) as stack,
        ):
            # serve only takes our token.
            assert serve.post(b"{}", token="not-" + token)[0] == 401

            entry = serve.wait_for_entry(lambda e: e.status == "done", timeout=120, what="done")
            payload = json.loads(entry.payload)
            assert payload["version"] == "4"  # exactly what Alertmanager sent, one alert
            [alert] = payload["alerts"]
            assert alert["labels"]["alertname"] == ALERT_NAME
            assert alert["labels"]["instance"] == target  # the address, mapped by ansible_host
            assert entry.host == host
            assert entry.outcome == "resolved", serve.log()
            assert lab.is_active(host, "nginx") == "active"

            # nginx answers again: Alertmanager says so within a group interval, and the
            # resolved notification closes the incident (nothing of it is left queued).
            closed = _wait_for(
                "no serve.resolved record for the incident",
                lambda: [
                    r for r in serve.audited("serve.resolved")
                    if r["data"]["fingerprint"] == entry.fingerprint
                ],
                60, stack, serve,
            )  # fmt: skip
            assert closed[0]["data"]["host"] == host
            assert [e.status for e in serve.entries()] == ["done"]

            metrics = serve.metrics()
            assert 'veris_runs_total{outcome="resolved"} 1.0' in metrics
            assert (
                'veris_remediations_total{fix="service_restart",outcome="resolved"} 1.0' in metrics
            )
            received = [
                line for line in metrics.splitlines()
                if line.startswith('veris_alerts_received_total{source="alertmanager"}')
            ]  # fmt: skip
            assert float(received[0].rsplit(" ", 1)[1]) >= 2  # firing, then resolved
            total, failed = stack.deliveries()
            assert total >= 2
            assert failed == 0
        # One fix for one incident, whatever Alertmanager re-sent.
        applies = [r for r in serve.audited("run.apply") if host in r["data"]["hosts"]]
        assert len(applies) == 1
        report = run_cli(state_dir, "report", entry.run_id or "-", "--format", "json")
        assert report.rc == 0, report.stderr
        data = json.loads(report.stdout)
        assert data["outcome"] == "resolved"
        assert data["hosts"] == [host]
        assert "apply" in [p["name"] for p in data["phases"]]
        assert run_cli(state_dir, "audit", "verify").rc == 0
    except AlertStackError as exc:
        pytest.fail(str(exc))
    finally:
        lab.ssh(host, "systemctl", "start", "nginx", check=False)
