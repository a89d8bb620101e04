"""Intake into ``veris-remediate serve`` on loopback: accepted alerts/s, ack latency, memory.

A real ``serve`` process (the CLI, as a user runs it) with the emergency brake engaged, so
it queues and never claims: only intake is measured, and nothing is remediated. A client
in this process (aiohttp, ``--concurrency`` connections kept alive) posts ``--posts``
Alertmanager webhooks, each one firing alert of a distinct incident for an inventory host,
after a warm-up of 50; every answer must be 202 with the incident queued. Prints accepted
alerts/s, the ack latency p50/p90/p99/max (request sent → answer read; then also with
``UNLOADED`` alerts posted one at a time, nothing waiting), serve's peak
resident memory (VmHWM) and its CPU time per alert, for each state backend side by side
(SQLite in the state dir; PostgreSQL, a throwaway local cluster from tests/pgserver.py).

Then, in this process on the same state backends, what one accepted alert costs on serve's
database thread, part by part (``split``, one enqueue, one audit append: a request alone),
and per alert of a group commit of ``ROUND`` requests (``accept_many``: what serve runs
when requests arrive together), so the bound is measured rather than guessed.

    .venv/bin/python bench/bench_intake.py [--posts 2000] [--concurrency 20] \\
        [--backends sqlite,postgresql] [--time-limit 300]

Needs no lab host (the brake holds every incident in the queue), and Debian's postgresql
for the PostgreSQL side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pgserver import PgServer, pgserver  # noqa: E402
from tests.serving import ServeProcess  # noqa: E402
from veris_remediate.audit import AuditLog  # noqa: E402
from veris_remediate.guards import Guards, incident_key  # noqa: E402
from veris_remediate.inventory import Inventory, parse_inventory_listing  # noqa: E402
from veris_remediate.serve.intake import Posted, accept_many, split  # noqa: E402
from veris_remediate.settings import Settings  # noqa: E402
from veris_remediate.store import StateStore  # noqa: E402

INVENTORY = ROOT / "tests" / "fixtures" / "inventory" / "lab.yml"
LISTING = ROOT / "tests" / "fixtures" / "inventory" / "lab.listing.json"
HOSTS = ("lab1", "lab2")
WARMUP = 50
UNLOADED = 200  # posted one at a time after the run
ROUND = 20  # requests in one group commit, for the part-by-part costs


def payload(n: int, run: str) -> bytes:
    """Alertmanager's webhook for one firing alert: incident ``n`` of this run."""
    host = HOSTS[n % len(HOSTS)]
    fingerprint = f"{run}{n:08x}"
    labels = {
        "alertname": "HttpProbeFailed",
        "instance": host,
        "job": "blackbox-http",
        "severity": "critical",
        "service": "nginx",
    }
    starts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="HttpProbeFailed", instance="{host}"}}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "veris",
            "groupLabels": {"alertname": "HttpProbeFailed", "instance": host},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": {"summary": f"HTTP probe of {host} failing"},
                    "startsAt": starts,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph",
                    "fingerprint": fingerprint,
                }
            ],
        }
    ).encode()


# -- the serve process --------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _post_all(
    url: str, token: str, bodies: list[bytes], concurrency: int, deadline: float
) -> tuple[list[float], int, float]:
    """(ack latencies of accepted posts, posts not accepted, wall seconds)."""
    latencies: list[float] = []
    refused = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def worker() -> None:
            nonlocal refused
            while not queue.empty() and time.monotonic() < deadline:
                body = queue.get_nowait()
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                took = time.perf_counter() - sent
                if response.status == 202 and len(json.loads(answer)["queued"]) == 1:
                    latencies.append(took)
                else:
                    refused += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, refused, time.perf_counter() - started


