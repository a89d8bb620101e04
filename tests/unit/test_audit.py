from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from veris_remediate.audit import GENESIS, AuditLog, load_key
from veris_remediate.exceptions import AuditError
from veris_remediate.redaction import REDACTED, redact
from veris_remediate.settings import Settings

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def _rehash(
    records: list[dict[str, Any]], key: bytes | None, alg: str | None, prev: str = GENESIS
) -> list[str]:
    """What an attacker does after an edit: recompute the hashes, with no key or a wrong one."""
    out = []
    for record in records:
        body = {k: v for k, v in record.items() if k != "hash"}
        body["prev"] = prev
        if alg is None:
            body.pop("alg", None)
        else:
            body["alg"] = alg
        message = (prev + _canonical(body)).encode()
        digest = (
            hashlib.sha256(message).hexdigest()
            if key is None
            else hmac.new(key, message, hashlib.sha256).hexdigest()
        )
        prev = digest
        out.append(json.dumps({**body, "hash": digest}, sort_keys=True))
    return out


def _forge_head(log: AuditLog, lines: list[str], key: bytes | None) -> None:
    last = json.loads(lines[-1])
    head: dict[str, Any] = {
        "count": last["seq"],
        "last": last["hash"],
        "updated": "2030-01-01T00:00:00+00:00",
        "alg": "sha256" if key is None else "hmac-sha256",
        "keyed_since": None if key is None else 1,
        "mac": None,
    }
    if key is not None:
        body = _canonical({k: v for k, v in head.items() if k != "mac"})
        head["mac"] = hmac.new(key, b"veris-audit-head\x00" + body.encode(), "sha256").hexdigest()
    log.head_path.write_text(json.dumps(head))


def _legacy_log(path: Path, count: int) -> None:
    """A log as versions before alg/keys/heads wrote it."""
    prev, lines = GENESIS, []
    for n in range(1, count + 1):
        body = {
            "seq": n,
            "ts": "2024-01-01T00:00:00+00:00",
            "kind": "event",
            "run_id": None,
            "data": {"n": n},
            "prev": prev,
        }
        prev = hashlib.sha256((prev + _canonical(body)).encode()).hexdigest()
        lines.append(json.dumps({**body, "hash": prev}, sort_keys=True))
    path.write_text("".join(line + "\n" for line in lines))


def _filled(tmp_path: Path, count: int = 5, key: bytes | None = None) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    for n in range(count):
        log.append("event", {"n": n}, run_id="r")
    return log


# -- the chain -----------------------------------------------------------------------------


def test_chain_verifies_and_detects_edits(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    check = log.verify()
    assert check.ok
    assert check.records == 5
    assert check.anchored
    assert not check.keyed
    assert check.warnings == ()

    lines = _lines(log)
    record = json.loads(lines[2])
    record["data"]["n"] = 99  # an edit that keeps the JSON valid
    lines[2] = json.dumps(record, sort_keys=True)
    _write(log, lines)
    check = log.verify()
    assert not check.ok
    assert (check.line, check.seq, check.records) == (3, 3, 2)
    assert "edited" in (check.problem or "")


def test_removed_reordered_and_repeated_records_are_detected(tmp_path: Path) -> None:
    log = _filled(tmp_path, 4)
    lines = _lines(log)
    _write(log, [lines[0], lines[2], lines[3]])
    check = log.verify()
    assert (check.ok, check.line, check.seq) == (False, 2, 3)
    assert "sequence broken" in (check.problem or "")
    _write(log, [lines[1], lines[0], *lines[2:]])
    assert (log.verify().ok, log.verify().line) == (False, 1)
    _write(log, [lines[0], lines[1], lines[1], *lines[2:]])
    assert (log.verify().ok, log.verify().line) == (False, 3)
    _write(log, [*lines[:2], lines[3], lines[2]])
    assert (log.verify().ok, log.verify().line) == (False, 3)


def test_secrets_are_redacted_before_writing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(
        "alert",
        {"labels": {"api_token": "abc123", "instance": "lab1"}, "header": "Bearer s3cr3t.tok"},
    )
    text = log.path.read_text()
    assert "abc123" not in text
    assert "s3cr3t" not in text
    assert log.verify().ok
    assert redact({"password": "x", "nested": [{"Authorization": "y"}]}) == {
        "password": REDACTED,
        "nested": [{"Authorization": REDACTED}],
    }


def test_appends_continue_the_chain_across_instances(tmp_path: Path) -> None:
    AuditLog(tmp_path / "a.jsonl").append("one", {})
    AuditLog(tmp_path / "a.jsonl").append("two", {})
    log = AuditLog(tmp_path / "a.jsonl")
    records = log.records()
    assert [r["seq"] for r in records] == [1, 2]
    assert records[1]["prev"] == records[0]["hash"]
    head = json.loads(log.head_path.read_text())
    assert (head["count"], head["last"]) == (2, records[1]["hash"])


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)

    def write() -> None:
        for n in range(25):
            AuditLog(log.path, key=KEY).append("event", {"n": n})

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = log.verify()
    assert (check.ok, check.records, check.anchored) == (True, 100, True)


