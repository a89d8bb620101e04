"""An Executor that replays event streams recorded from real runs (tests/fixtures/events).

Like httpx's MockTransport: the pipeline runs unchanged, only the I/O is replayed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.helpers import FIXTURES
from veris_remediate.events import EventFolder, RunSummary, fold_events
from veris_remediate.runner import RunRequest, RunResult

EVENTS = FIXTURES / "events"
SCENARIOS = sorted(p.name for p in EVENTS.iterdir() if p.is_dir())


def events(scenario: str, phase: str) -> Iterator[dict[str, Any]]:
    with (EVENTS / scenario / f"{phase}.jsonl").open() as fh:
        for line in fh:
            yield json.loads(line)


def summary(scenario: str, phase: str) -> RunSummary:
    return fold_events(events(scenario, phase), check=phase == "check")


def recorded_report(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / scenario / "report.json").read_text())
    return data


class RecordedExecutor:
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.requests: list[RunRequest] = []

    def run(self, request: RunRequest) -> RunResult:
        self.requests.append(request)
        folder = EventFolder(check=request.check)
        for event in events(self.scenario, request.phase):
            folder(event)
        status = (EVENTS / self.scenario / f"{request.phase}.status").read_text().strip()
        return RunResult(
            phase=request.phase,
            status=status,  # type: ignore[arg-type]
            rc=0 if status == "successful" else 2,
            seconds=0.0,
            summary=folder.summary(),
        )
