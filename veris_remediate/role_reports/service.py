"""Reports of the service roles: a service's health and likely causes; units' snapshot, rollback.

``health``/``verify`` come from service_health's one probe task (its module
``service_health_probe``): systemd's own view of the unit, who listens on the declared
port, the HTTP probe, config validation, the units it depends on, a container's
``docker inspect``, the filesystems it needs and its recent errors. :meth:`ServiceHealth.causes`
turns them into likely root causes, rule by rule. Each rule, its confidence and why:

- ``port_held`` (0.95; 0.85 while the service runs anyway): a process outside the service
  (``ss`` PIDs, ``/proc/PID/cgroup`` against the unit's control group) listens on its
  port. A restart cannot bind it while that process lives, and veris never kills what it
  does not own: escalate, a restart is ruled out.
- ``config_invalid`` (0.95): the declared validator fails, in its own words. Implies
  config_repair; rules out a restart (and stays the assessment's blocker, on which the
  default rules hand off to config_repair).
- ``start_limit_hit`` (0.95 on ``Result=start-limit-hit``; 0.85 when the unit failed with
  ``NRestarts`` >= ``StartLimitBurst``, since systemd keeps the first failure's Result when
  the limit ends an automatic restart loop): systemd restarted it that often and gave up.
  One more restart repeats the crash loop and hides why it exits: escalate, rules out a
  restart.
- ``disk_full`` (0.85; 0.6 while the service runs): a filesystem it needs (``/``, ``/var``
  and the like, its cache dirs) is >= 95% used, blocks or inodes, or below the free floor.
  A restart frees nothing, rules out a restart; implies cache_clear when every full one
  holds a declared cache dir of the service, else escalate.
- ``dependency_down`` (0.9; 0.6 while the service runs): a declared ``depends_on`` unit,
  the unit's own ``Requires=``/``BindsTo=``, or a container's Docker engine is down.
  Implies service_restart, which starts dependencies first.
- ``oom_kill`` (0.9): ``Result=oom-kill`` or a container's ``OOMKilled``. Implies
  service_restart, not ruled out: it helps for now, and the finding says memory ran out.
- When none of these holds and the service is unhealthy: ``http_failing`` (0.4; it runs and
  its port answers but the HTTP probe fails: a restart may help), ``container_unhealthy``
  (0.5; a running container's own Docker health check fails), ``stopped`` (0.7;
  stopped cleanly: ``Result=success``, a container's exit code 0 or 143, what ``docker
  stop`` leaves) or ``crashed`` (0.5; failed for a reason nothing seen explains), each
  implying service_restart.

The units' snapshot (``units.snapshot``) and rollback (``units.rollback``) cover systemd
units and Docker containers alike: a container's state is put in systemd's words
(running: ``active``; exited 0: ``inactive``; exited otherwise: ``failed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from .base import (
    Assessment,
    Blocker,
    Cause,
    Finding,
    Restoration,
    Scope,
    Snapshot,
    Verification,
    report_kind,
)

RUNNING = frozenset({"active", "activating", "reloading"})
NOT_LOADED = frozenset({"not-found", "masked", "error", "bad-setting"})
RESTART = "service_restart"
# CLD_* codes of ExecMainCode (waitid(2)): how the main process ended.
EXIT_CODES = {1: "exited with status", 2: "killed by signal", 3: "dumped core on signal"}
SHOWN_ERRORS = 2  # recent error lines added to a cause's evidence
# A container that exited 0, or 143 (SIGTERM, what `docker stop` sends), was stopped.
STOPPED_EXIT_CODES = frozenset({0, 143, None})


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Listener(_Frozen):
    """A process listening on the declared port, and whether it is the service's own."""

    pid: int
    process: str
    unit: str  # the systemd unit its cgroup belongs to ("" when unknown)
    addresses: tuple[str, ...]
    ours: bool

    def named(self) -> str:
        return f"{self.process} (pid {self.pid}{', ' + self.unit if self.unit else ''})"


