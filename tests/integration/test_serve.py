"""``veris-remediate serve`` as a real process: auth, limits, delivery semantics, crashes.

The end-to-end path with the real Prometheus stack is in test_alertmanager.py. Here the
payloads are posted directly, the way Alertmanager (or an HA pair of them) posts them.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, run_cli
from tests.integration.conftest import LabHandle
from tests.serving import ServeProcess, alertmanager_payload, write_token

pytestmark = pytest.mark.integration

TOKEN = "serve-test-token-0123456789abcdef"
FIXTURE_INVENTORY = FIXTURES / "inventory" / "lab.yml"


def _braked(state_dir: Path) -> Path:
    """A state dir whose brake is engaged: nothing queued could ever run against a host."""
    result = run_cli(state_dir, "brake", "engage", "--reason", "serve refusal tests")
    assert result.rc == 0, result.stderr
    return state_dir


def _applies(serve: ServeProcess, host: str) -> int:
    return sum(host in r["data"].get("hosts", []) for r in serve.audited("run.apply"))


# -- refusals: no lab host needed ---------------------------------------------------------


def test_refused_requests_get_401_413_400_are_audited_and_queue_nothing(
    state_dir: Path,
) -> None:
    body = (FIXTURES / "payloads" / "alertmanager-nginx-down.json").read_bytes()
    with ServeProcess(_braked(state_dir), FIXTURE_INVENTORY, token=TOKEN) as serve:
        assert serve.get("/healthz")[0] == 200
        assert serve.get("/readyz")[0] == 200

        status, answer = serve.post(body, token=None)
        assert (status, answer) == (401, {"error": "a valid bearer token is required"})
        assert serve.post(body, token="not-the-" + TOKEN)[0] == 401
        assert serve.post(body, headers={"Authorization": f"Basic {TOKEN}"}, token=None)[0] == 401
        assert serve.post(body, token=TOKEN[:-1])[0] == 401

        huge = b'{"version": "4", "alerts": [' + b" " * (1024 * 1024) + b"]}"
        status, answer = serve.post(huge)
        assert status == 413, answer
        assert "larger than the limit" in answer["error"]

        status, answer = serve.post(b'{"version": "4", "alerts": "not a list"}')
        assert status == 400, answer
        assert serve.post(b"\xff\xfe not json")[0] == 400

        # /metrics takes the token too; with it, the refusals are counted by reason.
        assert serve.get("/metrics")[0] == 401
        metrics = serve.metrics()
        assert 'veris_alerts_rejected_total{reason="auth"} 5.0' in metrics
        assert 'veris_alerts_rejected_total{reason="size"} 1.0' in metrics
        assert 'veris_alerts_rejected_total{reason="payload"} 2.0' in metrics

        assert serve.entries() == []  # nothing was queued
    refused = serve.audited("serve.refused")
    reasons = [r["data"]["reason"] for r in refused]
    assert reasons == ["auth"] * 4 + ["size", "payload", "payload", "auth"]
    assert refused[0]["data"]["detail"] == "no Authorization header"
    assert refused[1]["data"]["detail"] == "credentials do not match"
    assert TOKEN not in (state_dir / "audit.jsonl").read_text()
    assert run_cli(state_dir, "audit", "verify").rc == 0


def test_the_right_token_queues_once_and_answers_in_milliseconds(state_dir: Path) -> None:
    body = (FIXTURES / "payloads" / "alertmanager-nginx-down.json").read_bytes()
    with ServeProcess(_braked(state_dir), FIXTURE_INVENTORY, token=TOKEN) as serve:
        started = time.monotonic()
        status, answer = serve.post(body)
        took = time.monotonic() - started
        assert status == 202, answer
        assert len(answer["queued"]) == 1
        assert took < 1.0
        status, again = serve.post(body)
        assert status == 202
        assert again["queued"] == []
        assert again["duplicates"] == answer["queued"]
        [entry] = serve.entries()
        assert entry.status == "queued"  # the brake holds the queue
        assert entry.host == "lab1"
        assert json.loads(entry.payload)["alerts"][0]["fingerprint"] == "5e3f0a7c2b1d4e6f"

        # The resolved notification of that alert cancels the queued work.
        resolved = json.loads(body)
        resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
        status, answer = serve.post(json.dumps(resolved).encode())
        assert status == 202, answer
        assert answer["cancelled"] == [entry.id]
        [entry] = serve.entries()
        assert entry.status == "cancelled"
    [record] = serve.audited("serve.resolved")
    assert record["data"]["cancelled"] == [entry.id]


def test_serve_refuses_to_start_without_a_token(state_dir: Path, tmp_path: Path) -> None:
    base = ["serve", "-i", str(FIXTURE_INVENTORY)]
    result = run_cli(state_dir, *base)
    assert result.rc == 2
    assert "needs a bearer token" in result.stderr
    result = run_cli(state_dir, *base, "--insecure-no-auth", "--listen", "0.0.0.0:19596")
    assert result.rc == 2
    assert "only listens on loopback" in result.stderr
    loose = write_token(tmp_path / "token", TOKEN)
    loose.chmod(0o644)
    result = run_cli(state_dir, *base, "--token-file", str(loose))
    assert result.rc == 2
    assert "chmod 600" in result.stderr
    short = write_token(tmp_path / "short", "abc")
    result = run_cli(state_dir, *base, "--token-file", str(short))
    assert result.rc == 2
    assert "16 to 4096" in result.stderr


# -- delivery semantics on a real lab host --------------------------------------------------


def test_one_incident_posted_20_times_at_once_to_two_receivers_is_remediated_once(
    lab: LabHandle, state_dir: Path
) -> None:
    """An Alertmanager HA pair posting to two receivers that share one state store."""
    host = lab.name(1)
    body = alertmanager_payload(f"http://{lab.address(1)}/", fingerprint="a1b2c3d4e5f60718")
    lab.ssh(host, "systemctl", "stop", "nginx")
    try:
        with (
            ServeProcess(state_dir, lab.inventory, token=TOKEN) as one,
            ServeProcess(state_dir, lab.inventory, token=TOKEN) as two,
        ):
            gate = threading.Barrier(20)

            def post(n: int) -> tuple[int, dict[str, Any]]:
                gate.wait()
                return (one if n % 2 else two).post(body)

            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(post, range(20)))
            assert [status for status, _ in answers] == [202] * 20
            assert sum(len(a["queued"]) for _, a in answers) == 1
            assert sum(len(a["duplicates"]) for _, a in answers) == 19

            entry = one.wait_for_entry(lambda e: e.status == "done", what="done")
            assert entry.outcome == "resolved", one.log() + two.log()
            time.sleep(3)  # a second run, if there were one, would have started by now
            assert [e.status for e in one.entries()] == ["done"]
            assert lab.is_active(host, "nginx") == "active"
            assert _applies(one, host) == 1
            assert len(one.audited("run.finished")) == 1
            counted = [
                float(line.split()[1])
                for text in (one.metrics(), two.metrics())
                for line in text.splitlines()
                if line.startswith("veris_alerts_deduplicated_total ")
            ]
            assert sum(counted) == 19  # each receiver counts the re-sends it saw
        report = run_cli(state_dir, "report", entry.run_id or "-", "--format", "json")
        assert report.rc == 0, report.stderr
        assert json.loads(report.stdout)["outcome"] == "resolved"
    finally:
        lab.ssh(host, "systemctl", "start", "nginx", check=False)


@pytest.mark.parametrize("when", ["accepted", "running"])
def test_sigkill_after_a_2xx_answer_is_remediated_after_restart(
    lab: LabHandle, state_dir: Path, when: str
) -> None:
    host = lab.name(2)
    fingerprint = "0f1e2d3c4b5a6978" if when == "accepted" else "0f1e2d3c4b5a6979"
    body = alertmanager_payload(f"http://{lab.address(2)}/", fingerprint=fingerprint)
    lab.ssh(host, "systemctl", "stop", "nginx")
    try:
        serve = ServeProcess(state_dir, lab.inventory, token=TOKEN).start()
        try:
            status, answer = serve.post(body)
            assert status == 202, answer
            if when == "running":  # killed with the check run in flight
                serve.wait_for_entry(lambda e: e.status == "running", timeout=30, what="running")
                time.sleep(1)
            serve.kill()  # SIGKILL: no chance to finish or re-queue anything
        finally:
            serve.stop()
        [entry] = serve.entries()
        assert entry.status in ("queued", "running")  # accepted, not yet remediated
        assert lab.is_active(host, "nginx") != "active"

        with ServeProcess(state_dir, lab.inventory, token=TOKEN, port=serve.port) as again:
            done = again.wait_for_entry(lambda e: e.status == "done", what="done")
            assert done.id == entry.id
            assert done.attempts == (1 if entry.status == "queued" else 2)
            # Killed mid-fix, recovery may have finished the fix first: then nothing is left.
            assert done.outcome in ("resolved", "not_needed"), again.log()
            assert lab.is_active(host, "nginx") == "active"
    finally:
        lab.ssh(host, "systemctl", "start", "nginx", check=False)


def test_sigterm_lets_the_run_in_flight_finish(lab: LabHandle, state_dir: Path) -> None:
    host = lab.name(1)
    body = alertmanager_payload(f"http://{lab.address(1)}/", fingerprint="1122334455667788")
    lab.ssh(host, "systemctl", "stop", "nginx")
    try:
        serve = ServeProcess(state_dir, lab.inventory, token=TOKEN).start()
        try:
            assert serve.post(body)[0] == 202
            serve.wait_for_entry(lambda e: e.status == "running", timeout=30, what="running")
            serve.signal(signal.SIGTERM)
            # Intake is closed at once; the run in flight ends, then the process exits 0.
            time.sleep(0.5)
            try:
                refused = serve.post(body)[0]
            except OSError:
                refused = 503  # already gone: no longer listening
            assert refused == 503
            assert serve.wait(150) == 0, serve.log()
        finally:
            serve.stop()
        [entry] = serve.entries()
        assert (entry.status, entry.outcome) == ("done", "resolved"), serve.log()
        assert lab.is_active(host, "nginx") == "active"
        assert serve.audited("serve.stopped")
    finally:
        lab.ssh(host, "systemctl", "start", "nginx", check=False)
