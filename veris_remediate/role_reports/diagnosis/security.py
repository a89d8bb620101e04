"""The security diagnosis report (``diag.security``), its findings and its likely causes."""

from __future__ import annotations

from typing import Literal

from ..base import Cause, Finding, Report, Severity, report_kind
from ._common import (
    UfwState,
    _Findings,
    _firewall_inactive,
    _listed,
    _Model,
    _unexpected_listeners,
)


class SecurityJournal(_Model):
    readable: bool
    entries: int
    truncated: bool


class SshFailures(_Model):
    """Failed SSH logins from one source address in the window (sshd's journal)."""

    address: str
    attempts: int  # Failed lines, at least one per failed connection
    connections: int
    invalid_user_connections: int
    users: tuple[str, ...]
    first_seen: str | None
    last_seen: str | None

    def describe(self, window: int) -> str:
        users = f" as {_listed([repr(u) for u in self.users])}" if self.users else ""
        invalid = (
            f", {self.invalid_user_connections} for invalid users"
            if self.invalid_user_connections
            else ""
        )
        span = f", {self.first_seen} to {self.last_seen}" if self.first_seen else ""
        return (
            f"{self.attempts} failed SSH login(s) from {self.address} in {window} min "
            f"({self.connections} connection(s){invalid}){users}{span}"
        )


class SshLogin(_Model):
    address: str
    user: str
    count: int
    last_seen: str | None


class SudoUse(_Model):
    user: str
    commands: int
    failures: int
    denied: int
    last_command: str | None  # the program only, never its arguments
    last_seen: str | None


class SecurityListener(_Model):
    """A socket listening on a non-loopback address (ss -Htlnup)."""

    proto: Literal["tcp", "udp"]
    address: str
    port: int
    process: str
    pid: int | None
    unit: str | None  # the systemd unit the process runs in
    declared: bool
    expected_as: str | None  # ssh, service NAME, veris_firewall.allow, expected
    exposed: bool  # ufw would let a connection from anywhere in

    def label(self) -> str:
        pid = f", pid {self.pid}" if self.pid is not None else ""
        unit = f", {self.unit}" if self.unit else ""
        return f"{self.port}/{self.proto} ({self.process or '?'}{pid}{unit})"


class SecurityUfw(UfwState):
    rules: int


class SecurityThresholds(_Model):
    brute_force_attempts: int  # failed logins from one address in the window


