"""Reports of cache_clear: what the check run found and predicted, and what the apply run did.

``cache.plan`` (the assessment) lists, for every declared cache dir in scope, its state,
whether the alert selected it, and exactly the entries that would go; plus the host-wide
relief (journal vacuum, ``apt-get clean``, page cache) the host declares. ``cache.result``
(the verification) says, per dir, what was deleted, what vanished by itself, what failed
and what was left, and the bytes freed. The fix is irreversible: there is no snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from .base import (
    Assessment,
    Blocker,
    Finding,
    Scope,
    Severity,
    Signal,
    Verification,
    report_kind,
)

DirState = Literal[
    "ok", "missing", "not_directory", "symlink", "through_symlink", "unreadable", "invalid"
]
EntryType = Literal["file", "dir", "symlink", "other"]
UNSAFE_PENALTY = 0.1  # per selected dir refused as unsafe while others are cleared
SHOWN_NAMES = 8  # entry names listed in one finding


def human(n: int) -> str:
    """Bytes for people, in binary units (20.0 MiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def plain_name(name: str) -> bool:
    """One path component, plain text: the only entry names an apply run is given."""
    if not name or name in (".", "..") or "/" in name or len(name) > 255:
        return False
    return not any(ord(c) < 32 or ord(c) == 127 for c in name)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _entries(n: int) -> str:
    return _count(n, "entry", "entries")


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CacheEntry(_Frozen):
    """A top-level entry of a cache dir: what the check run predicts will go."""

    name: str
    type: EntryType
    bytes: int = Field(ge=0)  # allocated bytes below it, each inode counted once


class SkippedEntry(_Frozen):
    """An entry that will be left, and why (a filesystem mounted inside, an odd name…)."""

    name: str
    reason: str


class CacheDirPlan(_Frozen):
    """One declared cache dir as the check run found it."""

    path: str
    state: DirState
    detail: str  # why it was refused; empty when ok
    selected: bool  # the alert's labels leave it in
    why: str  # why it was not selected; empty when selected
    on_filesystem: bool | None  # on the alert's filesystem; None without a mountpoint label
    bytes: int = Field(ge=0)
    entries: tuple[CacheEntry, ...]
    skipped: tuple[SkippedEntry, ...]

    @property
    def usable(self) -> bool:
        return self.selected and self.state == "ok"

    @property
    def unsafe(self) -> bool:
        """Selected but refused for what it is (a symlink…), not merely absent."""
        return self.selected and self.state not in ("ok", "missing")


class FilesystemUsage(_Frozen):
    """The filesystem an alert's ``mountpoint`` label names, measured through a declared dir."""

    mountpoint: str
    found: bool  # something is mounted there on the host
    used_percent: float | None  # None: no declared dir on it to measure through
    size_bytes: int | None
    avail_bytes: int | None


class RemovableFile(_Frozen):
    path: str
    bytes: int = Field(ge=0)


class JournalPlan(_Frozen):
    """What ``journalctl --vacuum-size`` would remove (systemd's own rule, predicted)."""

    vacuum_size: str
    on_filesystem: bool | None
    usage_bytes: int = Field(ge=0)  # journal files now (active ones count towards the size)
    files: tuple[RemovableFile, ...]
    bytes: int = Field(ge=0)


class AptPlan(_Frozen):
    """What ``apt-get clean`` would remove."""

    on_filesystem: bool | None
    files: tuple[RemovableFile, ...]
    bytes: int = Field(ge=0)


class PageCachePlan(_Frozen):
    permitted: bool  # /proc/sys/vm/drop_caches is writable
    reason: str  # why not, when not
    container: str | None  # the container engine, when inside one


@report_kind("cache.plan")
class CachePlan(Assessment):
    """cache_clear's check run: is a declared cache full, and exactly what would go."""

    kind: Literal["cache.plan"]
    path_label: str | None
    mountpoint_label: str | None
    full_percent: int = Field(ge=0, le=100)
    dirs: tuple[CacheDirPlan, ...]
    filesystem: FilesystemUsage | None
    journal: JournalPlan | None
    apt: AptPlan | None
    page_cache: PageCachePlan | None

    def _usable(self) -> list[CacheDirPlan]:
        return [d for d in self.dirs if d.usable]

    def _unsafe(self) -> list[CacheDirPlan]:
        return [d for d in self.dirs if d.unsafe]

    def blocker(self) -> Blocker | None:
        declared = ", ".join(d.path for d in self.dirs) or "none"
        if self.path_label is not None and self.path_label not in {d.path for d in self.dirs}:
            return Blocker(
                code="path_not_declared",
                reason=f"the alert's path {self.path_label[:120]!r} is not a declared cache "
                f"dir of this host (declared: {declared}); nothing is touched",
            )
        mountpoint = self.mountpoint_label
        if mountpoint is not None and (self.filesystem is None or not self.filesystem.found):
            return Blocker(
                code="no_cache_dir_on_filesystem",
                reason=f"no filesystem is mounted at {mountpoint[:120]!r} on the host; "
                "nothing is touched",
            )
        if self._usable():
            return None
        if self._unsafe():
            refused = "; ".join(d.detail for d in self._unsafe())
            return Blocker(code="cache_dir_unsafe", reason=f"cache dir refused: {refused}")
        if mountpoint is not None:
            return Blocker(
                code="no_cache_dir_on_filesystem",
                reason=f"no declared cache dir ({declared}) is on the filesystem mounted at "
                f"{mountpoint[:120]!r}; nothing is touched",
            )
        return None

    def problem_present(self) -> bool:
        if self.blocker() is not None:
            return True  # the alert's claim cannot be checked: escalate, never not_needed
        if self.mountpoint_label is not None:
            fs = self.filesystem
            used = fs.used_percent if fs is not None else None
            return used is not None and used >= self.full_percent
        # A refused dir may hold anything: a person should look, so it counts.
        return any(d.entries or d.skipped for d in self._usable()) or bool(self._unsafe())

    def signals(self) -> list[Signal]:
        return [
            Signal(reason=f"cache dir refused, left alone: {d.detail}", penalty=UNSAFE_PENALTY)
            for d in self._unsafe()
        ]

    def restricted(self, scope: Scope) -> Self:
        # The apply run deletes by these names: only direct children of declared dirs in
        # this plan's scope, of dirs the check run found safe and selected, and never an
        # entry that is (or holds) a declared dir itself.
        declared = scope.cache_dirs

        def deletable(parent: str, name: str) -> bool:
            path = f"{parent}/{name}"
            inner = any(d == path or d.startswith(path + "/") for d in declared)
            return plain_name(name) and not inner

        dirs = tuple(
            d.model_copy(
                update={
                    "entries": tuple(e for e in d.entries if deletable(d.path, e.name))
                    if d.usable
                    else ()
                }
            )
            for d in self.dirs
            if d.path in declared
        )
        return self.model_copy(update={"dirs": dirs})

    def describe(self) -> str:
        parts: list[str] = []
        if self.path_label is not None:
            parts.append(f"the alert names path {self.path_label[:120]!r}")
        if self.mountpoint_label is not None:
            parts.append(f"the alert names mountpoint {self.mountpoint_label[:120]!r}")
        fs = self.filesystem
        if fs is not None and fs.used_percent is not None:
            parts.append(
                f"filesystem {fs.mountpoint} {fs.used_percent:.1f}% full "
                f"(threshold {self.full_percent}%)"
            )
        for d in self.dirs:
            if d.usable and d.entries:
                parts.append(f"{d.path} holds {human(d.bytes)} in {_entries(len(d.entries))}")
            elif d.usable:
                parts.append(f"{d.path} is empty")
            elif d.selected:
                parts.append(f"{d.path} refused ({d.state.replace('_', ' ')})")
        if not any(d.selected for d in self.dirs):
            parts.append("no declared cache dir selected")
        if self.journal is not None and self.journal.files:
            parts.append(f"journal vacuum could free {human(self.journal.bytes)}")
        if self.apt is not None and self.apt.files:
            parts.append(f"apt-get clean could free {human(self.apt.bytes)}")
        return "; ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        out: list[Finding] = []

        def add(severity: Severity, message: str) -> None:
            out.append(Finding(host=host, severity=severity, message=message))

        blocker = self.blocker()
        if blocker is not None and blocker.code != "cache_dir_unsafe":  # that one: per dir
            add("warning", blocker.reason)
        present = self.problem_present()
        would = "would" if present and blocker is None else "could"
        fs = self.filesystem
        if fs is not None and fs.used_percent is not None:
            add(
                "critical" if present else "info",
                f"filesystem {fs.mountpoint} is {fs.used_percent:.1f}% full "
                f"({human(fs.avail_bytes or 0)} available; threshold {self.full_percent}%)",
            )
        for d in self.dirs:
            if d.unsafe:
                add("warning", f"cache dir refused, nothing in it is touched: {d.detail}")
            elif d.selected and d.state == "missing":
                add("info", f"cache dir {d.path} does not exist")
            elif d.usable:
                add("info", self._dir_line(d, would))
                links = [e.name for e in d.entries if e.type == "symlink"]
                if links and would == "would":
                    add(
                        "info",
                        f"symlinks in {d.path} are removed as links, their targets untouched: "
                        + _listed(links),
                    )
                for s in d.skipped[:SHOWN_NAMES]:
                    add("warning", f"{d.path}/{s.name} is left alone: {s.reason}")
        if self.journal is not None:
            files = _count(len(self.journal.files), "archived file", "archived files")
            add(
                "info",
                f"journal vacuum to {self.journal.vacuum_size} {would} remove {files} "
                f"({human(self.journal.bytes)})",
            )
        if self.apt is not None:
            files = _count(len(self.apt.files), "file", "files")
            add("info", f"apt-get clean {would} remove {files} ({human(self.apt.bytes)})")
        if self.page_cache is not None and not self.page_cache.permitted:
            add("warning", f"page cache not dropped: {self.page_cache.reason}")
        return out

    @staticmethod
    def _dir_line(d: CacheDirPlan, would: str) -> str:
        if not d.entries:
            return f"cache dir {d.path} is empty"
        size = human(sum(e.bytes for e in d.entries))
        names = _listed([e.name for e in d.entries])
        if would != "would":
            return f"cache dir {d.path} holds {_entries(len(d.entries))} ({size}): {names}"
        return (
            f"cache dir {d.path}: {_entries(len(d.entries))} ({size}) would be deleted, "
            f"the directory itself kept: {names}"
        )


class EntryFailure(_Frozen):
    name: str
    error: str


class CacheDirResult(_Frozen):
    """One dir after the apply run."""

    path: str
    state: DirState  # as the apply run found it; not ok: nothing in it was touched
    detail: str
    still_directory: bool  # the same directory (device and inode) is still there
    deleted: tuple[str, ...]
    vanished: tuple[str, ...]  # predicted, but already gone when the apply run came
    failed: tuple[EntryFailure, ...]
    # There now and not in the plan: new since the preview, or left alone on purpose (a
    # filesystem mounted inside, an odd name, beyond max_entries: the plan says which).
    left: tuple[str, ...]
    bytes_freed: int = Field(ge=0)
    bytes_left: int = Field(ge=0)

    @property
    def ok(self) -> bool:
        return self.state == "ok" and self.still_directory and not self.failed


class ReliefResult(_Frozen):
    """What journalctl --vacuum-size or apt-get clean did."""

    ran: bool
    rc: int | None
    error: str
    removed: tuple[RemovableFile, ...]
    bytes_freed: int = Field(ge=0)
    not_removed: tuple[str, ...]  # predicted, still there
    unpredicted: tuple[str, ...]  # removed, but not in the preview (appeared since)


class PageCacheResult(_Frozen):
    dropped: bool
    reason: str
    cached_before: int | None
    cached_after: int | None


@report_kind("cache.result")
class CacheResult(Verification):
    """cache_clear's apply run: what went, what failed, what was left, bytes freed."""

    kind: Literal["cache.result"]
    dirs: tuple[CacheDirResult, ...]
    filesystem: FilesystemUsage | None  # usage now, when the alert named a mountpoint
    journal: ReliefResult | None
    apt: ReliefResult | None
    page_cache: PageCacheResult | None

    def bytes_freed(self) -> int:
        relief = sum(r.bytes_freed for r in (self.journal, self.apt) if r is not None)
        return sum(d.bytes_freed for d in self.dirs) + relief

    def passed(self) -> bool:
        # Every predicted entry is gone (deleted or vanished), every dir is still the same
        # directory, and the relief tools succeeded.
        tools = [r for r in (self.journal, self.apt) if r is not None]
        return all(d.ok for d in self.dirs) and all(r.rc == 0 for r in tools)

    def describe(self) -> str:
        parts = [f"freed {human(self.bytes_freed())}"]
        for d in self.dirs:
            if d.state != "ok":
                parts.append(f"{d.path} not touched ({d.detail})")
                continue
            text = f"{d.path}: {_entries(len(d.deleted))} deleted"
            if d.failed:
                text += f", {_entries(len(d.failed))} could not be deleted"
            if not d.still_directory:
                text += ", the directory is no longer the same"
            parts.append(text)
        for name, relief in (("journal vacuum", self.journal), ("apt-get clean", self.apt)):
            if relief is not None:
                status = "ok" if relief.rc == 0 else f"failed (rc {relief.rc})"
                parts.append(f"{name} {status}, {human(relief.bytes_freed)}")
        fs = self.filesystem
        if fs is not None and fs.used_percent is not None:
            parts.append(f"filesystem {fs.mountpoint} now {fs.used_percent:.1f}% full")
        return "; ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        out: list[Finding] = []

        def add(severity: Severity, message: str) -> None:
            out.append(Finding(host=host, severity=severity, message=message))

        for d in self.dirs:
            if d.state != "ok":
                add("critical", f"cache dir not touched at apply time: {d.detail}")
                continue
            add(
                "info",
                f"freed {human(d.bytes_freed)} from {d.path} ({_entries(len(d.deleted))} deleted)",
            )
            for f in d.failed[:SHOWN_NAMES]:
                add("critical", f"could not delete {d.path}/{f.name}: {f.error}")
            if not d.still_directory:
                add("critical", f"{d.path} is no longer the directory it was before the clear")
            if d.left:
                add(
                    "info",
                    f"{_entries(len(d.left))} of {d.path} not in the preview were left "
                    f"({human(d.bytes_left)}): {_listed(d.left)}",
                )
        for name, relief in (("journal vacuum", self.journal), ("apt-get clean", self.apt)):
            if relief is None:
                continue
            if relief.rc != 0:
                add("critical", f"{name} failed (rc {relief.rc}): {relief.error}")
            else:
                add(
                    "info",
                    f"{name} freed {human(relief.bytes_freed)} "
                    f"({_count(len(relief.removed), 'file', 'files')} removed)",
                )
            if relief.not_removed:
                add("warning", f"{name} left predicted files: {_listed(relief.not_removed)}")
            if relief.unpredicted:
                add(
                    "info",
                    f"{name} also removed files that appeared after the preview: "
                    + _listed(relief.unpredicted),
                )
        pc = self.page_cache
        if pc is not None:
            if pc.dropped:
                before = human(pc.cached_before) if pc.cached_before is not None else "?"
                after = human(pc.cached_after) if pc.cached_after is not None else "?"
                add("info", f"page cache dropped (cached: {before} -> {after})")
            else:
                add("warning", f"page cache not dropped: {pc.reason}")
        fs = self.filesystem
        if fs is not None and fs.used_percent is not None:
            add("info", f"filesystem {fs.mountpoint} is now {fs.used_percent:.1f}% full")
        return out
