"""The state store's database: SQLite in the state dir, or PostgreSQL shared by receivers.

``store.py`` writes its SQL once, in the dialect both understand (``?`` placeholders,
``INSERT … ON CONFLICT`` upserts, named columns); this module runs it on either database
and gives both the same guarantees:

- every write is one transaction that excludes every other writer of the estate, so a
  read-modify-write (take a lease, enqueue an incident) is never interleaved. SQLite:
  ``BEGIN IMMEDIATE``. PostgreSQL: a transaction-scoped advisory lock taken first thing,
  so two processes on two machines queue up exactly as two processes on one would;
- the schema carries its version (SQLite: ``PRAGMA user_version``; PostgreSQL: the
  ``meta`` table) and is migrated forward on open, on PostgreSQL under that same lock;
  a database newer than this code is refused;
- rows read by column name (and by position), times as ISO-8601 UTC text in both, compared
  byte-wise (PostgreSQL columns are ``COLLATE "C"``, whatever the database's locale).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from .exceptions import UsageError, VerisError

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import RowMaker

SCHEMA_VERSION = 3

# Written for SQLite; ``postgres_ddl`` says the same in PostgreSQL's words.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE brake (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        reason  TEXT NOT NULL,
        by      TEXT NOT NULL,
        source  TEXT NOT NULL,
        since   TEXT NOT NULL
    );
    CREATE TABLE leases (
        host     TEXT PRIMARY KEY,
        owner    TEXT NOT NULL,
        run_id   TEXT NOT NULL,
        acquired TEXT NOT NULL,
        expires  TEXT NOT NULL
    );
    CREATE TABLE history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          TEXT NOT NULL,
        host        TEXT NOT NULL,
        fix         TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        run_id      TEXT,
        alert       TEXT
    );
    CREATE INDEX history_host_fix ON history (host, fix, ts);
    CREATE TABLE breaker (
        host          TEXT NOT NULL,
        fix           TEXT NOT NULL,
        state         TEXT NOT NULL,
        failures      INTEGER NOT NULL DEFAULT 0,
        ineffective   INTEGER NOT NULL DEFAULT 0,
        streak        INTEGER NOT NULL DEFAULT 0,
        last_fix_at   TEXT,
        last_outcome  TEXT,
        last_alert    TEXT,
        opened_at     TEXT,
        reason        TEXT,
        PRIMARY KEY (host, fix)
    );
    CREATE TABLE approvals (
        id          TEXT PRIMARY KEY,
        run_id      TEXT NOT NULL,
        slot        TEXT NOT NULL,
        host        TEXT NOT NULL,
        fix         TEXT NOT NULL,
        alert       TEXT,
        state       TEXT NOT NULL,
        reasons     TEXT NOT NULL,
        preview     TEXT NOT NULL,
        digest      TEXT NOT NULL,
        created     TEXT NOT NULL,
        expires     TEXT NOT NULL,
        decided_by  TEXT,
        decided_at  TEXT,
        result_run  TEXT
    );
    CREATE INDEX approvals_state ON approvals (state, created);
    CREATE TABLE journal (
        run_id      TEXT NOT NULL,
        slot        TEXT NOT NULL,
        host        TEXT NOT NULL,
        fix         TEXT NOT NULL,
        phase       TEXT NOT NULL,
        owner       TEXT NOT NULL,
        started     TEXT NOT NULL,
        updated     TEXT NOT NULL,
        data        TEXT NOT NULL,
        PRIMARY KEY (run_id, slot)
    );
    """,
    2: """
    CREATE TABLE queue (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        incident    TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        host        TEXT,
        status      TEXT NOT NULL,
        payload     BLOB NOT NULL,
        received    TEXT NOT NULL,
        started     TEXT,
        finished    TEXT,
        owner       TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        run_id      TEXT,
        outcome     TEXT,
        error       TEXT
    );
    CREATE UNIQUE INDEX queue_incident ON queue (incident);
    CREATE INDEX queue_status ON queue (status, id);
    """,
    # A claim's heartbeat (a receiver on another machine that died stops renewing it), and
    # finished rows found by age (retention) without reading the whole queue.
    3: """
    ALTER TABLE queue ADD COLUMN heartbeat TEXT;
    CREATE INDEX queue_finished ON queue (finished);
    """,
}

# The one advisory lock every writer of a PostgreSQL estate takes ("veris-st" as a number).
PG_WRITE_LOCK = 8531350866352763764
LOCK_WAIT_SECONDS = 30  # as SQLite's busy timeout: a writer waits this long, then errors


