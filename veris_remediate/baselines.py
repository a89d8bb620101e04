"""The baseline store: last-known-good copies of declared config files, on the controller.

The only writer of ``<state dir>/baselines``. A copy is recorded (``veris-remediate
baseline``) only while its service is healthy and its validator passes on the host;
config repair restores the newest copy that validates again on the host, from here.

Layout, every file 0600 and every directory 0700::

    baselines/<host>/<sha256 of the config path>/<sha256 of the content>   the bytes
    baselines/<host>/<sha256 of the config path>/index.json                 BaselineCopy list

Content-addressed: recording a copy that is already there only moves its ``last_seen``,
and "newest" means most recently confirmed good.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from .exceptions import VerisError

_SHA256 = re.compile(r"[0-9a-f]{64}")
KEEP_COPIES = 10  # per config file; the least recently confirmed go first


class BaselineCopy(BaseModel):
    """One last-known-good copy of one config file of one host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    service: str
    path: str
    sha256: str
    size: int
    mode: str
    owner: str
    group: str
    recorded_at: str
    last_seen: str
    run_id: str
    src: str  # the copy on the controller (a path inside this store)


_INDEX = TypeAdapter(list[BaselineCopy])


class BaselineEntry(BaseModel):
    """What ``baseline`` did with one file (or one service, or one host)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    service: str | None = None
    path: str | None = None
    sha256: str | None = None
    # recorded: a content not stored before; confirmed: stored, now seen good again
    status: Literal["recorded", "confirmed", "skipped", "failed"]
    reason: str = ""


class BaselineResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    entries: tuple[BaselineEntry, ...]
    exit_code: int


def _key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _intact(copy: BaselineCopy) -> bool:
    try:
        return file_sha256(Path(copy.src)) == copy.sha256
    except OSError:
        return False


class BaselineStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "baselines"

    def _dir(self, host: str, path: str) -> Path:
        return self.root / host / _key(path)

    def _read_index(self, directory: Path) -> list[BaselineCopy]:
        try:
            return _INDEX.validate_json((directory / "index.json").read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, PydanticValidationError) as exc:
            raise VerisError(f"baseline index {directory}/index.json is damaged: {exc}") from exc

    def copies(self, host: str, paths: tuple[str, ...] | None = None) -> list[BaselineCopy]:
        """Copies for ``host`` (only of ``paths`` when given), most recently confirmed first."""
        base = self.root / host
        if not base.is_dir():
            return []
        found: list[BaselineCopy] = []
        for directory in sorted(base.iterdir()):
            for copy in self._read_index(directory):
                # The bytes must still be what the index says; anything else is not a baseline.
                if (paths is None or copy.path in paths) and _intact(copy):
                    found.append(copy)
        return sorted(found, key=lambda c: c.last_seen, reverse=True)

    def record(
        self,
        *,
        host: str,
        service: str,
        path: str,
        fetched: Path,
        sha256: str,
        mode: str,
        owner: str,
        group: str,
        run_id: str,
    ) -> tuple[BaselineCopy, bool]:
        """Store ``fetched`` as a copy of ``path``; True when it is a content not seen before.

        The fetched bytes must hash to ``sha256`` (what the host reported), else nothing
        is recorded.
        """
        if not _SHA256.fullmatch(sha256) or file_sha256(fetched) != sha256:
            raise VerisError(f"baseline of {host}:{path}: the fetched copy does not match {sha256}")
        now = datetime.now(UTC).isoformat()
        directory = self._dir(host, path)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        index = self._read_index(directory)
        dest = directory / sha256
        old = next((c for c in index if c.sha256 == sha256), None)
        if old is None:
            tmp = directory / f".{sha256}.tmp"
            shutil.copyfile(fetched, tmp)
            tmp.chmod(0o600)
            os.replace(tmp, dest)
        copy = BaselineCopy(
            host=host, service=service, path=path, sha256=sha256, size=dest.stat().st_size,
            mode=mode, owner=owner, group=group,
            recorded_at=old.recorded_at if old else now, last_seen=now,
            run_id=old.run_id if old else run_id, src=str(dest),
        )  # fmt: skip
        kept = sorted(
            [copy, *(c for c in index if c.sha256 != sha256)],
            key=lambda c: c.last_seen,
            reverse=True,
        )
        for dropped in kept[KEEP_COPIES:]:
            (directory / dropped.sha256).unlink(missing_ok=True)
        self._write_index(directory, kept[:KEEP_COPIES])
        return copy, old is None

    def _write_index(self, directory: Path, copies: list[BaselineCopy]) -> None:
        tmp = directory / ".index.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps([c.model_dump() for c in copies], indent=2) + "\n")
        os.replace(tmp, directory / "index.json")
