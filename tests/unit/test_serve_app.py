"""serve's HTTP side and worker pool in one process, with recorded real event streams in
place of ansible-runner (tests/fixtures/events): the queue, the workers, the brake, a busy
host, shutdown and recovery, exactly as ``serve`` runs them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from tests.helpers import EXAMPLES, FIXTURES
from tests.serving import alertmanager_payload
from tests.unit.recorded import RecordedExecutor, hold_lease
from veris_remediate.inventory import Inventory, parse_inventory_listing
from veris_remediate.metrics import Metrics
from veris_remediate.notify import Notifier
from veris_remediate.pipeline import Remediator
from veris_remediate.runner import RunRequest, RunResult
from veris_remediate.serve.app import Receiver, _RefusalBudget
from veris_remediate.serve.auth import BearerAuth
from veris_remediate.serve.worker import Database, ServeRemediator, WorkerPool
from veris_remediate.settings import Settings
from veris_remediate.store import QueueEntry, StateStore

TOKEN = "unit-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALERT = (EXAMPLES / "alertmanager-nginx-down.json").read_bytes()


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


class _Gated(RecordedExecutor):
    """Replays a scenario; its check run waits until the remediator is told to terminate."""

    def __init__(self, scenario: str) -> None:
        super().__init__(scenario)
        self.entered = threading.Event()
        self.owner: Remediator | None = None

    def run(self, request: RunRequest) -> RunResult:
        if request.phase == "check":
            self.entered.set()
            deadline = time.monotonic() + 30
            while self.owner is not None and not self.owner.terminating:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        return super().run(request)


@dataclass
class _Serve:
    client: TestClient[Any, Any]
    pool: WorkerPool
    db: Database
    metrics: Metrics
    executors: list[RecordedExecutor] = field(default_factory=list)

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return await self.client.post(
            "/alerts", data=body, headers=AUTH if headers is None else headers
        )

    async def entries(self) -> list[QueueEntry]:
        return await self.db.run(self.db.store.queue_entries)

    async def until(
        self, check: Callable[[list[QueueEntry]], bool], timeout: float = 20
    ) -> list[QueueEntry]:
        deadline = time.monotonic() + timeout
        while True:
            entries = await self.entries()
            if check(entries):
                return entries
            assert time.monotonic() < deadline, [(e.status, e.outcome, e.error) for e in entries]
            await asyncio.sleep(0.05)

    def runs(self, phase: str) -> int:
        return sum(1 for e in self.executors for r in e.requests if r.phase == phase)


@asynccontextmanager
async def _serving(
    tmp_path: Path,
    scenario: str = "resolved",
    *,
    executor: Callable[[str], RecordedExecutor] = RecordedExecutor,
    start: bool = True,
    **values: Any,
) -> AsyncIterator[_Serve]:
    settings = Settings(state_dir=tmp_path, **values)
    inventory = _inventory()
    executors: list[RecordedExecutor] = []

    def make() -> Remediator:
        ex = executor(scenario)
        executors.append(ex)
        remediator = ServeRemediator(inventory, settings, executor=ex)
        if isinstance(ex, _Gated):
            ex.owner = remediator
        return remediator

    db = Database(settings)
    metrics = Metrics()
    pool = WorkerPool(
        db, settings, inventory, metrics=metrics, notifier=Notifier([], db.audit, metrics=metrics),
        make_remediator=make,
        recoverer=Remediator(inventory, settings, executor=RecordedExecutor(scenario)),
    )  # fmt: skip
    receiver = Receiver(settings, inventory, db, pool, metrics, auth=BearerAuth(TOKEN))
    async with TestClient(TestServer(receiver.application())) as client:
        serve = _Serve(client, pool, db, metrics, executors)
        if start:
            pool.start()
        try:
            yield serve
        finally:
            receiver.draining = True
            await pool.stop(5)
    db.close()


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


# -- intake --------------------------------------------------------------------------------


def test_an_accepted_alert_is_remediated_in_the_background(tmp_path: Path) -> None:
    async def test() -> None:
        async with _serving(tmp_path) as serve:
            started = time.monotonic()
            response = await serve.post(ALERT)
            assert response.status == 202
            assert time.monotonic() - started < 1
            answer = await response.json()
            assert len(answer["queued"]) == 1
            [entry] = await serve.until(lambda es: es[0].status == "done")
            assert (entry.outcome, entry.host) == ("resolved", "lab1")
            assert serve.runs("apply") == 1
            body, _ = serve.metrics.render()
            assert b'veris_runs_total{outcome="resolved"} 1.0' in body
            records = [r for r in serve.db.audit.records() if r["kind"] == "serve.finished"]
            assert records[0]["run_id"] == entry.run_id
            assert (tmp_path / "runs" / str(entry.run_id)).is_dir()

    _run(test)


def test_twenty_concurrent_posts_of_one_incident_make_one_run(tmp_path: Path) -> None:
    async def test() -> None:
        async with _serving(tmp_path, serve_workers=4) as serve:
            responses = await asyncio.gather(*(serve.post(ALERT) for _ in range(20)))
            assert [r.status for r in responses] == [202] * 20
            answers = [await r.json() for r in responses]
            assert sum(len(a["queued"]) for a in answers) == 1
            assert sum(len(a["duplicates"]) for a in answers) == 19
            await serve.until(lambda es: es[0].status == "done")
            await asyncio.sleep(0.3)
            assert len(await serve.entries()) == 1
            assert serve.runs("check") == serve.runs("apply") == 1

    _run(test)


def test_refusals_answer_and_queue_nothing(tmp_path: Path) -> None:
    async def test() -> None:
        async with _serving(tmp_path, serve_max_body_bytes=4096, start=False) as serve:
            assert (await serve.post(ALERT, headers={})).status == 401
            wrong = {"Authorization": "Bearer " + TOKEN[::-1]}
            response = await serve.post(ALERT, headers=wrong)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read, then cut
                for _ in range(10):
                    yield b" " * 1024

            response = await serve.client.post("/alerts", data=chunks(), headers=AUTH)
            assert response.status == 413
            assert (await serve.post(b"{")).status == 400
            assert (await serve.client.get("/metrics")).status == 401
            assert (await serve.client.get("/metrics", headers=AUTH)).status == 200
            assert (await serve.client.get("/healthz")).status == 200
            assert await serve.entries() == []
            body, _ = serve.metrics.render()
            assert b'veris_alerts_rejected_total{reason="auth"} 3.0' in body
            assert b'veris_alerts_rejected_total{reason="size"} 1.0' in body
            assert b'veris_alerts_rejected_total{reason="payload"} 1.0' in body
            kinds = [r["data"]["reason"] for r in serve.db.audit.records()]
            assert kinds == ["auth", "auth", "size", "payload", "auth"]

    _run(test)


def test_a_full_queue_answers_503_and_readyz_says_so(tmp_path: Path) -> None:
    async def test() -> None:
        async with _serving(tmp_path, serve_queue_limit=1, start=False) as serve:
            assert (await serve.post(ALERT)).status == 202
            other = alertmanager_payload("http://lab2/", fingerprint="ffeeddccbbaa9988")
            response = await serve.post(other)
            assert response.status == 503
            assert response.headers["Retry-After"] == "30"
            assert (await response.json())["full"]
            ready = await serve.client.get("/readyz")
            assert ready.status == 503
            assert (await ready.json())["reasons"] == ["the queue is full"]
            # A retry of what is already queued is still a duplicate, not "full".
            assert (await serve.post(ALERT)).status == 202

    _run(test)


def test_a_body_slower_than_the_time_limit_gets_408(tmp_path: Path) -> None:
    async def test() -> None:
        async with _serving(tmp_path, serve_request_timeout_seconds=0.3, start=False) as serve:

            async def slowly() -> AsyncIterator[bytes]:
                yield b'{"version": "4", '
                await asyncio.sleep(2)
                yield b'"alerts": []}'

            response = await serve.client.post("/alerts", data=slowly(), headers=AUTH)
            assert response.status == 408
            assert await serve.entries() == []

    _run(test)


def test_refusals_are_audited_at_most_so_often_and_the_rest_counted() -> None:
    budget = _RefusalBudget(2)
    assert [budget.admit(60.0 + i) for i in range(4)] == [
        (True, 0), (True, 0), (False, 0), (False, 0)
    ]  # fmt: skip
    assert budget.admit(125.0) == (True, 2)  # the next minute's first says what it missed
    assert budget.admit(126.0) == (True, 0)


# -- the pool ------------------------------------------------------------------------------


def test_the_brake_holds_the_queue_and_its_release_runs_it(tmp_path: Path) -> None:
    StateStore(tmp_path).engage_brake("unit test", by="test", source="operator")

    async def test() -> None:
        async with _serving(tmp_path) as serve:
            assert (await serve.post(ALERT)).status == 202
            await asyncio.sleep(2.5)  # more than a dispatch poll
            [entry] = await serve.entries()
            assert entry.status == "queued"
            assert serve.runs("check") == 0
            assert serve.pool.state.brake is not None
            await serve.db.run(serve.db.store.release_brake)
            serve.pool.wake()
            [entry] = await serve.until(lambda es: es[0].status == "done")
            assert entry.outcome == "resolved"

    _run(test)


def test_a_host_held_by_another_process_defers_and_stop_requeues(tmp_path: Path) -> None:
    hold_lease(tmp_path, "lab1")

    async def test() -> None:
        async with _serving(tmp_path) as serve:
            assert (await serve.post(ALERT)).status == 202
            deadline = time.monotonic() + 10
            while serve.pool.state.held != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            [entry] = await serve.entries()
            assert entry.status == "running"  # still claimed: the host's order holds
            assert serve.runs("check") == 0  # deferred before any run
            assert await serve.pool.stop(5)
            [entry] = await serve.entries()
            assert (entry.status, entry.error) == ("queued", "serve stopped before its turn")

    _run(test)


def test_shutdown_cancels_a_run_that_overstays_the_drain_and_requeues_it(
    tmp_path: Path,
) -> None:
    async def test() -> None:
        async with _serving(tmp_path, executor=_Gated) as serve:
            assert (await serve.post(ALERT)).status == 202
            deadline = time.monotonic() + 10
            while not any(g.entered.is_set() for g in serve.executors if isinstance(g, _Gated)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert await serve.pool.stop(0.2)  # drain over: cancelled, then ended cleanly
            [entry] = await serve.entries()
            assert entry.status == "queued"
            assert entry.error is not None
            assert entry.error.startswith("interrupted by shutdown")
            assert serve.runs("apply") == 0
            kinds = [r["kind"] for r in serve.db.audit.records()]
            assert "serve.requeued" in kinds

    _run(test)


def test_on_start_work_of_a_dead_or_earlier_self_is_queued_again_and_done(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    payload = alertmanager_payload("http://lab1/")
    key = "HttpProbeFailed|5e3f0a7c2b1d4e6f|2026-11-29T12:00:00+00:00"
    assert store.enqueue(key, "5e3f0a7c2b1d4e6f", "lab1", payload, limit=10) == "queued"
    claimed = store.claim()  # by this very process: a restarted container's pid 1 looks so
    assert claimed is not None
    store.close()

    async def test() -> None:
        async with _serving(tmp_path) as serve:
            [entry] = await serve.until(lambda es: es[0].status == "done")
            assert (entry.outcome, entry.attempts) == ("resolved", 2)

    _run(test)