class StateError(VerisError):
    """The state store cannot be opened, migrated or written (exit 6)."""


# -- what a transaction hands its caller -----------------------------------------------------


class Row(Protocol):
    """One result row: by column name (``dict(row)`` works) or by position."""

    def keys(self) -> Iterable[str]: ...
    def __getitem__(self, key: str | int, /) -> Any: ...


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> Sequence[Row]: ...


class Db(Protocol):
    """The open transaction: portable SQL with ``?`` placeholders, on either database."""

    def execute(self, sql: str, args: Sequence[object] = (), /) -> Result: ...


class Database(Protocol):
    where: str

    def tx(self) -> contextlib.AbstractContextManager[Db]: ...
    def rows(self, sql: str, args: Sequence[object] = ()) -> Sequence[Row]: ...
    def schema_version(self) -> int: ...
    def close(self) -> None: ...


def open_database(state_dir: Path, url: str | None) -> Database:
    if url:
        return PostgresDatabase(url)
    return SqliteDatabase(state_dir / "state.db")


# -- SQLite -------------------------------------------------------------------------------------


class _SqliteDb:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[object] = (), /) -> Result:
        return self._conn.execute(sql, cast("Any", tuple(args)))


def _busy(exc: sqlite3.OperationalError) -> bool:
    return any(word in str(exc) for word in ("locked", "busy"))


class SqliteDatabase:
    """A file in the state dir (0600), WAL, one writer at a time (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        # Threads of one process share the connection; one of them at a time uses it.
        self._lock = threading.RLock()

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross fork(); reopen in a child process.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not self.path.exists()
            conn = sqlite3.connect(
                self.path, timeout=LOCK_WAIT_SECONDS, isolation_level=None, check_same_thread=False
            )
            if fresh:
                os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state store {self.where}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_SECONDS * 1000}")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Switching a fresh file to WAL takes a lock SQLite does not wait for (processes opening
            # a fresh estate at once saw "database is locked"); one opener at a time does it.
            # A process closing the last connection checkpoints under a lock that is not waited
            # for either, so a busy answer here is retried until the busy timeout.
            with self._opening():
                deadline = time.monotonic() + LOCK_WAIT_SECONDS
                while True:
                    try:
                        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                            conn.execute("PRAGMA journal_mode=WAL")
                        self._migrate(conn)
                        break
                    except sqlite3.OperationalError as exc:
                        if not _busy(exc) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
        except (OSError, sqlite3.Error) as exc:
            conn.close()
            raise StateError(f"cannot open the state store {self.where}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _opening(self) -> Iterator[None]:
        """An exclusive ``flock`` on ``<state file>.open-lock`` for as long as the switch to WAL and
        the migrations take, waited for up to the busy timeout."""
        lock_path = self.path.with_name(self.path.name + ".open-lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise sqlite3.OperationalError(
                            f"another process has held {lock_path} for {LOCK_WAIT_SECONDS} s"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            _refuse_newer(version, self.where)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[target]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def tx(self) -> Iterator[Db]:
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"the state store {self.where} is unavailable: {exc}") from exc
            try:
                yield _SqliteDb(conn)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"cannot write the state store {self.where}: {exc}") from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StateError(f"cannot write the state store {self.where}: {exc}") from exc

    def rows(self, sql: str, args: Sequence[object] = ()) -> Sequence[Row]:
        with self._lock:
            conn = self._connect()
            try:
                rows: list[sqlite3.Row] = conn.execute(sql, cast("Any", tuple(args))).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"cannot read the state store {self.where}: {exc}") from exc
            return rows

    def schema_version(self) -> int:
        return int(self.rows("PRAGMA user_version")[0][0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


# -- PostgreSQL ---------------------------------------------------------------------------------


class PgRow(dict[str, Any]):
    """A PostgreSQL row read like ``sqlite3.Row``: by column name or by position."""

    def __getitem__(self, key: str | int, /) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _pg_row(cursor: Any) -> RowMaker[PgRow]:  # psycopg's RowFactory
    names = [c.name for c in cursor.description or ()]

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(zip(names, values, strict=True))

    return make


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``; a literal ``%`` doubled; quoted text untouched."""
    parts = sql.split("'")
    for i, part in enumerate(parts):
        escaped = part.replace("%", "%%")
        parts[i] = escaped.replace("?", "%s") if i % 2 == 0 else escaped
    return "'".join(parts)


