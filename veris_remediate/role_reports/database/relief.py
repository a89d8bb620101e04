"""db_connection_relief's reports: the plan (``db.plan``) and the result (``db.result``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field

from ..base import (
    Assessment,
    Blocker,
    Cause,
    Finding,
    Scope,
    Signal,
    Verification,
    report_kind,
)
from ._common import (
    RELIEF,
    RESTART,
    RESTART_PENALTY,
    SHOWN,
    Session,
    _Findings,
    _listed,
    _Model,
)


class DbPolicy(_Model):
    """veris_postgres as the role applied it (echoed back with the plan)."""

    idle_age: int = Field(ge=1)
    near_limit_percent: int = Field(ge=1, le=100)
    terminate_superuser: bool
    restart_last_resort: bool


class PlanSession(Session):
    """A client session in the plan: whether it would be terminated, and why not."""

    terminate: bool
    why: str


@report_kind("db.plan")
class DbPlan(Assessment):
    """db_connection_relief's check run: connections vs the limit, exactly which sessions go."""

    kind: Literal["db.plan"]
    service: str
    unit: str
    postgres_service: bool  # the routed service is the one veris_postgres names
    policy: DbPolicy
    reachable: bool
    error: str
    too_many_connections: bool  # not even the probe found a slot
    max_connections: int | None
    reserved_connections: int | None
    connections: int | None
    limit: int | None
    sessions: tuple[PlanSession, ...]
    sessions_truncated: bool
    after: int | None  # connections once the listed sessions are terminated
    restart: bool  # the plan ends with the last-resort restart
    restart_reason: str

    def doomed(self) -> list[PlanSession]:
        return [s for s in self.sessions if s.terminate]

    def problem_present(self) -> bool:
        if self.too_many_connections:
            return True
        if not self.postgres_service or not self.reachable:
            return True  # the alert's claim cannot be checked: escalate, never not_needed
        return (
            self.connections is not None
            and self.limit is not None
            and self.connections >= self.limit
        )

    def blocker(self) -> Blocker | None:
        if not self.postgres_service:
            return Blocker(
                code="not_policy_service",
                reason=f"{self.service} is not the PostgreSQL service veris_postgres names: "
                "nothing is touched",
            )
        if self.too_many_connections and not self.restart:
            return Blocker(
                code="too_many_to_connect",
                reason=f"no connection slot is left on {self.service}, not even a superuser's "
                f"({self.error}); sessions cannot be terminated and no restart is declared "
                "(veris_postgres.restart_last_resort)",
            )
        if not self.reachable and not self.too_many_connections:
            return Blocker(
                code="server_unreachable",
                reason=f"{self.service} cannot be asked: {self.error}",
            )
        if self.restart or not self.problem_present():
            return None
        doomed = self.doomed()
        if not doomed:
            return Blocker(
                code="nothing_idle_enough",
                reason=f"no idle session of {self.service} has been idle {self.policy.idle_age} s "
                f"or more (superusers' excluded: "
                f"{'no' if self.policy.terminate_superuser else 'yes'}), and no restart is "
                "declared: nothing is terminated",
            )
        if self.after is not None and self.limit is not None and self.after >= self.limit:
            return Blocker(
                code="relief_insufficient",
                reason=f"terminating the {len(doomed)} eligible idle session(s) would leave "
                f"{self.after} connections, still at or above {self.limit}, and no restart is "
                "declared: nothing is terminated",
            )
        return None

    def signals(self) -> list[Signal]:
        if not self.restart:
            return []
        return [
            Signal(
                reason=f"the plan ends with restarting {self.unit} (last resort): every session "
                "is cut, active ones too",
                penalty=RESTART_PENALTY,
            )
        ]

    def restricted(self, scope: Scope) -> Self:
        # The apply run terminates by these (pid, backend_start): only sessions this plan
        # listed, of the service in scope, that are idle, old enough and not a superuser's
        # unless the policy says so. The apply module checks all of it again on the server.
        allowed = self.postgres_service and self.service in scope.services
        policy = self.policy

        def keep(s: PlanSession) -> bool:
            old = s.state_age_seconds is not None and s.state_age_seconds >= policy.idle_age
            return (
                allowed
                and s.terminate
                and s.state == "idle"
                and old
                and (policy.terminate_superuser or not s.superuser)
            )

        sessions = tuple(
            s if keep(s) or not s.terminate else s.model_copy(update={"terminate": False})
            for s in self.sessions
        )
        restart = self.restart and allowed and policy.restart_last_resort
        return self.model_copy(update={"sessions": sessions, "restart": restart})

    def describe(self) -> str:
        if not self.postgres_service:
            return f"{self.service} is not the veris_postgres service"
        if not self.reachable:
            return f"{self.service} cannot be asked: {self.error}"
        doomed = self.doomed()
        text = (
            f"{self.service}: {self.connections} of {self.max_connections} connections "
            f"(limit {self.limit}, {self.policy.near_limit_percent}%); "
            f"{len(doomed)} idle session(s) >= {self.policy.idle_age} s to terminate"
        )
        if self.after is not None:
            text += f", leaving {self.after}"
        if self.restart:
            text += f"; then restart {self.unit} as the last resort if still at the limit"
        return text

    def preview_diff(self) -> str:
        doomed = self.doomed()
        if not doomed and not self.restart:
            return ""
        lines = [f"--- {self.service}: sessions now ({self.connections})",
                 f"+++ {self.service}: after relief ({self.after})"]  # fmt: skip
        lines += [f"-{s.describe()} backend_start {s.backend_start}" for s in doomed]
        kept = [s for s in self.sessions if not s.terminate]
        lines += [f" {s.describe()} (kept: {s.why})" for s in kept[:20]]
        if len(kept) > 20:
            lines.append(f" … and {len(kept) - 20} more sessions kept")
        if self.restart:
            lines.append(f"+restart {self.unit} (last resort): {self.restart_reason}")
        return "\n".join(lines) + "\n"

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        if not self.reachable or not self.postgres_service:
            f.add("critical", self.describe())
            return f.items
        present = self.problem_present()
        f.add(
            "critical" if present else "info",
            f"{self.service}: {self.connections} of max_connections {self.max_connections} "
            f"client connections (near the limit from {self.limit}); "
            f"{self.reserved_connections} reserved for superusers",
        )
        doomed = self.doomed()
        verb = "would be" if present and self.blocker() is None else "could be"
        if doomed:
            f.add(
                "info",
                f"{len(doomed)} idle session(s) {verb} terminated: "
                + _listed([s.describe() for s in doomed]),
            )
        kept = [s for s in self.sessions if not s.terminate]
        if kept:
            f.add(
                "info",
                f"{len(kept)} session(s) kept: "
                + _listed([f"{s.describe()} ({s.why})" for s in kept]),
            )
        if self.restart:
            f.add(
                "warning",
                f"restart of {self.unit} planned as the last resort: {self.restart_reason}",
            )
        if self.sessions_truncated:
            f.add("warning", f"more sessions than listed ({len(self.sessions)} shown)")
        return f.items

    def causes(self) -> list[Cause]:
        if self.reachable and self.postgres_service and self.problem_present():
            evidence = [
                f"{self.service}: {self.connections} of max_connections {self.max_connections} "
                f"client connections (limit {self.limit}, {self.policy.near_limit_percent}%)",
                f"{len(self.doomed())} idle session(s) idle >= {self.policy.idle_age} s",
            ]
            oldest = sorted(
                (s for s in self.sessions if s.state == "idle"),
                key=lambda s: -(s.state_age_seconds or 0),
            )
            if oldest:
                evidence.append(f"oldest idle: {oldest[0].describe()}")
            full = (
                self.max_connections is not None
                and self.connections is not None
                and (self.connections >= self.max_connections - (self.reserved_connections or 0))
            )
            return [
                Cause(
                    code="db_connections_exhausted",
                    summary=f"too many database connections: {self.service} near the "
                    "connection limit; db_connection_relief terminates the idle sessions "
                    "older than the declared age",
                    confidence=0.95 if full else 0.85,
                    evidence=tuple(evidence),
                    implied_fix=RELIEF,
                    rules_out=(RESTART,),
                )
            ]
        if self.too_many_connections:
            return [
                Cause(
                    code="db_connections_exhausted",
                    summary=f"too many database connections: no slot left on {self.service}",
                    confidence=0.95,
                    evidence=(self.error,),
                    implied_fix=RELIEF,
                    rules_out=(RESTART,),
                )
            ]
        if self.postgres_service and not self.reachable:
            return [
                Cause(
                    code="db_unreachable",
                    summary=f"{self.service} cannot be reached; a restart may bring it back",
                    confidence=0.8,
                    evidence=(self.error,),
                    implied_fix=RESTART,
                )
            ]
        return []