def test_log_and_head_are_private(tmp_path: Path) -> None:
    log = _filled(tmp_path, 2)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.head_path.stat().st_mode) == 0o600


def test_a_large_record_does_not_hide_the_last_one(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("big", {"blob": "x" * 300_000})
    log.append("next", {})
    assert [r["seq"] for r in log.records()] == [1, 2]
    assert log.verify().ok


def test_a_last_line_missing_only_its_newline_is_continued(tmp_path: Path) -> None:
    log = _filled(tmp_path, 2)
    os.truncate(log.path, log.path.stat().st_size - 1)
    log.append("next", {})
    assert [r["seq"] for r in log.records()] == [1, 2, 3]
    assert log.verify().ok


# -- keys ----------------------------------------------------------------------------------


def test_records_name_their_algorithm(tmp_path: Path) -> None:
    plain = AuditLog(tmp_path / "plain.jsonl").append("event", {})
    keyed = AuditLog(tmp_path / "keyed.jsonl", key=KEY).append("event", {})
    assert plain["alg"] == "sha256"
    assert keyed["alg"] == "hmac-sha256"
    body = {k: v for k, v in keyed.items() if k != "hash"}
    message = (GENESIS + _canonical(body)).encode()
    assert keyed["hash"] == hmac.new(KEY, message, hashlib.sha256).hexdigest()
    assert keyed["hash"] != hashlib.sha256(message).hexdigest()


def test_keyed_log_verifies_with_its_key_only(tmp_path: Path) -> None:
    path = _filled(tmp_path, 3, key=KEY).path
    check = AuditLog(path, key=KEY).verify()
    assert (check.ok, check.keyed, check.anchored, check.records) == (True, True, True, 3)
    head = json.loads(AuditLog(path).head_path.read_text())
    assert head["alg"] == "hmac-sha256"
    assert head["mac"]

    unkeyed = AuditLog(path).verify()
    assert not unkeyed.ok
    assert unkeyed.keyed
    assert "cannot check" in (unkeyed.problem or "")
    assert (unkeyed.line, unkeyed.seq) == (1, 1)

    wrong = AuditLog(path, key=OTHER_KEY).verify()
    assert not wrong.ok
    assert (wrong.line, wrong.seq) == (1, 1)
    assert "HMAC mismatch" in (wrong.problem or "")


@pytest.mark.parametrize(
    ("attacker_key", "alg", "expect"),
    [
        (None, "hmac-sha256", "HMAC mismatch"),  # plain sha256 under the keyed label
        (OTHER_KEY, "hmac-sha256", "HMAC mismatch"),  # a guessed key
        (None, "sha256", "unkeyed record after keyed records"),  # a downgrade
        (None, None, "without alg"),  # a downgrade to the old format
    ],
)
def test_keyed_chain_recomputed_without_the_key_is_caught(
    tmp_path: Path, attacker_key: bytes | None, alg: str | None, expect: str
) -> None:
    log = _filled(tmp_path, 4, key=KEY)
    records = [json.loads(line) for line in _lines(log)]
    records[1]["data"]["n"] = 42
    # Record 1 stays; the edited record 2 and all after it are re-chained onto it.
    lines = _lines(log)[:1] + _rehash(records[1:], attacker_key, alg, prev=records[0]["hash"])
    _write(log, lines)
    _forge_head(log, lines, attacker_key)
    check = AuditLog(log.path, key=KEY).verify()
    assert not check.ok
    assert (check.line, check.seq) == (2, 2)
    assert expect in (check.problem or "")


def test_a_whole_log_rewritten_without_the_key_is_at_least_not_reported_keyed(
    tmp_path: Path,
) -> None:
    # The limit of an on-disk anchor (docs/AUDIT.md): replacing every record and the head
    # leaves nothing keyed to check. verify says so instead of calling it keyed.
    log = _filled(tmp_path, 3, key=KEY)
    lines = _rehash([json.loads(line) for line in _lines(log)], None, "sha256")
    _write(log, lines)
    _forge_head(log, lines, None)
    check = AuditLog(log.path, key=KEY).verify()
    assert check.ok
    assert not check.keyed
    assert any("no record is keyed" in w for w in check.warnings)


def test_forged_head_is_caught(tmp_path: Path) -> None:
    log = _filled(tmp_path, 4, key=KEY)
    lines = _lines(log)[:-1]
    _write(log, lines)
    _forge_head(log, lines, OTHER_KEY)  # made to agree with the cut log, but not MACed by KEY
    check = AuditLog(log.path, key=KEY).verify()
    assert not check.ok
    assert "head anchor edited or forged" in (check.problem or "")


def test_unkeyed_writer_refuses_a_keyed_log(tmp_path: Path) -> None:
    log = _filled(tmp_path, 2, key=KEY)
    before = log.path.read_bytes()
    with pytest.raises(AuditError, match="keyed"):
        AuditLog(log.path).append("event", {})
    assert log.path.read_bytes() == before


# -- the head anchor -----------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("cut", [1, 2])
def test_cut_tail_is_caught(tmp_path: Path, key: bytes | None, cut: int) -> None:
    log = _filled(tmp_path, 5, key=key)
    lines = _lines(log)
    os.truncate(log.path, sum(len(line) + 1 for line in lines[:-cut]))
    check = AuditLog(log.path, key=key).verify()
    assert not check.ok
    assert check.problem == f"log truncated: head says 5 records, log has {5 - cut}"
    assert (check.line, check.seq, check.records) == (6 - cut, 6 - cut, 5 - cut)


@pytest.mark.parametrize("how", ["empty", "deleted"])
def test_emptied_or_deleted_log_is_truncation(tmp_path: Path, how: str) -> None:
    log = _filled(tmp_path, 3)
    if how == "empty":
        os.truncate(log.path, 0)
    else:
        log.path.unlink()
    check = log.verify()
    assert not check.ok
    assert check.problem == "log truncated: head says 3 records, log has 0"


def test_unkeyed_chain_recomputed_but_head_left_is_caught(tmp_path: Path) -> None:
    log = _filled(tmp_path, 4)
    records = [json.loads(line) for line in _lines(log)]
    records[1]["data"]["n"] = 42
    _write(log, _rehash(records, None, "sha256"))
    check = log.verify()
    assert not check.ok
    assert "differs from the head anchor" in (check.problem or "")
    assert (check.line, check.seq) == (4, 4)


def test_append_refuses_a_log_that_no_longer_matches_its_head(tmp_path: Path) -> None:
    log = _filled(tmp_path, 3)
    lines = _lines(log)
    _write(log, lines[:-1])
    with pytest.raises(AuditError, match="does not match its head anchor"):
        log.append("event", {})
    assert _lines(log) == lines[:-1]  # the evidence is kept
    assert json.loads(log.head_path.read_text())["count"] == 3


def test_deleted_head_is_caught_and_blocks_appends(tmp_path: Path) -> None:
    log = _filled(tmp_path, 3)
    log.head_path.unlink()
    check = log.verify()
    assert not check.ok
    assert "missing" in (check.problem or "")
    with pytest.raises(AuditError, match="missing"):
        log.append("event", {})


def test_damaged_head_is_reported_not_raised(tmp_path: Path) -> None:
    log = _filled(tmp_path, 2)
    log.head_path.write_text("{not json")
    check = log.verify()
    assert not check.ok
    assert "damaged" in (check.problem or "")
    with pytest.raises(AuditError, match="damaged"):
        log.append("event", {})


@pytest.mark.parametrize("key", [None, KEY])
def test_a_writer_that_died_before_the_head_leaves_a_warning(
    tmp_path: Path, key: bytes | None
) -> None:
    log = _filled(tmp_path, 3, key=key)
    old_head = log.head_path.read_bytes()
    log.append("event", {})
    log.head_path.write_bytes(old_head)
    check = log.verify()
    assert check.ok
    assert check.anchored
    assert any("one record behind" in w for w in check.warnings)
    log.append("event", {})
    check = log.verify()
    assert (check.ok, check.records, check.warnings) == (True, 5, ())


def test_a_writer_that_died_after_the_first_keyed_record(tmp_path: Path) -> None:
    log = _filled(tmp_path, 2)
    old_head = log.head_path.read_bytes()
    keyed = AuditLog(log.path, key=KEY)
    keyed.append("event", {})
    log.head_path.write_bytes(old_head)
    assert keyed.verify().ok
    keyed.append("event", {})
    check = keyed.verify()
    assert (check.ok, check.keyed, check.records) == (True, True, 4)
    assert json.loads(log.head_path.read_text())["keyed_since"] == 3


# -- damaged lines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        b"this is not json",
        b"[1, 2, 3]",
        b'{"seq": 3}',
        b'{"seq": "3", "ts": "", "kind": "", "run_id": null, "data": {}, "prev": "", "hash": ""}',
        b"\xff\xfe not utf-8",
        b"",
    ],
)
def test_damaged_line_is_named_and_skipped(tmp_path: Path, damage: bytes) -> None:
    log = _filled(tmp_path, 4)
    raw = log.path.read_bytes().split(b"\n")
    raw[2] = damage
    log.path.write_bytes(b"\n".join(raw))
    check = log.verify()
    assert not check.ok
    assert check.line == 3
    assert "damaged" in (check.problem or "")
    read = log.read()
    assert [r["seq"] for r in read.records] == [1, 2, 4]
    assert read.skipped_lines == (3,)
    assert [r["seq"] for r in log.tail(2)] == [2, 4]