class DependencyState(_Frozen):
    """A unit (or container) the service needs, and its state."""

    unit: str
    # declared: veris_services depends_on; requires: the unit's own Requires=/BindsTo=;
    # engine: the Docker engine a container needs.
    source: Literal["declared", "requires", "engine"]
    container: str | None
    active_state: str
    sub_state: str
    result: str
    load_state: str
    type: str

    def down(self) -> bool:
        if self.container is not None:
            return self.active_state not in RUNNING
        if self.load_state in NOT_LOADED or self.active_state == "failed":
            return True
        # A oneshot that ran to success and exited is done, not down.
        finished = self.type == "oneshot" and self.result == "success"
        return self.active_state in ("inactive", "deactivating") and not finished

    def named(self) -> str:
        what = f"container {self.container}" if self.container else self.unit
        why = {
            "declared": "declared depends_on",
            "requires": "its own Requires=/BindsTo=",
            "engine": "the Docker engine",
        }[self.source]
        return f"{what} is {self.active_state} ({self.sub_state}; {why})"


class ContainerState(_Frozen):
    """``docker inspect`` of the service's container."""

    name: str
    exists: bool
    status: str = ""
    running: bool = False
    restarting: bool = False
    paused: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    health: str | None = None
    restart_count: int = 0
    restart_policy: str = ""
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    ports: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.status == "unknown":
            return f"container {self.name}: state unknown (its engine is not running)"
        if not self.exists:
            return f"container {self.name} does not exist"
        text = f"container {self.name} is {self.status}"
        if self.status in ("exited", "dead") and self.exit_code is not None:
            text += f" (exit code {self.exit_code})"
        if self.health:
            text += f", health {self.health}"
        return text


class Filesystem(_Frozen):
    """A filesystem the service needs (statvfs), once however many paths it holds."""

    paths: tuple[str, ...]
    cache_dirs: tuple[str, ...]  # the service's declared cache dirs on it
    size_bytes: int
    free_bytes: int
    used_percent: float
    inodes_used_percent: float | None
    full: bool

    def describe(self) -> str:
        where = ", ".join((*self.paths, *self.cache_dirs))
        text = f"{where}: {self.used_percent:g}% used, {_bytes(self.free_bytes)} free"
        text += f" of {_bytes(self.size_bytes)}"
        if self.inodes_used_percent is not None:
            text += f", inodes {self.inodes_used_percent:g}% used"
        return text