@report_kind("diag.security")
class SecurityDiagnosis(Report):
    """diag_security: failed SSH logins by source, sudo use, undeclared listeners, ufw.

    Causes and their confidence:

    - ``ssh_brute_force``: a source with at least ``brute_force_attempts`` failed logins in
      the window: 0.85, 0.95 at three times the threshold (a count, not a guess); no single
      source at the threshold but five or more sources together at five times it: 0.6
      (distributed). Escalate: blocking addresses is not a fix veris has.
    - ``unexpected_listener``: a port listening on the network that neither veris_services,
      veris_firewall.allow, SSH nor the role's expected ports declare: 0.8 when ufw lets it be
      reached (implies ``ufw_harden`` when the host declares veris_firewall), 0.5 when ufw
      keeps it out (escalate).
    - ``firewall_inactive``: ufw inactive, 0.8 (this workflow does not look at firewalls
      outside ufw; the firewall workflow does); implies ``ufw_harden`` when declared.
    """

    kind: Literal["diag.security"]
    window_minutes: int
    thresholds: SecurityThresholds
    journal: SecurityJournal
    controller_address: str | None  # the peer of this run's own SSH connection
    ssh_port: int
    ssh_failures: tuple[SshFailures, ...]
    ssh_logins: tuple[SshLogin, ...]
    sudo: tuple[SudoUse, ...]
    listeners: tuple[SecurityListener, ...]
    ufw: SecurityUfw
    firewall_declared: bool

    def _undeclared(self) -> list[SecurityListener]:
        seen: dict[tuple[str, int], SecurityListener] = {}
        for listener in self.listeners:
            if not listener.declared:
                key = (listener.proto, listener.port)
                if key not in seen or listener.exposed:
                    seen[key] = listener
        return list(seen.values())

    def _attackers(self) -> list[SshFailures]:
        limit = self.thresholds.brute_force_attempts
        return [s for s in self.ssh_failures if s.attempts >= limit]

    def _logged_in_after(self, source: SshFailures) -> list[SshLogin]:
        return [
            login
            for login in self.ssh_logins
            if login.address == source.address
            and login.address != self.controller_address
            and (source.first_seen is None or (login.last_seen or "") >= source.first_seen)
        ]

    def describe(self) -> str:
        failed = sum(s.attempts for s in self.ssh_failures)
        return (
            f"{failed} failed SSH login(s) from {len(self.ssh_failures)} source(s) in "
            f"{self.window_minutes} min, {len(self._undeclared())} undeclared listener(s), "
            f"{self.ufw.describe()}"
        )

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        if not self.journal.readable:
            f.add("warning", "the journal could not be read: SSH and sudo history is missing")
        elif self.journal.truncated:
            f.add("warning", f"only the last {self.journal.entries} journal entries were read")
        attackers = {s.address for s in self._attackers()}
        for source in self.ssh_failures[:10]:
            f.add("critical" if source.address in attackers else "warning",
                  source.describe(self.window_minutes))  # fmt: skip
            for login in self._logged_in_after(source):
                f.add("critical", (
                    f"{login.count} successful login(s) as {login.user!r} from {source.address}, "
                    "which also failed: possible compromise"
                ))  # fmt: skip
        if not self.ssh_failures:
            f.add("info", f"no failed SSH logins in {self.window_minutes} min")
        others = [s for s in self.ssh_logins if s.address != self.controller_address]
        for login in others[:10]:
            f.add("info", f"{login.count} SSH login(s) as {login.user!r} from {login.address}")
        for use in self.sudo[:10]:
            severity: Severity = "warning" if use.failures or use.denied else "info"
            last = f", last: {use.last_command}" if use.last_command else ""
            f.add(severity, (
                f"sudo by {use.user!r}: {use.commands} command(s), {use.failures} "
                f"authentication failure(s), {use.denied} refused{last}"
            ))  # fmt: skip
        for listener in self._undeclared():
            reach = "reachable" if listener.exposed else "kept out by ufw"
            text = f"undeclared listener {listener.label()} on {listener.address}, {reach}"
            f.add("warning" if listener.exposed else "info", text)
        f.add("info" if self.ufw.active else "warning", self.ufw.describe())
        return f.items

    def causes(self) -> list[Cause]:
        out = [self._brute_force()]
        out.append(_unexpected_listeners(
            [(f"{item.label()} on {item.address}", item.exposed) for item in self._undeclared()],
            self.firewall_declared,
            "from ss -Htlnup, compared with veris_services, veris_firewall.allow and SSH",
        ))  # fmt: skip
        reachable = [item.label() for item in self.listeners if item.exposed]
        out.append(_firewall_inactive(
            self.ufw, self.firewall_declared, reachable, other_filter=None, confidence=0.8
        ))  # fmt: skip
        return [c for c in out if c is not None]

    def _brute_force(self) -> Cause | None:
        limit = self.thresholds.brute_force_attempts
        attackers = self._attackers()
        window = self.window_minutes
        if attackers:
            top = max(s.attempts for s in attackers)
            evidence = [s.describe(window) for s in attackers]
            evidence += [
                f"{s.address} is the address this diagnosis itself connected from"
                for s in attackers
                if s.address == self.controller_address
            ]
            compromised = [login for s in attackers for login in self._logged_in_after(s)]
            evidence += [
                f"then {login.count} successful login(s) as {login.user!r} from {login.address}"
                for login in compromised
            ]
            evidence.append(f"threshold: {limit} failed logins from one address in {window} min")
            summary = f"SSH brute force from {_listed([s.address for s in attackers])}"
            if compromised:
                summary += " - and a login from it succeeded: possible compromise"
            return Cause(
                code="ssh_brute_force",
                summary=summary + "; escalate: no safe automatic fix (block the source)",
                confidence=0.95 if top >= 3 * limit else 0.85,
                evidence=tuple(evidence),
            )
        total = sum(s.attempts for s in self.ssh_failures)
        if len(self.ssh_failures) >= 5 and total >= 5 * limit:
            return Cause(
                code="ssh_brute_force",
                summary=(
                    f"distributed SSH brute force: {total} failed logins from "
                    f"{len(self.ssh_failures)} sources; escalate: no safe automatic fix"
                ),
                confidence=0.6,
                evidence=tuple(s.describe(window) for s in self.ssh_failures[:10]),
            )
        return None
