"""Two ``veris-remediate serve`` processes sharing one PostgreSQL state (``VERIS_STATE_URL``),
as two receivers on two machines would: each has its own state dir (runs, audit log), the
queue, leases, breaker and dedupe live in PostgreSQL (tests/pgserver.py, a real throwaway
cluster on 127.0.0.1), and the fixes run against a real lab host.

A PostgreSQL server that cannot start fails these tests; they never skip.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli
from tests.integration.conftest import LabHandle
from tests.pgserver import PgServer
from tests.serving import ServeProcess, alertmanager_payload
from veris_remediate.store import QueueEntry, StateStore, now

pytestmark = pytest.mark.integration

TOKEN = "serve-pg-test-token-0123456789abcdef"
ELSEWHERE = "receiver-c.example:4242"  # a receiver on another machine


@pytest.fixture
def state_url(pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database; every process this test starts (serve, the CLI) uses it."""
    url = pg.create_database(f"serve_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("VERIS_STATE_URL", url)
    return url


def _receiver(tmp_path: Path, name: str, lab: LabHandle, url: str, **env: str) -> ServeProcess:
    """A receiver with a state dir of its own (its machine), on the shared state URL."""
    state = tmp_path / name / "state"
    state.parent.mkdir(parents=True)
    return ServeProcess(state, lab.inventory, token=TOKEN, env={"VERIS_STATE_URL": url, **env})


def _applies(receivers: tuple[ServeProcess, ...], host: str) -> int:
    return sum(
        host in r["data"].get("hosts", []) for s in receivers for r in s.audited("run.apply")
    )


def _logs(*receivers: ServeProcess) -> str:
    return "\n".join(f"--- {s.state_dir.parent.name}\n{s.log()}" for s in receivers)


def _row(serve: ServeProcess) -> QueueEntry:
    [entry] = serve.entries()
    return entry


def test_one_incident_posted_20_times_to_two_receivers_on_postgresql_is_remediated_once(
    lab: LabHandle, tmp_path: Path, state_url: str
) -> None:
    host = lab.name(1)
    body = alertmanager_payload(f"http://{lab.address(1)}/", fingerprint="b1c2d3e4f5a60718")
    lab.ssh(host, "systemctl", "stop", "nginx")
    one = _receiver(tmp_path, "one", lab, state_url)
    two = _receiver(tmp_path, "two", lab, state_url)
    try:
        with one, two:
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
            assert entry.outcome == "resolved", _logs(one, two)
            time.sleep(3)  # a second run, if there were one, would have started by now
            assert [(e.status, e.attempts) for e in two.entries()] == [("done", 1)]
            assert lab.is_active(host, "nginx") == "active"
            assert _applies((one, two), host) == 1, _logs(one, two)
            finished = [r for s in (one, two) for r in s.audited("serve.finished")]
            assert len(finished) == 1
            assert sum(len(s.audited("run.finished")) for s in (one, two)) == 1
            counted = [
                float(line.split()[1])
                for text in (one.metrics(), two.metrics())
                for line in text.splitlines()
                if line.startswith("veris_alerts_deduplicated_total ")
            ]
            assert sum(counted) == 19  # each receiver counts the re-sends it saw
        # The report lives with the receiver that ran it (its state dir, its machine).
        ran = one if one.audited("serve.finished") else two
        report = run_cli(ran.state_dir, "report", entry.run_id or "-", "--format", "json")
        assert report.rc == 0, report.stderr
        assert json.loads(report.stdout)["outcome"] == "resolved"
        for serve in (one, two):
            assert serve.audited("serve.started")[0]["data"]["state"].startswith("postgresql://")
            assert run_cli(serve.state_dir, "audit", "verify").rc == 0
    finally:
        lab.ssh(host, "systemctl", "start", "nginx", check=False)


def test_a_claim_of_a_receiver_that_died_on_another_machine_is_taken_over_after_its_ttl(
    lab: LabHandle, tmp_path: Path, state_url: str
) -> None:
    """Receiver C (on another machine) claimed the incident and died: its heartbeat stops.
    Receiver B leaves the claim alone while it is fresh, and takes it over once it is
    older than the claim TTL."""
    host = lab.name(1)
    body = alertmanager_payload(f"http://{lab.address(1)}/", fingerprint="c1d2e3f4a5b60718")
    key = "HttpProbeFailed|c1d2e3f4a5b60718|2026-11-29T12:00:00+00:00"
    store = StateStore(tmp_path, url=state_url)
    try:
        assert store.enqueue(key, "c1d2e3f4a5b60718", host, body, limit=10) == "queued"
        claimed = store.claim()
        assert claimed is not None
        with store.transaction() as db:
            db.execute(
                "UPDATE queue SET owner = ?, heartbeat = ? WHERE id = ?",
                (ELSEWHERE, now().isoformat(), claimed.id),
            )
    finally:
        store.close()
    lab.ssh(host, "systemctl", "stop", "nginx")
    ttl = 10
    try:
        with _receiver(
            tmp_path, "b", lab, state_url, VERIS_SERVE_CLAIM_TTL_SECONDS=str(ttl)
        ) as serve:
            time.sleep(3)  # started, recovered once: C's claim is still fresh
            entry = _row(serve)
            assert (entry.status, entry.owner, entry.attempts) == ("running", ELSEWHERE, 1)
            assert lab.is_active(host, "nginx") != "active"
            # B looks again every 30 s; by then C's heartbeat is older than the TTL.
            done = serve.wait_for_entry(lambda e: e.status == "done", timeout=150, what="done")
            assert (done.outcome, done.attempts) == ("resolved", 2), serve.log()
            assert done.started is not None
            assert done.started - claimed.started > timedelta(seconds=ttl)
            assert lab.is_active(host, "nginx") == "active"
            assert _applies((serve,), host) == 1
            assert "whose receiver stopped holding them" in serve.log()
    finally:
        lab.ssh(host, "systemctl", "start", "nginx", check=False)


def test_a_receiver_renewing_its_claim_is_never_overtaken_by_the_other(
    lab: LabHandle, tmp_path: Path, state_url: str
) -> None:
    """The host is held (a lease of another live process), so whichever receiver claims the
    incident keeps it waiting, longer than the claim TTL and than the other receiver's
    recovery period: its heartbeat keeps the claim its own."""
    host = lab.name(2)
    body = alertmanager_payload(f"http://{lab.address(2)}/", fingerprint="d1e2f3a4b5c60718")
    store = StateStore(tmp_path, url=state_url)
    with store.transaction() as db:
        db.execute(
            "INSERT INTO leases (host, owner, run_id, acquired, expires) VALUES (?, ?, ?, ?, ?)",
            (host, f"{socket.gethostname()}:1", "20260101T000000Z-aaaaaa",
             now().isoformat(), (now() + timedelta(hours=1)).isoformat()),
        )  # fmt: skip
    ttl = {"VERIS_SERVE_CLAIM_TTL_SECONDS": "10"}
    one = _receiver(tmp_path, "one", lab, state_url, **ttl)
    two = _receiver(tmp_path, "two", lab, state_url, **ttl)
    try:
        with one, two:
            assert one.post(body)[0] == 202
            claimed = one.wait_for_entry(lambda e: e.status == "running", timeout=30)
            time.sleep(40)  # 4 TTLs, and more than a recovery period of both receivers
            entry = _row(one)
            assert (entry.status, entry.owner, entry.attempts) == (
                "running", claimed.owner, 1,
            ), _logs(one, two)  # fmt: skip
            assert entry.heartbeat is not None
            assert now() - entry.heartbeat < timedelta(seconds=10)
            assert "stopped holding" not in one.log() + two.log()
            assert _applies((one, two), host) == 0
        # SIGTERM: the waiting claim goes back to the queue for the next receiver.
        entry = _row(one)
        assert (entry.status, entry.owner, entry.heartbeat) == ("queued", None, None)
    finally:
        with store.transaction() as db:
            db.execute("DELETE FROM leases WHERE host = ?", (host,))
        store.close()
