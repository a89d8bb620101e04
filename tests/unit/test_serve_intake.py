"""serve's intake: the token and its check, splitting payloads into incidents, the queue."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, FIXTURES, pending_approval
from tests.serving import alertmanager_payload
from veris_remediate.audit import AuditLog
from veris_remediate.exceptions import RejectedError, UsageError
from veris_remediate.guards import Guards, incident_key
from veris_remediate.inventory import Inventory, parse_inventory_listing
from veris_remediate.serve.auth import BearerAuth, load_token, parse_listen, read_token_file
from veris_remediate.serve.intake import accept, queued_only, split
from veris_remediate.settings import Settings
from veris_remediate.store import StateStore

TOKEN = "t" * 24
NOW = datetime(2026, 11, 29, 12, 5, tzinfo=UTC)


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def _split(raw: bytes, at: datetime = NOW) -> Any:
    return split(raw, _inventory(), received=at, window_seconds=300)


# -- auth ---------------------------------------------------------------------------------


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9095") == ("127.0.0.1", 9095)
    assert parse_listen("[::1]:9095") == ("::1", 9095)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("localhost:9095", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":9095"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_bearer_check_is_exact() -> None:
    auth = BearerAuth(TOKEN)
    assert auth.check(f"Bearer {TOKEN}") == "ok"
    assert auth.check(f"bearer {TOKEN}") == "ok"  # RFC 6750: the scheme is case-insensitive
    assert auth.check(None) == "missing"
    assert auth.check("") == "missing"
    assert auth.check(f"Bearer {TOKEN}x") == "wrong"
    assert auth.check(f"Bearer {TOKEN[:-1]}") == "wrong"
    assert auth.check(f"Basic {TOKEN}") == "wrong"
    assert auth.check("Bearer ") == "wrong"
    assert auth.check("Bearer \udcff") == "wrong"


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(state_dir=tmp_path / "state", **values)


def test_a_token_is_required_unless_insecure_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a bearer token"):
        load_token(_settings(tmp_path), insecure_no_auth=False, host="127.0.0.1")
    assert load_token(_settings(tmp_path), insecure_no_auth=True, host="127.0.0.1") is None
    assert load_token(_settings(tmp_path), insecure_no_auth=True, host="::1") is None
    with pytest.raises(UsageError, match="only listens on loopback"):
        load_token(_settings(tmp_path), insecure_no_auth=True, host="0.0.0.0")
    with pytest.raises(UsageError, match="contradict"):
        load_token(_settings(tmp_path, serve_token=TOKEN), insecure_no_auth=True, host="::1")


def test_token_from_env_or_file_never_both(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(f"  {TOKEN}\n")
    file.chmod(0o600)
    by_file = _settings(tmp_path, serve_token_file=file)
    assert load_token(by_file, insecure_no_auth=False, host="0.0.0.0") == TOKEN
    by_env = _settings(tmp_path, serve_token=TOKEN)
    assert load_token(by_env, insecure_no_auth=False, host="0.0.0.0") == TOKEN
    both = _settings(tmp_path, serve_token=TOKEN, serve_token_file=file)
    with pytest.raises(UsageError, match="use one"):
        load_token(both, insecure_no_auth=False, host="127.0.0.1")
    assert "serve_token" in repr(by_env)
    assert TOKEN not in repr(by_env)  # a SecretStr: never printed


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        (TOKEN, 0o644, "chmod 600"),
        ("", 0o600, "empty"),
        ("short", 0o600, "16 to 4096"),
        ("with space " + TOKEN, 0o600, "without spaces"),
        ("é" * 20, 0o600, "printable ASCII"),
    ],
)
def test_unsafe_token_files_are_refused(tmp_path: Path, text: str, mode: int, problem: str) -> None:
    file = tmp_path / "token"
    file.write_text(text)
    file.chmod(mode)
    with pytest.raises(UsageError, match=problem):
        read_token_file(file)


def test_a_missing_token_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_token_file(tmp_path / "nope")
    with pytest.raises(UsageError, match="not a regular file"):
        read_token_file(tmp_path)


# -- splitting a payload -------------------------------------------------------------------


def test_each_firing_alert_of_a_group_is_an_incident_with_a_payload_of_its_own() -> None:
    intake = _split((EXAMPLES / "alertmanager-group-mixed.json").read_bytes())
    assert intake.source == "alertmanager"
    assert intake.alerts == 3
    assert [(i.alert.name, i.host) for i in intake.incidents] == [
        ("SystemdUnitFailed", "lab1"),
        ("TcpProbeFailed", "lab2"),
    ]
    for incident in intake.incidents:
        one = json.loads(incident.payload)
        assert [a["fingerprint"] for a in one["alerts"]] == [incident.alert.fingerprint]
        assert one["version"] == "4"
        assert one["groupKey"] == '{}:{severity="critical"}'
        assert incident.key == incident.only == incident_key(incident.alert)
        assert queued_only(incident.payload) == [incident.only]
        # The queued payload replays to the very same alert.
        assert _split(incident.payload).incidents[0].alert == incident.alert
    [resolved] = intake.resolved
    assert (resolved.alert.name, resolved.host) == ("HttpProbeFailed", "lab1")
    assert intake.refused == ()


def test_one_bad_alert_is_refused_the_rest_of_the_group_goes_on() -> None:
    data = json.loads((EXAMPLES / "alertmanager-group-mixed.json").read_bytes())
    data["alerts"][0]["labels"]["instance"] = "{{ lookup('pipe', 'id') }}"
    data["alerts"][1]["labels"]["instance"] = "elsewhere:6379"
    data["alerts"].append({**data["alerts"][1], "fingerprint": "00112233445566ff"})
    data["alerts"][-1]["labels"] = {**data["alerts"][1]["labels"], "instance": "lab2:6379"}
    intake = _split(json.dumps(data).encode())
    assert [i.alert.fingerprint for i in intake.incidents] == ["00112233445566ff"]
    kinds = [(r.kind, r.alert) for r in intake.refused]
    assert kinds == [("invalid", None), ("unknown_host", "TcpProbeFailed")]
    assert intake.refused[0].reason.startswith("alerts[0]: ")
    assert "does not name a host of the inventory" in intake.refused[1].reason


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"version": "4", "alerts": []}',
        b'{"version": "9", "alerts": [{"status": "firing"}]}',
        b'{"version": "4", "alerts": [{"status": "firing", "labels": {"x": "{{"}}]}',
        b'{"alertname": "A", "alertname": "B", "host": "lab1"}',  # duplicate keys
        b'{"alertname": "A;rm", "host": "lab1"}',
    ],
)
def test_nothing_usable_is_a_rejection(raw: bytes) -> None:
    with pytest.raises(RejectedError):
        _split(raw)


def test_sentinel_and_generic_payloads_queue_as_they_came() -> None:
    raw = (EXAMPLES / "sentinel-s1-probes.json").read_bytes()
    [incident] = _split(raw).incidents
    assert incident.payload == raw
    generic = (EXAMPLES / "generic-disk-cache.json").read_bytes()
    [incident] = _split(generic).incidents
    assert (incident.host, incident.payload) == ("lab2", generic)


def test_an_undated_alert_is_one_incident_per_dedupe_window() -> None:
    generic = (EXAMPLES / "generic-disk-cache.json").read_bytes()
    first = _split(generic).incidents[0]
    assert first.alert.starts_at is None
    assert first.key.startswith(first.only + "|window=")
    assert _split(generic, NOW + timedelta(seconds=1)).incidents[0].key == first.key
    later = _split(generic, NOW + timedelta(minutes=10)).incidents[0]
    assert later.key != first.key
    assert later.only == first.only  # the run acts on the same alert either way


def test_the_same_incident_twice_in_one_payload_is_queued_once() -> None:
    data = json.loads(alertmanager_payload("http://lab1/"))
    data["alerts"].append(data["alerts"][0])
    assert len(_split(json.dumps(data).encode()).incidents) == 1


# -- the queue -----------------------------------------------------------------------------


class _Queue:
    def __init__(self, tmp_path: Path) -> None:
        settings = Settings(state_dir=tmp_path)
        self.store = StateStore(tmp_path)
        self.audit = AuditLog.from_settings(settings)
        self.guards = Guards(self.store, settings, self.audit)

    def accept(self, raw: bytes, *, limit: int = 10, at: datetime = NOW) -> Any:
        intake = _split(raw, at)
        return accept(
            self.store, self.guards, self.audit, intake, request_id="req-test", limit=limit
        )


def test_accept_queues_dedupes_and_fills(tmp_path: Path) -> None:
    q = _Queue(tmp_path)
    first = q.accept(alertmanager_payload("http://lab1/"))
    assert first.count("queued") == 1
    again = q.accept(alertmanager_payload("http://lab1/"))
    assert again.count("duplicate") == 1
    assert not again.full
    other = alertmanager_payload("http://lab2/", fingerprint="ffeeddccbbaa9988")
    assert q.accept(other, limit=1).full
    assert len(q.store.queue_entries("queued")) == 1
    kinds = [r["kind"] for r in q.audit.records()]
    assert kinds == ["serve.accepted"] * 3


def test_a_resolved_alert_cancels_queued_work_and_closes_approvals(tmp_path: Path) -> None:
    q = _Queue(tmp_path)
    q.accept(alertmanager_payload("http://lab1/"))
    [entry] = q.store.queue_entries("queued")
    q.store.add_approval(pending_approval())
    done = q.accept(alertmanager_payload("http://lab1/", status="resolved"))
    assert done.cancelled == (entry.id,)
    assert done.approvals_closed == ("20261129T120000Z-abcdef",)
    assert q.store.queue_entries("queued") == []
    assert q.store.approvals("pending") == []
    [record] = [r for r in q.audit.records() if r["kind"] == "serve.resolved"]
    assert record["data"]["host"] == "lab1"


def test_an_undated_alert_is_a_duplicate_while_its_incident_waits(tmp_path: Path) -> None:
    q = _Queue(tmp_path)
    generic = (EXAMPLES / "generic-disk-cache.json").read_bytes()
    assert q.accept(generic).count("queued") == 1
    # Another dedupe window, but the first is still queued: the same incident.
    assert q.accept(generic, at=NOW + timedelta(minutes=10)).count("duplicate") == 1
    [entry] = q.store.queue_entries("queued")
    q.store.finish(entry.id, "done", outcome="resolved")
    assert q.accept(generic, at=NOW + timedelta(minutes=20)).count("queued") == 1
