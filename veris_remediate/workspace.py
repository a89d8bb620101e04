"""The state directory's only writer: run directories, run records, host locks, the brake file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .exceptions import EscalatedError, UsageError
from .planner import PlaybookStep
from .render import render_extravars, render_target_inventory

_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


class History(BaseModel):
    """One fix's recent outcomes on one host, which later decisions weigh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolved: int = 0
    rolled_back: int = 0
    failed: int = 0


class PreparedStep(BaseModel):
    """Where ansible-runner finds one step's files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: str
    check: bool
    private_data_dir: Path
    target_inventory: Path


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


class Workspace:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runs_dir = state_dir / "runs"

    def new_run_id(self) -> str:
        return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"

    def run_dir(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise UsageError(f"not a run id: {run_id[:40]!r}")
        return self.runs_dir / run_id

    def prepare_step(
        self,
        run_id: str,
        slot: str,
        step: PlaybookStep,
        hosts: str | Sequence[str],
        *,
        idle_timeout: int,
    ) -> PreparedStep:
        """Write one step's private data dir: !unsafe extra vars, target inventory, settings."""
        pdd = self.run_dir(run_id) / slot / step.phase
        # One private directory per remediation where runs may fetch files (snapshots),
        # shared by its check, apply and rollback runs.
        files = self.run_dir(run_id) / slot / "files"
        files.mkdir(parents=True, exist_ok=True, mode=0o700)
        extravars = {**step.extravars, "veris_controller_dir": str(files)}
        # ansible-runner passes an existing env/extravars as `-e @file` without parsing it.
        _write_private(pdd / "env" / "extravars", render_extravars(extravars))
        target = pdd / "target_inventory.yml"
        _write_private(
            target, render_target_inventory(*([hosts] if isinstance(hosts, str) else hosts))
        )
        # ansible-runner drops a `settings=` argument when env/settings is missing, so the
        # idle timeout only takes effect from this file.
        _write_private(pdd / "env" / "settings", json.dumps({"idle_timeout": idle_timeout}) + "\n")
        (pdd / "project").mkdir(exist_ok=True, mode=0o700)
        return PreparedStep(
            phase=step.phase, check=step.check, private_data_dir=pdd, target_inventory=target
        )

    def scrub(self, prepared: PreparedStep) -> None:
        """Delete the environment copy ansible-runner leaves in artifacts (it can hold secrets)."""
        for command in (prepared.private_data_dir / "artifacts").glob("*/command"):
            command.unlink(missing_ok=True)

    def control_dir(self, run_id: str) -> Path:
        """SSH ControlMaster sockets shared by one run's steps (closed when the run ends)."""
        path = Path("/tmp") / f"veris-cp-{run_id[-6:]}-{os.getpid()}"  # noqa: S108 - socket paths must stay short
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def write_record(self, run_id: str, name: str, data: Mapping[str, Any]) -> Path:
        path = self.run_dir(run_id) / f"{name}.json"
        _write_private(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def read_record(self, run_id: str, name: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UsageError(f"no run {run_id} (looked for {path})") from exc
        return data

    def list_runs(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if _RUN_ID.match(p.name))

    @contextlib.contextmanager
    def host_lock(self, host: str) -> Iterator[None]:
        """One remediation per host at a time, across processes; a busy host escalates."""
        locks = self.state_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(locks / f"{host}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise EscalatedError(
                    f"another remediation is in progress on {host}; not starting a second"
                ) from exc
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @property
    def history_file(self) -> Path:
        return self.state_dir / "history.jsonl"

    def append_history(self, host: str, fix: str, outcome: str) -> None:
        """Outcomes of applied fixes, which later decisions weigh."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps(
            {"ts": datetime.now(UTC).isoformat(), "host": host, "fix": fix, "outcome": outcome}
        )
        fd = os.open(self.history_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def history(self, host: str, fix: str, since: datetime) -> History:
        counts = {name: 0 for name in History.model_fields}
        try:
            lines = self.history_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return History()
        for line in lines:
            try:
                rec = json.loads(line)
                when = datetime.fromisoformat(rec["ts"])
            except (ValueError, KeyError, TypeError):
                continue
            outcome = rec.get("outcome")
            if (
                rec.get("host") == host
                and rec.get("fix") == fix
                and when >= since
                and (outcome in counts)
            ):
                counts[outcome] += 1
        return History.model_validate(counts)

    # The emergency brake is a file: it survives restarts and any process can see it.
    @property
    def brake_file(self) -> Path:
        return self.state_dir / "brake.json"

    def engage_brake(self, reason: str) -> None:
        record = {"reason": reason, "since": datetime.now(UTC).isoformat()}
        _write_private(self.brake_file, json.dumps(record) + "\n")

    def release_brake(self) -> None:
        self.brake_file.unlink(missing_ok=True)

    def brake(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.brake_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # An unreadable brake file is still a brake: fail safe.
            return {"reason": "brake file unreadable", "since": None}
        return data