def run_serve(
    work: Path, backend: str, url: str | None, posts: int, concurrency: int, limit: float
) -> dict[str, Any]:
    state = work / backend / "state"
    state.parent.mkdir(parents=True)
    store = StateStore(state, url=url)
    store.engage_brake("bench_intake: intake only", by="bench", source="operator")
    store.close()
    token = secrets.token_urlsafe(24)
    env = {"VERIS_SERVE_QUEUE_LIMIT": str(posts + WARMUP + 100)}
    if url:
        env["VERIS_STATE_URL"] = url
    run = secrets.token_hex(4)
    bodies = [payload(n, run) for n in range(posts + WARMUP)]
    with ServeProcess(state, INVENTORY, token=token, env=env) as serve:
        assert serve.proc is not None
        pid = serve.proc.pid
        deadline = time.monotonic() + limit
        asyncio.run(_post_all(serve.alerts_url, token, bodies[:WARMUP], 4, deadline))
        idle = _proc_status(pid)["VmRSS"]
        cpu_before = _cpu_seconds(pid)
        client_before = resource.getrusage(resource.RUSAGE_SELF)
        latencies, refused, wall = asyncio.run(
            _post_all(serve.alerts_url, token, bodies[WARMUP:], concurrency, deadline)
        )
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        serve_cpu = _cpu_seconds(pid) - cpu_before
        memory = _proc_status(pid)
        # The same alerts one at a time: the ack of a receiver that is not queueing.
        more = [payload(n, run + "1") for n in range(UNLOADED)]
        alone, _, _ = asyncio.run(_post_all(serve.alerts_url, token, more, 1, deadline))
        entries = serve.entries()
    client_cpu = (client_after.ru_utime - client_before.ru_utime) + (
        client_after.ru_stime - client_before.ru_stime
    )
    queued = [e for e in entries if e.status == "queued"]
    if len(queued) != len(entries) or len(entries) != WARMUP + len(latencies) + len(alone):
        raise RuntimeError(f"{backend}: {len(entries)} rows, {len(queued)} queued")
    ordered = sorted(latencies)

    def pct(p: float, values: list[float] = ordered) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    return {
        "backend": backend,
        "posts": posts,
        "accepted": len(latencies),
        "refused": refused,
        "seconds": wall,
        "per_second": len(latencies) / wall,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": ordered[-1] * 1000,
        "alone_p50_ms": pct(0.50, sorted(alone)),
        "alone_p99_ms": pct(0.99, sorted(alone)),
        "rss_idle_mib": idle / 1024,
        "rss_peak_mib": memory["VmHWM"] / 1024,
        "serve_cpu_ms_per_alert": serve_cpu / max(len(latencies), 1) * 1000,
        "client_cpu_seconds": client_cpu,
    }


# -- one alert's cost, part by part ---------------------------------------------------------------


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads(LISTING.read_text())
    return parse_inventory_listing(listing, [INVENTORY])


