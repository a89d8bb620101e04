"""Fold an ansible-runner event stream into a per-host, per-task RunSummary as it streams.

Only ``runner_on_*`` and ``playbook_on_stats`` events matter; stdout is never parsed.
The folder keeps one small record per task result, never the events themselves, so
memory grows with the playbook's length, not with the event count. Whether a run was
in check mode is not in the events: the caller records it (RunSummary.check).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from .role_reports import Report, ReportError, parse_report

TaskStatus = Literal["ok", "changed", "failed", "unreachable", "skipped"]

_MSG_LIMIT = 500
_DIFF_LIMIT = 4000  # characters of one task's diff kept for the preview
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
    diff: str = ""  # what --diff showed for this task, as text (cut at _DIFF_LIMIT)


class HostSummary(BaseModel):
    """Everything one run did on one host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    tasks: tuple[TaskResult, ...] = ()
    # The roles' typed reports (role_reports), by kind; the last one of a kind wins.
    reports: dict[str, SerializeAsAny[Report]] = Field(default_factory=dict)
    # Reports that failed validation: a role and Python disagree, so nothing is trusted.
    report_errors: tuple[str, ...] = ()
    stats: dict[str, int] = Field(default_factory=dict)

    def report(self, kind: str | None) -> Report | None:
        return self.reports.get(kind) if kind else None

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


def _side(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines(keepends=True)
    return [line + "\n" for line in json.dumps(value, indent=2, sort_keys=True).splitlines()]


def diff_text(diff: object) -> str:
    """A task's ``diff`` result (a mapping or a list of them) as unified-diff text."""
    parts = diff if isinstance(diff, list) else [diff]
    out: list[str] = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("prepared"), str):
            out.append(part["prepared"].rstrip("\n") + "\n")
            continue
        if "before" not in part and "after" not in part:
            continue
        out.extend(
            difflib.unified_diff(
                _side(part.get("before")),
                _side(part.get("after")),
                fromfile=_text(part.get("before_header") or "before"),
                tofile=_text(part.get("after_header") or "after"),
            )
        )
    text = "".join(out)
    return text if len(text) <= _DIFF_LIMIT else text[:_DIFF_LIMIT] + "\n[diff cut short]\n"


def _task_diff(res: Mapping[str, Any]) -> str:
    """The diff of a task, or of each item of a looped task."""
    if res.get("diff"):
        return diff_text(res["diff"])
    results = res.get("results")
    if isinstance(results, list):
        parts = [item["diff"] for item in results if isinstance(item, Mapping) and item.get("diff")]
        return diff_text(
            [d for part in parts for d in (part if isinstance(part, list) else [part])]
        )
    return ""


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

    def __init__(
        self, *, check: bool, on_report: Callable[[str, Report], None] | None = None
    ) -> None:
        self._check = check
        # Called with each typed report as it arrives, while the run is still going:
        # a snapshot must outlive the process that asked for it.
        self._on_report = on_report
        self._tasks: dict[str, list[TaskResult]] = {}
        self._reports: dict[str, dict[str, Report]] = {}
        self._report_errors: dict[str, list[str]] = {}
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
            try:
                typed = parse_report(report)
            except ReportError as exc:
                self._report_errors.setdefault(host, []).append(str(exc))
            else:
                self._reports.setdefault(host, {})[typed.kind] = typed
                if self._on_report is not None:
                    self._on_report(host, typed)
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
                diff=_task_diff(res),
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
        names = set(self._tasks) | set(self._stats) | set(self._report_errors)
        return RunSummary(
            check=self._check,
            completed=self._completed,
            events=self._events,
            hosts={
                h: HostSummary(
                    host=h,
                    tasks=tuple(self._tasks.get(h, ())),
                    reports=self._reports.get(h, {}),
                    report_errors=tuple(self._report_errors.get(h, ())),
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
