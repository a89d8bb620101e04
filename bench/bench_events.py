"""Event folding: recorded ansible-runner event streams through EventFolder, events/s and memory.

Every stream recorded from real lab runs (tests/fixtures/events/*/*.jsonl: check, apply,
diagnose and rollback runs of every fix family and workflow) is read once; then they are
replayed again and again, each replay through a fresh EventFolder as the runner folds one
run (each event passed as the dict ansible-runner hands its event_handler, typed reports
validated as they arrive), until at least --events events have been folded.

Prints events/s (no tracing), and the peak of memory allocated while folding (tracemalloc,
further passes) at the given event count, at 4x and at 16x it: memory that does not grow
with the event count is the goal (the peak moves a little with when the garbage collector
runs, not with the count). Also one folder fed one long run (the streams back to
back, as one run): its memory grows with the task results it keeps, not with other events.

    .venv/bin/python bench/bench_events.py [--events 100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veris_remediate.events import EventFolder  # noqa: E402

EVENTS = ROOT / "tests" / "fixtures" / "events"


def load_streams() -> list[tuple[bool, list[dict[str, Any]]]]:
    """(check mode, events) of every recorded run."""
    streams = []
    for path in sorted(EVENTS.glob("*/*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            events = [json.loads(line) for line in fh if line.strip()]
        streams.append((path.stem.rpartition(".")[2] == "check", events))
    return streams


def replays(
    streams: list[tuple[bool, list[dict[str, Any]]]], total: int
) -> Iterator[tuple[bool, list[dict[str, Any]]]]:
    """Streams in order, round and round, until ``total`` events are out."""
    done = 0
    while done < total:
        for check, events in streams:
            yield check, events
            done += len(events)
            if done >= total:
                return


def fold_runs(streams: list[tuple[bool, list[dict[str, Any]]]], total: int) -> tuple[int, int]:
    """Fold ``total`` events, a fresh folder per run; (events, runs)."""
    events = runs = 0
    for check, stream in replays(streams, total):
        folder = EventFolder(check=check)
        for event in stream:
            folder(event)
        folder.summary()
        events += len(stream)
        runs += 1
    return events, runs


def fold_one_run(streams: list[tuple[bool, list[dict[str, Any]]]], total: int) -> int:
    """Fold ``total`` events into one folder, as if one very long run."""
    folder = EventFolder(check=False)
    events = 0
    for _, stream in replays(streams, total):
        for event in stream:
            folder(event)
        events += len(stream)
    folder.summary()
    return events


def peak_bytes(fn: Any, *args: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000, help="events to fold (default 100000)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes; the best is shown")
    args = ap.parse_args()
    streams = load_streams()
    recorded = sum(len(s) for _, s in streams)
    print(f"python {platform.python_version()}; {len(streams)} recorded runs, {recorded} events")

    fold_runs(streams, recorded)  # warm up: imports, pydantic's validators
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        events, runs = fold_runs(streams, args.events)
        best = min(best, time.perf_counter() - start)
    print(f"folded {events} events ({runs} runs, a fresh folder each) in {best:.3f} s: "
          f"{events / best:,.0f} events/s (best of {args.rounds})")  # fmt: skip

    for total in (args.events, 4 * args.events, 16 * args.events):
        (events, runs), peak = peak_bytes(fold_runs, streams, total)
        print(f"  peak memory while folding {events:>8} events ({runs} runs): "
              f"{peak / 1024:8.0f} KiB")  # fmt: skip

    start = time.perf_counter()
    events = fold_one_run(streams, args.events)
    elapsed = time.perf_counter() - start
    print(f"one folder, one run of {events} events: {events / elapsed:,.0f} events/s")
    for total in (args.events // 4, args.events):
        events, peak = peak_bytes(fold_one_run, streams, total)
        print(f"  peak memory while folding {events:>8} events as one run: "
              f"{peak / 1024:8.0f} KiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