def postgres_ddl(sql: str) -> str:
    """The SQLite schema in PostgreSQL's words: identity keys, bytea, byte-order text."""
    sql = sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    # ISO timestamps compare as text: byte order, never the locale's collation.
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}"))


def check_url(url: str) -> str:
    if urlsplit(url).scheme not in {"postgresql", "postgres"}:
        raise UsageError(
            f"the state URL {redact_url(url)!r} is not a postgresql:// URL "
            "(VERIS_STATE_URL; leave it unset for SQLite in the state dir)"
        )
    return url


class _PgDb:
    def __init__(self, conn: psycopg.Connection[PgRow]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[object] = (), /) -> Result:
        if not args:
            return self._conn.execute(cast("Any", sql))
        return self._conn.execute(cast("Any", pg_sql(sql)), tuple(args))


class PostgresDatabase:
    """One connection per process (autocommit; each write an explicit, locked transaction)."""

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        self.where = redact_url(url)
        self._conn: psycopg.Connection[PgRow] | None = None
        self._pid = 0
        self._inherited: list[object] = []
        self._lock = threading.RLock()

    def _connect(self) -> psycopg.Connection[PgRow]:
        conn = self._conn
        if conn is not None and self._pid == os.getpid() and not conn.closed:
            return conn
        if conn is not None and self._pid != os.getpid():
            # Inherited over fork(): the parent's session. Never used here, never closed
            # here (psycopg does not end a session from a child); kept so it is not
            # reported as leaked either.
            self._inherited.append(conn)
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            given = conninfo_to_dict(self.url)
            defaults: dict[str, str | int] = {
                "connect_timeout": 10,
                "application_name": "veris-remediate",
            }
            conninfo = make_conninfo(
                self.url, **{k: v for k, v in defaults.items() if k not in given}
            )
            conn = psycopg.connect(conninfo, autocommit=True, row_factory=_pg_row)
        except psycopg.Error as exc:
            raise StateError(f"cannot open the state store {self.where}: {exc}") from exc
        try:
            conn.execute(f"SET lock_timeout = '{LOCK_WAIT_SECONDS}s'")
            self._migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StateError(f"cannot open the state store {self.where}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _migrate(self, conn: psycopg.Connection[PgRow]) -> None:
        with self._locked(conn, "open") as db:
            # Created once; looked up first, so a role that may only read and write runs too.
            present = db.execute("SELECT to_regclass('meta') IS NOT NULL AS present").fetchone()
            if not (present and present["present"]):
                db.execute(
                    'CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL)'
                )
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row["value"]) if row else 0
            _refuse_newer(version, self.where)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[target]):
                    db.execute(postgres_ddl(statement))
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )

    @contextlib.contextmanager
    def _locked(self, conn: psycopg.Connection[PgRow], verb: str) -> Iterator[Db]:
        """A transaction that holds the estate's write lock until it ends."""
        import psycopg

        try:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PG_WRITE_LOCK,))
        except psycopg.Error as exc:
            _rollback(conn)
            raise StateError(f"the state store {self.where} is unavailable: {exc}") from exc
        try:
            yield _PgDb(conn)
        except BaseException as exc:
            _rollback(conn)
            if isinstance(exc, psycopg.Error):
                raise StateError(f"cannot {verb} the state store {self.where}: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            _rollback(conn)
            raise StateError(f"cannot {verb} the state store {self.where}: {exc}") from exc

    @contextlib.contextmanager
    def tx(self) -> Iterator[Db]:
        with self._lock, self._locked(self._connect(), "write") as db:
            yield db

    def rows(self, sql: str, args: Sequence[object] = ()) -> Sequence[Row]:
        import psycopg

        with self._lock:
            db = _PgDb(self._connect())
            try:
                return db.execute(sql, args).fetchall()
            except psycopg.Error as exc:
                raise StateError(f"cannot read the state store {self.where}: {exc}") from exc

    def schema_version(self) -> int:
        return int(self.rows("SELECT value FROM meta WHERE key = 'schema_version'")[0]["value"])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        # A store dropped without close(): end our own session quietly.
        conn = getattr(self, "_conn", None)
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()


def _rollback(conn: psycopg.Connection[PgRow]) -> None:
    with contextlib.suppress(Exception):
        conn.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


def _refuse_newer(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise StateError(
            f"the state store {where} has schema {version}, newer than this "
            f"veris-remediate understands ({SCHEMA_VERSION}); upgrade it"
        )