@report_kind("health", "verify")
class ServiceHealth(Assessment, Verification):
    """service_health's probe of one service: ``health`` before a fix, ``verify`` after it.

    The fields after ``healthy`` came with the one-task probe; they default so that
    reports recorded before it still read.
    """

    kind: Literal["health", "verify"]
    unit: str
    active_state: str
    sub_state: str
    unit_file_state: str
    load_state: str
    port: int | None
    port_open: bool | None
    health_url: str | None
    http_status: int | None
    http_ok: bool | None
    config_valid: bool | None
    config_errors: tuple[str, ...]
    journal_tail: tuple[str, ...]
    healthy: bool
    result: str = ""
    main_pid: int | None = None
    n_restarts: int | None = None
    restart_policy: str = ""
    exec_main_code: int | None = None
    exec_main_status: int | None = None
    start_limit_burst: int | None = None
    start_limit_interval_sec: float | None = None
    active_enter_monotonic: int | None = None
    requires: tuple[str, ...] = ()
    dependencies: tuple[DependencyState, ...] = ()
    listeners: tuple[Listener, ...] = ()  # who listens on the declared port
    unit_ports: tuple[int, ...] = ()  # every TCP port the service's own processes listen on
    container: ContainerState | None = None
    filesystems: tuple[Filesystem, ...] = ()
    recent_errors: tuple[str, ...] = ()
    probe_errors: tuple[str, ...] = ()  # what the probe could not read
    rounds: int = 1

    @property
    def running(self) -> bool:
        if self.container is not None:
            return self.container.running and not self.container.restarting
        return self.active_state in RUNNING

    @property
    def subject(self) -> str:
        return f"container {self.container.name}" if self.container else self.unit

    def state_text(self) -> str:
        if self.container is not None:
            return self.container.describe()
        return f"{self.unit} is {self.active_state} ({self.sub_state})"

    def foreign_listeners(self) -> list[Listener]:
        return [item for item in self.listeners if not item.ours]

    def dependencies_down(self) -> list[DependencyState]:
        return [d for d in self.dependencies if d.down()]

    def full_filesystems(self) -> list[Filesystem]:
        return [f for f in self.filesystems if f.full]

    def start_limit_reached(self) -> bool:
        if self.container is not None or self.running:
            return False
        if self.result == "start-limit-hit":
            return True
        # systemd keeps the first failure's Result when the limit ends an automatic restart
        # loop; the restart counter reaching the burst says the same.
        burst = self.start_limit_burst or 0
        looping = self.restart_policy not in ("", "no")
        return looping and burst > 0 and (self.n_restarts or 0) >= burst

    def oom_killed(self) -> bool:
        if self.container is not None:
            return self.container.oom_killed
        return self.result == "oom-kill"

    def exit_text(self) -> str:
        how = EXIT_CODES.get(self.exec_main_code or 0)
        return f"{how} {self.exec_main_status}" if how else ""

    def describe(self) -> str:
        parts = [self.state_text()]
        if self.port is not None:
            parts.append(f"port {self.port} {'open' if self.port_open else 'closed'}")
        foreign = self.foreign_listeners()
        if foreign:
            parts.append(f"port {self.port} held by {foreign[0].named()}")
        if self.health_url:
            status = self.http_status or "no answer"
            parts.append(f"HTTP probe {'ok' if self.http_ok else 'failing'} ({status})")
        if self.config_valid is False:
            parts.append("config invalid")
        return ", ".join(parts)

    def problem_present(self) -> bool:
        return not self.healthy

    def blocker(self) -> Blocker | None:
        if self.config_valid is False:
            errors = "; ".join(self.config_errors[:3])
            return Blocker(
                code="config_invalid",
                reason=f"configuration does not validate, a restart cannot help: {errors}",
            )
        return None

    def passed(self) -> bool:
        # A validator that ran after the fix and failed means the fix left it broken.
        return self.healthy and self.config_valid is not False

    # -- causes ------------------------------------------------------------------------

    def causes(self) -> list[Cause]:
        errors = tuple(self.recent_errors[-SHOWN_ERRORS:])
        state = self.state_text()
        found = [
            c
            for c in (
                self._port_held(state, errors),
                self._config_invalid(),
                self._start_limit(state, errors),
                self._disk_full(state),
                self._dependency_down(state),
                self._oom_kill(state),
            )
            if c is not None
        ]
        if not found and not self.healthy:
            fallbacks = (
                self._http_failing(),
                self._container_unhealthy(),
                self._down(state, errors),
            )
            found += [c for c in fallbacks if c]
        return found

    def _port_held(self, state: str, errors: tuple[str, ...]) -> Cause | None:
        foreign = self.foreign_listeners()
        if not foreign:
            return None
        held = [f"port {self.port} is held by {f.named()}, not by {self.subject}" for f in foreign]
        return Cause(
            code="port_held",
            summary=f"port {self.port} is held by another process, {foreign[0].named()}",
            confidence=0.85 if self.running else 0.95,
            evidence=(*held, state, *errors),
            implied_fix=None,
            rules_out=(RESTART,),
        )

    def _config_invalid(self) -> Cause | None:
        if self.config_valid is not False:
            return None
        return Cause(
            code="config_invalid",
            summary="the configuration does not validate",
            confidence=0.95,
            evidence=tuple(self.config_errors[:3]) or ("the validator failed",),
            implied_fix="config_repair",
            rules_out=(RESTART,),
        )

    def _start_limit(self, state: str, errors: tuple[str, ...]) -> Cause | None:
        if not self.start_limit_reached():
            return None
        interval = self.start_limit_interval_sec
        within = f" within {interval:g}s" if interval else ""
        evidence = [state, f"Result={self.result}"] if self.result else [state]
        if self.n_restarts is not None:
            evidence.append(
                f"NRestarts={self.n_restarts}, StartLimitBurst={self.start_limit_burst}"
                f"{within} (Restart={self.restart_policy})"
            )
        if self.exit_text():
            evidence.append(f"last run {self.exit_text()}")
        return Cause(
            code="start_limit_hit",
            summary=f"systemd gave up restarting {self.unit} (start limit hit); "
            "one more restart would repeat the crash loop",
            confidence=0.95 if self.result == "start-limit-hit" else 0.85,
            evidence=(*evidence, *errors),
            implied_fix=None,
            rules_out=(RESTART,),
        )

    def _disk_full(self, state: str) -> Cause | None:
        full = self.full_filesystems()
        if not full:
            return None
        clearable = all(f.cache_dirs for f in full)
        return Cause(
            code="disk_full",
            summary="a filesystem the service needs is full"
            + ("; its cache dirs are on it" if clearable else ""),
            confidence=0.6 if self.running else 0.85,
            evidence=(*(f.describe() for f in full), state),
            implied_fix="cache_clear" if clearable else None,
            rules_out=(RESTART,),
        )

    def _dependency_down(self, state: str) -> Cause | None:
        down = self.dependencies_down()
        if not down:
            return None
        return Cause(
            code="dependency_down",
            summary=f"{self.subject} depends on {down[0].container or down[0].unit}, "
            f"which is {down[0].active_state}",
            confidence=0.6 if self.running else 0.9,
            evidence=(*(d.named() for d in down), state),
            implied_fix=RESTART,
        )

    def _oom_kill(self, state: str) -> Cause | None:
        if not self.oom_killed():
            return None
        what = "OOMKilled=true" if self.container else f"Result={self.result}"
        return Cause(
            code="oom_kill",
            summary=f"{self.subject} was killed for lack of memory; a restart helps only "
            "until memory runs out again",
            confidence=0.9,
            evidence=(what, state),
            implied_fix=RESTART,
        )

    def _http_failing(self) -> Cause | None:
        if not (self.running and self.http_ok is False and self.port_open is not False):
            return None
        return Cause(
            code="http_failing",
            summary=f"{self.subject} runs but its HTTP probe fails",
            confidence=0.4,
            evidence=(f"{self.health_url} answered {self.http_status or 'nothing'}",),
            implied_fix=RESTART,
        )

    def _container_unhealthy(self) -> Cause | None:
        if not (self.running and self.container and self.container.health == "unhealthy"):
            return None
        return Cause(
            code="container_unhealthy",
            summary=f"{self.subject} runs but its own Docker health check fails",
            confidence=0.5,
            evidence=(self.container.describe(),),
            implied_fix=RESTART,
        )

    def _down(self, state: str, errors: tuple[str, ...]) -> Cause | None:
        if self.running:
            return None
        evidence = [state]
        if self.container is not None:
            # `docker stop` ends the main process with SIGTERM: exit code 143 (128 + 15).
            code = self.container.exit_code
            clean = self.container.exists and code in STOPPED_EXIT_CODES
            clean = clean and not self.container.error
            if self.container.error:
                evidence.append(f"docker: {self.container.error}")
        else:
            clean = self.result in ("success", "")
            if self.result:
                evidence.append(f"Result={self.result}")
            if not clean and self.exit_text():
                evidence.append(f"last run {self.exit_text()}")
        if clean:
            return Cause(
                code="stopped",
                summary=f"{self.subject} was stopped (it did not fail)",
                confidence=0.7,
                evidence=tuple(evidence),
                implied_fix=RESTART,
            )
        return Cause(
            code="crashed",
            summary=f"{self.subject} failed, and nothing seen explains why",
            confidence=0.5,
            evidence=(*evidence, *errors),
            implied_fix=RESTART,
        )

    # -- findings ----------------------------------------------------------------------

    def findings(self, host: str) -> list[Finding]:
        out: list[Finding] = []

        def add(severity: Literal["info", "warning", "critical"], message: str) -> None:
            out.append(Finding(host=host, severity=severity, message=message))

        if self.container is not None:
            add("info" if self.running else "critical", self.container.describe())
        elif not self.running:
            add("critical", self.state_text())
        else:
            add("info", f"{self.unit} is {self.active_state}")
        if self.port is not None and not self.port_open:
            add("critical", f"port {self.port} is not accepting connections")
        for item in self.foreign_listeners():
            add("critical", f"port {self.port} is held by {item.named()}, not by {self.subject}")
        if self.running and self.unit_ports and self.port not in (None, *self.unit_ports):
            ports = ", ".join(map(str, self.unit_ports))
            add("warning", f"{self.subject} listens on {ports}, not on port {self.port}")
        if self.health_url and self.http_ok is False:
            add(
                "critical",
                f"HTTP probe {self.health_url} failed ({self.http_status or 'no answer'})",
            )
        if self.config_valid is False:
            add("critical", "configuration invalid: " + "; ".join(self.config_errors[:3]))
        elif self.config_valid is True:
            add("info", "configuration validates")
        if self.start_limit_reached():
            add(
                "critical",
                f"start limit hit: {self.n_restarts} restarts, StartLimitBurst "
                f"{self.start_limit_burst}, Result={self.result}",
            )
        if self.oom_killed():
            add("critical", f"{self.subject} was killed by the OOM killer")
        for dep in self.dependencies_down():
            add("critical", f"dependency {dep.named()}")
        for fs in self.full_filesystems():
            add("critical", f"filesystem full: {fs.describe()}")
        if self.container is not None and self.container.restart_count:
            add("warning", f"container restarted {self.container.restart_count} time(s)")
        for problem in self.probe_errors:
            add("warning", f"could not read: {problem}")
        if not self.running:
            if self.recent_errors:
                add("warning", "recent errors: " + " | ".join(self.recent_errors[-3:]))
            tail = self.journal_tail[-5:]
            if tail:
                add("warning", "journal: " + " | ".join(tail))
        return out


