"""Reports of the ufw_harden role: the firewall plan, its snapshot, verify and rollback.

The role's probe module (``roles/ufw_harden/library/ufw_harden_probe.py``) reads the whole
firewall in one task; these models are its output field for field:

- ``firewall.plan`` (check run): the state and what hardening would change, close and cut;
- ``firewall.snapshot`` (apply run, before any change): where /etc/ufw, /etc/default/ufw
  and the live rules were saved, their digests, and the on-host revert that guards them;
- ``firewall.verify`` (apply run): the state after the change, the fresh SSH connection,
  the revert disarmed, the public ports answering from the controller;
- ``firewall.rollback`` (rollback run): the state after restoring, and whether the on-host
  revert had already restored it without the controller.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from .base import (
    Assessment,
    Blocker,
    Finding,
    Restoration,
    Signal,
    Snapshot,
    Verification,
    report_kind,
)

# Each distinct (client address, port) that is connected to a port hardening would close
# costs this much confidence: one such client takes a medium-risk fix (x0.85) from 1.0 to
# 0.68, below the default threshold 0.7, so a person decides whether to shut it out.
CUT_CONNECTION_PENALTY = 0.2
# The port this run's own SSH session uses would close (only when the ssh_port param
# overrides the detected port): the fresh-SSH check and the on-host revert cover it, so it
# lowers confidence without forbidding the change the operator asked for.
OWN_PORT_PENALTY = 0.1

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
_SHOWN = 5  # items listed in one line before "and N more"


def _listed(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UfwRule(_Model):
    """One ``### tuple ###`` line of /etc/ufw/user.rules or user6.rules."""

    action: StrictStr
    log: StrictStr
    proto: StrictStr
    port: StrictStr
    dst: StrictStr
    sport: StrictStr
    src: StrictStr
    direction: StrictStr
    interface: StrictStr
    dapp: StrictStr
    sapp: StrictStr
    route: StrictBool
    v6: StrictBool
    comment: StrictStr


class Listener(_Model):
    proto: Literal["tcp", "udp"]
    address: StrictStr
    port: int
    process: StrictStr


class Connection(_Model):
    local_address: StrictStr
    local_port: int
    peer_address: StrictStr
    peer_port: int


class RevertMarkers(_Model):
    """What the snapshot directory says about restores: by the on-host timer, by rollback."""

    fired: StrictBool
    fired_at: StrictStr | None
    rolled_back_at: StrictStr | None
    saved: StrictBool


class FirewallState(_Model):
    """The firewall as the probe read it."""

    ufw_installed: StrictBool
    enabled: StrictBool  # ENABLED=yes in /etc/ufw/ufw.conf
    active: StrictBool  # ufw's user chain is loaded in the kernel
    default_incoming: Literal["allow", "deny", "reject"]
    ipv6: StrictBool
    rules: tuple[UfwRule, ...]
    listeners: tuple[Listener, ...]
    connections: tuple[Connection, ...]
    addresses: tuple[StrictStr, ...]
    connection: Connection | None  # this run's own SSH session ($SSH_CONNECTION)
    ssh_port: Port
    ssh_port_source: Literal["param", "connection", "fallback"]
    ssh_port_listening: StrictBool
    etc_owner: StrictStr
    etc_sha256: Sha256  # /etc/ufw and /etc/default/ufw: paths, types, modes, contents
    live_sha256: Sha256  # iptables-save + ip6tables-save, normalized
    revert: RevertMarkers

    def describe(self) -> str:
        return (
            f"ufw {'active' if self.active else 'inactive'}"
            f"{'' if self.enabled == self.active else ' (enabled=' + str(self.enabled) + ')'}, "
            f"default incoming {self.default_incoming}, {len(self.rules)} rule(s)"
        )


class PlannedRule(_Model):
    """An allow rule hardening adds (SSH first, then public services, then declared)."""

    port: StrictStr
    proto: Literal["tcp", "udp", "any"]
    source: StrictStr
    comment: StrictStr
    reason: StrictStr
    label: StrictStr


