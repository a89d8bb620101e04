"""The database diagnosis report (``diag.database``), its findings and likely causes."""

from __future__ import annotations

from typing import Literal

from ..base import (
    Cause,
    Finding,
    Report,
    Severity,
    report_kind,
)
from ._common import (
    RELIEF,
    RESTART,
    DatabaseThresholds,
    DataDir,
    PostgresServer,
    RedisServer,
    _Findings,
    _listed,
)


@report_kind("diag.database")
class DatabaseDiagnosis(Report):
    """diag_database: PostgreSQL and Redis reachability, connections, logins, space."""

    kind: Literal["diag.database"]
    postgres_policy_declared: bool
    postgres: tuple[PostgresServer, ...]
    redis: tuple[RedisServer, ...]
    thresholds: DatabaseThresholds

    @property
    def _percent(self) -> int:
        return self.thresholds.near_limit_percent

    def describe(self) -> str:
        parts: list[str] = []
        for pg in self.postgres:
            if pg.reachable and pg.connections is not None:
                text = f"{pg.name}: {pg.connections}/{pg.max_connections} connections"
                if pg.relievable:
                    text += f", {pg.relievable} idle >= {pg.idle_age} s"
                if pg.auth is not None and pg.auth.failures:
                    text += f", {pg.auth.failures} refused login(s)"
                parts.append(text)
            else:
                parts.append(f"{pg.name} unreachable ({pg.state_text()})")
        for rd in self.redis:
            if rd.reachable and rd.connected_clients is not None:
                parts.append(f"{rd.name}: {rd.connected_clients}/{rd.maxclients} clients")
            elif rd.reachable:
                parts.append(f"{rd.name} reachable")
            else:
                parts.append(f"{rd.name} unreachable ({rd.unit} {rd.active_state})")
        return "; ".join(parts) or "no PostgreSQL or Redis service is declared"

    # -- findings ----------------------------------------------------------------------

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        if not self.postgres and not self.redis:
            f.add("info", "no PostgreSQL or Redis service is declared on this host")
        for pg in self.postgres:
            self._pg_findings(f, pg)
        for rd in self.redis:
            self._redis_findings(f, rd)
        return f.items

    def _pg_findings(self, f: _Findings, pg: PostgresServer) -> None:
        pct = self._percent
        if not pg.reachable:
            sev: Severity = "warning" if pg.error_kind == "probe" else "critical"
            f.add(sev, f"{pg.name}: cannot be asked ({pg.state_text()}): {pg.error}")
        else:
            f.add(
                "critical" if pg.exhausted(pct) else "info",
                pg.connections_text(pct),
            )
            states = ", ".join(f"{s.name} {s.count}" for s in pg.by_state) or "none"
            f.add("info", f"{pg.name} sessions by state: {states}")
            users = _listed(
                [f"{u.name}{' (superuser)' if u.superuser else ''} {u.count}" for u in pg.by_user]
            )
            if users:
                f.add("info", f"{pg.name} sessions by user: {users}")
            ages = ", ".join(f"{b.label()}: {b.count}" for b in pg.idle_by_age if b.count)
            if ages:
                f.add("info", f"{pg.name} idle sessions by age: {ages}")
            if pg.oldest_idle:
                f.add(
                    "info",
                    f"{pg.name}: {pg.relievable} idle session(s) relief may terminate (idle >= "
                    f"{pg.idle_age} s, superusers' excluded unless declared); oldest idle: "
                    + _listed([s.describe() for s in pg.oldest_idle]),
                )
        if pg.tcp_ok is False:
            f.add(
                "critical" if pg.reachable else "warning",
                f"{pg.name}: TCP {pg.tcp_address}:{pg.port} refused: {pg.tcp_error}",
            )
        for d in pg.filesystems():
            f.add("critical" if self._full(d) else "info", f"{pg.name} data: {d.describe()}")
        auth = pg.auth
        if auth is not None:
            if auth.unreadable:
                f.add("warning", f"{pg.name} logs not readable: {'; '.join(auth.unreadable)}")
            burst = auth.failures >= self.thresholds.auth_failures
            f.add("warning" if burst else "info", f"{pg.name}: {auth.describe()}")

    def _redis_findings(self, f: _Findings, rd: RedisServer) -> None:
        if not rd.reachable:
            f.add("critical", f"{rd.name}: unreachable ({rd.unit} {rd.active_state}): {rd.error}")
            return
        if rd.auth_required:
            f.add("info", f"{rd.name}: {rd.error}")
        else:
            severity: Severity = "critical" if rd.exhausted(self._percent) else "info"
            f.add(severity, rd.clients_text())
        if rd.data_directory is not None:
            d = rd.data_directory
            f.add("critical" if self._full(d) else "info", f"{rd.name} data: {d.describe()}")

    # -- causes ------------------------------------------------------------------------

    def _full(self, d: DataDir) -> bool:
        t = self.thresholds
        return d.used_percent >= t.full_percent or (d.inodes_used_percent or 0.0) >= (
            t.inodes_full_percent
        )

    def causes(self) -> list[Cause]:
        found = (self._exhausted(), self._auth(), self._unreachable(), self._disk_full())
        return [c for c in found if c is not None]

    def _exhausted(self) -> Cause | None:
        pct = self._percent
        pgs = [pg for pg in self.postgres if pg.exhausted(pct)]
        rds = [rd for rd in self.redis if rd.exhausted(pct)]
        if not pgs and not rds:
            return None
        evidence: list[str] = []
        for pg in pgs:
            evidence.append(pg.connections_text(pct))
            users = _listed([f"{u.name} {u.count}" for u in pg.by_user])
            if users:
                evidence.append(f"{pg.name} sessions by user: {users}")
            evidence.append(
                f"{pg.name}: {pg.relievable} idle session(s) relief may terminate (idle >= "
                f"{pg.idle_age} s)"
                + (f"; oldest idle: {pg.oldest_idle[0].describe()}" if pg.oldest_idle else "")
            )
        evidence += [rd.clients_text() for rd in rds]
        relievable = [pg for pg in pgs if pg.policy]
        full = any(pg.all_slots_taken() for pg in pgs) or any(
            rd.connected_clients is not None
            and rd.maxclients is not None
            and rd.connected_clients >= rd.maxclients
            for rd in rds
        )
        names = _listed([pg.name for pg in pgs] + [rd.name for rd in rds])
        summary = f"too many database connections: {names} near the connection limit"
        summary += (
            "; db_connection_relief terminates the idle sessions older than the declared age"
            if relievable
            else "; escalate: no connection relief is declared for it (veris_postgres)"
        )
        return Cause(
            code="db_connections_exhausted",
            summary=summary,
            confidence=0.95 if full else 0.85,
            evidence=tuple(evidence),
            implied_fix=RELIEF if relievable else None,
            rules_out=(RESTART,),
        )

    def _auth(self) -> Cause | None:
        need = self.thresholds.auth_failures
        hits = [pg for pg in self.postgres if pg.auth is not None and pg.auth.failures >= need]
        if not hits:
            return None
        evidence: list[str] = []
        for pg in hits:
            assert pg.auth is not None
            evidence.append(f"{pg.name}: {pg.auth.describe()}")
            evidence += list(pg.auth.samples[:3])
        evidence.append(f"threshold: {need} refused logins in the window")
        worst = max(pg.auth.failures for pg in hits if pg.auth is not None)
        return Cause(
            code="db_auth_failures",
            summary="a burst of refused database logins: a client with wrong credentials, or "
            "someone guessing; escalate",
            confidence=0.85 if worst >= 2 * need else 0.7,
            evidence=tuple(evidence),
            implied_fix=None,
        )

    def _unreachable(self) -> Cause | None:
        evidence: list[str] = []
        confidence = 0.0
        restart = False
        for pg in self.postgres:
            if not pg.reachable and pg.error_kind == "connect":
                down = pg.active_state not in ("active", "reloading")
                confidence = max(confidence, 0.95 if down else 0.8)
                restart = True
                evidence.append(
                    f"{pg.name}: {pg.state_text()}; the local connection failed: {pg.error}"
                )
            elif pg.reachable and pg.tcp_ok is False:
                confidence = max(confidence, 0.6)
                evidence.append(
                    f"{pg.name} answers on its socket, but TCP {pg.tcp_address}:{pg.port} "
                    f"is refused: {pg.tcp_error}"
                )
        for rd in self.redis:
            if not rd.reachable:
                down = rd.active_state not in ("active", "reloading")
                confidence = max(confidence, 0.95 if down else 0.8)
                restart = True
                evidence.append(f"{rd.name}: {rd.unit} {rd.active_state}; {rd.error}")
        if not evidence:
            return None
        return Cause(
            code="db_unreachable",
            summary="a database server cannot be reached"
            + (
                "; a restart may bring it back"
                if restart
                else "; escalate: it runs but refuses TCP"
            ),
            confidence=confidence,
            evidence=tuple(evidence),
            implied_fix=RESTART if restart else None,
        )

    def _disk_full(self) -> Cause | None:
        full = [
            (name, d)
            for name, dirs in [
                *((pg.name, pg.filesystems()) for pg in self.postgres),
                *((rd.name, [rd.data_directory] if rd.data_directory else []) for rd in self.redis),
            ]
            for d in dirs
            if self._full(d)
        ]
        if not full:
            return None
        t = self.thresholds
        evidence = [f"{name} data: {d.describe()}" for name, d in full]
        evidence.append(
            f"threshold: {t.full_percent:g}% used or {t.inodes_full_percent:g}% of inodes"
        )
        worst = any(
            d.used_percent >= 99 or d.avail_bytes == 0 or (d.inodes_used_percent or 0) >= 99
            for _, d in full
        )
        return Cause(
            code="disk_full",
            summary=f"a database's data directory is on a full filesystem: "
            f"{_listed([d.mountpoint for _, d in full])}; a restart cannot help: escalate",
            confidence=0.95 if worst else 0.8,
            evidence=tuple(evidence),
            implied_fix=None,
            rules_out=(RESTART,),
        )
