"""The state store's behaviour, on both of its databases: SQLite in the state dir, and a real
PostgreSQL server (tests/pgserver.py, a throwaway cluster on 127.0.0.1).

Every test runs twice (``estate`` is parametrised). The races are real processes meeting in
one estate: exactly one of them wins a lease, exactly one of twenty queues an incident.
A PostgreSQL server that cannot start fails these tests; they never skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Estate
from tests.pgserver import PgServer
from veris_remediate.settings import settings_from_env
from veris_remediate.store import (
    SCHEMA_VERSION,
    Approval,
    BreakerRow,
    StateError,
    StateStore,
    lease_owner,
    now,
    process_owner,
)

ROOT = Path(__file__).resolve().parents[2]


# -- processes meeting in one estate ----------------------------------------------------------

WORKER = """
import json, sys, time
from pathlib import Path
from veris_remediate.store import StateStore

state, url, go, action, arg = sys.argv[1:]
store = StateStore(Path(state), url=url or None)
if action != "open":
    store.schema_version()  # connected (and migrated) before the start
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.002)
if action == "lease":
    result = store.acquire_lease("h1", arg, 600) is not None
elif action == "enqueue":
    result = store.enqueue("am|fp-1|2026-12-01T03:00:00Z", "fp-1", "h1", arg.encode(), limit=100)
elif action == "enqueue-own":  # each its own incident, into a queue that holds 5
    result = store.enqueue(arg, arg, None, b"{}", limit=5)
elif action == "claim":
    result = []
    while (entry := store.claim()) is not None:
        result.append(entry.id)
elif action == "open":
    result = store.schema_version()