class UfwDeleteArgs(_Model):
    """community.general.ufw arguments that delete one undeclared rule."""

    rule: StrictStr
    direction: StrictStr
    from_ip: StrictStr
    to_ip: StrictStr
    log: StrictBool
    to_port: StrictStr | None = None
    proto: StrictStr | None = None
    name: StrictStr | None = None
    from_port: StrictStr | None = None
    interface: StrictStr | None = None
    comment: StrictStr | None = None


class RuleDeletion(_Model):
    label: StrictStr
    args: UfwDeleteArgs


class KeptRule(_Model):
    """An undeclared allow rule hardening leaves in place, and why."""

    label: StrictStr
    why: StrictStr


class ClosingPort(_Model):
    """A port listening on a non-loopback address that is reachable now and would not be."""

    proto: Literal["tcp", "udp"]
    address: StrictStr
    port: int
    process: StrictStr
    allowed_from: tuple[StrictStr, ...]  # sources a declared rule still lets in
    label: StrictStr  # 8081/tcp (python3)


class CutConnection(_Model):
    """A client connected to a closing port from another address: it would be shut out."""

    peer_address: StrictStr
    peer_port: int
    local_address: StrictStr
    port: int
    proto: Literal["tcp"]
    label: StrictStr  # 10.99.0.2 on 8081/tcp


class FirewallChanges(_Model):
    """What hardening would do, computed on the host from the declared policy."""

    to_add: tuple[PlannedRule, ...]
    to_delete: tuple[RuleDeletion, ...]
    kept: tuple[KeptRule, ...]
    set_default: StrictBool
    enable: StrictBool
    closing: tuple[ClosingPort, ...]
    cut: tuple[CutConnection, ...]
    own_port_closing: StrictBool
    compliant: StrictBool

    def describe(self) -> str:
        if self.compliant:
            return "nothing to change"
        parts = []
        if self.to_add:
            parts.append("allow " + _listed([r.label for r in self.to_add]))
        if self.to_delete:
            parts.append("delete " + _listed([d.label for d in self.to_delete]))
        if self.set_default:
            parts.append("deny incoming by default")
        if self.enable:
            parts.append("enable ufw")
        if self.closing:
            parts.append("closes " + _listed([c.label for c in self.closing]))
        clients = _clients(self.cut)
        if clients:
            parts.append(f"{len(clients)} connected client(s) would be shut out")
        return "; ".join(parts)


def _clients(cut: tuple[CutConnection, ...]) -> list[tuple[str, int]]:
    return list(dict.fromkeys((c.peer_address, c.port) for c in cut))


