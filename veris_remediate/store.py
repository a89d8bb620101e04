"""The state store: everything the guards remember, in one database shared by processes.

The brake, host leases, fix history, the restart-storm breaker, pending approvals, the
journal of remediations in flight (what crash recovery reads) and the intake queue of
``serve`` live here, behind this one module. By default the database is SQLite (WAL) in the
state dir; with ``VERIS_STATE_URL=postgresql://…`` it is PostgreSQL, so several receivers,
on one machine or several, share one estate. Run artifacts and reports stay files under
``runs/``.

Every write is one transaction that excludes every other writer of the estate
(``statedb.py`` says how, on each database), so two processes never interleave a
read-modify-write: one of them wins a lease, one of them queues an incident. The schema
carries its version and is migrated forward on open; a database newer than this code is
refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .statedb import SCHEMA_VERSION as SCHEMA_VERSION  # noqa: PLC0414 (re-exported)
from .statedb import Db, Row, open_database
from .statedb import StateError as StateError  # noqa: PLC0414 (re-exported)

if TYPE_CHECKING:
    from .settings import Settings


def now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def process_owner() -> str:
    """Who holds a lease or a journal entry: ``host:pid``, checkable for liveness."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_owner() -> str:
    """A lease holder: ``host:pid/thread`` — two threads of one process (serve's workers)
    are two holders; the process part is what liveness is checked on."""
    return f"{process_owner()}/{threading.get_ident()}"


def owner_alive(owner: str) -> bool:
    """False only when the owner is provably gone (same machine, no such process)."""
    machine, _, pid = owner.partition("/")[0].rpartition(":")
    if machine != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process: only its lease's TTL can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def operator() -> str:
    """The person (or service account) behind this process, for brake and approval records."""
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or f"uid {os.getuid()}"


# -- typed rows -------------------------------------------------------------------------


class BrakeState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str
    by: str
    source: Literal["operator", "latch"]
    since: datetime

    def describe(self) -> str:
        who = "latched automatically" if self.source == "latch" else f"engaged by {self.by}"
        return f"{who} at {self.since:%Y-%m-%d %H:%M:%S} UTC: {self.reason}"


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    owner: str
    run_id: str
    acquired: datetime
    expires: datetime


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: datetime
    host: str
    fix: str
    outcome: str
    run_id: str | None
    alert: str | None


BreakerPhase = Literal["closed", "open", "half_open"]


class BreakerRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    fix: str
    state: BreakerPhase = "closed"
    failures: int = 0
    ineffective: int = 0
    streak: int = 0
    last_fix_at: datetime | None = None
    last_outcome: str | None = None
    last_alert: str | None = None
    opened_at: datetime | None = None
    reason: str | None = None


ApprovalState = Literal["pending", "approved", "rejected", "expired", "superseded", "resolved"]