class UnitState(_Frozen):
    """A unit's (or container's) state as systemd (or Docker, in systemd's words) reports it.

    A systemd unit has three fields, in reports and when handed back to a role (other
    families' rollback entry points take exactly those); a container adds its name and
    restart count.
    """

    unit: str
    active_state: str
    unit_file_state: str
    container: str | None = None  # the declared container behind this unit name
    restart_count: int | None = None  # the container's RestartCount

    @model_serializer(mode="wrap")
    def _without_container_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and self.container is None:
            data.pop("container", None)
            data.pop("restart_count", None)
        return data

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING


def unit_mismatches(before: Sequence[UnitState], after: Sequence[UnitState]) -> list[str]:
    """Units of ``before`` that are missing from ``after`` or run where they did not (or v.v.)."""
    now = {u.unit: u for u in after}
    problems: list[str] = []
    for was in before:
        state = now.get(was.unit)
        if state is None:
            problems.append(f"rollback did not report {was.unit}")
        elif was.running != state.running:
            problems.append(
                f"{was.unit} was {was.active_state} before, is {state.active_state} now"
            )
    return problems


@report_kind("units.snapshot")
class UnitsSnapshot(Snapshot):
    """service_restart's record of its units before it starts or restarts any.

    ``units`` are the declared ones in dependency order (restored on rollback);
    ``required`` are the target's own ``Requires=`` (and a container's Docker engine) that
    the fix may start first: outside the declared scope, so they are reported, never
    stopped again — as systemd leaves them when a dependent stops.
    """

    kind: Literal["units.snapshot"]
    units: tuple[UnitState, ...]
    required: tuple[UnitState, ...] = ()

    def describe(self) -> str:
        return ", ".join(f"{u.unit} was {u.active_state}" for u in self.units) or "no units"

    def restricted(self, scope: Scope) -> Self:
        # Only units this plan owns are ever restored, whatever the host reported.
        return self.model_copy(
            update={
                "units": tuple(u for u in self.units if u.unit in scope.units),
                "required": (),
            }
        )


@report_kind("units.rollback")
class UnitsRollback(Restoration):
    """service_restart's rollback: the units' states now, and whether they match the snapshot."""

    kind: Literal["units.rollback"]
    units: tuple[UnitState, ...]
    # The role's own verdict: the running units are exactly those running in the snapshot.
    restored: bool

    def describe(self) -> str:
        return ", ".join(f"{u.unit}={u.active_state}" for u in self.units) or "no units"

    def is_restored(self) -> bool:
        return self.restored

    def mismatches(self, snapshot: Snapshot) -> list[str]:
        if not isinstance(snapshot, UnitsSnapshot):
            return [f"a {snapshot.kind} snapshot cannot be compared with unit states"]
        return unit_mismatches(snapshot.units, self.units)
