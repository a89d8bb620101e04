"""The firewall diagnosis report (``diag.firewall``), its findings and its likely causes."""

from __future__ import annotations

from typing import Literal

from ..base import Cause, Finding, Report, report_kind
from ._common import (
    UfwState,
    _Findings,
    _firewall_inactive,
    _listed,
    _Model,
    _unexpected_listeners,
)


class UfwRuleTuple(_Model):
    """One ``### tuple ###`` line of /etc/ufw/user.rules or user6.rules."""

    action: str
    log: str
    proto: str
    port: str
    dst: str
    sport: str
    src: str
    direction: str
    interface: str
    dapp: str
    sapp: str
    route: bool
    v6: bool
    comment: str

    def label(self) -> str:
        what = self.dapp or f"{self.port}/{self.proto}"
        return f"{self.action} {what} from {self.src}{' (v6)' if self.v6 else ''}"


class FirewallUfw(UfwState):
    default_outgoing: Literal["allow", "deny", "reject"]
    default_routed: Literal["allow", "deny", "reject"]
    ipv6: bool
    logging: str
    rules: tuple[UfwRuleTuple, ...]


class ChainPolicy(_Model):
    """A filter chain on the INPUT hook: iptables-save, ip6tables-save or nft -j."""

    source: Literal["iptables", "ip6tables", "nft"]
    family: str
    table: str
    chain: str
    policy: str
    rules: int

    def label(self) -> str:
        return f"{self.source} {self.family} {self.table}/{self.chain} policy {self.policy}"


class FirewallListener(_Model):
    proto: Literal["tcp", "udp"]
    address: str
    port: int
    process: str
    pid: int | None


class DeclaredPort(_Model):
    """A port the firewall policy keeps open: SSH, a public service, a veris_firewall entry."""

    label: str
    reason: str
    port: str  # a port or a range LOW:HIGH
    proto: Literal["tcp", "udp", "any"]
    source: str
    listening: bool  # on a non-loopback address
    ufw_allows: bool | None  # for the controller's address; None: not judged (no listener)
    probe: bool  # a single TCP port, listening, open to the controller: probed from it


class ExposedPort(_Model):
    """A non-loopback listener on a port the policy does not keep open."""

    proto: Literal["tcp", "udp"]
    address: str
    port: int
    process: str
    pid: int | None
    unit: str | None  # the systemd unit the process runs in
    service: str | None  # the declared, not public, service it belongs to
    ufw_allows: bool

    def label(self) -> str:
        pid = f", pid {self.pid}" if self.pid is not None else ""
        unit = f", {self.unit}" if self.unit else ""
        return f"{self.port}/{self.proto} ({self.process or '?'}{pid}{unit})"


class PortProbe(_Model):
    """A TCP connect from the controller to the host."""

    port: int
    reachable: bool
    error: str | None
    seconds: float


