"""Append-only, hash-chained JSON-lines audit log: optionally keyed, anchored by a head file.

Each record carries ``hash = H(prev + canonical body)``; H is SHA-256, or HMAC-SHA256 under
the audit key, so someone who can write the log but cannot read the key cannot recompute
the chain. ``<log>.head`` (and, optionally, the system journal) holds the record count and
the last hash, so cutting records off the end is caught too. docs/AUDIT.md has the details.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from .exceptions import AuditError
from .private_files import read_private_file
from .redaction import redact

if TYPE_CHECKING:
    from .settings import Settings

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
SHA256: Final = "sha256"
HMAC_SHA256: Final = "hmac-sha256"
MIN_KEY_BYTES = 16
_HEAD_DOMAIN = b"veris-audit-head\x00"  # a head MAC can never pass for a record hash
MAX_AHEAD = 1024  # records a log may run ahead of its head: a batch whose writer died
_TAIL_WINDOW = 65_536  # records are small: the last one is usually in the final 64 KiB
Alg = Literal["sha256", "hmac-sha256"]


def _canonical(body: Mapping[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def _digest(prev: str, body: Mapping[str, Any], key: bytes | None = None) -> str:
    message = (prev + _canonical(body)).encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def load_key(path: Path) -> bytes:
    """The audit key in ``path``: a private (0600), non-empty regular file; whitespace stripped."""
    key = read_private_file(path, "the audit key file", AuditError).strip()
    if not key:
        raise AuditError(f"the audit key file {path} is empty")
    if len(key) < MIN_KEY_BYTES:
        raise AuditError(
            f"the audit key in {path} is too short ({len(key)} bytes; at least {MIN_KEY_BYTES})"
        )
    return key


class AuditCheck(BaseModel):
    """What ``verify`` found: ok, or the first bad record (its line and seq) and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    records: int  # records that checked out (before the first bad one)
    problem: str | None = None
    line: int | None = None
    seq: int | None = None
    keyed: bool = False  # the log's records are HMAC-keyed
    anchored: bool = False  # a head anchor exists and matches the log
    warnings: tuple[str, ...] = ()


class AuditRecords(BaseModel):
    """The readable records of a log, and the damaged lines that were skipped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    records: tuple[dict[str, Any], ...]
    skipped_lines: tuple[int, ...] = ()

    @property
    def skipped(self) -> int:
        return len(self.skipped_lines)


class _Head(BaseModel):
    """``<log>.head``: how long the log was after the last append, and its last hash."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    count: int
    last: str
    updated: str
    alg: Alg
    keyed_since: int | None = None  # seq of the first keyed record
    mac: str | None = None

    def expected_mac(self, key: bytes) -> str:
        body = _canonical(self.model_dump(exclude={"mac"}))
        return hmac.new(key, _HEAD_DOMAIN + body.encode(), hashlib.sha256).hexdigest()