@report_kind("firewall.plan")
class FirewallPlan(Assessment):
    """ufw_harden's check run: the firewall now, and what hardening would change.

    ``signals()``: each distinct (client address, port) connected to a port that would close
    costs ``CUT_CONNECTION_PENALTY`` (0.2): its open connection survives (ufw keeps
    established connections), but its next one would be refused. When the ``ssh_port``
    param closes the port this run's own session uses, ``OWN_PORT_PENALTY`` (0.1).
    """

    kind: Literal["firewall.plan"]
    state: FirewallState
    plan: FirewallChanges

    def problem_present(self) -> bool:
        return not self.plan.compliant

    def blocker(self) -> Blocker | None:
        if not self.state.ufw_installed:
            return Blocker(code="no_ufw", reason="ufw is not installed on the host")
        if self.state.ssh_port_source == "fallback" and not self.state.ssh_port_listening:
            return Blocker(
                code="no_ssh_port",
                reason=(
                    "the SSH port could not be determined: $SSH_CONNECTION is not visible "
                    f"and nothing listens on the fallback port {self.state.ssh_port}/tcp"
                ),
            )
        return None

    def signals(self) -> list[Signal]:
        out = [
            Signal(
                reason=f"client {peer} is connected to {port}/tcp, which hardening would close "
                "(its next connection would be refused)",
                penalty=CUT_CONNECTION_PENALTY,
            )
            for peer, port in _clients(self.plan.cut)
        ]
        if self.plan.own_port_closing and self.state.connection is not None:
            port = self.state.connection.local_port
            out.append(
                Signal(
                    reason=f"this run's own SSH port {port}/tcp would close (ssh_port is "
                    f"{self.state.ssh_port}); the on-host revert is the safety net",
                    penalty=OWN_PORT_PENALTY,
                )
            )
        return out

    def describe(self) -> str:
        return f"{self.state.describe()}; {self.plan.describe()}"

    def preview_diff(self) -> str:
        """The firewall before and after hardening: status, default, rules, reachability."""
        state, plan = self.state, self.plan
        if plan.compliant:
            return ""
        now = "active" if state.active else "inactive"
        after = "active" if state.active or plan.enable else "inactive"
        lines = ["--- firewall now", "+++ firewall after ufw_harden"]
        lines += [f" ufw {now}"] if now == after else [f"-ufw {now}", f"+ufw {after}"]
        default = f"default incoming {state.default_incoming}"
        lines += [f"-{default}", "+default incoming deny"] if plan.set_default else [f" {default}"]
        lines += [f"+allow {rule.label}  ({rule.reason})" for rule in plan.to_add]
        lines += [f"-{deletion.label}  (undeclared)" for deletion in plan.to_delete]
        lines += [f" {kept.label}  (kept: {kept.why})" for kept in plan.kept]
        lines += [f"-reachable {port.label} on {port.address}" for port in plan.closing]
        lines += [f"-client {cut.label}  (its next connection refused)" for cut in plan.cut]
        return "\n".join(lines) + "\n"

    def findings(self, host: str) -> list[Finding]:
        out: list[Finding] = []

        def add(severity: Literal["info", "warning", "critical"], message: str) -> None:
            out.append(Finding(host=host, severity=severity, message=message))

        state, plan = self.state, self.plan
        if not state.active:
            add("warning", "ufw is inactive: every listening port is reachable")
        if state.default_incoming != "deny":
            add("warning", f"ufw's default incoming policy is {state.default_incoming}")
        via = {"param": "the ssh_port param", "connection": "this run's connection",
               "fallback": "the fallback"}[state.ssh_port_source]  # fmt: skip
        add("info", f"SSH port {state.ssh_port}/tcp (from {via}) stays open")
        for rule in plan.to_add:
            add("info", f"would allow {rule.label} ({rule.reason})")
        for deletion in plan.to_delete:
            add("warning", f"would delete the undeclared rule {deletion.label}")
        for kept in plan.kept:
            add("info", f"keeps the undeclared rule {kept.label}: {kept.why}")
        for port in plan.closing:
            where = (
                f" (still allowed from {', '.join(port.allowed_from)})" if port.allowed_from else ""
            )
            add("warning", f"would close {port.label} listening on {port.address}{where}")
        for peer, port_number in _clients(plan.cut):
            add("critical", f"client {peer} is connected to {port_number}/tcp, which would close")
        if plan.own_port_closing:
            add("critical", f"this run's own SSH port would close (ssh_port {state.ssh_port})")
        if plan.compliant:
            add("info", f"firewall as declared: {state.describe()}")
        return out


@report_kind("firewall.snapshot")
class FirewallSnapshot(Snapshot):
    """Saved before any change: the directory on the host, the digests, the armed revert."""

    kind: Literal["firewall.snapshot"]
    run_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    directory: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]{1,300}$")]
    revert_unit: Annotated[str, Field(pattern=r"^veris-ufw-revert-[A-Za-z0-9_.-]{1,100}$")]
    revert_after: Annotated[int, Field(ge=1)]
    state: FirewallState

    def describe(self) -> str:
        return (
            f"/etc/ufw, /etc/default/ufw and the live rules saved in {self.directory} "
            f"({self.state.describe()}); on-host revert {self.revert_unit} armed for "
            f"{self.revert_after}s"
        )


class PublicPort(_Model):
    """A declared public service port, probed from the controller after the change."""

    service: StrictStr
    port: Port
    answered: StrictBool


