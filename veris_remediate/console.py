"""Text for people: rich consoles fitted to their stream, and runs rendered as text.

On a terminal: its width, colour (unless ``NO_COLOR``). Through a pipe or into a file: no
colour, no wrapping (a line is a line, for grep), no spinner.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .report import (
    OUTCOME_TEXT,
    RemediationResult,
    RunReport,
    applied,
    decision_text,
    headline,
    health,
)

if TYPE_CHECKING:
    from .role_reports import Finding

# Wide enough that nothing wraps when the stream is not a terminal.
_PIPE_WIDTH = 10_000
OUTCOME_STYLE = {
    "resolved": "green", "not_needed": "green", "previewed": "cyan",
    "escalated": "yellow", "deferred": "yellow", "rolled_back": "yellow",
    "rejected": "red", "failed": "red", "blocked": "red",
}  # fmt: skip
SEVERITY_STYLE = {"critical": "red", "warning": "yellow", "info": "dim"}
MAX_DIFF_LINES = 40


def make_console(stream: IO[str]) -> Console:
    """A console for ``stream``: terminal width and colour on a TTY, neither in a pipe."""
    tty = stream.isatty()
    return Console(
        file=stream,
        highlight=False,
        emoji=False,
        soft_wrap=not tty,
        width=None if tty else _PIPE_WIDTH,
    )


class StreamConsole:
    """A console for sys.stdout or sys.stderr as they are when printing (a test runner, or
    a redirection set up after import, may swap them)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._stream: IO[str] | None = None
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        stream = sys.stderr if self._stderr else sys.stdout
        if self._console is None or stream is not self._stream:
            self._stream, self._console = stream, make_console(stream)
        return self._console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        console = self.console
        if console.is_terminal:
            console.print(*objects, **kwargs)
            return
        # In a pipe, tables would pad every line to their widest row: strip that.
        with console.capture() as captured:
            console.print(*objects, **kwargs)
        text = "\n".join(line.rstrip() for line in captured.get().split("\n"))
        console.file.write(text)
        console.file.flush()

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal


def command_line(label: str, command: str) -> Text:
    """A command to copy: printed with soft_wrap, so the terminal (not rich) wraps it."""
    line = Text(f"{label}  ", style="bold")
    line.append(command)
    return line


def fields(rows: Iterable[tuple[str, RenderableType | str]]) -> Table:
    """Aligned "name  value" rows; values wrap at the terminal's width, never in a pipe."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, Text(value) if isinstance(value, str) else value)
    return grid


def bullets(lines: Iterable[str], mark: str = "•") -> Text:
    return Text("\n").join(Text(f"{mark} {line}") for line in lines)


def headline_text(report: RunReport) -> Text:
    """The report's headline with its outcome in colour."""
    what, _, outcome = headline(report).rpartition(": ")
    line = Text(f"{what}: ", style="bold")
    line.append(outcome, style=f"bold {OUTCOME_STYLE.get(outcome, '')}")
    return line


def _findings(found: Sequence[Finding]) -> Text:
    out = Text()
    for n, f in enumerate(found):
        if n:
            out.append("\n")
        out.append(f"{f.severity:<8} ", style=SEVERITY_STYLE.get(f.severity, ""))
        out.append(f"{f.host}: {f.message}")
    return out


def _preview(result: RemediationResult) -> Text:
    out = Text()
    for n, change in enumerate(result.preview):
        if n:
            out.append("\n")
        out.append(f"~ {change.task}")
        out.append(f" ({change.action})", style="dim")
        lines = change.diff.rstrip().splitlines()
        for line in lines[:MAX_DIFF_LINES]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            out.append(f"\n    {line}", style=style)
        if len(lines) > MAX_DIFF_LINES:
            out.append(f"\n    … {len(lines) - MAX_DIFF_LINES} more lines in the report")
    return out


def remediation_rows(result: RemediationResult) -> list[tuple[str, RenderableType | str]]:
    """One remediation as name/value rows: fix, decision, cause, health, preview, why."""
    rows: list[tuple[str, RenderableType | str]] = []
    if result.remediation:
        service = f" (service {result.service})" if result.service else ""
        rows.append(("fix", f"{result.remediation}{service}"))
    rows.append(("decision", decision_text(result.decision, result.confidence, result.outcome)))
    for cause in result.causes:
        fix = f"fix: {cause.implied_fix}" if cause.implied_fix else "escalate: no safe fix"
        text = f"{cause.summary} ({cause.confidence:.2f}; {fix})"
        evidence = [f"  - {e}" for e in cause.evidence[:5]]
        rows.append(("likely cause", "\n".join([text, *evidence])))
    seen = health(result)
    rows += [("before", line) for line in seen.before]
    rows += [("after the fix", line) for line in seen.after]
    rows += [("restored", line) for line in seen.restored]
    if result.preview:
        title = "applied" if applied(result) else "preview"
        rows.append((title, _preview(result)))
    shown = {f"diagnosis: {b}" for b in seen.before} | {f"after the fix: {a}" for a in seen.after}
    shown |= {f"prior state restored: {r}" for r in seen.restored}
    why = [reason for reason in result.reasons if reason not in shown]
    if why:
        rows.append(("why", bullets(why)))
    if result.findings:
        rows.append(("findings", _findings(result.findings)))
    return rows


def phases_table(report: RunReport) -> Table:
    from .report import timeline

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="dim")
    for name in ("phase", "host", "status", "seconds", "detail"):
        table.add_column(name, justify="right" if name == "seconds" else "left",
                         overflow="fold", no_wrap=name != "detail")  # fmt: skip
    for t in timeline(report):
        style = "red" if t.status == "failed" else ""
        table.add_row(t.name, t.host or "", Text(t.status, style=style), f"{t.seconds:.2f}",
                      t.detail)  # fmt: skip
    return table


def report_view(report: RunReport) -> Group:
    """A run report for the terminal: headline, outcome, each remediation, phases."""
    parts: list[RenderableType] = [
        headline_text(report),
        Text(f"{OUTCOME_TEXT.get(report.outcome, '')} (exit {report.exit_code})"),
    ]
    multi = len(report.remediations) > 1
    for result in report.remediations:
        rows = remediation_rows(result)
        if multi:
            what = f"{result.host or 'no host'}: {result.alert or 'payload'}"
            parts += [Text(""), Text(f"{what}: {result.outcome}", style="bold")]
        parts += [Text(""), fields(rows)]
    parts += [Text(""), phases_table(report)]
    parts.append(Text(""))
    return Group(*parts)