print(json.dumps(result), flush=True)
sys.stdin.read()  # stay alive (a live lease holder) until the test is done
store.close()
"""


def _race(estate: Estate, action: str, args: list[str], tmp_path: Path) -> list[Any]:
    """Start one process per arg, let them all go at once, return what each got."""
    go = tmp_path / f"go-{action}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(estate.state_dir),
                estate.url or "",
                str(go),
                action,
                arg,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for arg in args
    ]
    finished = False
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == "ready", p.stderr.read() if p.stderr else line
        go.touch()
        results = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else "no answer"
            results.append(json.loads(line))
        finished = True
        return results
    finally:
        for p in procs:
            if not finished:
                p.kill()  # a failed race: nobody waits for the others
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


# -- schema ---------------------------------------------------------------------------------


def test_backend_and_schema_version(estate: Estate) -> None:
    store = estate.open()
    assert store.backend == ("postgresql" if estate.url else "sqlite")
    assert store.schema_version() == SCHEMA_VERSION
    if estate.url:
        assert ":" not in store.where.split("@")[0].removeprefix("postgresql://"), store.where
    else:
        assert store.where == str(estate.state_dir / "state.db")


def test_a_newer_schema_is_refused(estate: Estate) -> None:
    store = estate.open()
    with store.transaction() as db:
        if estate.url:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(99),))
        else:
            db.execute("PRAGMA user_version = 99")
    store.close()
    with pytest.raises(StateError, match="schema 99, newer than this"):
        estate.open().brake()


def test_processes_opening_a_fresh_estate_at_once_migrate_it_once(
    estate: Estate, tmp_path: Path
) -> None:
    assert _race(estate, "open", ["-"] * 6, tmp_path) == [SCHEMA_VERSION] * 6
    assert estate.open().schema_version() == SCHEMA_VERSION


def test_from_settings_picks_the_backend(estate: Estate) -> None:
    env = {"VERIS_STATE_DIR": str(estate.state_dir)}
    if estate.url:
        env["VERIS_STATE_URL"] = estate.url
    store = StateStore.from_settings(settings_from_env(env))
    try:
        assert store.url == estate.url
        store.engage_brake("from settings", by="t", source="operator")
        seen = estate.open().brake()
        assert seen is not None
        assert seen.reason == "from settings"
    finally:
        store.close()


# -- brake ----------------------------------------------------------------------------------


def test_brake_keeps_the_first_reason_and_is_shared(estate: Estate) -> None:
    one, two = estate.open(), estate.open()
    assert one.brake() is None
    assert one.engage_brake("first", by="alice", source="operator")
    assert not two.engage_brake("second", by="bob", source="latch")
    held = two.brake()
    assert held is not None
    assert (held.reason, held.by, held.source) == ("first", "alice", "operator")
    assert held.since.tzinfo is not None
    assert abs((now() - held.since).total_seconds()) < 60
    released = two.release_brake()
    assert released == held
    assert one.brake() is None
    assert one.release_brake() is None


# -- leases ---------------------------------------------------------------------------------


def test_two_processes_racing_for_a_lease_exactly_one_wins(estate: Estate, tmp_path: Path) -> None:
    won = _race(estate, "lease", ["run-a", "run-b"], tmp_path)
    assert sorted(won) == [False, True]
    held = estate.open().lease("h1")
    assert held is not None
    assert held.run_id == ("run-a" if won[0] else "run-b")


def test_eight_processes_racing_for_a_lease_exactly_one_wins(
    estate: Estate, tmp_path: Path
) -> None:
    won = _race(estate, "lease", [f"run-{i}" for i in range(8)], tmp_path)
    assert won.count(True) == 1


def test_lease_renew_release_and_expiry(estate: Estate) -> None:
    store = estate.open()
    lease = store.acquire_lease("h1", "run-1", 600)
    assert lease is not None
    assert lease.owner == lease_owner()  # this thread of this process
    assert store.lease("h1") == lease  # times read back exactly as written
    assert store.acquire_lease("h1", "run-2", 600) is not None  # our own: taken over
    assert store.renew_lease("h1", 1200)
    renewed = store.lease("h1")
    assert renewed is not None
    assert renewed.expires > lease.expires
    store.release_lease("h1")
    assert store.lease("h1") is None
    assert not store.renew_lease("h1", 600)


def test_another_machines_lease_holds_until_its_ttl_runs_out(estate: Estate) -> None:
    store = estate.open()
    with store.transaction() as db:
        db.execute(
            "INSERT INTO leases (host, owner, run_id, acquired, expires) VALUES (?, ?, ?, ?, ?)",
            ("h1", "elsewhere.example:1", "run-x", (now() - timedelta(minutes=1)).isoformat(),
             (now() + timedelta(minutes=5)).isoformat()),
        )  # fmt: skip
    # Liveness cannot be checked on another machine: only the TTL frees it.
    assert store.acquire_lease("h1", "run-y", 600) is None
    with store.transaction() as db:
        db.execute(
            "UPDATE leases SET expires = ? WHERE host = ?",
            ((now() - timedelta(seconds=1)).isoformat(), "h1"),
        )
    taken = store.acquire_lease("h1", "run-y", 600)
    assert taken is not None
    assert taken.owner == lease_owner()


def test_a_dead_local_holders_lease_is_reclaimed(estate: Estate) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    owner = f"{process_owner().rpartition(':')[0]}:{dead.stdout.strip()}"
    store = estate.open()
    with store.transaction() as db:
        db.execute(
            "INSERT INTO leases (host, owner, run_id, acquired, expires) VALUES (?, ?, ?, ?, ?)",
            ("h1", owner, "run-x", now().isoformat(), (now() + timedelta(hours=1)).isoformat()),
        )
    assert store.acquire_lease("h1", "run-y", 600) is not None


# -- history --------------------------------------------------------------------------------


def test_history_filters_and_order(estate: Estate) -> None:
    store = estate.open()
    start = now()
    store.add_history("h1", "service_restart", "resolved", run_id="r1", alert="a|h1|1")
    store.add_history("h2", "service_restart", "rolled_back", run_id="r2", alert=None)
    store.add_history("h1", "cache_clear", "failed", run_id=None, alert="a|h1|2")
    everything = estate.open().history()
    assert [(e.host, e.fix, e.outcome) for e in everything] == [
        ("h1", "service_restart", "resolved"),
        ("h2", "service_restart", "rolled_back"),
        ("h1", "cache_clear", "failed"),
    ]
    assert [e.run_id for e in store.history(host="h1")] == ["r1", None]
    assert [e.host for e in store.history(fix="service_restart")] == ["h1", "h2"]
    assert len(store.history(since=start - timedelta(seconds=1))) == 3
    assert store.history(since=now() + timedelta(seconds=5)) == []
    assert all(e.ts.tzinfo is not None and e.ts >= start for e in everything)


# -- breaker --------------------------------------------------------------------------------


def test_breaker_rows_round_trip_replace_and_reset(estate: Estate) -> None:
    store = estate.open()
    assert store.breaker("h1", "service_restart") == BreakerRow(host="h1", fix="service_restart")
    at = datetime(2026, 12, 1, 3, 0, 0, 123456, tzinfo=UTC)
    row = BreakerRow(
        host="h1", fix="service_restart", state="open", failures=2, ineffective=1, streak=3,
        last_fix_at=at, last_outcome="rolled_back", last_alert="a|h1|1", opened_at=at,
        reason="fired again",
    )  # fmt: skip
    store.put_breaker(row)
    assert estate.open().breaker("h1", "service_restart") == row
    half = row.model_copy(update={"state": "half_open", "failures": 0})
    store.put_breaker(half)
    store.put_breaker(BreakerRow(host="h0", fix="cache_clear"))
    store.put_breaker(BreakerRow(host="h1", fix="cache_clear"))
    assert [(r.host, r.fix, r.state) for r in store.breakers()] == [
        ("h0", "cache_clear", "closed"),
        ("h1", "cache_clear", "closed"),
        ("h1", "service_restart", "half_open"),
    ]
    assert store.breaker("h1", "service_restart") == half
    assert store.reset_breaker("h1", "cache_clear") == 1
    assert store.reset_breaker("h1") == 1
    assert [r.host for r in store.breakers()] == ["h0"]


# -- approvals ------------------------------------------------------------------------------


def _approval(approval_id: str, *, host: str = "h1", expires_in: int = 3600) -> Approval:
    created = now()
    return Approval(
        id=approval_id, run_id=approval_id, slot="0-h1", host=host, fix="service_restart",
        alert="a|h1|1", state="pending", reasons=("low confidence", "first time"),
        preview=({"task": "Restart nginx", "host": host},), digest="d" * 64,
        created=created, expires=created + timedelta(seconds=expires_in),
    )  # fmt: skip


def test_approvals_supersede_decide_and_expire(estate: Estate) -> None:
    store, other = estate.open(), estate.open()
    first = _approval("run-1")
    store.add_approval(first)
    assert other.approval("run-1") == first  # tuples, dicts and times read back exactly
    store.add_approval(_approval("run-2"))
    assert [(a.id, a.state) for a in other.approvals()] == [
        ("run-1", "superseded"),
        ("run-2", "pending"),
    ]
    assert other.decide_approval("run-2", "approved", by="alice", result_run="run-3")
    assert not store.decide_approval("run-2", "rejected", by="bob")  # no longer pending
    decided = store.approval("run-2")
    assert decided is not None
    assert (decided.state, decided.decided_by, decided.result_run) == ("approved", "alice", "run-3")
    store.add_approval(_approval("run-4", host="h2", expires_in=-1))
    assert [a.id for a in store.approvals("expired")] == ["run-4"]
    assert [a.id for a in store.approvals_of_run("run-2")] == ["run-2"]
    assert store.approvals("pending") == []


# -- journal --------------------------------------------------------------------------------


def test_journal_merges_updates_and_finds_orphans(estate: Estate) -> None:
    store = estate.open()
    store.journal_begin("run-1", "0-h1", "h1", "service_restart", "snapshot", {"a": 1})
    store.journal_update("run-1", "0-h1", "apply", {"b": [1, 2]})
    store.journal_update("run-missing", "0-h1", "apply")  # nothing to update: no error
    (entry,) = estate.open().journal()
    assert (entry.phase, entry.owner) == ("apply", process_owner())
    assert entry.data == {"a": 1, "b": [1, 2]}
    assert store.orphans(600) == []  # our own, live and fresh
    store.journal_begin("run-2", "0-h2", "h2", "cache_clear", "apply", {})
    with store.transaction() as db:
        db.execute(
            "UPDATE journal SET owner = ?, updated = ? WHERE run_id = ?",
            ("elsewhere.example:1", (now() - timedelta(hours=1)).isoformat(), "run-2"),
        )
    assert [e.run_id for e in store.orphans(600)] == ["run-2"]  # stale past the lease TTL
    store.journal_end("run-2", "0-h2")
    store.journal_end("run-1", "0-h1")
    assert store.journal() == []


# -- queue ----------------------------------------------------------------------------------


def test_twenty_processes_enqueue_one_incident_exactly_once(estate: Estate, tmp_path: Path) -> None:
    answers = _race(estate, "enqueue", [f"payload {i}" for i in range(20)], tmp_path)
    assert sorted(answers) == ["duplicate"] * 19 + ["queued"]
    (entry,) = estate.open().queue_entries()
    assert entry.payload == f"payload {answers.index('queued')}".encode()


def test_a_full_queue_admits_no_more_than_its_limit_under_a_race(
    estate: Estate, tmp_path: Path
) -> None:
    answers = _race(estate, "enqueue-own", [f"inc-{i}" for i in range(12)], tmp_path)
    assert sorted(answers) == ["full"] * 7 + ["queued"] * 5
    assert estate.open().queue_stats().queued == 5


def test_processes_claiming_together_never_share_an_entry(estate: Estate, tmp_path: Path) -> None:
    store = estate.open()
    for i in range(12):
        assert store.enqueue(f"inc-{i}", f"fp-{i}", f"h{i}", b"{}", limit=100) == "queued"
    claimed = _race(estate, "claim", ["-"] * 4, tmp_path)
    ids = [i for got in claimed for i in got]
    assert sorted(ids) == [e.id for e in store.queue_entries()]
    assert len(set(ids)) == 12
    assert {e.status for e in store.queue_entries()} == {"running"}


def test_queue_full_dedupe_and_payload_bytes(estate: Estate) -> None:
    store = estate.open()
    blob = bytes(range(256))
    assert store.enqueue("inc-1", "fp-1", "h1", blob, limit=2) == "queued"
    assert store.enqueue("inc-1", "fp-1", "h1", b"again", limit=2) == "duplicate"
    assert store.enqueue("inc-2", "fp-2", None, b"{}", limit=2) == "queued"
    assert store.enqueue("inc-3", "fp-3", "h3", b"{}", limit=2) == "full"
    first = estate.open().queue_entry(1)
    assert first is not None
    assert (first.payload, first.status, first.attempts) == (blob, "queued", 0)
    stats = store.queue_stats()
    assert (stats.queued, stats.running) == (2, 0)
    assert 0 <= stats.oldest_queued_seconds < 60


def test_claim_keeps_per_host_order(estate: Estate) -> None:
    store = estate.open()
    for incident, host in (("a1", "h1"), ("a2", "h1"), ("b1", "h2"), ("c1", None)):
        store.enqueue(incident, f"fp-{incident}", host, b"{}", limit=100)
    worker = estate.open()
    got = [worker.claim() for _ in range(4)]
    # h1's second incident waits for its first; other hosts (and host-less ones) go on.
    assert [e.incident if e else None for e in got] == ["a1", "b1", "c1", None]
    assert got[0] is not None
    assert (got[0].status, got[0].attempts, got[0].owner) == ("running", 1, process_owner())
    worker.finish(got[0].id, "done", run_id="run-1", outcome="resolved")
    after = worker.claim()
    assert after is not None
    assert after.incident == "a2"
    done = store.queue_entry(got[0].id)
    assert done is not None
    assert (done.status, done.run_id, done.outcome) == ("done", "run-1", "resolved")
    assert done.finished is not None
    assert done.started is not None
    assert done.finished >= done.started


def test_cancel_requeue_and_recover(estate: Estate) -> None:
    store = estate.open()
    for incident in ("x1", "x2"):
        store.enqueue(incident, "fp-x", "h1", b"{}", limit=100)
    store.enqueue("y1", "fp-y", "h2", b"{}", limit=100)
    running = store.claim()
    assert running is not None
    assert running.incident == "x1"
    assert store.cancel_queued("fp-x") == [2]  # the queued one; the running one goes on
    assert [e.incident for e in store.queue_entries("cancelled")] == ["x2"]
    store.requeue(running.id, "host busy")
    again = store.queue_entry(running.id)
    assert again is not None
    assert (again.status, again.owner, again.error) == ("queued", None, "host busy")
    claimed = store.claim()
    assert claimed is not None
    assert claimed.attempts == 2
    y = store.claim()
    assert y is not None
    assert store.recover_queue() == 0  # ours, alive
    with store.transaction() as db:  # y's process died on this machine; x's runs elsewhere
        db.execute("UPDATE queue SET owner = ? WHERE id = ?", (f"{process_owner()}0000", y.id))
        db.execute("UPDATE queue SET owner = ? WHERE id = ?", ("elsewhere.example:1", claimed.id))
    assert estate.open().recover_queue() == 1
    back = store.queue_entry(y.id)
    assert back is not None
    assert (back.status, back.error) == ("queued", "requeued after its process died")
    still = store.queue_entry(claimed.id)
    assert still is not None
    assert still.status == "running"


# -- composed transactions and errors -------------------------------------------------------


def test_a_failing_transaction_leaves_nothing_behind(estate: Estate) -> None:
    store = estate.open()

    def change_my_mind() -> None:
        with store.transaction() as db:
            db.execute(
                "INSERT INTO history (ts, host, fix, outcome) VALUES (?, ?, ?, ?)",
                (now().isoformat(), "h1", "f", "resolved"),
            )
            raise RuntimeError("changed my mind")

    def write_nowhere() -> None:
        with store.transaction() as db:
            db.execute("INSERT INTO no_such_table VALUES (?)", (1,))

    with pytest.raises(RuntimeError, match="changed my mind"):
        change_my_mind()
    assert store.history() == []
    with pytest.raises(StateError, match="cannot write the state store"):
        write_nowhere()
    # the store is usable afterwards
    store.add_history("h1", "f", "resolved", run_id=None, alert=None)
    assert len(store.history()) == 1


def test_rows_read_by_name_and_position(estate: Estate) -> None:
    store = estate.open()
    store.add_history("h1", "f", "resolved", run_id="r", alert=None)
    with store.transaction() as db:
        row = db.execute("SELECT host, COUNT(*) AS n FROM history GROUP BY host").fetchone()
        assert row is not None
        assert (row["host"], row["n"], row[0], row[1]) == ("h1", 1, "h1", 1)
        assert dict(row) == {"host": "h1", "n": 1}
        assert db.execute("SELECT 1 FROM history WHERE outcome = '?'").fetchone() is None


def test_an_unreachable_server_is_a_state_error(pg: PgServer) -> None:
    url = pg.url("postgres").replace(f":{pg.port}/", ":1/")
    store = StateStore(Path("/nonexistent"), url=url)
    with pytest.raises(StateError, match="cannot open the state store") as caught:
        store.brake()
    assert pg.password not in caught.value.message


def test_a_dropped_connection_is_reopened(pg: PgServer) -> None:
    url = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    store = StateStore(Path("/nonexistent"), url=url)
    try:
        store.engage_brake("before", by="t", source="operator")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'veris-remediate' AND datname = current_database()"
            )
        with pytest.raises(StateError, match="cannot read the state store"):
            store.brake()  # the call that finds the connection gone
        held = store.brake()
        assert held is not None
        assert held.reason == "before"
    finally:
        store.close()


def test_a_schema_of_its_own_in_a_shared_database(pg: PgServer) -> None:
    url = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA veris")
    store = StateStore(Path("/nonexistent"), url=f"{url}?options=-csearch_path%3Dveris")
    try:
        assert store.enqueue("i", "fp", "h1", b"{}", limit=5) == "queued"
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as admin:
        tables = admin.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name IN ('queue', 'meta') ORDER BY table_name"
        ).fetchall()
    assert tables == [("veris", "meta"), ("veris", "queue")]


def test_a_role_that_may_only_read_and_write_uses_a_migrated_estate(pg: PgServer) -> None:
    url = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    StateStore(Path("/nonexistent"), url=url).close()  # opened by nobody yet
    role, password = f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    app_url = url.replace(f"{pg.user}:{pg.password}@", f"{role}:{password}@")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(password)
            )
        )
    with pytest.raises(StateError, match="cannot open the state store"):
        StateStore(Path("/nonexistent"), url=app_url).brake()  # may not create the tables
    owner = StateStore(Path("/nonexistent"), url=url)
    try:
        owner.brake()  # migrated by its owner
    finally:
        owner.close()
    with psycopg.connect(url, autocommit=True) as admin:
        for grant in (
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}",
        ):
            admin.execute(psycopg.sql.SQL(grant).format(psycopg.sql.Identifier(role)))
    app = StateStore(Path("/nonexistent"), url=app_url)
    try:
        assert app.enqueue("i", "fp", "h1", b"{}", limit=5) == "queued"
        assert app.schema_version() == SCHEMA_VERSION
    finally:
        app.close()