@report_kind("firewall.verify")
class FirewallVerify(Verification):
    """The apply run's check: compliant now, SSH over a fresh connection, revert disarmed.

    ``state`` and ``plan`` are None when the host could not be read after the change (the
    fresh SSH connection failed: the on-host revert will restore the firewall).
    """

    kind: Literal["firewall.verify"]
    ssh_port: Port
    fresh_ssh: StrictBool | None  # None: nothing was changed, so nothing to confirm
    revert: Literal["disarmed", "fired", "not_armed", "armed"]
    public_ports: tuple[PublicPort, ...]
    state: FirewallState | None
    plan: FirewallChanges | None

    def passed(self) -> bool:
        return (
            self.fresh_ssh is not False
            and self.revert in ("disarmed", "not_armed")
            and self.plan is not None
            and self.plan.compliant
            and all(p.answered for p in self.public_ports)
        )

    def describe(self) -> str:
        if self.fresh_ssh is False:
            return (
                f"a fresh SSH connection to port {self.ssh_port} failed after the change: the "
                "on-host revert is armed and will restore the firewall without the controller"
            )
        parts = [self.state.describe() if self.state else "firewall not read"]
        if self.plan is not None and not self.plan.compliant:
            parts.append(f"still not as declared: {self.plan.describe()}")
        if self.fresh_ssh:
            parts.append(f"fresh SSH connection on port {self.ssh_port} ok")
        parts.append(
            {
                "disarmed": "on-host revert disarmed",
                "fired": "the on-host revert fired and restored the old firewall",
                "not_armed": "no revert needed",
                "armed": "on-host revert still armed",
            }[self.revert]
        )
        for port in self.public_ports:
            verdict = "answers" if port.answered else "does NOT answer"
            parts.append(f"public {port.port}/tcp ({port.service}) {verdict} from the controller")
        return ", ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        severity: Literal["info", "critical"] = "info" if self.passed() else "critical"
        return [
            Finding(host=host, severity=severity, message=f"after hardening: {self.describe()}")
        ]


@report_kind("firewall.rollback")
class FirewallRollback(Restoration):
    """The rollback run: the firewall after restoring, and who restored it."""

    kind: Literal["firewall.rollback"]
    state: FirewallState
    # The role's verdict: /etc/ufw and the live rules digest as in the snapshot.
    restored: StrictBool
    restored_by: Literal["timer", "rollback"]
    revert_fired: StrictBool
    revert_fired_at: StrictStr | None

    def is_restored(self) -> bool:
        return self.restored

    def describe(self) -> str:
        match = (
            "/etc/ufw and the live rules match the snapshot"
            if self.restored
            else "but the firewall does not match the snapshot"
        )
        if self.revert_fired:
            return (
                f"the on-host revert restored the firewall at {self.revert_fired_at}; the host "
                f"was reachable again without the controller; {match} ({self.state.describe()})"
            )
        return f"restored from the snapshot by the rollback run; {match} ({self.state.describe()})"

    def mismatches(self, snapshot: Snapshot) -> list[str]:
        if not isinstance(snapshot, FirewallSnapshot):
            return [f"a {snapshot.kind} snapshot cannot be compared with the firewall"]
        problems = []
        before, now = snapshot.state, self.state
        if before.etc_sha256 != now.etc_sha256:
            problems.append(
                f"/etc/ufw or /etc/default/ufw differ from the snapshot "
                f"(sha256 {now.etc_sha256[:12]} now, {before.etc_sha256[:12]} before)"
            )
        if before.live_sha256 != now.live_sha256:
            problems.append(
                f"the live rule set differs from the snapshot "
                f"(sha256 {now.live_sha256[:12]} now, {before.live_sha256[:12]} before)"
            )
        return problems

    def findings(self, host: str) -> list[Finding]:
        severity: Literal["info", "critical"] = "info" if self.restored else "critical"
        return [Finding(host=host, severity=severity, message=f"rollback: {self.describe()}")]