class TerminatedSession(_Model):
    pid: int
    user: str
    database: str
    client_addr: str | None
    state_age_seconds: float | None
    backend_start: str
    backend_start_us: int

    def describe(self) -> str:
        where = f" from {self.client_addr}" if self.client_addr else ""
        age = "?" if self.state_age_seconds is None else f"{int(self.state_age_seconds)}"
        return f"pid {self.pid} {self.user or '?'}@{self.database or '?'}{where} (idle {age} s)"


class SkippedSession(_Model):
    pid: int
    reason: str


class FailedSession(_Model):
    pid: int
    error: str


class AfterRestart(_Model):
    reachable: bool
    error: str
    max_connections: int | None
    connections: int | None
    limit: int | None


@report_kind("db.result")
class DbResult(Verification):
    """db_connection_relief's apply run: what was terminated and what is left."""

    kind: Literal["db.result"]
    service: str
    unit: str
    reachable: bool
    error: str
    terminated: tuple[TerminatedSession, ...]
    skipped: tuple[SkippedSession, ...]  # listed, but no longer the same eligible session
    failed: tuple[FailedSession, ...]
    still_alive: tuple[int, ...]  # terminated, yet still there with the same backend_start
    others_ended: tuple[int, ...]  # not listed, gone by themselves during the run
    others_kept: int  # not listed, still there
    max_connections: int | None
    connections: int | None
    limit: int | None
    still_near_limit: bool
    restarted: bool
    after_restart: AfterRestart | None

    def _final(self) -> tuple[bool, int | None, int | None]:
        """(reachable, connections, limit) as things stand at the end of the run."""
        if self.restarted and self.after_restart is not None:
            a = self.after_restart
            return a.reachable, a.connections, a.limit
        return self.reachable, self.connections, self.limit

    def passed(self) -> bool:
        reachable, connections, limit = self._final()
        below = connections is not None and limit is not None and connections < limit
        if self.restarted:
            return reachable and below
        return reachable and below and not self.still_alive and not self.failed

    def describe(self) -> str:
        reachable, connections, limit = self._final()
        parts = [f"{len(self.terminated)} idle session(s) of {self.service} terminated"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (no longer eligible)")
        if self.failed:
            parts.append(f"{len(self.failed)} could not be terminated")
        if self.still_alive:
            parts.append(f"still alive: pid {', '.join(map(str, self.still_alive))}")
        if self.restarted:
            parts.append(f"{self.unit} restarted (last resort)")
        if not reachable:
            parts.append(f"server cannot be asked: {self.error or 'after the restart'}")
        else:
            parts.append(f"{connections} connections now (limit {limit})")
        if self.restarted:
            parts.append("the restart cut every other session")
        else:
            parts.append(f"{self.others_kept} other session(s) untouched")
        return "; ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        if self.terminated:
            f.add(
                "info",
                f"terminated {len(self.terminated)} idle session(s): "
                + _listed([s.describe() for s in self.terminated]),
            )
        for skipped in self.skipped[:SHOWN]:
            f.add("info", f"pid {skipped.pid} left alone: {skipped.reason}")
        for failed in self.failed[:SHOWN]:
            f.add("critical", f"pid {failed.pid} could not be terminated: {failed.error}")
        if self.still_alive:
            f.add(
                "critical",
                f"still alive after termination: pid {', '.join(map(str, self.still_alive))}",
            )
        if self.others_ended:
            f.add(
                "info",
                f"{len(self.others_ended)} session(s) not listed ended by themselves meanwhile",
            )
        if self.restarted:
            f.add("warning", f"{self.unit} was restarted as the last resort: every session was cut")
        reachable, connections, limit = self._final()
        if reachable:
            ok = connections is not None and limit is not None and connections < limit
            f.add(
                "info" if ok else "critical",
                f"{self.service}: {connections} client connections now (limit {limit})",
            )
        else:
            f.add("critical", f"{self.service} cannot be asked after relief: {self.error}")
        return f.items