class _Damaged(Exception):
    def __init__(self, problem: str, seq: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.seq = seq


_FIELDS: Mapping[str, tuple[type, ...]] = {
    "seq": (int,),
    "ts": (str,),
    "kind": (str,),
    "run_id": (str, type(None)),
    "prev": (str,),
    "hash": (str,),
}


def _parse(raw: bytes) -> dict[str, Any]:
    """One line as a record with the fields it must have, or _Damaged saying what is wrong."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Damaged("damaged line (not UTF-8)") from exc
    except ValueError as exc:
        raise _Damaged("damaged line (not JSON)") from exc
    if not isinstance(record, dict):
        raise _Damaged("damaged line (not a JSON object)")
    seq = record.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    missing = [f for f in (*_FIELDS, "data") if f not in record]
    if missing:
        raise _Damaged(f"damaged record (missing {', '.join(missing)})", seq)
    wrong = [
        f
        for f, types in _FIELDS.items()
        if not isinstance(record[f], types) or isinstance(record[f], bool)
    ]
    if "alg" in record and record["alg"] not in (SHA256, HMAC_SHA256):
        wrong.append("alg")
    if wrong:
        raise _Damaged(f"damaged record (bad {', '.join(wrong)})", seq)
    return record


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last record
    return lines


class AuditLog:
    """The audit log at ``path``. With ``key``, records and head are HMAC-SHA256 under it;
    with ``journal``, each new head is also sent to the system journal."""

    def __init__(self, path: Path, key: bytes | None = None, journal: bool = False) -> None:
        if key is not None and not key:
            raise AuditError("the audit key is empty")
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self._key = key
        self.journal = journal
        self._journal_warned = False

    @classmethod
    def from_settings(cls, settings: Settings, path: Path | None = None) -> AuditLog:
        """``<state_dir>/audit.jsonl`` (or ``path``), keyed by VERIS_AUDIT_KEY_FILE and
        journalled if VERIS_AUDIT_JOURNAL is set. AuditError if the key file is unsafe."""
        key = load_key(settings.audit_key_file) if settings.audit_key_file else None
        return cls(path or settings.state_dir / AUDIT_FILE, key=key, journal=settings.audit_journal)

    @property
    def keyed(self) -> bool:
        return self._key is not None

    # -- writing ----------------------------------------------------------------------

    def append(
        self, kind: str, data: Mapping[str, Any], run_id: str | None = None
    ) -> dict[str, Any]:
        """Add one record, chained to the previous one, and move the head. Safe across processes.

        Refuses (AuditError) to extend a log that no longer matches its head, or a keyed log
        without the key: either would bury the evidence under a fresh head.
        """
        return self.append_many([(kind, data, run_id)])[0]

    def append_many(
        self, entries: Sequence[tuple[str, Mapping[str, Any], str | None]]
    ) -> list[dict[str, Any]]:
        """Add several records (kind, data, run_id), chained in order, under one lock, with
        one write and one fsync of the log and one move of the head for them all: a group
        commit. Once it returns, every one of them is on disk.

        A writer killed between the records and the head leaves the log up to the whole
        batch ahead of its head, chained from it: the next append carries on (and ``verify``
        warns), as after an ``append`` cut short (at most ``MAX_AHEAD`` records).
        """
        if not entries:
            return []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "r+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                last, needs_newline = self._last(fh)
                head = self._head_for_append(last, fh)
                seq = last["seq"] if last else 0
                prev = last["hash"] if last else GENESIS
                alg: Alg = HMAC_SHA256 if self._key else SHA256
                keyed_since = head.keyed_since if head else None
                if keyed_since is None and last is not None and last.get("alg") == HMAC_SHA256:
                    # the first keyed record, written ahead of the head
                    keyed_since = min(last["seq"], head.count + 1) if head else last["seq"]
                if keyed_since is None and self._key:
                    keyed_since = seq + 1
                records: list[dict[str, Any]] = []
                lines = [b"\n"] if needs_newline else []
                for kind, data, run_id in entries:
                    seq += 1
                    body = {
                        "seq": seq,
                        "ts": datetime.now(UTC).isoformat(),
                        "kind": kind,
                        "run_id": run_id,
                        "data": redact(data),
                        "prev": prev,
                        "alg": alg,
                    }
                    record = {**body, "hash": _digest(prev, body, self._key)}
                    records.append(record)
                    prev = record["hash"]
                    line = json.dumps(record, sort_keys=True, default=str) + "\n"
                    lines.append(line.encode())
                fh.write(b"".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
                new_head = self._write_head(seq, prev, alg, keyed_since)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc}") from exc
        if self.journal:  # outside the lock: the journal may be slow
            self._send_to_journal(new_head)
        return records

    def _last(self, fh: Any) -> tuple[dict[str, Any] | None, bool]:
        """The last record (None in an empty log) and whether its line lacks its newline."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return None, False
        window = _TAIL_WINDOW
        while True:  # widen the window until it holds the whole last line
            start = max(0, size - window)
            fh.seek(start)
            data = fh.read()
            lines = _lines(data)
            if start == 0 or len(lines) > 1:
                break
            window *= 4
        try:
            if not lines:
                raise _Damaged("damaged line (empty)")
            return _parse(lines[-1]), not data.endswith(b"\n")
        except _Damaged as exc:
            raise AuditError(
                f"the audit log's last record is damaged ({exc.problem}); "
                f"run `veris-remediate audit verify`"
            ) from exc

    def _head_for_append(self, last: dict[str, Any] | None, fh: Any = None) -> _Head | None:
        head, problem = self._read_head()
        hint = "run `veris-remediate audit verify`; docs/AUDIT.md says how to recover"
        if problem:
            raise AuditError(f"the audit head anchor {self.head_path} is damaged; {hint}")
        if head is None:
            if last is not None and "alg" in last:
                raise AuditError(
                    f"the audit head anchor {self.head_path} is missing "
                    f"but the log was anchored; {hint}"
                )
            return None  # a new log, or a log from before anchors: this append anchors it
        seq, hash_ = (last["seq"], last["hash"]) if last else (0, GENESIS)
        in_step = seq == head.count and hash_ == head.last
        # A writer that died between its records and the head leaves the log ahead of it:
        # one record (``append``), or up to a whole batch (``append_many``).
        one_ahead = last is not None and seq == head.count + 1 and last["prev"] == head.last
        if not (in_step or one_ahead) and fh is not None and last is not None:
            one_ahead = head.count < seq <= head.count + MAX_AHEAD and self._chains_from(fh, head)
        if not (in_step or one_ahead):
            raise AuditError(
                f"the audit log does not match its head anchor (head says {head.count} "
                f"records, the log ends at seq {seq}); {hint}"
            )
        last_keyed = last is not None and last.get("alg") == HMAC_SHA256
        if self._key is None and (head.alg == HMAC_SHA256 or last_keyed):
            raise AuditError(
                f"the audit log {self.path} is keyed ({HMAC_SHA256}) and no key was given "
                f"(set VERIS_AUDIT_KEY_FILE)"
            )
        if self._key is not None and head.alg == HMAC_SHA256:
            if not hmac.compare_digest(head.mac or "", head.expected_mac(self._key)):
                raise AuditError(f"the audit head anchor does not carry this key's MAC; {hint}")
        elif last_keyed and in_step:
            raise AuditError(f"the audit head anchor is not keyed but the log is; {hint}")
        return head

    def _chains_from(self, fh: Any, head: _Head) -> bool:
        """Whether the records after the head's last one (the tail of a batch whose writer
        died before moving the head) follow on from it, seq by seq and hash by hash."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        window = _TAIL_WINDOW
        while True:  # widen until the window holds the head's last record
            start = max(0, size - window)
            fh.seek(start)
            lines = _lines(fh.read())
            if start > 0:
                lines = lines[1:]  # the first line may be cut
            try:
                records = [_parse(line) for line in lines]
            except _Damaged:
                return False
            if start == 0 or (records and records[0]["seq"] <= head.count):
                break
            window *= 4
        anchor = {"seq": 0, "hash": GENESIS} if head.count == 0 else None
        at = [n for n, r in enumerate(records) if r["seq"] == head.count]
        if at:
            anchor, records = records[at[0]], records[at[0] + 1 :]
        if anchor is None or anchor["hash"] != head.last:
            return False
        return all(
            b["seq"] == a["seq"] + 1 and b["prev"] == a["hash"]
            for a, b in itertools.pairwise([anchor, *records])
        )

    def _write_head(self, count: int, last: str, alg: Alg, keyed_since: int | None) -> _Head:
        head = _Head(
            count=count,
            last=last,
            updated=datetime.now(UTC).isoformat(),
            alg=alg,
            keyed_since=keyed_since,
        )
        if self._key:
            head = head.model_copy(update={"mac": head.expected_mac(self._key)})
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write((json.dumps(head.model_dump(), sort_keys=True) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.head_path)
        dir_fd = os.open(self.head_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return head

    def _send_to_journal(self, head: _Head) -> None:
        message = json.dumps({"log": str(self.path), **head.model_dump()}, sort_keys=True)
        errors: list[str] = []
        for argv in (
            ["systemd-cat", "-t", "veris-audit"],
            ["logger", "--socket-errors=on", "-t", "veris-audit"],
        ):
            try:
                proc = subprocess.run(
                    argv, input=message, text=True, capture_output=True, timeout=5, check=False
                )
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{argv[0]}: {exc}")
                continue
            if proc.returncode == 0:
                return
            errors.append(f"{argv[0]}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
        if not self._journal_warned:
            self._journal_warned = True
            logger.warning(
                "audit head not sent to the system journal (%s); the log itself is written",
                "; ".join(errors),
            )

    # -- reading ----------------------------------------------------------------------

    @contextmanager
    def _locked_lines(self) -> Iterator[Iterator[bytes]]:
        """The log's lines (newline removed) under a shared lock, so no append is half-seen;
        none if the log does not exist. Streamed: a long log is not read into memory."""
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            yield iter(())
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            yield (line[:-1] if line.endswith(b"\n") else line for line in fh)

    def _read_head(self) -> tuple[_Head | None, str | None]:
        try:
            text = self.head_path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"unreadable ({exc.strerror})"
        try:
            return _Head.model_validate_json(text), None
        except PydanticValidationError as exc:
            return None, f"damaged ({exc.error_count()} problem(s))"

    def read(self) -> AuditRecords:
        """Every record that parses; damaged lines are skipped and counted, never raised."""
        records: list[dict[str, Any]] = []
        skipped: list[int] = []
        try:
            with self._locked_lines() as lines:
                for lineno, raw in enumerate(lines, start=1):
                    try:
                        records.append(_parse(raw))
                    except _Damaged:
                        skipped.append(lineno)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from exc
        return AuditRecords(records=tuple(records), skipped_lines=tuple(skipped))

    def records(self) -> list[dict[str, Any]]:
        return list(self.read().records)

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        return self.records()[-n:] if n > 0 else []

    # -- verifying --------------------------------------------------------------------

    def verify(self) -> AuditCheck:
        """Walk the chain and compare it with the head; name the first bad record. Never raises."""
        try:
            with self._locked_lines() as lines:
                head, head_problem = self._read_head()
                return _Verifier(self.head_path, self._key, head, head_problem).run(lines)
        except OSError as exc:
            return AuditCheck(ok=False, records=0, problem=f"cannot read the audit log: {exc}")


class _Verifier:
    """One walk over the log's lines; ``run`` returns the first failure or the verdict."""

    def __init__(
        self, head_path: Path, key: bytes | None, head: _Head | None, head_problem: str | None
    ) -> None:
        self.head_path, self.key = head_path, key
        self.head, self.head_problem = head, head_problem
        self.count, self.prev, self.last_line = 0, GENESIS, 0
        self.first_keyed: int | None = None  # seq
        self.unchecked: tuple[int, int] | None = None  # (line, seq) of the first unverifiable
        self.any_alg = False
        self.hash_at_head = GENESIS if head and head.count == 0 else None

    def fail(self, problem: str, line: int | None, seq: int | None = None) -> AuditCheck:
        return AuditCheck(
            ok=False,
            records=self.count,
            problem=problem,
            line=line,
            seq=seq,
            keyed=self.first_keyed is not None,
        )

    def run(self, lines: Iterator[bytes]) -> AuditCheck:
        for lineno, raw in enumerate(lines, start=1):
            try:
                record = _parse(raw)
            except _Damaged as exc:
                return self.fail(exc.problem, lineno, exc.seq)
            bad = self.check(record, lineno)
            if bad:
                return self.fail(bad, lineno, record["seq"])
            self.last_line = lineno
        return self.against_head()

    def check(self, record: dict[str, Any], lineno: int) -> str | None:
        seq, expected = record["seq"], self.count + 1
        if seq != expected:
            what = "repeated or out of order" if seq < expected else "records missing before it"
            return f"sequence broken: expected seq {expected}, found {seq} ({what})"
        if record["prev"] != self.prev:
            return "chain broken: prev is not the previous record's hash (removed or reordered)"
        alg = record.get("alg")
        if alg is None and self.any_alg:
            return "record without alg after records with one (rewritten)"
        if alg != HMAC_SHA256 and self.first_keyed is not None:
            return "unkeyed record after keyed records (rewritten without the key)"
        body = {k: v for k, v in record.items() if k != "hash"}
        if alg == HMAC_SHA256:
            if self.first_keyed is None:
                self.first_keyed = seq
            if self.key is None:
                self.unchecked = self.unchecked or (lineno, seq)
            elif not hmac.compare_digest(_digest(self.prev, body, self.key), record["hash"]):
                return (
                    "record edited or chain recomputed without the key "
                    "(HMAC mismatch; or the wrong key)"
                )
        elif not hmac.compare_digest(_digest(self.prev, body), record["hash"]):
            return "record edited (hash mismatch)"
        self.any_alg = self.any_alg or alg is not None
        self.prev, self.count = record["hash"], seq
        if self.head and seq == self.head.count:
            self.hash_at_head = record["hash"]
        return None

    def against_head(self) -> AuditCheck:
        head, count, warnings = self.head, self.count, []
        anchored = False
        if self.head_problem:
            return self.fail(f"head anchor {self.head_path} is {self.head_problem}", None)
        if head is None:
            if count and self.any_alg:
                return self.fail(
                    f"head anchor {self.head_path} is missing (deleted?) "
                    f"but the log was written with one",
                    None,
                )
            if count:
                warnings.append("no head anchor yet (an older log; the next append creates it)")
        else:
            bad = self.head_mismatch(head, warnings)
            if bad:
                return bad
            anchored = True
        if self.unchecked:
            line, seq = self.unchecked
            return self.fail(
                f"cannot check: the log is keyed ({HMAC_SHA256}) from seq {seq} "
                f"and no key was given (set VERIS_AUDIT_KEY_FILE)",
                line,
                seq,
            )
        if self.key is not None and count and self.first_keyed is None:
            warnings.append(
                "a key is configured but no record is keyed yet; if records were written "
                "with this key before, the log has been replaced"
            )
        if self.first_keyed is not None and self.first_keyed > 1:
            warnings.append(
                f"records 1-{self.first_keyed - 1} were written before the key was configured"
                " (they are covered by the keyed records after them)"
            )
        return AuditCheck(
            ok=True,
            records=count,
            keyed=self.first_keyed is not None,
            anchored=anchored,
            warnings=tuple(warnings),
        )

    def head_mismatch(self, head: _Head, warnings: list[str]) -> AuditCheck | None:
        count = self.count
        if head.alg == HMAC_SHA256 and self.key is not None:
            if not hmac.compare_digest(head.mac or "", head.expected_mac(self.key)):
                return self.fail(
                    "head anchor edited or forged (MAC mismatch; or the wrong key)", None
                )
        elif head.alg == HMAC_SHA256 and self.unchecked is None:
            self.unchecked = (self.last_line or 1, head.count)
        if (
            head.alg != HMAC_SHA256
            and self.first_keyed is not None
            and (self.first_keyed <= head.count)
        ):
            return self.fail("head anchor is not keyed but the log is (head replaced)", None)
        if count < head.count:
            return self.fail(
                f"log truncated: head says {head.count} records, log has {count}",
                self.last_line + 1,
                count + 1,
            )
        if count == head.count and self.prev != head.last:
            return self.fail(
                f"the last record (seq {count}) differs from the head anchor "
                f"(replaced, or the chain recomputed)",
                self.last_line,
                count,
            )
        if count > head.count:
            if self.hash_at_head != head.last or count > head.count + MAX_AHEAD:
                return self.fail(
                    f"log has {count} records but the head anchor says {head.count} "
                    f"(records added or rewritten behind the writer's back)",
                    self.last_line,
                    count,
                )
            # Chained through the head: a writer (or a batch of records written with one
            # fsync) stopped before moving it.
            behind = "one record" if count == head.count + 1 else f"{count - head.count} records"
            warnings.append(
                f"head anchor is {behind} behind (a writer stopped before updating it); "
                "the next append brings it up to date"
            )
        first_keyed = (
            self.first_keyed if self.first_keyed and self.first_keyed <= head.count else None
        )
        if head.keyed_since != first_keyed:
            head_says = f"seq {head.keyed_since}" if head.keyed_since else "not keyed"
            log_says = f"seq {first_keyed}" if first_keyed else "not keyed"
            return self.fail(f"head anchor says keyed from {head_says}, log from {log_says}", None)
        return None
