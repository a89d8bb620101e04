"""The queue's life after a claim, on both databases: heartbeats, claims of receivers that
died elsewhere, retention of finished rows, and the migration that added them.

SQLite in the state dir and a real PostgreSQL (tests/pgserver.py, a throwaway cluster on
127.0.0.1); every test runs on both. A PostgreSQL server that cannot start fails these
tests; they never skip.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg

from tests.integration.conftest import Estate
from veris_remediate.statedb import MIGRATIONS, postgres_ddl
from veris_remediate.store import SCHEMA_VERSION, StateStore, now, process_owner

ELSEWHERE = "receiver-b.example:4242"  # a process of another machine: alive as far as we know


def _set(store: StateStore, entry_id: int, **columns: object) -> None:
    """Rewrite columns of one row as another receiver (or time) would have left them."""
    names = ", ".join(f"{name} = ?" for name in columns)
    with store.transaction() as db:
        db.execute(f"UPDATE queue SET {names} WHERE id = ?", (*columns.values(), entry_id))


def _ago(seconds: float) -> str:
    return (now() - timedelta(seconds=seconds)).isoformat()


def _queue(store: StateStore, *incidents: str) -> list[int]:
    for n, incident in enumerate(incidents):
        assert store.enqueue(incident, f"fp-{incident}", f"h{n}", b"{}", limit=100) == "queued"
    return [e.id for e in store.queue_entries() if e.incident in incidents]


# -- heartbeat ------------------------------------------------------------------------------


def test_a_claim_starts_its_heartbeat_and_only_its_owner_renews_it(estate: Estate) -> None:
    store = estate.open()
    mine, theirs, waiting = _queue(store, "a", "b", "c")
    claimed = store.claim()
    assert claimed is not None
    assert claimed.id == mine
    assert claimed.heartbeat == claimed.started
    other = store.claim()
    assert other is not None
    assert other.id == theirs
    _set(store, theirs, owner=ELSEWHERE, heartbeat=_ago(60))
    _set(store, mine, heartbeat=_ago(60))

    assert estate.open().heartbeat_claims() == 1  # another connection, the same process
    renewed = store.queue_entry(mine)
    assert renewed is not None
    assert renewed.heartbeat is not None
    assert now() - renewed.heartbeat < timedelta(seconds=10)
    untouched = store.queue_entry(theirs)
    assert untouched is not None
    assert untouched.heartbeat is not None
    assert now() - untouched.heartbeat > timedelta(seconds=50)
    queued = store.queue_entry(waiting)
    assert queued is not None
    assert (queued.status, queued.heartbeat) == ("queued", None)

    store.requeue(mine, "host busy")  # back in the queue: nobody's claim, no heartbeat
    back = store.queue_entry(mine)
    assert back is not None
    assert (back.status, back.owner, back.heartbeat) == ("queued", None, None)


def test_recover_queue_requeues_stale_claims_of_other_machines_only(estate: Estate) -> None:
    store = estate.open()
    ids = _queue(store, "stale", "fresh", "own-stale", "dead-local", "legacy")
    for _ in ids:
        assert store.claim() is not None
    stale, fresh, own_stale, dead_local, legacy = ids
    _set(store, stale, owner=ELSEWHERE, heartbeat=_ago(300))
    _set(store, fresh, owner=ELSEWHERE, heartbeat=_ago(5))
    _set(store, own_stale, heartbeat=_ago(300))  # ours: we know we are alive
    _set(store, dead_local, owner=f"{process_owner()}0000")  # no such pid here
    # A row claimed before heartbeats existed: its start stands in for one.
    _set(store, legacy, owner=ELSEWHERE, heartbeat=None, started=_ago(300))

    # Without a TTL only the provably dead come back (what a receiver could always tell).
    assert estate.open().recover_queue() == 1
    after = {e.id: e for e in store.queue_entries()}
    assert after[dead_local].status == "queued"
    assert after[dead_local].error == "requeued after its process died"
    assert after[stale].status == "running"

    assert estate.open().recover_queue(stale_after=120) == 2
    after = {e.id: e for e in store.queue_entries()}
    assert {i for i, e in after.items() if e.status == "queued"} == {dead_local, stale, legacy}
    assert after[stale].error == (
        f"requeued: its owner {ELSEWHERE} stopped renewing its claim (120s)"
    )
    assert (after[stale].owner, after[stale].heartbeat) == (None, None)
    assert (after[fresh].status, after[fresh].owner) == ("running", ELSEWHERE)
    assert after[own_stale].status == "running"
    assert estate.open().recover_queue(stale_after=120) == 0

    # The requeued row is claimed again by a live receiver, in its host's order.
    again = [store.claim() for _ in range(3)]
    assert sorted(e.id for e in again if e is not None) == [stale, dead_local, legacy]
    assert {e.attempts for e in again if e is not None} == {2}


def test_a_receiver_that_keeps_beating_is_never_overtaken(estate: Estate, tmp_path: Path) -> None:
    """Another process (the would-be thief) checks with a short TTL while we renew."""
    store = estate.open()
    [entry_id] = _queue(store, "held")
    assert store.claim() is not None
    _set(store, entry_id, heartbeat=_ago(30))
    thief = (
        "import sys; from pathlib import Path; from veris_remediate.store import StateStore; "
        "s = StateStore(Path(sys.argv[1]), url=sys.argv[2] or None); "
        "print(s.recover_queue(stale_after=20)); s.close()"
    )

    def steal() -> str:
        done = subprocess.run(
            [sys.executable, "-c", thief, str(estate.state_dir), estate.url or ""],
            capture_output=True, text=True, timeout=60, check=True,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        return done.stdout.strip()

    store.heartbeat_claims()
    assert steal() == "0"
    entry = store.queue_entry(entry_id)
    assert entry is not None
    assert (entry.status, entry.owner) == ("running", process_owner())
    _set(store, entry_id, heartbeat=_ago(30))  # we stopped beating (our process is alive,
    assert steal() == "1"  # but the other one cannot tell: it only sees the heartbeat)
    entry = store.queue_entry(entry_id)
    assert entry is not None
    assert (entry.status, entry.owner) == ("queued", None)


# -- retention ------------------------------------------------------------------------------


def test_prune_deletes_only_finished_rows_past_retention(estate: Estate) -> None:
    store = estate.open()
    ids = _queue(store, "old-done", "old-cancelled", "old-failed", "new-done", "old-running",
                 "old-queued")  # fmt: skip
    old_done, old_cancelled, old_failed, new_done, old_running, old_queued = ids
    for _ in range(5):
        assert store.claim() is not None
    store.finish(old_done, "done", run_id="r1", outcome="resolved")
    store.finish(old_failed, "failed", error="boom")
    store.finish(new_done, "done", run_id="r2", outcome="resolved")
    store.requeue(old_cancelled, "to cancel")
    assert store.cancel_queued("fp-old-cancelled") == [old_cancelled]
    for entry_id in (old_done, old_cancelled, old_failed):
        _set(store, entry_id, finished=_ago(8 * 86400))
    _set(store, new_done, finished=_ago(3600))
    _set(store, old_running, started=_ago(8 * 86400), received=_ago(8 * 86400))
    _set(store, old_queued, received=_ago(8 * 86400))

    assert estate.open().prune_queue(7 * 86400) == 3
    left = {e.id: e.status for e in store.queue_entries()}
    assert left == {new_done: "done", old_running: "running", old_queued: "queued"}
    assert store.prune_queue(7 * 86400) == 0

    # Within retention a re-send is a duplicate; once pruned, the key is forgotten.
    assert store.enqueue("new-done", "fp-new-done", "h3", b"{}", limit=100) == "duplicate"
    assert store.enqueue("old-done", "fp-old-done", "h0", b"{}", limit=100) == "queued"


def test_prune_works_in_bounded_batches_oldest_first(estate: Estate) -> None:
    store = estate.open()
    ids = _queue(store, *(f"i{n}" for n in range(7)))
    for n, entry_id in enumerate(ids):
        assert store.claim() is not None
        store.finish(entry_id, "done", outcome="resolved")
        _set(store, entry_id, finished=_ago(86400 + 60 * (7 - n)))  # i0 the oldest
    assert store.prune_queue(3600, limit=3) == 3
    assert [e.incident for e in store.queue_entries()] == ["i3", "i4", "i5", "i6"]
    assert store.prune_queue(3600, limit=3) == 3
    assert store.prune_queue(3600, limit=3) == 1
    assert store.queue_entries() == []


# -- the migration that added the heartbeat -------------------------------------------------


def _schema_2(estate: Estate) -> None:
    """An estate as the previous release left it: schema 2, one row claimed by a receiver
    of another machine, one done."""
    statements = [s for v in (1, 2) for s in MIGRATIONS[v].split(";") if s.strip()]
    rows = [
        ("inc-run", "fp-1", "h1", "running", b"{}", _ago(900), _ago(900), None, ELSEWHERE, 1),
        ("inc-done", "fp-2", "h2", "done", b"{}", _ago(900), _ago(900), _ago(800), ELSEWHERE, 1),
    ]
    insert = (
        "INSERT INTO queue (incident, fingerprint, host, status, payload, received, started, "
        "finished, owner, attempts) VALUES ({})"
    )
    if estate.url is None:
        estate.state_dir.mkdir(parents=True)
        with sqlite3.connect(estate.state_dir / "state.db") as conn:
            for statement in statements:
                conn.execute(statement)
            conn.executemany(insert.format(", ".join("?" * 10)), rows)
            conn.execute("PRAGMA user_version = 2")
        return
    with psycopg.connect(estate.url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(postgres_ddl(statement))
        conn.execute('CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL)')
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        with conn.cursor() as cur:
            cur.executemany(insert.format(", ".join(["%s"] * 10)), rows)


def test_a_schema_2_estate_is_migrated_and_its_old_claims_expire(estate: Estate) -> None:
    _schema_2(estate)
    store = estate.open()
    assert store.schema_version() == SCHEMA_VERSION == 3
    running, done = store.queue_entries()
    assert (running.status, running.heartbeat, running.owner) == ("running", None, ELSEWHERE)
    assert done.status == "done"
    assert store.recover_queue(stale_after=600) == 1  # started 15 min ago, never renewed
    assert store.prune_queue(600) == 1
    [entry] = store.queue_entries()
    assert (entry.incident, entry.status) == ("inc-run", "queued")
    claimed = store.claim()
    assert claimed is not None
    assert claimed.heartbeat is not None
