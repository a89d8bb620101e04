"""The general diagnosis report (``diag.general``), its findings and its likely causes."""

from __future__ import annotations

from typing import Literal

from ..base import Cause, Finding, Report, report_kind
from ._common import (
    Load,
    _Findings,
    _listed,
    _Model,
    _percent,
    _size,
)


class GeneralMemory(_Model):
    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int


class Filesystem(_Model):
    mountpoint: str
    fstype: str
    source: str
    size_bytes: int
    used_bytes: int
    avail_bytes: int
    used_percent: float  # as df counts it: used / (used + available)
    inodes_total: int
    inodes_used_percent: float | None
    read_only: bool

    def describe(self) -> str:
        inodes = (
            f", inodes {self.inodes_used_percent:.0f}% used"
            if self.inodes_used_percent is not None
            else ""
        )
        return (
            f"{self.mountpoint} ({self.fstype}) {self.used_percent:.0f}% full: "
            f"{_size(self.used_bytes)} used, {_size(self.avail_bytes)} available of "
            f"{_size(self.size_bytes)}{inodes}"
        )


class CacheDirUse(_Model):
    """A declared cache dir: the filesystem it is on, and what it holds."""

    path: str
    service: str | None
    exists: bool
    mountpoint: str | None
    bytes: int | None  # allocated; a lower bound when not complete
    entries: int
    complete: bool

    def describe(self) -> str:
        owner = f"{self.service}'s " if self.service else ""
        if not self.exists:
            return f"{owner}cache dir {self.path} does not exist (or is not a plain directory)"
        held = f"{'at least ' if not self.complete else ''}{_size(self.bytes)}"
        return f"{owner}cache dir {self.path} holds {held} in {self.entries} entries"


class Clock(_Model):
    synchronized: bool | None  # NTPSynchronized
    ntp_enabled: bool | None
    timezone: str | None
    time_service: str | None  # the active time sync unit
    now: str


class ErrorGroup(_Model):
    identifier: str | None
    unit: str | None
    message: str
    priority: int
    count: int
    last_seen: str | None


class RecentErrors(_Model):
    readable: bool
    total: int
    truncated: bool
    entries: tuple[ErrorGroup, ...]


class Lookup(_Model):
    name: str
    ok: bool
    addresses: tuple[str, ...]
    seconds: float
    error: str | None


class Dns(_Model):
    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    lookups: tuple[Lookup, ...]


class DefaultRoute(_Model):
    gateway: str
    interface: str


class Routes(_Model):
    ipv4: DefaultRoute | None
    ipv6: DefaultRoute | None


class GeneralThresholds(_Model):
    full_percent: float  # a filesystem this full is "full"
    inodes_full_percent: float