@contextlib.contextmanager
def _timer(into: list[float]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    into.append(time.perf_counter() - started)


def parts(work: Path, backend: str, url: str | None, count: int) -> dict[str, float]:
    """Median milliseconds of each part of accepting one alert, as serve's DB thread does:
    alone (``split``, one ``enqueue``, one audit append), then per alert of a group commit
    of ``ROUND`` requests (``accept_many``: one transaction, one audit append)."""
    state = work / f"parts-{backend}"
    store = StateStore(state, url=url)
    audit = AuditLog(state / "audit.jsonl")
    settings = Settings(state_dir=state, state_url=url)
    guards = Guards(store, settings, audit)
    inventory = _inventory()
    run, grouped = secrets.token_hex(4), secrets.token_hex(4)
    times: dict[str, list[float]] = {"split": [], "enqueue": [], "audit append": []}
    rounds: list[float] = []
    try:
        for n in range(count):
            body = payload(n, run)
            with _timer(times["split"]):
                intake = split(body, inventory, received=datetime.now(UTC), window_seconds=300)
            [incident] = intake.incidents
            with _timer(times["enqueue"]):
                verdict = store.enqueue(
                    incident.key, incident.alert.fingerprint, incident.host, incident.payload,
                    limit=count * 2 + 10,
                )  # fmt: skip
            assert verdict == "queued", verdict
            with _timer(times["audit append"]):
                audit.append("serve.accepted", {"source": "alertmanager",
                             "queued": [incident_key(incident.alert)]}, "req-bench")  # fmt: skip
        for first in range(0, count, ROUND):
            received = datetime.now(UTC)
            posted = [
                Posted(
                    intake=split(
                        payload(n, grouped), inventory, received=received, window_seconds=300
                    ),
                    request_id=f"req-bench-{n}",
                )
                for n in range(first, min(first + ROUND, count))
            ]
            with _timer(rounds):
                accepted = accept_many(store, guards, audit, posted, limit=count * 2 + 10)
            assert all(a.count("queued") == 1 for a in accepted)
            rounds[-1] /= len(posted)
    finally:
        store.close()
    costs = {name: statistics.median(values) * 1000 for name, values in times.items()}
    costs[f"round of {ROUND}"] = statistics.median(rounds) * 1000
    return costs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=2000, help="alerts posted (default 2000)")
    ap.add_argument("--concurrency", type=int, default=20, help="connections (default 20)")
    ap.add_argument(
        "--backends",
        default="sqlite,postgresql",
        help="comma-separated: sqlite, postgresql (default both)",
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        default=300,
        help="stop posting after this many seconds per backend (default 300)",
    )
    ap.add_argument(
        "--parts",
        type=int,
        default=500,
        help="alerts for the part-by-part costs (default 500; 0: skip)",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        help="where the state dirs go (default: the temp dir; /dev/shm: no disk)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()  # fmt: skip
    backends = [b for b in args.backends.split(",") if b]
    if set(backends) - {"sqlite", "postgresql"} or not backends:
        ap.error("--backends takes sqlite and/or postgresql")
    work = Path(tempfile.mkdtemp(prefix="veris-bench-intake-", dir=args.work_dir))
    server: PgServer | None = None
    results: list[dict[str, Any]] = []
    costs: dict[str, dict[str, float]] = {}
    try:
        with contextlib.ExitStack() as stack:
            if "postgresql" in backends:
                server = stack.enter_context(pgserver())
            urls = {
                b: (server.create_database(f"intake_{b}") if server and b == "postgresql" else None)
                for b in backends
            }
            print(f"{args.posts} alerts (distinct incidents), {args.concurrency} connections, "
                  f"after {WARMUP} warm-up; serve with the brake engaged (queues, never "
                  f"claims); state under {work}", flush=True)  # fmt: skip
            for backend in backends:
                results.append(run_serve(work, backend, urls[backend], args.posts,
                                         args.concurrency, args.time_limit))  # fmt: skip
            if args.parts:
                for backend in backends:
                    url = server.create_database("parts") if backend == "postgresql" else None
                    assert url or backend == "sqlite"
                    costs[backend] = parts(work, backend, url, args.parts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'backend':11s} {'accepted/s':>10s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s} "
          f"{'max ms':>7s} {'RSS idle':>9s} {'RSS peak':>9s} {'serve CPU/alert':>16s}")  # fmt: skip
    for r in results:
        print(f"{r['backend']:11s} {r['per_second']:10.0f} {r['p50_ms']:7.1f} {r['p90_ms']:7.1f} "
              f"{r['p99_ms']:7.1f} {r['max_ms']:7.1f} {r['rss_idle_mib']:7.1f}Mi "
              f"{r['rss_peak_mib']:7.1f}Mi {r['serve_cpu_ms_per_alert']:13.2f} ms")  # fmt: skip
        print(f"{'':11s} {r['accepted']}/{r['posts']} accepted in {r['seconds']:.1f} s; "
              f"client CPU {r['client_cpu_seconds']:.1f} s; one at a time ({UNLOADED}): "
              f"p50 {r['alone_p50_ms']:.1f} ms, p99 {r['alone_p99_ms']:.1f} ms")  # fmt: skip
    if len(results) == 2:
        a, b = results
        print(f"\n{b['backend']} / {a['backend']}: {b['per_second'] / a['per_second']:.2f}x "
              f"the rate, {b['p99_ms'] / a['p99_ms']:.2f}x the p99")  # fmt: skip
    if costs:
        print(f"\none alert on serve's database thread, median ms of {args.parts} (the last: "
              f"per alert of an accept_many of {ROUND}):")  # fmt: skip
        names = list(next(iter(costs.values())))
        print(f"  {'part':14s} " + " ".join(f"{b:>10s}" for b in costs))
        for name in names:
            print(f"  {name:14s} " + " ".join(f"{costs[b][name]:10.2f}" for b in costs))
    if args.json:
        args.json.write_text(json.dumps({"serve": results, "parts": costs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