class Approval(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    run_id: str
    slot: str
    host: str
    fix: str
    alert: str | None
    state: ApprovalState
    reasons: tuple[str, ...]
    preview: tuple[dict[str, str], ...]
    digest: str
    created: datetime
    expires: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    result_run: str | None = None


class JournalEntry(BaseModel):
    """A remediation past its snapshot and not yet finished: what crash recovery reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    slot: str
    host: str
    fix: str
    phase: str
    owner: str
    started: datetime
    updated: datetime
    data: dict[str, Any]


QueueStatus = Literal["queued", "running", "done", "cancelled", "failed"]


class QueueEntry(BaseModel):
    """One accepted incident waiting for (or under) remediation: accepted is never lost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int
    incident: str
    fingerprint: str
    host: str | None
    status: QueueStatus
    payload: bytes
    received: datetime
    started: datetime | None = None
    finished: datetime | None = None
    owner: str | None = None
    attempts: int = 0
    run_id: str | None = None
    outcome: str | None = None
    error: str | None = None
    heartbeat: datetime | None = None  # last renewal of the claim by its owner


class QueueRow(BaseModel):
    """One incident to queue (``enqueue_many``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    incident: str
    fingerprint: str
    host: str | None
    payload: bytes
    active: str | None = None  # an undated alert: a duplicate while this key prefix waits


class QueueStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    queued: int
    running: int
    oldest_queued_seconds: float


def _queue_entry(row: Row) -> QueueEntry:
    return QueueEntry(**dict(row))


# Rows ``claim`` may take: queued, the oldest queued row of their host, none of their host
# running (a row without a host waits for nothing).
_CLAIMABLE = (
    "SELECT * FROM queue q WHERE status = 'queued' AND (host IS NULL OR NOT EXISTS "
    "(SELECT 1 FROM queue r WHERE r.status = 'running' AND r.host = q.host)) "
    "AND NOT EXISTS (SELECT 1 FROM queue e WHERE e.status = 'queued' "
    "AND e.host = q.host AND e.id < q.id)"
)


def _claimed(db: Db, entry_id: int) -> QueueEntry:
    """Mark a queued row claimed by this process (in the caller's transaction)."""
    t = _iso(now())
    db.execute(
        "UPDATE queue SET status = 'running', started = ?, heartbeat = ?, owner = ?, "
        "attempts = attempts + 1 WHERE id = ?",
        (t, t, process_owner(), entry_id),
    )
    row = db.execute("SELECT * FROM queue WHERE id = ?", (entry_id,)).fetchone()
    if row is None:  # updated in this very transaction: cannot happen
        raise StateError(f"queue entry {entry_id} vanished while being claimed")
    return _queue_entry(row)


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT … ON CONFLICT (key) DO UPDATE``: a whole-row replace both databases run."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 (names are ours, not data)
        f"VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_LEASE_UPSERT = _upsert("leases", ("host", "owner", "run_id", "acquired", "expires"), ("host",))
_BREAKER_UPSERT = _upsert("breaker", tuple(BreakerRow.model_fields), ("host", "fix"))
_APPROVAL_UPSERT = _upsert("approvals", tuple(Approval.model_fields), ("id",))
_JOURNAL_UPSERT = _upsert("journal", tuple(JournalEntry.model_fields), ("run_id", "slot"))


class _QueueMixin:
    """The durable intake queue of ``serve``: one row per incident (fingerprint + start).

    The unique incident key is the deduplication: Alertmanager HA pairs, retries and
    repeat-interval re-sends of one incident insert nothing new. Finished rows are that
    memory, so they are kept for a retention period (``prune_queue``), longer than any
    repeat interval. A claimed row carries its owner (``host:pid``) and a heartbeat the
    owner renews while it holds the row (``heartbeat_claims``): a row whose owner died on
    this machine, or whose heartbeat went stale (an owner on another machine that died),
    goes back to the queue (``recover_queue``).
    """

    _tx: Any
    _rows: Any

    def enqueue(
        self, incident: str, fingerprint: str, host: str | None, payload: bytes, *, limit: int
    ) -> Literal["queued", "duplicate", "full"]:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM queue WHERE incident = ?", (incident,)).fetchone():
                return "duplicate"
            depth = db.execute(
                "SELECT COUNT(*) AS n FROM queue WHERE status IN ('queued', 'running')"
            ).fetchone()
            if depth is not None and depth["n"] >= limit:
                return "full"
            # The unique index is the last word, should a writer ever get past the check.
            inserted = db.execute(
                "INSERT INTO queue (incident, fingerprint, host, status, payload, received) "
                "VALUES (?, ?, ?, 'queued', ?, ?) ON CONFLICT (incident) DO NOTHING",
                (incident, fingerprint, host, payload, _iso(now())),
            )
            return "queued" if inserted.rowcount == 1 else "duplicate"

    def enqueue_many(
        self, rows: Sequence[QueueRow], *, limit: int
    ) -> list[Literal["queued", "duplicate", "full"]]:
        """``enqueue`` for several incidents, in order, in one transaction (serve's group
        commit): each row is checked and counted exactly as ``enqueue`` would, seeing the
        rows before it. A row with ``active`` set (an undated alert: its key's prefix) is
        also a duplicate while a row of that fingerprint and prefix is queued or running."""
        verdicts: list[Literal["queued", "duplicate", "full"]] = []
        if not rows:
            return verdicts
        received = _iso(now())
        with self._tx() as db:
            row = db.execute(
                "SELECT COUNT(*) AS n FROM queue WHERE status IN ('queued', 'running')"
            ).fetchone()
            depth: int = row["n"] if row is not None else 0
            for r in rows:
                if (
                    r.active is not None
                    and db.execute(
                        "SELECT 1 FROM queue WHERE fingerprint = ? AND status IN ('queued', "
                        "'running') AND substr(incident, 1, length(CAST(? AS TEXT))) = ?",
                        (r.fingerprint, r.active, r.active),
                    ).fetchone()
                ):
                    verdicts.append("duplicate")
                    continue
                if db.execute("SELECT 1 FROM queue WHERE incident = ?", (r.incident,)).fetchone():
                    verdicts.append("duplicate")
                    continue
                if depth >= limit:
                    verdicts.append("full")
                    continue
                inserted = db.execute(
                    "INSERT INTO queue (incident, fingerprint, host, status, payload, received) "
                    "VALUES (?, ?, ?, 'queued', ?, ?) ON CONFLICT (incident) DO NOTHING",
                    (r.incident, r.fingerprint, r.host, r.payload, received),
                )
                if inserted.rowcount == 1:
                    depth += 1
                    verdicts.append("queued")
                else:
                    verdicts.append("duplicate")
        return verdicts

    def claim(self) -> QueueEntry | None:
        """The oldest queued incident whose host has nothing running (per-host order)."""
        with self._tx() as db:
            row = db.execute(_CLAIMABLE + " ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            return _claimed(db, row["id"])

    def claim_fleet(
        self,
        limit: int,
        *,
        joins: Callable[[Sequence[QueueEntry], QueueEntry], bool] | None = None,
    ) -> list[QueueEntry]:
        """``claim``, and with it up to ``limit - 1`` companions, in one transaction: rows
        claimable now by the same per-host order (each its host's oldest queued row, no
        running row on its host), on other hosts, of the same alert name (the incident
        key's first ``|`` field), oldest first. ``joins(claimed so far, candidate)`` may
        refuse a candidate (it runs inside the transaction: keep it quick). Empty when
        nothing is claimable; the first row alone when it has no host or ``limit`` is 1."""
        with self._tx() as db:
            row = db.execute(_CLAIMABLE + " ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return []
            claimed = [_claimed(db, row["id"])]
            first = claimed[0]
            if first.host is None or limit <= 1:
                return claimed
            prefix = first.incident.split("|", 1)[0] + "|"
            candidates = db.execute(
                _CLAIMABLE + " AND q.host IS NOT NULL AND q.host <> ? "
                "AND substr(q.incident, 1, length(CAST(? AS TEXT))) = ? ORDER BY id LIMIT ?",
                (first.host, prefix, prefix, 4 * limit),
            ).fetchall()
            hosts: set[str | None] = {first.host}
            for candidate in map(_queue_entry, candidates):
                if len(claimed) >= limit:
                    break
                if candidate.host in hosts or (joins is not None and not joins(claimed, candidate)):
                    continue
                claimed.append(_claimed(db, candidate.id))
                hosts.add(candidate.host)
            return claimed

    def finish(
        self,
        entry_id: int,
        status: QueueStatus,
        *,
        run_id: str | None = None,
        outcome: str | None = None,
        error: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE queue SET status = ?, finished = ?, run_id = ?, outcome = ?, error = ? "
                "WHERE id = ?",
                (status, _iso(now()), run_id, outcome, error, entry_id),
            )

    def requeue(self, entry_id: int, error: str) -> None:
        """Back to the queue (a deferred host, a crash): it runs again later."""
        with self._tx() as db:
            db.execute(
                "UPDATE queue SET status = 'queued', owner = NULL, heartbeat = NULL, error = ? "
                "WHERE id = ?",
                (error, entry_id),
            )

    def cancel_queued(self, fingerprint: str) -> list[int]:
        """A resolved notification: queued work for that alert is not needed any more."""
        with self._tx() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM queue WHERE fingerprint = ? AND status = 'queued'",
                    (fingerprint,),
                ).fetchall()
            ]
            db.execute(
                "UPDATE queue SET status = 'cancelled', finished = ?, error = 'resolved' "
                "WHERE fingerprint = ? AND status = 'queued'",
                (_iso(now()), fingerprint),
            )
        return ids

    def recover_queue(self, stale_after: float | None = None) -> int:
        """Claimed work whose owner is gone goes back to the queue: an owner of this machine
        that no longer exists, and (with ``stale_after`` seconds) any other process but
        this one whose heartbeat is older than that — an owner on another machine that
        died, or one that stopped renewing its claims. Returns how many rows went back."""
        me = process_owner()
        cutoff = now() - timedelta(seconds=stale_after) if stale_after is not None else None
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, owner, started, heartbeat FROM queue WHERE status = 'running'"
            ).fetchall()
            back: list[tuple[int, str]] = []
            for r in rows:
                owner = r["owner"]
                if owner is None or not owner_alive(owner):
                    back.append((r["id"], "requeued after its process died"))
                    continue
                beat = _when(r["heartbeat"] or r["started"])
                if cutoff is not None and owner != me and (beat is None or beat < cutoff):
                    why = f"requeued: its owner {owner} stopped renewing its claim"
                    back.append((r["id"], f"{why} ({stale_after:g}s)"))
            for entry_id, why in back:
                db.execute(
                    "UPDATE queue SET status = 'queued', owner = NULL, heartbeat = NULL, "
                    "error = ? WHERE id = ? AND status = 'running'",
                    (why, entry_id),
                )
        return len(back)

    def heartbeat_claims(self) -> int:
        """Renew the heartbeat of every row this process holds (claimed, running or waiting
        its turn); how many it renewed."""
        with self._tx() as db:
            renewed: int = db.execute(
                "UPDATE queue SET heartbeat = ? WHERE status = 'running' AND owner = ?",
                (_iso(now()), process_owner()),
            ).rowcount
        return renewed

    def prune_queue(self, retain_seconds: float, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` rows finished (done, cancelled, failed) more than
        ``retain_seconds`` ago, oldest first; how many. Their incident keys are the
        deduplication memory: retain them longer than any sender's repeat interval."""
        cutoff = _iso(now() - timedelta(seconds=retain_seconds))
        with self._tx() as db:
            pruned: int = db.execute(
                "DELETE FROM queue WHERE id IN (SELECT id FROM queue WHERE finished < ? "
                "AND status IN ('done', 'cancelled', 'failed') ORDER BY finished LIMIT ?)",
                (cutoff, limit),
            ).rowcount
        return pruned

    def queue_entry(self, entry_id: int) -> QueueEntry | None:
        rows = self._rows("SELECT * FROM queue WHERE id = ?", (entry_id,))
        return _queue_entry(rows[0]) if rows else None

    def queue_entries(self, status: QueueStatus | None = None) -> list[QueueEntry]:
        if status is None:
            return [_queue_entry(r) for r in self._rows("SELECT * FROM queue ORDER BY id")]
        rows = self._rows("SELECT * FROM queue WHERE status = ? ORDER BY id", (status,))
        return [_queue_entry(r) for r in rows]

    def queue_stats(self) -> QueueStats:
        rows = self._rows(
            "SELECT status, COUNT(*) AS n, MIN(received) AS oldest FROM queue "
            "WHERE status IN ('queued', 'running') GROUP BY status"
        )
        counts = {r["status"]: r["n"] for r in rows}
        oldest = next((r["oldest"] for r in rows if r["status"] == "queued"), None)
        age = (now() - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        return QueueStats(
            queued=counts.get("queued", 0),
            running=counts.get("running", 0),
            oldest_queued_seconds=age,
        )


# -- the store ----------------------------------------------------------------------------


class StateStore(_QueueMixin):
    """The guards' memory: SQLite in ``state_dir``, or the PostgreSQL database at ``url``."""

    def __init__(self, state_dir: Path, *, url: str | None = None) -> None:
        self.path = state_dir / "state.db"
        self.url = url or None
        self.backend: Literal["sqlite", "postgresql"] = "postgresql" if self.url else "sqlite"
        self._db = open_database(state_dir, self.url)

    @classmethod
    def from_settings(cls, settings: Settings) -> StateStore:
        """The store the settings name: ``state_url`` (VERIS_STATE_URL) or the state dir."""
        return cls(settings.state_dir, url=settings.state_url)

    @property
    def where(self) -> str:
        """Where the state lives, for people: a path, or the URL without its password."""
        return self._db.where

    def transaction(self) -> contextlib.AbstractContextManager[Db]:
        """One write transaction for callers composing their own, excluding every other
        writer of the estate. Its SQL must run on both databases: ``?`` placeholders,
        ``INSERT … ON CONFLICT`` rather than ``INSERT OR …``."""
        return self._tx()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Db]:
        with self._db.tx() as db:
            yield db

    def _rows(self, sql: str, args: Sequence[object] = ()) -> Sequence[Row]:
        return self._db.rows(sql, args)

    def close(self) -> None:
        self._db.close()

    def schema_version(self) -> int:
        return self._db.schema_version()

    # -- brake ------------------------------------------------------------------------

    def brake(self) -> BrakeState | None:
        rows = self._rows("SELECT reason, by, source, since FROM brake WHERE id = 1")
        if not rows:
            return None
        return BrakeState(**dict(rows[0]))

    def engage_brake(self, reason: str, *, by: str, source: Literal["operator", "latch"]) -> bool:
        """Engage; False when it already was (the first reason is kept)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO brake (id, reason, by, source, since) "
                "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (reason, by, source, _iso(now())),
            )
            return cur.rowcount == 1

    def release_brake(self) -> BrakeState | None:
        """Release; returns what was engaged, or None when nothing was."""
        with self._tx() as db:
            row = db.execute("SELECT reason, by, source, since FROM brake WHERE id = 1").fetchone()
            db.execute("DELETE FROM brake")
        return BrakeState(**dict(row)) if row else None

    # -- host leases ------------------------------------------------------------------

    def acquire_lease(self, host: str, run_id: str, ttl: int) -> Lease | None:
        """Take ``host`` for this process; None when a live holder has it.

        An expired lease, or one whose holder is a process of this machine that no
        longer exists (SIGKILLed), is reclaimed.
        """
        me = lease_owner()
        t = now()
        with self._tx() as db:
            row = db.execute("SELECT * FROM leases WHERE host = ?", (host,)).fetchone()
            if row is not None:
                held = Lease(**dict(row))
                if held.expires > t and owner_alive(held.owner) and held.owner != me:
                    return None
            lease = Lease(
                host=host, owner=me, run_id=run_id, acquired=t, expires=t + timedelta(seconds=ttl)
            )
            db.execute(_LEASE_UPSERT, (host, me, run_id, _iso(lease.acquired), _iso(lease.expires)))
        return lease

    def renew_lease(self, host: str, ttl: int, owner: str | None = None) -> bool:
        """Extend ``owner``'s lease (default: this thread's; a heartbeat thread passes it)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE leases SET expires = ? WHERE host = ? AND owner = ?",
                (_iso(now() + timedelta(seconds=ttl)), host, owner or lease_owner()),
            )
            return cur.rowcount == 1

    def release_lease(self, host: str, owner: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM leases WHERE host = ? AND owner = ?", (host, owner or lease_owner())
            )

    def lease(self, host: str) -> Lease | None:
        rows = self._rows("SELECT * FROM leases WHERE host = ?", (host,))
        return Lease(**dict(rows[0])) if rows else None

    # -- history ----------------------------------------------------------------------

    def add_history(
        self, host: str, fix: str, outcome: str, *, run_id: str | None, alert: str | None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO history (ts, host, fix, outcome, run_id, alert) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_iso(now()), host, fix, outcome, run_id, alert),
            )

    def history(
        self, *, host: str | None = None, fix: str | None = None, since: datetime | None = None
    ) -> list[HistoryEntry]:
        sql, args = "SELECT ts, host, fix, outcome, run_id, alert FROM history WHERE 1=1", []
        for column, value in (("host", host), ("fix", fix)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(_iso(since))
        return [HistoryEntry(**dict(r)) for r in self._rows(sql + " ORDER BY id", args)]

    # -- breaker ----------------------------------------------------------------------

    def breaker(self, host: str, fix: str) -> BreakerRow:
        rows = self._rows("SELECT * FROM breaker WHERE host = ? AND fix = ?", (host, fix))
        return BreakerRow(**dict(rows[0])) if rows else BreakerRow(host=host, fix=fix)

    def breakers(self) -> list[BreakerRow]:
        return [
            BreakerRow(**dict(r)) for r in self._rows("SELECT * FROM breaker ORDER BY host, fix")
        ]

    def put_breaker(self, row: BreakerRow) -> None:
        data = row.model_dump()
        for key in ("last_fix_at", "opened_at"):
            data[key] = _iso(data[key]) if data[key] else None
        with self._tx() as db:
            db.execute(_BREAKER_UPSERT, tuple(data[c] for c in BreakerRow.model_fields))

    def reset_breaker(self, host: str, fix: str | None = None) -> int:
        with self._tx() as db:
            if fix is None:
                return db.execute("DELETE FROM breaker WHERE host = ?", (host,)).rowcount
            return db.execute(
                "DELETE FROM breaker WHERE host = ? AND fix = ?", (host, fix)
            ).rowcount

    # -- approvals --------------------------------------------------------------------

    def add_approval(self, approval: Approval) -> None:
        with self._tx() as db:
            # A newer request for the same host and fix replaces an older pending one.
            db.execute(
                "UPDATE approvals SET state = 'superseded', decided_at = ? "
                "WHERE host = ? AND fix = ? AND state = 'pending'",
                (_iso(now()), approval.host, approval.fix),
            )
            db.execute(
                _APPROVAL_UPSERT,
                (
                    approval.id, approval.run_id, approval.slot, approval.host, approval.fix,
                    approval.alert, approval.state, json.dumps(list(approval.reasons)),
                    json.dumps(list(approval.preview)), approval.digest,
                    _iso(approval.created), _iso(approval.expires), approval.decided_by,
                    _iso(approval.decided_at) if approval.decided_at else None,
                    approval.result_run,
                ),
            )  # fmt: skip

    def _approval(self, row: Row) -> Approval:
        data = dict(row)
        data["reasons"] = tuple(json.loads(data["reasons"]))
        data["preview"] = tuple(json.loads(data["preview"]))
        return Approval(**data)

    def expire_approvals(self) -> int:
        with self._tx() as db:
            return db.execute(
                "UPDATE approvals SET state = 'expired', decided_at = ? "
                "WHERE state = 'pending' AND expires < ?",
                (_iso(now()), _iso(now())),
            ).rowcount

    def approvals(self, state: ApprovalState | None = None) -> list[Approval]:
        self.expire_approvals()
        if state is None:
            rows = self._rows("SELECT * FROM approvals ORDER BY created, id")
        else:
            rows = self._rows(
                "SELECT * FROM approvals WHERE state = ? ORDER BY created, id", (state,)
            )
        return [self._approval(r) for r in rows]

    def approval(self, approval_id: str) -> Approval | None:
        self.expire_approvals()
        rows = self._rows("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        return self._approval(rows[0]) if rows else None

    def approvals_of_run(self, run_id: str) -> list[Approval]:
        self.expire_approvals()
        rows = self._rows("SELECT * FROM approvals WHERE run_id = ? ORDER BY id", (run_id,))
        return [self._approval(r) for r in rows]

    def decide_approval(
        self,
        approval_id: str,
        state: ApprovalState,
        *,
        by: str,
        result_run: str | None = None,
        expect: ApprovalState = "pending",
    ) -> bool:
        """Move an approval from ``expect`` to ``state``; False if it was not in ``expect``."""
        with self._tx() as db:
            return (
                db.execute(
                    "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, "
                    "result_run = COALESCE(?, result_run) WHERE id = ? AND state = ?",
                    (state, by, _iso(now()), result_run, approval_id, expect),
                ).rowcount
                == 1
            )

    # -- the journal of remediations in flight ------------------------------------------

    def journal_begin(
        self, run_id: str, slot: str, host: str, fix: str, phase: str, data: dict[str, Any]
    ) -> None:
        t = _iso(now())
        with self._tx() as db:
            db.execute(
                _JOURNAL_UPSERT,
                (run_id, slot, host, fix, phase, process_owner(), t, t, json.dumps(data)),
            )

    def journal_update(
        self, run_id: str, slot: str, phase: str, data: dict[str, Any] | None = None
    ) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT data FROM journal WHERE run_id = ? AND slot = ?", (run_id, slot)
            ).fetchone()
            if row is None:
                return
            merged = {**json.loads(row["data"]), **(data or {})}
            db.execute(
                "UPDATE journal SET phase = ?, updated = ?, data = ? WHERE run_id = ? AND slot = ?",
                (phase, _iso(now()), json.dumps(merged), run_id, slot),
            )

    def journal_end(self, run_id: str, slot: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM journal WHERE run_id = ? AND slot = ?", (run_id, slot))

    def journal(self) -> list[JournalEntry]:
        rows = self._rows("SELECT * FROM journal ORDER BY started, run_id, slot")
        out = []
        for r in rows:
            data = dict(r)
            data["data"] = json.loads(data["data"])
            out.append(JournalEntry(**data))
        return out

    def orphans(self, lease_ttl: int) -> list[JournalEntry]:
        """Journal entries whose process is gone: the run was cut short."""
        stale = now() - timedelta(seconds=lease_ttl)
        return [e for e in self.journal() if not owner_alive(e.owner) or e.updated < stale]


def parse_time(text: str | None) -> datetime | None:
    """Exposed for callers reading timestamps the store wrote."""
    return _when(text)