def test_half_written_last_line(tmp_path: Path) -> None:
    log = _filled(tmp_path, 3)
    os.truncate(log.path, log.path.stat().st_size - 20)
    check = log.verify()
    assert (check.ok, check.line) == (False, 3)
    assert [r["seq"] for r in log.records()] == [1, 2]
    with pytest.raises(AuditError, match="damaged"):
        log.append("event", {})


# -- migration -----------------------------------------------------------------------------


def test_a_log_from_before_anchors_verifies_and_is_anchored_on_the_next_append(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    _legacy_log(path, 3)
    log = AuditLog(path)
    check = log.verify()
    assert (check.ok, check.records, check.anchored) == (True, 3, False)
    assert any("no head anchor yet" in w for w in check.warnings)

    log.append("event", {})
    check = log.verify()
    assert (check.ok, check.records, check.anchored, check.warnings) == (True, 4, True, ())


def test_a_key_configured_later_covers_the_old_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _legacy_log(path, 3)
    keyed = AuditLog(path, key=KEY)
    check = keyed.verify()
    assert check.ok
    assert any("no record is keyed yet" in w for w in check.warnings)

    keyed.append("event", {})
    keyed.append("event", {})
    check = keyed.verify()
    assert (check.ok, check.keyed, check.anchored, check.records) == (True, True, True, 5)
    assert any("records 1-3 were written before the key" in w for w in check.warnings)

    # An old, unkeyed record rewritten (chain recomputed up to the first keyed one) is caught.
    lines = _lines(keyed)
    records = [json.loads(line) for line in lines[:3]]
    records[0]["data"]["n"] = 42
    _write(keyed, _rehash(records, None, None) + lines[3:])
    check = keyed.verify()
    assert (check.ok, check.line) == (False, 4)


# -- settings, key files, journal ----------------------------------------------------------


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "audit.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_from_settings_reads_a_private_key_file(tmp_path: Path) -> None:
    key_file = _key_file(tmp_path, KEY + b"\n")
    settings = Settings(state_dir=tmp_path / "state", audit_key_file=key_file, audit_journal=True)
    log = AuditLog.from_settings(settings)
    assert log.path == tmp_path / "state" / "audit.jsonl"
    assert log.keyed
    assert log.journal
    log.append("event", {})
    assert AuditLog(log.path, key=KEY).verify().ok  # the newline is not part of the key

    plain = AuditLog.from_settings(Settings(state_dir=tmp_path / "state2"))
    assert not plain.keyed
    assert not plain.journal


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (KEY, 0o640, "chmod 600"),
        (KEY, 0o604, "chmod 600"),
        (b"", 0o600, "empty"),
        (b" \n", 0o600, "empty"),
        (b"short", 0o600, "too short"),
    ],
)
def test_unsafe_key_files_are_refused(
    tmp_path: Path, content: bytes, mode: int, message: str
) -> None:
    key_file = _key_file(tmp_path, content, mode)
    with pytest.raises(AuditError, match=message):
        AuditLog.from_settings(Settings(state_dir=tmp_path, audit_key_file=key_file))


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read the audit key file"):
        load_key(tmp_path / "nope")
    with pytest.raises(AuditError, match="not a regular file"):
        load_key(tmp_path)


def test_an_unreachable_journal_never_fails_an_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[list[str]] = []

    def unreachable(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    monkeypatch.setattr("veris_remediate.audit.subprocess.run", unreachable)
    log = AuditLog(tmp_path / "audit.jsonl", journal=True)
    with caplog.at_level(logging.WARNING, logger="veris_remediate.audit"):
        log.append("one", {})
        log.append("two", {})
    assert [argv[0] for argv in calls] == ["systemd-cat", "logger"] * 2
    warnings = [r for r in caplog.records if "system journal" in r.getMessage()]
    assert len(warnings) == 1  # said once, not at every append
    assert log.verify().ok


def test_the_journal_receives_the_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def journal(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        sent.append(kwargs["input"])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("veris_remediate.audit.subprocess.run", journal)
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY, journal=True)
    record = log.append("one", {})
    message = json.loads(sent[-1])
    assert (message["count"], message["last"], message["alg"]) == (1, record["hash"], "hmac-sha256")
    assert message["mac"]
    assert message["log"] == str(log.path)
