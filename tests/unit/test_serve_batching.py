"""serve's group commit: requests that arrive together are queued in one transaction and
audited with one fsync, with the outcome accepting them one by one would give, and each is
answered only once its rows and records are on disk."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, pending_approval
from tests.serving import alertmanager_payload
from tests.unit.test_serve_app import ALERT, _run, _serving
from tests.unit.test_serve_intake import NOW, _split
from veris_remediate.audit import AuditLog
from veris_remediate.exceptions import AuditError
from veris_remediate.guards import Guards
from veris_remediate.serve import app as serve_app
from veris_remediate.serve.intake import Posted, accept, accept_many
from veris_remediate.settings import Settings
from veris_remediate.store import QueueRow, StateStore

KEY = b"k" * 32
GENERIC = (EXAMPLES / "generic-disk-cache.json").read_bytes()


class _Estate:
    def __init__(self, where: Path) -> None:
        settings = Settings(state_dir=where)
        self.store = StateStore(where)
        self.audit = AuditLog.from_settings(settings)
        self.guards = Guards(self.store, settings, self.audit)
        self.store.add_approval(pending_approval())


def _requests() -> list[tuple[bytes, datetime]]:
    lab2 = alertmanager_payload("http://lab2/", fingerprint="ffeeddccbbaa9988")
    mixed = json.loads(alertmanager_payload("http://lab1/", fingerprint="0102030405060708"))
    mixed["alerts"].append(
        {**mixed["alerts"][0], "labels": {"alertname": "X", "instance": "nowhere"}}
    )
    return [
        (alertmanager_payload("http://lab1/"), NOW),
        (alertmanager_payload("http://lab1/"), NOW),  # a re-send: duplicate
        (GENERIC, NOW),
        (GENERIC, NOW + timedelta(minutes=10)),  # undated, another window, still waiting
        (json.dumps(mixed).encode(), NOW),  # one queued, one refused (unknown host)
        (alertmanager_payload("http://lab1/", status="resolved"), NOW),  # cancels the first
        (lab2, NOW),  # takes the place the cancelled one left
        (alertmanager_payload("http://lab1/", fingerprint="1111222233334444"), NOW),  # full
    ]


def _state(estate: _Estate) -> Any:
    rows = [
        (e.incident, e.fingerprint, e.host, e.status, e.payload, e.error)
        for e in estate.store.queue_entries()
    ]
    records = [(r["kind"], r["run_id"], r["data"]) for r in estate.audit.records()]
    return rows, records, [(a.id, a.state) for a in estate.store.approvals()]


def test_a_group_accepts_exactly_as_one_by_one(tmp_path: Path) -> None:
    requests = [(_split(raw, at), f"req-{n}") for n, (raw, at) in enumerate(_requests())]
    one = _Estate(tmp_path / "one")
    alone = [
        accept(one.store, one.guards, one.audit, intake, request_id=rid, limit=3)
        for intake, rid in requests
    ]
    many = _Estate(tmp_path / "many")
    together = accept_many(
        many.store, many.guards, many.audit,
        [Posted(intake=intake, request_id=rid) for intake, rid in requests], limit=3,
    )  # fmt: skip
    assert together == alone
    assert _state(many) == _state(one)
    verdicts = [sorted(v for _, v in a.verdicts) for a in together]
    assert verdicts == [
        ["queued"], ["duplicate"], ["queued"], ["duplicate"], ["queued", "refused"], [],
        ["queued"], ["full"],
    ]  # fmt: skip
    assert together[5].cancelled
    assert together[5].approvals_closed
    assert many.audit.verify().ok


def test_enqueue_many_sees_the_rows_before_it_in_the_same_transaction(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rows = [
        QueueRow(incident="a", fingerprint="fa", host="h1", payload=b"{}"),
        QueueRow(incident="a", fingerprint="fa", host="h1", payload=b"{}"),
        QueueRow(incident="w|window=1", fingerprint="fw", host="h1", payload=b"{}", active="w|"),
        QueueRow(incident="w|window=2", fingerprint="fw", host="h1", payload=b"{}", active="w|"),
        QueueRow(incident="b", fingerprint="fb", host="h2", payload=b"{}"),
    ]  # fmt: skip
    assert store.enqueue_many(rows, limit=2) == [
        "queued", "duplicate", "queued", "duplicate", "full",
    ]  # fmt: skip
    assert [e.incident for e in store.queue_entries()] == ["a", "w|window=1"]
    assert store.enqueue_many([], limit=2) == []


# -- the audit log's batch -------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_append_many_chains_every_record_with_one_fsync_of_each_file(
    tmp_path: Path, key: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    log.append("first", {"n": 0})
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    records = log.append_many([("event", {"n": n}, f"req-{n}") for n in range(1, 6)])
    assert len(synced) == 3  # the log, the head, the directory: not 3 per record
    assert [r["seq"] for r in records] == [2, 3, 4, 5, 6]
    assert [r["run_id"] for r in log.records()] == [
        None,
        "req-1",
        "req-2",
        "req-3",
        "req-4",
        "req-5",
    ]
    check = log.verify()
    assert (check.ok, check.records, check.warnings) == (True, 6, ())
    assert log.append_many([]) == []


@pytest.mark.parametrize("key", [None, KEY])
def test_a_batch_cut_short_before_its_head_is_carried_on(tmp_path: Path, key: bytes | None) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    log.append("first", {})
    old_head = log.head_path.read_bytes()
    log.append_many([("event", {"n": n}, None) for n in range(3)])
    log.head_path.write_bytes(old_head)  # the writer died before moving the head
    check = log.verify()
    assert check.ok
    assert any("3 records behind" in w for w in check.warnings)
    log.append("next", {})
    check = log.verify()
    assert (check.ok, check.records, check.warnings) == (True, 5, ())


def test_records_after_the_head_that_do_not_follow_from_it_are_still_refused(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)
    log.append("first", {})
    old_head = log.head_path.read_bytes()
    log.append_many([("event", {"n": n}, None) for n in range(3)])
    log.head_path.write_bytes(old_head)
    lines = log.path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["prev"] = "f" * 64  # the chain no longer runs through the head
    lines[2] = (json.dumps(record, sort_keys=True) + "\n").encode()
    log.path.write_bytes(b"".join(lines))
    assert not log.verify().ok
    with pytest.raises(AuditError, match="does not match its head"):
        log.append("next", {})


# -- the receiver ------------------------------------------------------------------------------


def test_posts_that_arrive_together_share_a_commit_and_each_gets_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = serve_app.accept_many
    rounds: list[int] = []

    def held(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)  # the first round holds the database thread; the rest gather
        rounds.append(len(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(serve_app, "accept_many", held)

    async def test() -> None:
        async with _serving(tmp_path, start=False) as serve:
            bodies = [
                alertmanager_payload("http://lab1/", fingerprint=f"{n:016x}") for n in range(12)
            ]
            posts = [asyncio.create_task(serve.post(body)) for body in bodies]
            await asyncio.sleep(0.5)
            assert not any(p.done() for p in posts)  # no answer before the commit
            look = StateStore(tmp_path)  # the database thread is held: look from outside
            assert look.queue_entries() == []
            look.close()
            gate.set()
            responses = await asyncio.gather(*posts)
            assert [r.status for r in responses] == [202] * 12
            answers = [await r.json() for r in responses]
            assert all(len(a["queued"]) == 1 for a in answers)
            assert len({a["queued"][0] for a in answers}) == 12
            assert len({a["request"] for a in answers}) == 12
            entries = await serve.entries()
            assert len(entries) == 12
            records = [r for r in serve.db.audit.records() if r["kind"] == "serve.accepted"]
            assert sorted(r["run_id"] for r in records) == sorted(a["request"] for a in answers)
            assert serve.db.audit.verify().ok

    _run(test)
    assert sum(rounds) == 12
    assert len(rounds) <= 2  # together; at most the first post's round went alone


def test_a_round_that_cannot_be_written_answers_503_to_each_of_its_posts(tmp_path: Path) -> None:
    async def test() -> None:
        async with _serving(tmp_path, start=False) as serve:
            assert (await serve.post(ALERT)).status == 202
            serve.db.audit.head_path.write_text("{not json")  # the audit log refuses
            bodies = [
                alertmanager_payload("http://lab2/", fingerprint=f"{n:016x}") for n in range(5)
            ]
            responses = await asyncio.gather(*(serve.post(b) for b in bodies))
            assert [r.status for r in responses] == [503] * 5
            assert {r.headers["Retry-After"] for r in responses} == {"10"}
            unauthorised = await serve.client.post("/alerts", data=ALERT, headers={})
            assert unauthorised.status == 401

    _run(test)