@report_kind("diag.general")
class GeneralDiagnosis(Report):
    """diag_general: uptime, load, memory, filesystems, clock, recent errors, DNS, routes.

    Causes and their confidence:

    - ``disk_full``: a writable filesystem at ``full_percent`` used or ``inodes_full_percent``
      of its inodes: 0.95 at 99% or nothing available, else 0.8. Rules out
      ``service_restart`` (a restart frees no space). Implies ``cache_clear`` when a declared
      cache dir is on a full filesystem, else escalate.
    - ``cache_dir_full``: a declared cache dir's filesystem is full: 0.9 when the cache dirs
      hold half of what is used there or more, 0.7 from a tenth, 0.4 below (clearing would
      free little). Implies ``cache_clear``; rules out ``service_restart``.
    - ``dns_failure``: a lookup failed: 0.8 for the host's own name, 0.7 for another name.
      Escalate.
    """

    kind: Literal["diag.general"]
    hostname: str
    container: str | None
    uptime_seconds: int
    load: Load
    cpus: int
    memory: GeneralMemory
    filesystems: tuple[Filesystem, ...]
    cache_dirs: tuple[CacheDirUse, ...]
    clock: Clock
    errors: RecentErrors
    dns: Dns
    routes: Routes
    window_minutes: int
    thresholds: GeneralThresholds

    def _full(self) -> list[Filesystem]:
        t = self.thresholds
        return [
            fs
            for fs in self.filesystems
            if not fs.read_only
            and (
                fs.used_percent >= t.full_percent
                or (fs.inodes_used_percent or 0.0) >= t.inodes_full_percent
            )
        ]

    def _caches_on(self, fs: Filesystem) -> list[CacheDirUse]:
        return [d for d in self.cache_dirs if d.exists and d.mountpoint == fs.mountpoint]

    def describe(self) -> str:
        full = self._full()
        days = self.uptime_seconds / 86400
        parts = [
            f"up {days:.1f} days",
            self.load.describe(self.cpus),
            f"{len(self.filesystems)} filesystem(s)"
            + (f", full: {_listed([fs.mountpoint for fs in full])}" if full else ""),
            f"{self.errors.total} error(s) in {self.window_minutes} min",
        ]
        return ", ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        full = {fs.mountpoint for fs in self._full()}
        hours = self.uptime_seconds / 3600
        f.add("info", f"up {hours:.1f} hours; {self.load.describe(self.cpus)}")
        mem = self.memory
        f.add("info", (
            f"memory: {_size(mem.available_bytes)} available of {_size(mem.total_bytes)}; "
            f"swap {_size(mem.swap_total_bytes - mem.swap_free_bytes)} used of "
            f"{_size(mem.swap_total_bytes)}"
        ))  # fmt: skip
        for fs in self.filesystems:
            f.add("critical" if fs.mountpoint in full else "info", fs.describe())
        for cache in self.cache_dirs:
            f.add("info", cache.describe())
        clock = self.clock
        if clock.synchronized:
            f.add("info", f"clock NTP-synchronized ({clock.time_service or 'time sync'})")
        elif self.container:
            f.add("info", f"clock: kept by the {self.container} container's host")
        else:
            f.add("warning", (
                "clock not NTP-synchronized"
                + ("" if clock.time_service else " (no time sync service is active)")
            ))  # fmt: skip
        errors = self.errors
        if not errors.readable:
            f.add("warning", "the journal could not be read: recent errors are unknown")
        elif errors.total:
            f.add("warning" if errors.total else "info",
                  f"{errors.total} error(s) in the journal in {self.window_minutes} min"
                  + (" (at least)" if errors.truncated else ""))  # fmt: skip
            for group in errors.entries[:5]:
                who = group.unit or group.identifier or "?"
                f.add("warning", f"{who}: {group.message} (x{group.count}, last {group.last_seen})")
        else:
            f.add("info", f"no errors in the journal in {self.window_minutes} min")
        servers = ", ".join(self.dns.nameservers) or "none"
        f.add("info", f"DNS: nameservers {servers}")
        for lookup in self.dns.lookups:
            if lookup.ok:
                f.add("info", f"resolves {lookup.name}: {', '.join(lookup.addresses)}")
            else:
                f.add("warning", f"cannot resolve {lookup.name}: {lookup.error}")
        route = self.routes.ipv4 or self.routes.ipv6
        if route is None:
            f.add("warning", "no default route: only directly connected networks are reachable")
        else:
            f.add("info", f"default route via {route.gateway} on {route.interface}")
        return f.items

    def causes(self) -> list[Cause]:
        out = [self._disk_full(), self._cache_full(), self._dns()]
        return [c for c in out if c is not None]

    def _disk_full(self) -> Cause | None:
        full = self._full()
        if not full:
            return None
        evidence = [fs.describe() for fs in full]
        t = self.thresholds
        evidence.append(
            f"threshold: {t.full_percent:g}% used or {t.inodes_full_percent:g}% of inodes"
        )
        worst = any(fs.used_percent >= 99 or fs.avail_bytes == 0 for fs in full) or any(
            (fs.inodes_used_percent or 0.0) >= 99 for fs in full
        )
        caches = [d for fs in full for d in self._caches_on(fs)]
        evidence += [f"on {c.mountpoint}: {c.describe()}" for c in caches]
        where = _listed([fs.mountpoint for fs in full])
        summary = f"filesystem(s) full: {where}; a restart cannot help" + (
            "; cache_clear empties the declared cache dirs there"
            if caches
            else "; escalate: no declared cache dir is on it"
        )
        return Cause(
            code="disk_full",
            summary=summary,
            confidence=0.95 if worst else 0.8,
            evidence=tuple(evidence),
            implied_fix="cache_clear" if caches else None,
            rules_out=("service_restart",),
        )

    def _cache_full(self) -> Cause | None:
        hits = [(fs, self._caches_on(fs)) for fs in self._full()]
        hits = [(fs, caches) for fs, caches in hits if caches]
        if not hits:
            return None
        evidence, confidence = [], 0.0
        for fs, caches in hits:
            held = sum(c.bytes or 0 for c in caches)
            share = _percent(held, fs.used_bytes)
            confidence = max(confidence, 0.9 if share >= 50 else 0.7 if share >= 10 else 0.4)
            evidence.append(fs.describe())
            evidence += [c.describe() for c in caches]
            evidence.append(
                f"the cache dir(s) hold {share:.0f}% of what is used on {fs.mountpoint}"
            )
        return Cause(
            code="cache_dir_full",
            summary=(
                "a declared cache dir's filesystem is full: "
                f"{_listed([c.path for _, caches in hits for c in caches])}; cache_clear "
                "empties it"
            ),
            confidence=confidence,
            evidence=tuple(evidence),
            implied_fix="cache_clear",
            rules_out=("service_restart",),
        )

    def _dns(self) -> Cause | None:
        failed = [lookup for lookup in self.dns.lookups if not lookup.ok]
        if not failed:
            return None
        own = any(lookup.name == self.hostname for lookup in failed)
        servers = ", ".join(self.dns.nameservers) or "none"
        evidence = [f"cannot resolve {lookup.name}: {lookup.error}" for lookup in failed]
        evidence.append(f"nameservers in /etc/resolv.conf: {servers}")
        return Cause(
            code="dns_failure",
            summary="name resolution fails; escalate: the resolver needs a person",
            confidence=0.8 if own else 0.7,
            evidence=tuple(evidence),
        )
