"""Reports of config_repair: the repair plan, the files saved before it, their restoration.

The check run validates every declared config file on the host, and for each one that
fails, the last-known-good copies from the baseline store (newest confirmed first), each
from a private temp file; the plan names the copy to restore. The apply run restores
exactly that copy after saving the current file (the snapshot); the rollback puts the
saved bytes back and says whether every file hashes as before.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, StringConstraints

from .base import (
    Assessment,
    Blocker,
    Finding,
    Restoration,
    Scope,
    Signal,
    Snapshot,
    report_kind,
)
from .service import UnitState, unit_mismatches

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# Falling back to an older copy means the newest one no longer validates: what else
# changed on the host since may matter too.
FALLBACK_PENALTY = 0.1


def _short(sha256: str | None) -> str:
    return sha256[:12] if sha256 else "none"


class CandidateCopy(BaseModel):
    """One last-known-good copy of a file, validated on the host from a private temp file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: Sha256
    last_seen: str
    valid: bool
    errors: tuple[str, ...] = ()


class PlannedFile(BaseModel):
    """One declared config file: does it validate, and which copy would replace it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    exists: bool
    sha256: Sha256 | None
    valid: bool
    errors: tuple[str, ...]
    # The copies tried (only for a file that does not validate), newest confirmed first.
    tried: tuple[CandidateCopy, ...]
    # The copy the repair restores: the newest tried one that validates.
    candidate: CandidateCopy | None

    @property
    def fallback(self) -> bool:
        """True when newer copies were tried and failed before the chosen one."""
        return bool(self.candidate and self.tried and self.tried[0].sha256 != self.candidate.sha256)


@report_kind("config.plan")
class ConfigPlan(Assessment):
    """config_repair's check run: which config files fail validation, what would replace them."""

    kind: Literal["config.plan"]
    files: tuple[PlannedFile, ...]

    @property
    def invalid(self) -> tuple[PlannedFile, ...]:
        return tuple(f for f in self.files if not f.valid)

    def problem_present(self) -> bool:
        return bool(self.invalid)

    def blocker(self) -> Blocker | None:
        stuck = [f for f in self.invalid if f.candidate is None]
        if not stuck:
            return None
        parts = []
        for f in stuck:
            tried = f"{len(f.tried)} tried" if f.tried else "none recorded"
            parts.append(f"{f.path} ({tried})")
        return Blocker(
            code="no_valid_baseline",
            reason="no last-known-good copy validates on the host for " + ", ".join(parts),
        )

    def signals(self) -> list[Signal]:
        return [
            Signal(
                reason=f"the newest last-known-good copy of {f.path} no longer validates; "
                f"an older one ({_short(f.candidate.sha256)}) would be restored",
                penalty=FALLBACK_PENALTY,
            )
            for f in self.invalid
            if f.candidate is not None and f.fallback
        ]

    def restricted(self, scope: Scope) -> Self:
        # Only declared files, and only copies the planner handed out from the store.
        allowed = set(scope.baseline_sha256)
        files = []
        for f in self.files:
            if f.path not in scope.config_files:
                continue
            candidate = f.candidate if f.candidate and f.candidate.sha256 in allowed else None
            tried = tuple(t for t in f.tried if t.sha256 in allowed)
            files.append(f.model_copy(update={"candidate": candidate, "tried": tried}))
        return self.model_copy(update={"files": tuple(files)})

    def describe(self) -> str:
        if not self.invalid:
            return "every declared config file validates"
        parts = []
        for f in self.invalid:
            if f.candidate is None:
                parts.append(f"{f.path} does not validate and no recorded copy does")
            else:
                parts.append(
                    f"{f.path} does not validate; last-known-good copy "
                    f"{_short(f.candidate.sha256)} (confirmed {f.candidate.last_seen}) does"
                )
        return "; ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        out: list[Finding] = []
        for f in self.files:
            if f.valid:
                message = f"configuration {f.path} validates"
                out.append(Finding(host=host, severity="info", message=message))
                continue
            what = "is missing" if not f.exists else "does not validate"
            errors = "; ".join(f.errors[:3])
            message = f"configuration {f.path} {what}" + (f": {errors}" if errors else "")
            out.append(Finding(host=host, severity="critical", message=message))
            for t in f.tried:
                if not t.valid:
                    message = (
                        f"last-known-good copy {_short(t.sha256)} of {f.path} no longer "
                        f"validates: {'; '.join(t.errors[:3])}"
                    )
                    out.append(Finding(host=host, severity="warning", message=message))
            if f.candidate is not None:
                message = (
                    f"last-known-good copy {_short(f.candidate.sha256)} of {f.path} "
                    f"(confirmed {f.candidate.last_seen}) validates on the host"
                )
                out.append(Finding(host=host, severity="info", message=message))
            else:
                message = f"no last-known-good copy of {f.path} validates on the host"
                out.append(Finding(host=host, severity="critical", message=message))
        return out


