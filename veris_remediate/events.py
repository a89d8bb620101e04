"""Fold an ansible-runner event stream into a per-host, per-task RunSummary as it streams.

Only ``runner_on_*`` and ``playbook_on_stats`` events matter; stdout is never parsed.
The folder keeps one small record per task result, never the events themselves, so
memory grows with the playbook's length, not with the event count. Whether a run was
in check mode is not in the events: the caller records it (RunSummary.check).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskStatus = Literal["ok", "changed", "failed", "unreachable", "skipped"]

_MSG_LIMIT = 500
# Module results that mean "check mode could not tell what this task would do".
_UNPREDICTABLE_MARKERS = (
    "would have run if not in check mode",
    "does not support check mode",
    "check mode not supported",
)
_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


class TaskResult(BaseModel):
    """One task's result on one host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    task: str
    action: str
    role: str | None = None
    status: TaskStatus
    ignored: bool = False
    unpredictable: bool = False
    msg: str = ""
    has_diff: bool = False


class HostSummary(BaseModel):
    """Everything one run did on one host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    tasks: tuple[TaskResult, ...] = ()
    # Structured results the roles emit as ``veris_report`` (kind -> report), last one wins.
    reports: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stats: dict[str, int] = Field(default_factory=dict)

    def count(self, status: TaskStatus) -> int:
        return sum(1 for t in self.tasks if t.status == status)

    @property
    def unreachable(self) -> bool:
        return any(t.status == "unreachable" for t in self.tasks) or self.stats.get("dark", 0) > 0

    @property
    def failed_tasks(self) -> tuple[TaskResult, ...]:
        return tuple(t for t in self.tasks if t.status == "failed" and not t.ignored)

    @property
    def changed_tasks(self) -> tuple[TaskResult, ...]:
        return tuple(t for t in self.tasks if t.status == "changed")

    @property
    def unpredictable_tasks(self) -> tuple[TaskResult, ...]:
        return tuple(t for t in self.tasks if t.unpredictable)


class RunSummary(BaseModel):
    """A whole run: hosts, whether the playbook reached its end, and the mode we ran it in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: bool
    hosts: dict[str, HostSummary] = Field(default_factory=dict)
    completed: bool = False  # saw playbook_on_stats: the playbook ran to its end
    events: int = 0

    def host(self, name: str) -> HostSummary:
        return self.hosts.get(name) or HostSummary(host=name)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value[:_MSG_LIMIT]
    if value is None:
        return ""
    return str(value)[:_MSG_LIMIT]


def _message(res: Mapping[str, Any]) -> str:
    msg = res.get("msg")
    if not msg and res.get("stderr"):
        msg = res.get("stderr")
    if not msg and isinstance(res.get("results"), list):
        # Loops: the first failing item's message says most.
        for item in res["results"]:
            if isinstance(item, Mapping) and item.get("failed"):
                msg = item.get("msg") or item.get("stderr")
                break
    return _text(msg)


def _is_unpredictable(status: str, res: Mapping[str, Any], check: bool) -> bool:
    if not check:
        return False
    msg = _text(res.get("msg")).lower()
    if status == "skipped" and any(marker in msg for marker in _UNPREDICTABLE_MARKERS):
        return True
    results = res.get("results")
    if isinstance(results, list):
        return any(
            isinstance(item, Mapping)
            and item.get("skipped")
            and any(m in _text(item.get("msg")).lower() for m in _UNPREDICTABLE_MARKERS)
            for item in results
        )
    return False


class EventFolder:
    """An ansible-runner ``event_handler``: call it with each event; read ``summary()``."""

    def __init__(self, *, check: bool) -> None:
        self._check = check
        self._tasks: dict[str, list[TaskResult]] = {}
        self._reports: dict[str, dict[str, dict[str, Any]]] = {}
        self._stats: dict[str, dict[str, int]] = {}
        self._completed = False
        self._events = 0

    def __call__(self, event: Mapping[str, Any]) -> bool:
        self._events += 1
        name = event.get("event")
        data = event.get("event_data") or {}
        if name == "playbook_on_stats":
            self._fold_stats(data)
        elif isinstance(name, str) and name in _RESULT_EVENTS:
            self._fold_result(_RESULT_EVENTS[name], data)
        return True  # keep ansible-runner's own artifact copy of the event

    def _fold_result(self, status: str, data: Mapping[str, Any]) -> None:
        host = data.get("host")
        if not isinstance(host, str):
            return
        res = data.get("res")
        res = res if isinstance(res, Mapping) else {}
        if status == "ok" and res.get("changed"):
            status = "changed"
        report = res.get("veris_report")
        if status in ("ok", "changed") and isinstance(report, Mapping):
            kind = report.get("kind")
            if isinstance(kind, str):
                self._reports.setdefault(host, {})[kind] = dict(report)
        self._tasks.setdefault(host, []).append(
            TaskResult(
                host=host,
                task=_text(data.get("task")),
                action=_text(data.get("task_action") or data.get("resolved_action")),
                role=data.get("role") if isinstance(data.get("role"), str) else None,
                status=status,
                ignored=bool(data.get("ignore_errors")),
                unpredictable=_is_unpredictable(status, res, self._check),
                msg=_message(res) if status in ("failed", "unreachable", "skipped") else "",
                has_diff=bool(res.get("diff")),
            )
        )

    def _fold_stats(self, data: Mapping[str, Any]) -> None:
        self._completed = True
        for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
            per_host = data.get(key)
            if isinstance(per_host, Mapping):
                for host, n in per_host.items():
                    self._stats.setdefault(str(host), {})[key] = int(n)

    def summary(self) -> RunSummary:
        names = set(self._tasks) | set(self._stats)
        return RunSummary(
            check=self._check,
            completed=self._completed,
            events=self._events,
            hosts={
                h: HostSummary(
                    host=h,
                    tasks=tuple(self._tasks.get(h, ())),
                    reports=self._reports.get(h, {}),
                    stats=self._stats.get(h, {}),
                )
                for h in sorted(names)
            },
        )


def fold_events(events: Iterable[Mapping[str, Any]], *, check: bool) -> RunSummary:
    """Fold a finished or recorded event stream."""
    folder = EventFolder(check=check)
    for event in events:
        folder(event)
    return folder.summary()
