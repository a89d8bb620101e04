"""serve's worker pool keeps its claims alive and its queue short: it renews the heartbeat of
every row it holds, takes back claims of receivers that stopped renewing theirs, and prunes
finished rows past retention. In one process, on SQLite, with recorded event streams
(tests/unit/test_serve_app.py has the harness); the same store calls on PostgreSQL are in
tests/integration/test_queue_lifecycle.py, and two real receivers in
tests/integration/test_serve_postgres.py."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from tests.serving import alertmanager_payload
from tests.unit.recorded import hold_lease
from tests.unit.test_serve_app import ALERT, _run, _serving
from veris_remediate.settings import ENV_MAP, Settings, settings_from_env
from veris_remediate.store import StateStore, now

ELSEWHERE = "receiver-b.example:4242"


def _set(store: StateStore, entry_id: int, **columns: object) -> None:
    names = ", ".join(f"{name} = ?" for name in columns)
    with store.transaction() as db:
        db.execute(f"UPDATE queue SET {names} WHERE id = ?", (*columns.values(), entry_id))


def _ago(seconds: float) -> str:
    return (now() - timedelta(seconds=seconds)).isoformat()


def test_the_settings_and_their_environment_variables() -> None:
    assert (Settings().serve_retention_hours, Settings().serve_claim_ttl_seconds) == (168, 120)
    assert ENV_MAP["VERIS_SERVE_RETENTION_HOURS"] == "serve_retention_hours"
    assert ENV_MAP["VERIS_SERVE_CLAIM_TTL_SECONDS"] == "serve_claim_ttl_seconds"
    got = settings_from_env(
        {"VERIS_SERVE_RETENTION_HOURS": "12", "VERIS_SERVE_CLAIM_TTL_SECONDS": "30"}
    )
    assert (got.serve_retention_hours, got.serve_claim_ttl_seconds) == (12, 30)


def test_the_pool_renews_the_heartbeat_of_a_row_it_holds_until_it_stops(tmp_path: Path) -> None:
    hold_lease(tmp_path, "lab1")  # the host is busy: the pool keeps the claim, deferred

    async def test() -> None:
        async with _serving(tmp_path, serve_claim_ttl_seconds=10) as serve:
            assert (await serve.post(ALERT)).status == 202
            deadline = time.monotonic() + 10
            while serve.pool.state.held != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            [entry] = await serve.entries()
            await serve.db.run(_set, serve.db.store, entry.id, heartbeat=_ago(600))
            # Renewed every TTL/4 (2.5 s), whatever the dispatcher is doing.
            [entry] = await serve.until(
                lambda es: (
                    es[0].heartbeat is not None and now() - es[0].heartbeat < timedelta(seconds=5)
                ),
                timeout=5,
            )
            assert entry.status == "running"
            assert serve.runs("check") == 0
            assert await serve.pool.stop(5)
            [entry] = await serve.entries()
            assert (entry.status, entry.heartbeat) == ("queued", None)

    _run(test)


def test_on_start_a_stale_claim_of_another_machine_is_taken_back_and_done(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    fresh_payload = alertmanager_payload("http://lab2/", fingerprint="ffeeddccbbaa9988")
    for key, fingerprint, host, payload in (
        ("HttpProbeFailed|5e3f0a7c2b1d4e6f|2026-11-29T12:00:00+00:00", "5e3f0a7c2b1d4e6f",
         "lab1", alertmanager_payload("http://lab1/")),
        ("HttpProbeFailed|ffeeddccbbaa9988|2026-11-29T12:00:00+00:00", "ffeeddccbbaa9988",
         "lab2", fresh_payload),
    ):  # fmt: skip
        assert store.enqueue(key, fingerprint, host, payload, limit=10) == "queued"
        claimed = store.claim()
        assert claimed is not None
        _set(store, claimed.id, owner=ELSEWHERE)
    stale, fresh = (e.id for e in store.queue_entries())
    _set(store, stale, heartbeat=_ago(600))  # its receiver died 10 minutes ago
    _set(store, fresh, heartbeat=_ago(1))  # this one is working on it
    store.close()

    async def test() -> None:
        async with _serving(tmp_path, serve_claim_ttl_seconds=120) as serve:
            entries = await serve.until(lambda es: es[0].status == "done")
            # Claimed twice: by the receiver that died, then by this one.
            assert (entries[0].outcome, entries[0].attempts) == ("resolved", 2)
            assert (entries[1].status, entries[1].owner) == ("running", ELSEWHERE)
            assert serve.runs("apply") == 1

    _run(test)


def test_finished_rows_past_retention_are_pruned_and_recent_ones_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for n in range(3):
        key = f"generic|fp{n}|window=1"
        assert store.enqueue(key, f"fp{n}", f"lab{n}", b"{}", limit=10) == "queued"
        claimed = store.claim()
        assert claimed is not None
        store.finish(claimed.id, "done", outcome="resolved")
    old, older, recent = (e.id for e in store.queue_entries())
    _set(store, old, finished=_ago(3 * 3600))
    _set(store, older, finished=_ago(30 * 3600))
    _set(store, recent, finished=_ago(1800))
    store.close()

    async def test() -> None:
        async with _serving(tmp_path, serve_retention_hours=2) as serve:
            entries = await serve.until(lambda es: len(es) == 1, timeout=10)
            assert entries[0].id == recent

    _run(test)
