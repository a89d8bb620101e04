"""Progress events: what the library reports (phases of handle, the lab's root file system
build) and how the CLI renders them on stderr. No process is started."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tests.unit.cli_replay import lab_inventory
from tests.unit.recorded import RecordedExecutor, payload
from veris_remediate.lab import rootfs
from veris_remediate.pipeline import Remediator
from veris_remediate.progress import ConsoleProgress, ProgressEvent, emit
from veris_remediate.settings import Settings

if TYPE_CHECKING:
    import pytest


def test_handle_reports_each_phase_start_and_end_in_order(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    executor = RecordedExecutor("rolled_back")
    remediator = Remediator(lab_inventory(), Settings(state_dir=tmp_path),
                            executor=executor, progress=events.append)  # fmt: skip
    report = remediator.handle(payload("rolled_back"))
    ends = [e for e in events if e.kind == "end"]
    assert [(e.phase, e.host) for e in ends] == [
        ("intake", None), ("route", None), ("plan", "lab1"), ("check", "lab1"),
        ("decide", "lab1"), ("apply", "lab1"), ("verify", "lab1"), ("rollback", "lab1"),
    ]  # fmt: skip
    # Every phase starts before it ends, and nothing overlaps: they run one after another.
    assert [e.kind for e in events] == ["start", "end"] * len(ends)
    check = next(e for e in ends if e.phase == "check")
    assert check.tasks is not None
    assert check.tasks > 0
    assert check.detail == "successful, 1 changed"
    assert next(e for e in ends if e.phase == "verify").status == "failed"
    # The events say what the report records.
    assert [(p.name, p.status, p.seconds) for p in report.phases] == [
        (e.phase, e.status, e.seconds) for e in ends
    ]


def test_a_broken_progress_callback_never_breaks_the_run(tmp_path: Path) -> None:
    def broken(event: ProgressEvent) -> None:
        raise OSError("stderr is gone")

    remediator = Remediator(lab_inventory(), Settings(state_dir=tmp_path),
                            executor=RecordedExecutor("resolved"), progress=broken)  # fmt: skip
    assert remediator.handle(payload("resolved")).outcome == "resolved"
    emit(broken, ProgressEvent(kind="start", phase="x"))  # does not raise


def test_the_rootfs_build_is_reported_only_when_it_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Path] = []
    monkeypatch.setattr(rootfs, "_debootstrap", lambda final: (final.mkdir(), built.append(final)))
    events: list[ProgressEvent] = []
    path = rootfs.ensure_rootfs(tmp_path, events.append)
    assert built == [path]
    assert [(e.kind, e.phase, e.status) for e in events] == [
        ("start", "rootfs", None), ("end", "rootfs", "ok"),
    ]  # fmt: skip
    events.clear()
    assert rootfs.ensure_rootfs(tmp_path, events.append) == path  # cached: nothing to say
    assert events == []


def _console(stream: io.StringIO, terminal: bool) -> Console:
    return Console(file=stream, force_terminal=terminal, width=120, color_system=None,
                   highlight=False)  # fmt: skip


def test_in_a_log_long_phases_are_announced_and_every_end_is_one_line() -> None:
    stream = io.StringIO()
    progress = ConsoleProgress(_console(stream, terminal=False))
    for event in (
        ProgressEvent(kind="start", phase="intake"),
        ProgressEvent(kind="end", phase="intake", status="ok", seconds=0.01),
        ProgressEvent(kind="start", phase="check", host="lab1"),
        ProgressEvent(
            kind="end",
            phase="check",
            host="lab1",
            status="ok",
            seconds=3.78,
            detail="successful, 1 changed",
            tasks=7,
        ),
        ProgressEvent(kind="start", phase="boot", host="ux1"),
        ProgressEvent(
            kind="end",
            phase="boot",
            host="ux1",
            status="failed",
            seconds=61.0,
            detail="ux1 was not ready in time",
        ),
    ):
        progress(event)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "✓ reading the alert                         0.01 s",
        "… check run (--check --diff) lab1",
        "✓ check run (--check --diff)     lab1       3.78 s  7 tasks; successful, 1 changed",
        "… booting ux1",
        "✗ booting                        ux1       61.00 s  ux1 was not ready in time",
    ]


def test_on_a_terminal_a_spinner_names_what_is_in_flight() -> None:
    stream = io.StringIO()
    progress = ConsoleProgress(_console(stream, terminal=True))
    progress(ProgressEvent(kind="start", phase="boot", host="ux1"))
    progress(ProgressEvent(kind="start", phase="boot", host="ux2"))
    progress(ProgressEvent(kind="end", phase="boot", host="ux1", status="ok", seconds=3.9))
    progress(ProgressEvent(kind="end", phase="boot", host="ux2", status="ok", seconds=4.2))
    progress.close()
    out = stream.getvalue()
    assert "booting ux1 · booting ux2" in out  # both hosts boot at once
    assert "✓ booting                        ux2        4.20 s" in out
    assert "… booting" not in out  # no announcement lines: the spinner says it
