"""What the host-wide diagnosis reports share: model config, text helpers, ufw state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..base import Cause, Finding, Severity

_SHOWN = 5  # items named in one line before "and N more"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _listed(items: Sequence[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


class _Findings:
    """Collects the findings of one report about one host."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.items: list[Finding] = []

    def add(self, severity: Severity, message: str) -> None:
        self.items.append(Finding(host=self.host, severity=severity, message=message))


class Load(_Model):
    one: float
    five: float
    fifteen: float

    def describe(self, cpus: int) -> str:
        return f"load {self.one:.2f}/{self.five:.2f}/{self.fifteen:.2f} on {cpus} CPU(s)"


class UfwState(_Model):
    installed: bool
    enabled: bool  # ENABLED=yes in /etc/ufw/ufw.conf
    active: bool  # ufw's chains are loaded
    default_incoming: Literal["allow", "deny", "reject"]

    def describe(self) -> str:
        if not self.installed:
            return "ufw not installed"
        state = "active" if self.active else "inactive"
        boot = "" if self.enabled == self.active else f" (enabled at boot: {self.enabled})"
        return f"ufw {state}{boot}, default incoming {self.default_incoming}"


def _firewall_inactive(
    ufw: UfwState,
    firewall_declared: bool,
    reachable: Iterable[str],
    *,
    other_filter: str | None,
    confidence: float,
) -> Cause | None:
    """ufw is not filtering: every listening port is reachable (shared by two workflows).

    ``other_filter`` names a firewall outside ufw that filters INPUT (lowers confidence to
    0.5: it may be in charge on purpose).
    """
    if ufw.installed and ufw.active:
        return None
    evidence = [
        "ufw is not installed"
        if not ufw.installed
        else f"ufw is inactive (ENABLED={'yes' if ufw.enabled else 'no'} in "
        "/etc/ufw/ufw.conf; ufw's chains are not loaded)"
    ]
    ports = list(dict.fromkeys(reachable))
    if ports:
        evidence.append("reachable from anywhere: " + _listed(ports))
    if other_filter:
        evidence.append(other_filter)
        confidence = 0.5
    if not ufw.installed:
        confidence = min(confidence, 0.7)
    fix = "ufw_harden" if firewall_declared and ufw.installed else None
    summary = "the host firewall (ufw) is not filtering incoming traffic"
    summary += (
        "; ufw_harden applies the declared policy"
        if fix
        else "; escalate: the host does not declare veris_firewall"
        if ufw.installed
        else "; escalate: ufw is not installed"
    )
    return Cause(
        code="firewall_inactive",
        summary=summary,
        confidence=confidence,
        evidence=tuple(evidence),
        implied_fix=fix,
    )


def _unexpected_listeners(
    labels: Sequence[tuple[str, bool]], firewall_declared: bool, source: str
) -> Cause | None:
    """Undeclared ports listening on the network; ``labels`` are (label, reachable)."""
    if not labels:
        return None
    exposed = [label for label, reachable in labels if reachable]
    evidence = [f"{label}: {'reachable from anywhere' if reachable else 'ufw keeps it out'}"
                for label, reachable in labels]  # fmt: skip
    evidence.append(source)
    if exposed:
        fix = "ufw_harden" if firewall_declared else None
        summary = f"undeclared listener(s) reachable: {_listed(exposed)}" + (
            "; ufw_harden closes undeclared ports"
            if fix
            else "; escalate: the host does not declare veris_firewall"
        )
        return Cause(
            code="unexpected_listener", summary=summary, confidence=0.8,
            evidence=tuple(evidence), implied_fix=fix,
        )  # fmt: skip
    return Cause(
        code="unexpected_listener",
        summary=(
            "undeclared listener(s), not reachable through ufw: "
            f"{_listed([label for label, _ in labels])}; escalate: a person should know why"
        ),
        confidence=0.5,
        evidence=tuple(evidence),
    )