class SavedFile(BaseModel):
    """A config file as it was before the repair; its bytes were fetched to the controller."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    existed: bool
    sha256: Sha256 | None
    mode: str | None
    owner: str | None
    group: str | None


@report_kind("config.snapshot")
class ConfigSnapshot(Snapshot):
    """config_repair's record before it replaces anything: the files and the units' states."""

    kind: Literal["config.snapshot"]
    files: tuple[SavedFile, ...]
    units: tuple[UnitState, ...]

    def describe(self) -> str:
        parts = [
            f"{f.path} (sha256 {_short(f.sha256)}, {f.mode} {f.owner}:{f.group})"
            if f.existed
            else f"{f.path} (absent)"
            for f in self.files
        ]
        parts += [f"{u.unit} was {u.active_state}" for u in self.units]
        return ", ".join(parts) or "nothing saved"

    def restricted(self, scope: Scope) -> Self:
        # The rollback writes only declared files and touches only the plan's units.
        return self.model_copy(
            update={
                "files": tuple(f for f in self.files if f.path in scope.config_files),
                "units": tuple(u for u in self.units if u.unit in scope.units),
            }
        )


class RestoredFile(BaseModel):
    """A config file after the rollback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    exists: bool
    sha256: Sha256 | None


@report_kind("config.rollback")
class ConfigRollback(Restoration):
    """config_repair's rollback: the files and units now, and the role's own verdict."""

    kind: Literal["config.rollback"]
    files: tuple[RestoredFile, ...]
    units: tuple[UnitState, ...]
    # Every file hashes as in the snapshot (or is absent again) and the units match.
    restored: bool

    def describe(self) -> str:
        parts = [
            f"{f.path} sha256 {_short(f.sha256)}" if f.exists else f"{f.path} absent"
            for f in self.files
        ]
        parts += [f"{u.unit}={u.active_state}" for u in self.units]
        return ", ".join(parts) or "nothing restored"

    def is_restored(self) -> bool:
        return self.restored

    def mismatches(self, snapshot: Snapshot) -> list[str]:
        if not isinstance(snapshot, ConfigSnapshot):
            return [f"a {snapshot.kind} snapshot cannot be compared with config files"]
        now = {f.path: f for f in self.files}
        problems: list[str] = []
        for before in snapshot.files:
            after = now.get(before.path)
            if after is None:
                problems.append(f"rollback did not report {before.path}")
            elif after.exists != before.existed:
                was, now_is = ("present", "absent") if before.existed else ("absent", "present")
                problems.append(f"{before.path} was {was} before, is {now_is} now")
            elif before.existed and after.sha256 != before.sha256:
                problems.append(
                    f"{before.path} hashes {_short(after.sha256)} now, "
                    f"not {_short(before.sha256)} as before"
                )
        return problems + unit_mismatches(snapshot.units, self.units)
