"""Append-only, hash-chained JSON-lines audit log with secrets redacted; verify detects edits."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .exceptions import AuditError

GENESIS = "0" * 64
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|api_?key|authorization|private_key|credential|cookie", re.I
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
REDACTED = "[REDACTED]"


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking keys and bearer tokens masked."""
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
    return value


def _digest(prev: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + canonical).encode()).hexdigest()


class AuditCheck(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    records: int
    problem: str | None = None
    line: int | None = None


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(
        self, kind: str, data: Mapping[str, Any], run_id: str | None = None
    ) -> dict[str, Any]:
        """Add one record, chained to the previous one. Safe across processes."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "r+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                seq, prev = self._last(fh)
                body = {
                    "seq": seq + 1,
                    "ts": datetime.now(UTC).isoformat(),
                    "kind": kind,
                    "run_id": run_id,
                    "data": redact(data),
                    "prev": prev,
                }
                record = {**body, "hash": _digest(prev, body)}
                fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc}") from exc
        return record

    @staticmethod
    def _last(fh: Any) -> tuple[int, str]:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0, GENESIS
        # Records are small; the last one is within the final 256 KiB.
        fh.seek(max(0, size - 262_144))
        lines = fh.read().splitlines()
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        except (IndexError, ValueError, KeyError) as exc:
            raise AuditError(f"the audit log's last record is damaged: {exc}") from exc

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                out.append(json.loads(line))
        return out

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        return self.records()[-n:] if n > 0 else []

    def verify(self) -> AuditCheck:
        """Walk the chain: any edited, removed, reordered or inserted record breaks it."""
        if not self.path.exists():
            return AuditCheck(ok=True, records=0)
        prev, count = GENESIS, 0
        with self.path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    record = json.loads(line)
                    claimed = record.pop("hash")
                except (ValueError, KeyError, AttributeError):
                    return AuditCheck(
                        ok=False, records=count, problem="unreadable record", line=lineno
                    )
                if record.get("prev") != prev:
                    return AuditCheck(
                        ok=False,
                        records=count,
                        problem="chain broken (record removed or reordered)",
                        line=lineno,
                    )
                if record.get("seq") != count + 1:
                    return AuditCheck(ok=False, records=count, problem="sequence gap", line=lineno)
                if _digest(prev, record) != claimed:
                    return AuditCheck(
                        ok=False,
                        records=count,
                        problem="record edited (hash mismatch)",
                        line=lineno,
                    )
                prev, count = claimed, count + 1
        return AuditCheck(ok=True, records=count)