@report_kind("diag.firewall")
class FirewallDiagnosis(Report):
    """diag_firewall: ufw and its rules, the INPUT policies, the declared ports from outside.

    Causes and their confidence:

    - ``firewall_inactive``: ufw installed and inactive, 0.9; 0.5 when a firewall outside
      ufw filters INPUT (a drop policy or rules: it may be in charge on purpose); ufw not
      installed, 0.7. Implies ``ufw_harden`` when the host declares veris_firewall.
    - ``firewall_blocks_declared_port``: a declared port that listens on the host does not
      answer a TCP connect from the controller: 0.9 when ufw's rules keep the controller
      out (implies ``ufw_harden`` when declared: hardening adds the declared rules); 0.5 when
      ufw lets it in (something outside ufw, or the network, blocks it: escalate).
    - ``unexpected_listener``: an undeclared port listening on the network, 0.8 when ufw
      lets it be reached (implies ``ufw_harden`` when declared), 0.5 otherwise.
    """

    kind: Literal["diag.firewall"]
    ufw: FirewallUfw
    policies: tuple[ChainPolicy, ...]
    listeners: tuple[FirewallListener, ...]
    ssh_port: int
    ssh_port_source: Literal["connection", "fallback"]
    controller_address: str | None
    declared: tuple[DeclaredPort, ...]
    exposed: tuple[ExposedPort, ...]
    firewall_declared: bool
    target: str  # the address the controller connected to
    reachability: tuple[PortProbe, ...]

    def _probe(self, port: DeclaredPort) -> PortProbe | None:
        if not port.probe:
            return None
        return next((p for p in self.reachability if str(p.port) == port.port), None)

    def _blocked(self) -> list[tuple[DeclaredPort, PortProbe]]:
        out = []
        for port in self.declared:
            probe = self._probe(port)
            if probe is not None and not probe.reachable:
                out.append((port, probe))
        return out

    def _other_filter(self) -> str | None:
        """A firewall outside ufw that filters INPUT (ufw's own chains are inside iptables)."""
        if self.ufw.active:
            return None
        filtering = [p for p in self.policies if p.policy in ("drop", "reject") or p.rules]
        if not filtering:
            return None
        return "but INPUT is filtered outside ufw: " + _listed(
            [f"{p.label()}, {p.rules} rule(s)" for p in filtering]
        )

    def describe(self) -> str:
        blocked = self._blocked()
        parts = [self.ufw.describe(), f"{len(self.ufw.rules)} rule(s)"]
        probed = [p for p in self.declared if self._probe(p)]
        if probed:
            parts.append(f"{len(probed) - len(blocked)} of {len(probed)} declared port(s) "
                         "reachable from the controller")  # fmt: skip
        if blocked:
            parts.append("blocked: " + _listed([port.label for port, _ in blocked]))
        return ", ".join(parts)

    def findings(self, host: str) -> list[Finding]:
        f = _Findings(host)
        f.add("info" if self.ufw.active else "warning", self.ufw.describe())
        ufw = self.ufw
        f.add("info", (
            f"ufw defaults: incoming {ufw.default_incoming}, outgoing {ufw.default_outgoing}, "
            f"routed {ufw.default_routed}; logging {ufw.logging}; {len(ufw.rules)} rule(s)"
            + (": " + _listed([r.label() for r in ufw.rules]) if ufw.rules else "")
        ))  # fmt: skip
        for policy in self.policies:
            f.add("info", f"{policy.label()}, {policy.rules} rule(s)")
        if not self.policies:
            f.add("info", "no filter table on the INPUT hook: the kernel accepts everything")
        if self.controller_address is None:
            f.add("warning", "the controller's address is unknown: ports were not probed")
        for port in self.declared:
            probe = self._probe(port)
            if not port.listening:
                f.add("warning" if port.reason != "declared" else "info",
                      f"declared {port.label}: nothing listens on it on the network")  # fmt: skip
            elif probe is None:
                f.add("info", f"declared {port.label}: listening, not probed from the controller")
            elif probe.reachable:
                f.add("info", f"declared {port.label}: reachable from the controller")
            else:
                f.add("critical", (
                    f"declared {port.label}: listening, but the controller cannot connect "
                    f"({probe.error})"
                ))  # fmt: skip
        for item in self.exposed:
            owner = f"service {item.service}, not public" if item.service else "undeclared"
            reach = "reachable from anywhere" if item.ufw_allows else "kept out by ufw"
            f.add("warning" if item.ufw_allows else "info",
                  f"{item.label()} on {item.address} ({owner}): {reach}")  # fmt: skip
        return f.items

    def causes(self) -> list[Cause]:
        reachable = [item.label() for item in self.exposed if item.ufw_allows]
        reachable = [p.label for p in self.declared if p.listening] + reachable
        out = [
            _firewall_inactive(
                self.ufw, self.firewall_declared, reachable,
                other_filter=self._other_filter(), confidence=0.9,
            ),
            self._blocks(),
            _unexpected_listeners(
                [(f"{i.label()} on {i.address}", i.ufw_allows) for i in self.exposed
                 if i.service is None],
                self.firewall_declared,
                "from ss -Htlnup, compared with SSH, public services and veris_firewall.allow",
            ),
        ]  # fmt: skip
        return [c for c in out if c is not None]

    def _blocks(self) -> Cause | None:
        blocked = self._blocked()
        if not blocked:
            return None
        evidence = []
        by_ufw = []
        for port, probe in blocked:
            evidence.append(
                f"{port.label}: listening on the host, but a TCP connect from the controller "
                f"to {self.target}:{port.port} failed ({probe.error})"
            )
            if port.ufw_allows is False:
                by_ufw.append(port.label)
                evidence.append(
                    f"{port.label}: no ufw rule lets {self.controller_address} in; "
                    f"default incoming {self.ufw.default_incoming}"
                )
            else:
                evidence.append(f"{port.label}: ufw's rules let it in")
        other = [p.label() for p in self.policies if p.policy in ("drop", "reject")]
        if other:
            evidence.append("INPUT policies: " + _listed(other))
        if by_ufw:
            fix = "ufw_harden" if self.firewall_declared else None
            summary = f"ufw blocks declared port(s) {_listed(by_ufw)}" + (
                "; ufw_harden opens what the host declares"
                if fix
                else "; escalate: the host does not declare veris_firewall"
            )
            return Cause(
                code="firewall_blocks_declared_port", summary=summary, confidence=0.9,
                evidence=tuple(evidence), implied_fix=fix,
            )  # fmt: skip
        labels = _listed([port.label for port, _ in blocked])
        return Cause(
            code="firewall_blocks_declared_port",
            summary=(
                f"declared port(s) {labels} unreachable although ufw lets them in: rules "
                "outside ufw or the network block them; escalate"
            ),
            confidence=0.5,
            evidence=tuple(evidence),
        )
