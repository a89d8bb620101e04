"""An Executor that replays event streams recorded from real runs (tests/fixtures/events).

Like httpx's MockTransport: the pipeline runs unchanged, only the I/O is replayed. Each
scenario directory also holds the payload as sent and the lab's inventory listing, so a
scenario replays on its own (tests/fixtures/record_events.py writes them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import FIXTURES
from veris_remediate.events import EventFolder, RunSummary, fold_events
from veris_remediate.inventory import Inventory, parse_inventory_listing
from veris_remediate.runner import RunRequest, RunResult

EVENTS = FIXTURES / "events"
SCENARIOS = sorted(p.name for p in EVENTS.iterdir() if p.is_dir())


def events(scenario: str, stem: str) -> Iterator[dict[str, Any]]:
    """Events of one recorded run: ``check``, ``apply``, …, or ``<fix>.<phase>``."""
    with (EVENTS / scenario / f"{stem}.jsonl").open() as fh:
        for line in fh:
            yield json.loads(line)


def summary(scenario: str, stem: str) -> RunSummary:
    return fold_events(events(scenario, stem), check=stem.rpartition(".")[2] == "check")


def recorded_report(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / scenario / "report.json").read_text())
    return data


def payload(scenario: str) -> bytes:
    return (EVENTS / scenario / "payload.json").read_bytes()


def host(scenario: str) -> str:
    return (EVENTS / scenario / "host").read_text().strip()


def inventory(scenario: str) -> Inventory:
    listing = json.loads((EVENTS / scenario / "inventory.json").read_text())
    return parse_inventory_listing(listing, [EVENTS / scenario / "inventory.json"])


def rules_file(scenario: str) -> Path | None:
    path = EVENTS / scenario / "rules.yml"
    return path if path.is_file() else None


# Phases that run the same playbook in the same mode as a recorded one.
SAME_RUN = {"recheck": "check", "recover-check": "check", "restore": "rollback"}


def stem_of(request: RunRequest) -> str:
    """The recorded file a request replays: the slot's hand-off fix, if any, and the phase."""
    handed = request.private_data_dir.parent.name.partition("+")[2]
    phase = SAME_RUN.get(request.phase, request.phase)
    return f"{handed}.{phase}" if handed else phase


def hold_lease(state_dir: Path, host: str) -> None:
    """Another live process (pid 1, never ours) holds ``host``."""
    import socket

    from veris_remediate.store import StateStore

    store = StateStore(state_dir)
    with store._tx() as db:
        db.execute(
            "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
            (host, f"{socket.gethostname()}:1", "20260101T000000Z-aaaaaa",
             "2026-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00"),
        )  # fmt: skip


class RecordedExecutor:
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.requests: list[RunRequest] = []

    def run(self, request: RunRequest) -> RunResult:
        self.requests.append(request)
        stem = stem_of(request)
        folder = EventFolder(check=request.check)
        for event in events(self.scenario, stem):
            folder(event)
        status = (EVENTS / self.scenario / f"{stem}.status").read_text().strip()
        return RunResult(
            phase=request.phase,
            status=status,  # type: ignore[arg-type]
            rc=0 if status == "successful" else 2,
            seconds=0.0,
            summary=folder.summary(),
        )
