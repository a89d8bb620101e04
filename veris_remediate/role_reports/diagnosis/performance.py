"""The performance diagnosis report (``diag.performance``), its findings and its likely causes."""

from __future__ import annotations

from typing import Literal

from ..base import Cause, Finding, Report, Severity, report_kind
from ._common import (
    Load,
    _Findings,
    _listed,
    _Model,
    _percent,
    _size,
)


class CpuUsage(_Model):
    """CPU time over the probe's sampling interval (/proc/stat deltas), in percent."""

    interval: float
    busy_percent: float
    iowait_percent: float
    steal_percent: float


class PerformanceMemory(_Model):
    total_bytes: int
    available_bytes: int  # MemAvailable
    swap_total_bytes: int
    swap_free_bytes: int
    # The host's own memory cgroup (a container's limit); None: no limit.
    cgroup_limit_bytes: int | None
    cgroup_working_set_bytes: int | None  # usage less inactive file pages

    @property
    def available_percent(self) -> float:
        return _percent(self.available_bytes, self.total_bytes)

    @property
    def swap_used_percent(self) -> float:
        return _percent(self.swap_total_bytes - self.swap_free_bytes, self.swap_total_bytes)

    @property
    def cgroup_percent(self) -> float | None:
        if self.cgroup_limit_bytes is None or self.cgroup_working_set_bytes is None:
            return None
        return _percent(self.cgroup_working_set_bytes, self.cgroup_limit_bytes)


class Pressure(_Model):
    """One /proc/pressure file (PSI): the share of time tasks stalled on the resource."""

    resource: Literal["cpu", "memory", "io"]
    some_avg10: float
    some_avg60: float
    some_avg300: float
    full_avg10: float | None
    full_avg60: float | None
    full_avg300: float | None


class ProcessUse(_Model):
    pid: int
    name: str
    cpu_percent: float
    rss_bytes: int
    command: str  # argv[0]: arguments are never read (they may carry secrets)
    unit: str | None

    def label(self) -> str:
        where = f", {self.unit}" if self.unit else ""
        return f"{self.name} (pid {self.pid}{where})"


class OomEvent(_Model):
    """An OOM kill the journal recorded: the kernel's own line, or systemd's unit entry."""

    source: Literal["kernel", "systemd"]
    time: str | None
    pid: int | None
    process: str | None
    unit: str | None

    def describe(self) -> str:
        who = self.process or self.unit or "a process"
        details = [f"pid {self.pid}"] if self.pid is not None else []
        if self.unit and self.process:
            details.append(self.unit)
        what = f"{who} ({', '.join(details)})" if details else who
        verb = "the kernel OOM killer killed" if self.source == "kernel" else "systemd:"
        text = f"{verb} {what}" if self.source == "kernel" else f"{verb} {what} ran out of memory"
        return f"{text} at {self.time}" if self.time else text


class OomUnit(_Model):
    """A unit systemd says the OOM killer ended, or whose main process died of SIGKILL lately."""

    unit: str
    result: str
    killed_by_sigkill: bool
    exited_at: str | None
    active_state: str
    declared: bool

    @property
    def oom(self) -> bool:
        return self.result == "oom-kill"

    def describe(self) -> str:
        how = (
            "ended with result oom-kill"
            if self.oom
            else "main process was killed by SIGKILL (the OOM killer's signal)"
        )
        when = f" at {self.exited_at}" if self.exited_at else ""
        return f"{self.unit} {how}{when}, now {self.active_state}"


class OomCounter(_Model):
    """A memory cgroup's OOM kill counter (v2 memory.events, v1 memory.oom_control)."""

    cgroup: str
    unit: str | None
    kills: int


class OomKills(_Model):
    journal_readable: bool
    events: tuple[OomEvent, ...]
    units: tuple[OomUnit, ...]
    counters: tuple[OomCounter, ...]


