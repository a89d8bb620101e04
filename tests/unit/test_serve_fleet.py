"""serve's fleets: a worker claims an incident with the queued incidents of the same alert on
other hosts (``StateStore.claim_fleet``), runs them as one payload, and finishes each row by
its own host's result. The store's rules on SQLite; the pool with a Remediator whose
``handle`` answers from the recorded report of a real run (tests/fixtures/events)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from tests.helpers import nginx_down_group
from tests.serving import alertmanager_payload
from tests.unit.recorded import RecordedExecutor, hold_lease, recorded_report
from tests.unit.test_serve_app import AUTH, TOKEN, _inventory, _run
from veris_remediate.alerts import parse_payload
from veris_remediate.guards import incident_key
from veris_remediate.inventory import Inventory
from veris_remediate.metrics import Metrics
from veris_remediate.notify import Notifier
from veris_remediate.pipeline import Payload, Remediator, payload_bytes
from veris_remediate.report import RemediationResult, RunReport, build_report
from veris_remediate.serve.app import Receiver
from veris_remediate.serve.auth import BearerAuth
from veris_remediate.serve.intake import queued_only
from veris_remediate.serve.worker import (
    Database,
    ServeRemediator,
    WorkerPool,
    fleet_payload,
    joins,
    row_report,
)
from veris_remediate.settings import ENV_MAP, Settings, settings_from_env
from veris_remediate.store import QueueEntry, StateStore, now

HOSTS = ("lab1", "lab2", "db1")  # the recorded inventory's hosts


def _queue(store: StateStore, name: str, host: str, n: int) -> int:
    key = f"{name}|fp{n}|2026-11-29T12:00:00+00:00"
    assert store.enqueue(key, f"fp{n}", host, b"{}", limit=100) == "queued"
    return max(e.id for e in store.queue_entries())


def _set(store: StateStore, entry_id: int, **columns: object) -> None:
    names = ", ".join(f"{name} = ?" for name in columns)
    with store.transaction() as db:
        db.execute(f"UPDATE queue SET {names} WHERE id = ?", (*columns.values(), entry_id))


# -- the store: which rows come along ----------------------------------------------------------


def test_the_setting_and_its_environment_variable() -> None:
    assert Settings().serve_fleet is True
    assert ENV_MAP["VERIS_SERVE_FLEET"] == "serve_fleet"
    assert settings_from_env({"VERIS_SERVE_FLEET": "false"}).serve_fleet is False


def test_claim_fleet_takes_each_other_hosts_next_row_of_the_same_alert(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    first = _queue(store, "HttpProbeFailed", "h1", 1)
    _queue(store, "HttpProbeFailed", "h1", 2)  # h1's second: its host is the first's
    other_name = _queue(store, "DiskFull", "h2", 3)
    prefix_name = _queue(store, "HttpProbeFailedTwice", "h3", 4)  # not the same name
    older = _queue(store, "DiskFull", "h4", 5)
    behind = _queue(store, "HttpProbeFailed", "h4", 6)  # h4 has an older queued row
    busy = _queue(store, "DiskFull", "h5", 7)
    _set(store, busy, status="running", owner="elsewhere:1")
    on_busy = _queue(store, "HttpProbeFailed", "h5", 8)  # h5 has a running row
    take_a = _queue(store, "HttpProbeFailed", "h6", 9)
    take_b = _queue(store, "HttpProbeFailed", "h7", 10)
    take_c = _queue(store, "HttpProbeFailed", "h8", 11)  # over the cap of 3

    claimed = store.claim_fleet(3)
    assert [e.id for e in claimed] == [first, take_a, take_b]
    assert all(e.status == "running" and e.attempts == 1 for e in claimed)
    assert {e.owner for e in claimed} == {claimed[0].owner}
    queued = {e.id for e in store.queue_entries("queued")}
    assert {other_name, prefix_name, older, behind, on_busy, take_c} <= queued
    assert len({e.host for e in claimed}) == 3
    store.close()


def test_claim_fleet_never_takes_more_than_the_cap_and_joins_may_refuse(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    ids = [_queue(store, "HttpProbeFailed", f"h{n}", n) for n in range(5)]
    assert [e.id for e in store.claim_fleet(1)] == ids[:1]
    refused: list[str | None] = []

    def no_h2(chosen: Sequence[QueueEntry], candidate: QueueEntry) -> bool:
        assert chosen[0].id == ids[1]
        refused.append(candidate.host)
        return candidate.host != "h2"

    claimed = store.claim_fleet(2, joins=no_h2)
    assert [e.id for e in claimed] == [ids[1], ids[3]]
    assert refused == ["h2", "h3"]
    assert [e.id for e in store.queue_entries("queued")] == [ids[2], ids[4]]
    # claim as it always was: one row, the oldest claimable one.
    one = store.claim()
    assert one is not None
    assert one.id == ids[2]
    assert [e.id for e in store.claim_fleet(3)] == [ids[4]]
    assert store.claim_fleet(3) == []
    store.close()


def test_a_row_without_a_host_claims_alone(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.enqueue("X|a|-", "a", None, b"{}", limit=10) == "queued"
    _queue(store, "X", "h1", 1)
    assert [e.host for e in store.claim_fleet(3)] == [None]
    store.close()


# -- one payload out of several rows ------------------------------------------------------------


def _entry(n: int, payload: bytes, host: str = "lab1") -> QueueEntry:
    alert = parse_payload(payload).firing[0]
    return QueueEntry(
        id=n, incident=incident_key(alert), fingerprint=alert.fingerprint, host=host,
        status="running", payload=payload, received=now(),
    )  # fmt: skip


def _am(host: str, n: int, **kw: Any) -> QueueEntry:
    return _entry(n, alertmanager_payload(f"http://{host}/", fingerprint=f"{n:016x}", **kw), host)


def test_joins_takes_one_firing_webhook_alert_of_the_same_name_and_source() -> None:
    first = _am("lab1", 1)
    assert joins([first], _am("lab2", 2))
    generic = _entry(3, json.dumps({"alertname": "HttpProbeFailed", "host": "lab2"}).encode())
    assert not joins([first], generic)
    assert not joins([generic], _am("lab2", 2))
    renamed = json.loads(alertmanager_payload("http://lab2/", fingerprint="0" * 15 + "4"))
    renamed["alerts"][0]["labels"]["alertname"] = "HttpProbeSlow"
    assert not joins([first], _entry(4, json.dumps(renamed).encode(), "lab2"))
    grafana = json.loads(alertmanager_payload("http://lab2/", fingerprint="0" * 15 + "5"))
    grafana.update(version="1", orgId=1)
    assert not joins([first], _entry(5, json.dumps(grafana).encode(), "lab2"))
    two = json.loads(nginx_down_group(["lab1", "lab2"]))
    assert not joins([first], _entry(6, json.dumps(two).encode(), "lab2"))
    # Another service under the same alert name routes to another fix: not one fleet.
    redis = json.loads(alertmanager_payload("http://lab2/", fingerprint="0" * 15 + "7"))
    redis["alerts"][0]["labels"]["service"] = "redis"
    assert not joins([first], _entry(7, json.dumps(redis).encode(), "lab2"))


def test_the_fleet_payload_holds_every_rows_alert_and_acts_on_exactly_them() -> None:
    rows = [_am(h, n) for n, h in enumerate(HOSTS, 1)]
    payload, only = fleet_payload(rows)
    batch = parse_payload(payload)
    assert batch.source == "alertmanager"
    assert [a.labels["instance"] for a in batch.firing] == [f"http://{h}/" for h in HOSTS]
    assert only == {incident_key(a) for a in batch.firing}
    assert only == {k for r in rows for k in queued_only(r.payload)}
    envelope = json.loads(payload)
    assert envelope["receiver"] == json.loads(rows[0].payload)["receiver"]


def _result(host: str | None, fingerprint: str | None, outcome: str) -> RemediationResult:
    base = RemediationResult.model_validate(recorded_report("resolved")["remediations"][0])
    decision = {"resolved": "apply", "rolled_back": "apply", "deferred": "skip"}.get(
        outcome, "escalate"
    )
    return base.model_copy(
        update={"host": host, "fingerprint": fingerprint, "outcome": outcome, "decision": decision,
                "rolled_back": outcome == "rolled_back"}
    )  # fmt: skip


def _report(run_id: str, results: list[RemediationResult]) -> RunReport:
    recorded = recorded_report("resolved")
    return build_report(
        run_id=run_id, started_at=recorded["started_at"], finished_at=recorded["finished_at"],
        source="alertmanager", check_only=False, results=results, phases=(),
    )  # fmt: skip


def test_row_report_is_the_rows_own_result() -> None:
    rows = [_am(h, n) for n, h in enumerate(HOSTS, 1)]
    results = [
        _result("lab1", rows[0].fingerprint, "resolved"),
        _result("lab2", rows[1].fingerprint, "deferred"),
        _result("db1", rows[2].fingerprint, "rolled_back"),
    ]
    report = _report("20261202T000000Z-abcdef", results)
    for row, result in zip(rows, results, strict=True):
        mine = row_report(report, row)
        assert (mine.run_id, mine.outcome, mine.hosts) == (report.run_id, result.outcome,
                                                          (row.host,))  # fmt: skip
        assert mine.remediations == (result,)
    # A refusal about the payload as a whole belongs to every row.
    whole = _report("20261202T000000Z-abcdef", [_result(None, None, "rejected")])
    assert row_report(whole, rows[1]).outcome == "rejected"


# -- the pool -----------------------------------------------------------------------------------


class _FakeRemediator(ServeRemediator):
    """``handle`` answers each alert it is to act on with the recorded result of a real run,
    on that alert's host, with the outcome ``outcomes`` gives the host (a list: one per
    call, the last one repeated)."""

    def __init__(self, inventory: Inventory, settings: Settings, fake: _Fake) -> None:
        super().__init__(inventory, settings, executor=RecordedExecutor("resolved"))
        self.fake = fake

    def handle(
        self, payload: Payload, *, check_only: bool = False, only: Collection[str] | None = None
    ) -> RunReport:
        raw = payload_bytes(payload)
        self.fake.calls.append((raw, set(only or ())))
        self.fake.entered.set()
        assert self.fake.release.wait(30)
        run_id = self.workspace.new_run_id()
        results = []
        for alert in parse_payload(raw).firing:
            if only is not None and incident_key(alert) not in only:
                continue
            host = alert.labels["instance"].split("/")[2]
            seen = self.fake.seen[host] = self.fake.seen.get(host, 0) + 1
            outcomes = self.fake.outcomes.get(host, ["resolved"])
            results.append(_result(host, alert.fingerprint, outcomes[min(seen, len(outcomes)) - 1]))
        return _report(run_id, results)


@dataclass
class _Fake:
    outcomes: Mapping[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[bytes, set[str]]] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Serve:
    client: TestClient[Any, Any]
    pool: WorkerPool
    db: Database
    metrics: Metrics
    fake: _Fake

    async def post(self, body: bytes) -> Any:
        return await self.client.post("/alerts", data=body, headers=AUTH)

    async def entries(self) -> list[QueueEntry]:
        return await self.db.run(self.db.store.queue_entries)

    async def until(self, check: Any, timeout: float = 20) -> list[QueueEntry]:
        deadline = time.monotonic() + timeout
        while True:
            entries = await self.entries()
            if check(entries):
                return entries
            assert time.monotonic() < deadline, [
                (e.host, e.status, e.outcome, e.error) for e in entries
            ]
            await asyncio.sleep(0.05)


@asynccontextmanager
async def _serving(tmp_path: Path, fake: _Fake, **values: Any) -> AsyncIterator[_Serve]:
    settings = Settings(state_dir=tmp_path, **values)
    inventory = _inventory()
    db = Database(settings)
    metrics = Metrics()
    pool = WorkerPool(
        db, settings, inventory, metrics=metrics, notifier=Notifier([], db.audit, metrics=metrics),
        make_remediator=lambda: _FakeRemediator(inventory, settings, fake),
        recoverer=Remediator(inventory, settings, executor=RecordedExecutor("resolved")),
    )  # fmt: skip
    receiver = Receiver(settings, inventory, db, pool, metrics, auth=BearerAuth(TOKEN))
    async with TestClient(TestServer(receiver.application())) as client:
        serve = _Serve(client, pool, db, metrics, fake)
        pool.start()
        try:
            yield serve
        finally:
            fake.release.set()
            receiver.draining = True
            await pool.stop(5)
    db.close()


def _group(hosts: Collection[str], status: str = "firing") -> bytes:
    data = json.loads(nginx_down_group(list(hosts)))
    data["status"] = status
    for alert in data["alerts"]:
        alert["status"] = status
    return json.dumps(data).encode()


def _hosts_of(payload: bytes) -> list[str]:
    return [a.labels["instance"].split("/")[2] for a in parse_payload(payload).firing]


def _runs_total(metrics: Metrics) -> float:
    body, _ = metrics.render()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("veris_runs_total{")
    )


def test_one_run_for_three_rows_each_finished_by_its_own_hosts_outcome(tmp_path: Path) -> None:
    fake = _Fake(outcomes={"lab2": ["deferred", "resolved"], "db1": ["rolled_back"]})
    fake.release.set()

    async def test() -> None:
        async with _serving(tmp_path, fake, max_hosts=3) as serve:
            assert (await serve.post(_group(HOSTS))).status == 202
            entries = await serve.until(
                lambda es: len(es) == 3 and all(e.status == "done" for e in es)
            )
            by_host = {e.host: e for e in entries}
            assert {h: by_host[h].outcome for h in HOSTS} == {
                "lab1": "resolved", "lab2": "resolved", "db1": "rolled_back",
            }  # fmt: skip
            # The three in one payload, one run; lab2 (deferred in it) alone, later.
            first, again = fake.calls
            assert _hosts_of(first[0]) == list(HOSTS)
            assert first[1] == {k for e in entries for k in queued_only(e.payload)}
            assert _hosts_of(again[0]) == ["lab2"]
            assert again[1] == set(queued_only(by_host["lab2"].payload))
            assert by_host["lab1"].run_id == by_host["db1"].run_id != by_host["lab2"].run_id
            assert by_host["lab2"].attempts == 1  # held, never re-queued
            records = [r for r in serve.db.audit.records() if r["kind"] == "serve.finished"]
            assert sorted((r["data"]["host"], r["data"]["outcome"], r["run_id"]) for r in records) \
                == sorted((e.host, e.outcome, e.run_id) for e in entries)  # fmt: skip
            assert _runs_total(serve.metrics) == 2  # the fleet run and lab2's own
            assert serve.pool.state.finished == 3

    _run(test)


def test_with_serve_fleet_off_each_row_runs_alone(tmp_path: Path) -> None:
    fake = _Fake()
    fake.release.set()

    async def test() -> None:
        async with _serving(tmp_path, fake, max_hosts=3, serve_fleet=False) as serve:
            assert (await serve.post(_group(HOSTS))).status == 202
            entries = await serve.until(
                lambda es: len(es) == 3 and all(e.status == "done" for e in es)
            )
            assert sorted(len(_hosts_of(p)) for p, _ in fake.calls) == [1, 1, 1]
            assert len({e.run_id for e in entries}) == 3
            assert _runs_total(serve.metrics) == 3

    _run(test)


def test_the_cap_the_heartbeat_and_a_resolved_alert_while_a_fleet_runs(tmp_path: Path) -> None:
    fake = _Fake()  # handle waits for release

    async def test() -> None:
        async with _serving(
            tmp_path, fake, max_hosts=2, serve_workers=1, serve_claim_ttl_seconds=10
        ) as serve:
            assert (await serve.post(_group(HOSTS))).status == 202
            assert await asyncio.to_thread(fake.entered.wait, 10)
            entries = await serve.entries()
            running = [e for e in entries if e.status == "running"]
            assert [e.host for e in running] == ["lab1", "lab2"]  # the cap: two of three
            # Every claimed row's heartbeat is renewed while the run goes on.
            old = (now() - timedelta(seconds=600)).isoformat()
            for e in running:
                await serve.db.run(_set, serve.db.store, e.id, heartbeat=old)
            await serve.until(
                lambda es: all(
                    e.heartbeat is not None and now() - e.heartbeat < timedelta(seconds=5)
                    for e in es if e.status == "running"
                ),
                timeout=6,
            )  # fmt: skip
            # Resolved: the queued row (db1) is cancelled; the claimed one (lab1) runs.
            assert (await serve.post(_group(["lab1", "db1"], "resolved"))).status == 202
            entries = await serve.until(
                lambda es: {e.host: e.status for e in es}["db1"] == "cancelled"
            )
            assert {e.host: e.status for e in entries}["lab1"] == "running"
            fake.release.set()
            entries = await serve.until(
                lambda es: [e.status for e in es] == ["done", "done", "cancelled"]
            )
            assert len(fake.calls) == 1
            assert entries[0].run_id == entries[1].run_id

    _run(test)


def test_a_fleet_row_whose_host_another_process_holds_waits_alone(tmp_path: Path) -> None:
    hold_lease(tmp_path, "lab2")
    fake = _Fake()
    fake.release.set()

    async def test() -> None:
        async with _serving(tmp_path, fake, max_hosts=3) as serve:
            assert (await serve.post(_group(HOSTS))).status == 202
            entries = await serve.until(
                lambda es: (
                    [e.status for e in es] == ["done", "running", "done"]
                    and serve.pool.state.held == 1
                )
            )
            assert [_hosts_of(p) for p, _ in fake.calls] == [["lab1", "db1"]]
            assert entries[0].run_id == entries[2].run_id
            assert await serve.pool.stop(5)
            entries = await serve.entries()
            assert (entries[1].status, entries[1].owner) == ("queued", None)

    _run(test)
