"""Progress of long work as typed events, and their rendering on stderr for people.

The library never prints: ``Remediator(progress=...)`` and ``Lab(progress=...)`` call a
``ProgressCallback`` when a phase starts and when it ends (intake, route, plan, the check
run with its task count, decide, apply, verify, rollback; the lab's root file system build
and each host's boot). The CLI renders them with ``ConsoleProgress``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

logger = logging.getLogger(__name__)

# What each phase is, in words (phases not named here are shown by their name).
PHASE_LABELS: dict[str, str] = {
    "intake": "reading the alert",
    "route": "finding host, service and fix",
    "plan": "planning",
    "diagnose": "diagnosis run (read-only)",
    "check": "check run (--check --diff)",
    "decide": "deciding",
    "apply": "applying the fix",
    "verify": "verifying health",
    "rollback": "rolling back",
    "recheck": "re-checking (read-only)",
    "recover-check": "re-checking an interrupted fix",
    "restore": "restoring the snapshot",
    "baseline": "recording baselines",
    "rootfs": "building the lab root file system (debootstrap; 1-2 minutes, then cached)",
    "boot": "booting",
}
# Phases that take seconds or minutes: announced when they start, also in a log.
_LONG = frozenset(
    {"diagnose", "check", "apply", "rollback", "recheck", "recover-check", "restore",
     "baseline", "rootfs", "boot"}
)  # fmt: skip
_MARKS = {"ok": ("✓", "green"), "failed": ("✗", "red"), "skipped": ("-", "yellow")}


class ProgressEvent(BaseModel):
    """A phase started (``kind="start"``) or ended (``"end"``, with status and seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["start", "end"]
    phase: str
    host: str | None = None
    status: Literal["ok", "failed", "skipped"] | None = None
    seconds: float | None = None
    detail: str = ""
    # Ansible tasks the run reported for the host (check, apply, rollback runs), at the end.
    tasks: int | None = None

    @property
    def label(self) -> str:
        return PHASE_LABELS.get(self.phase, self.phase)


ProgressCallback = Callable[[ProgressEvent], None]


def emit(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Call ``progress``; a broken callback never breaks the work it reports on."""
    if progress is None:
        return
    try:
        progress(event)
    except Exception:  # a closed terminal, a caller's bug: the fix in flight matters more
        logger.warning("progress callback failed on %s", event.phase, exc_info=True)


class ConsoleProgress:
    """One line per finished phase on a (stderr) console; on a terminal, also a spinner
    naming the phases in flight (lab hosts boot in parallel, so there may be several)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str | None], tuple[str, float]] = {}
        self._status: Status | None = None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            key = (event.phase, event.host)
            if event.kind == "start":
                self._running[key] = (self._name(event), time.monotonic())
                if not self._console.is_terminal and event.phase in _LONG:
                    self._console.print(Text(f"… {self._name(event)}"), soft_wrap=True)
            else:
                self._running.pop(key, None)
                self._console.print(self._finished(event), soft_wrap=True)
            self._refresh()

    def close(self) -> None:
        with self._lock:
            self._running.clear()
            self._refresh()

    @staticmethod
    def _name(event: ProgressEvent) -> str:
        return f"{event.label} {event.host}" if event.host else event.label

    @staticmethod
    def _finished(event: ProgressEvent) -> Text:
        mark, style = _MARKS.get(event.status or "ok", ("·", ""))
        line = Text()
        line.append(f"{mark} ", style=style)
        line.append(f"{event.label:<30} {event.host or '':<8} ")
        line.append(f"{event.seconds or 0.0:6.2f} s", style="dim")
        facts = [f"{event.tasks} tasks"] if event.tasks is not None else []
        if event.detail:
            facts.append(event.detail)
        if facts:
            line.append("  " + "; ".join(facts))
        return line

    def _refresh(self) -> None:
        if not self._console.is_terminal:
            return
        if not self._running:
            if self._status is not None:
                self._status.stop()
                self._status = None
            return
        text = " · ".join(name for name, _ in self._running.values())
        if self._status is None:
            self._status = self._console.status(Text(text), spinner="dots")
            self._status.start()
        else:
            self._status.update(Text(text))