class PerformanceThresholds(_Model):
    load_per_cpu: float
    cpu_busy_percent: float
    cpu_pressure_percent: float  # PSI cpu some avg60
    iowait_percent: float
    io_pressure_percent: float  # PSI io full avg60
    memory_available_percent: float
    memory_pressure_percent: float  # PSI memory full avg60
    cgroup_memory_percent: float
    swap_used_percent: float


@report_kind("diag.performance")
class PerformanceDiagnosis(Report):
    """diag_performance: load, CPU, memory, pressure, the top processes and OOM kills.

    Causes and their confidence:

    - ``oom_kill``: 0.95 when the kernel's journal or systemd names the kill (a kernel
      ``Killed process`` line, systemd's unit-OOM entry, ``Result=oom-kill``); 0.9 when a
      unit's own cgroup counts OOM kills; 0.75 when the host's cgroup counts them and a unit's
      main process died of SIGKILL in the window (the likely victim); 0.6 on the counter
      alone (it counts since the cgroup was made, not in the window). Implies
      ``service_restart`` only for a declared unit that is down after the kill — for now: the
      memory it ran out of is still short, so a person must follow up; otherwise escalate.
    - ``memory_pressure``: MemAvailable below the threshold share of memory (0.8), the host
      cgroup's working set at its threshold share of the limit (0.8), PSI memory ``full``
      avg60 at its threshold (0.85); two or more at once +0.1. Escalate.
    - ``cpu_saturation``: load per CPU and CPU busy both at their thresholds (0.8), or PSI
      cpu ``some`` avg60 at its threshold (0.75). Escalate.
    - ``io_wait``: iowait over the sampling interval at its threshold (0.7: a short sample),
      PSI io ``full`` avg60 at its threshold (0.8). Escalate.
    """

    kind: Literal["diag.performance"]
    cpus: int
    load: Load
    cpu: CpuUsage
    memory: PerformanceMemory
    pressure: tuple[Pressure, ...]
    top_cpu: tuple[ProcessUse, ...]
    top_rss: tuple[ProcessUse, ...]
    oom: OomKills
    window_minutes: int
    thresholds: PerformanceThresholds

    def _pressure(self, resource: str) -> Pressure | None:
        return next((p for p in self.pressure if p.resource == resource), None)

    def describe(self) -> str:
        mem = self.memory
        parts = [
            self.load.describe(self.cpus),
            f"CPU {self.cpu.busy_percent:.0f}% busy, iowait {self.cpu.iowait_percent:.0f}%",
            f"{_size(mem.available_bytes)} of {_size(mem.total_bytes)} memory available",
        ]
        kills = len(self.oom.events) + sum(c.kills for c in self.oom.counters)
        if kills:
            parts.append("OOM kills seen")
        return ", ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        t, mem = self.thresholds, self.memory
        load_severity: Severity = (
            "warning" if self.load.one >= t.load_per_cpu * self.cpus else "info"
        )
        f.add(load_severity, self.load.describe(self.cpus))
        cpu = self.cpu
        f.add(
            "warning" if cpu.busy_percent >= t.cpu_busy_percent else "info",
            f"CPU {cpu.busy_percent:.0f}% busy over {cpu.interval:.1f}s "
            f"(iowait {cpu.iowait_percent:.0f}%, steal {cpu.steal_percent:.0f}%)",
        )
        f.add(
            "warning" if mem.available_percent < t.memory_available_percent else "info",
            f"memory: {_size(mem.available_bytes)} available of {_size(mem.total_bytes)} "
            f"({mem.available_percent:.0f}%)",
        )
        if mem.swap_total_bytes:
            f.add(
                "warning" if mem.swap_used_percent >= t.swap_used_percent else "info",
                f"swap {mem.swap_used_percent:.0f}% used of {_size(mem.swap_total_bytes)}",
            )
        share = mem.cgroup_percent
        if share is not None:
            f.add(
                "warning" if share >= t.cgroup_memory_percent else "info",
                f"this host's cgroup: working set {_size(mem.cgroup_working_set_bytes)} of "
                f"its {_size(mem.cgroup_limit_bytes)} limit ({share:.0f}%)",
            )
        for p in self.pressure:
            full = f", full {p.full_avg60:.1f}%" if p.full_avg60 is not None else ""
            f.add("info", f"pressure (PSI avg60) {p.resource}: some {p.some_avg60:.1f}%{full}")
        if self.top_cpu and self.top_cpu[0].cpu_percent > 0:
            top = [f"{p.label()} {p.cpu_percent:.0f}%" for p in self.top_cpu if p.cpu_percent]
            f.add("info", "top CPU: " + _listed(top))
        if self.top_rss:
            f.add("info", "top memory: " + _listed(
                [f"{p.label()} {_size(p.rss_bytes)}" for p in self.top_rss]))  # fmt: skip
        for event in self.oom.events:
            f.add("critical", event.describe())
        for unit in self.oom.units:
            f.add("critical" if unit.oom else "warning", unit.describe())
        for counter in self.oom.counters:
            where = counter.unit or f"cgroup {counter.cgroup}"
            f.add("critical", f"{where}: {counter.kills} OOM kill(s) counted by its memory cgroup")
        if not self.oom.journal_readable:
            f.add("warning", "the journal could not be read: OOM kills may be missing")
        return f.items

    def causes(self) -> list[Cause]:
        return [c for c in (self._oom(), self._memory(), self._cpu(), self._io()) if c is not None]

    def _oom(self) -> Cause | None:
        oom = self.oom
        evidence = [e.describe() for e in oom.events]
        evidence += [u.describe() for u in oom.units if u.oom]
        confidence, why = 0.0, ""
        if evidence:
            confidence, why = 0.95, "the kernel's or systemd's own record"
        unit_counters = [c for c in oom.counters if c.unit]
        host_counters = [c for c in oom.counters if not c.unit]
        evidence += [
            f"{c.unit}'s memory cgroup counted {c.kills} OOM kill(s)" for c in unit_counters
        ]
        if unit_counters and not confidence:
            confidence, why = 0.9, "a unit's memory cgroup counted the kill"
        killed = [u for u in oom.units if not u.oom]
        if host_counters:
            evidence += [
                f"this host's memory cgroup ({c.cgroup}) counted {c.kills} OOM kill(s) "
                "since it was created"
                for c in host_counters
            ]
            if killed:
                evidence += [u.describe() for u in killed]
            if not confidence:
                confidence, why = (
                    (0.75, "the host's cgroup counted OOM kills and a unit died of SIGKILL")
                    if killed
                    else (0.6, "only a counter, with no time or victim")
                )
        if not confidence:
            return None
        victims = [u for u in oom.units if u.oom or host_counters]
        down = [u for u in victims if u.declared and u.active_state not in ("active", "reloading")]
        names = _listed(sorted({u.unit for u in victims} | {c.unit for c in unit_counters if c.unit}
                               | {e.unit for e in oom.events if e.unit}))  # fmt: skip
        summary = f"the OOM killer ended {names or 'a process'} ({why})"
        if down:
            summary += (
                f"; restarting {_listed([u.unit for u in down])} brings it back for now, but "
                "the memory it ran out of is still short: a person must look"
            )
        else:
            summary += "; escalate: memory limits, a leak or capacity need a person"
        return Cause(
            code="oom_kill",
            summary=summary,
            confidence=confidence,
            evidence=tuple(evidence),
            implied_fix="service_restart" if down else None,
        )

    def _largest(self) -> list[str]:
        return [f"largest: {p.label()} {_size(p.rss_bytes)} RSS" for p in self.top_rss[:3]]

    def _memory(self) -> Cause | None:
        t, mem = self.thresholds, self.memory
        signals: list[tuple[float, str]] = []
        if mem.total_bytes and mem.available_percent < t.memory_available_percent:
            signals.append((0.8, (
                f"MemAvailable {_size(mem.available_bytes)} is {mem.available_percent:.1f}% of "
                f"{_size(mem.total_bytes)} (threshold {t.memory_available_percent:g}%)"
            )))  # fmt: skip
        share = mem.cgroup_percent
        if share is not None and share >= t.cgroup_memory_percent:
            signals.append((0.8, (
                f"this host's cgroup uses {_size(mem.cgroup_working_set_bytes)} of its "
                f"{_size(mem.cgroup_limit_bytes)} limit ({share:.1f}%, threshold "
                f"{t.cgroup_memory_percent:g}%)"
            )))  # fmt: skip
        psi = self._pressure("memory")
        if psi and psi.full_avg60 is not None and psi.full_avg60 >= t.memory_pressure_percent:
            signals.append((0.85, (
                f"PSI memory full avg60 {psi.full_avg60:.1f}% (threshold "
                f"{t.memory_pressure_percent:g}%): tasks stall waiting for memory"
            )))  # fmt: skip
        if not signals:
            return None
        if mem.swap_total_bytes and mem.swap_used_percent >= t.swap_used_percent:
            signals.append((0.0, f"swap {mem.swap_used_percent:.0f}% used"))
        confidence = max(c for c, _ in signals)
        if sum(1 for c, _ in signals if c) > 1:
            confidence = min(confidence + 0.1, 0.95)
        return Cause(
            code="memory_pressure",
            summary="memory is short; escalate: more memory, a limit or a leak fix needs a person",
            confidence=confidence,
            evidence=(*(text for _, text in signals), *self._largest()),
        )

    def _cpu(self) -> Cause | None:
        t = self.thresholds
        signals: list[tuple[float, str]] = []
        per_cpu = self.load.one / max(self.cpus, 1)
        if per_cpu >= t.load_per_cpu and self.cpu.busy_percent >= t.cpu_busy_percent:
            signals.append((0.8, (
                f"load {self.load.one:.2f} on {self.cpus} CPU(s) ({per_cpu:.1f} per CPU, "
                f"threshold {t.load_per_cpu:g}) with the CPUs {self.cpu.busy_percent:.0f}% busy"
            )))  # fmt: skip
        psi = self._pressure("cpu")
        if psi and psi.some_avg60 >= t.cpu_pressure_percent:
            signals.append((0.75, (
                f"PSI cpu some avg60 {psi.some_avg60:.1f}% (threshold "
                f"{t.cpu_pressure_percent:g}%): runnable tasks wait for a CPU"
            )))  # fmt: skip
        if not signals:
            return None
        top = [f"{p.label()} {p.cpu_percent:.0f}% CPU" for p in self.top_cpu[:3] if p.cpu_percent]
        return Cause(
            code="cpu_saturation",
            summary="the CPUs are saturated; escalate: the busiest processes need a person",
            confidence=max(c for c, _ in signals),
            evidence=(*(text for _, text in signals), *top),
        )

    def _io(self) -> Cause | None:
        t = self.thresholds
        signals: list[tuple[float, str]] = []
        if self.cpu.iowait_percent >= t.iowait_percent:
            signals.append((0.7, (
                f"iowait {self.cpu.iowait_percent:.0f}% over {self.cpu.interval:.1f}s "
                f"(threshold {t.iowait_percent:g}%)"
            )))  # fmt: skip
        psi = self._pressure("io")
        if psi and psi.full_avg60 is not None and psi.full_avg60 >= t.io_pressure_percent:
            signals.append((0.8, (
                f"PSI io full avg60 {psi.full_avg60:.1f}% (threshold "
                f"{t.io_pressure_percent:g}%): all tasks stall on I/O"
            )))  # fmt: skip
        if not signals:
            return None
        return Cause(
            code="io_wait",
            summary="the host waits on storage I/O; escalate: a person must find the I/O load",
            confidence=max(c for c, _ in signals),
            evidence=tuple(text for _, text in signals),
        )
