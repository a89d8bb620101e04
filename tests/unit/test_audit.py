from __future__ import annotations

import json
from pathlib import Path

from veris_remediate.audit import REDACTED, AuditLog, redact


def test_chain_verifies_and_detects_edits(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for n in range(5):
        log.append("event", {"n": n}, run_id="r")
    assert log.verify().ok
    assert log.verify().records == 5

    lines = log.path.read_text().splitlines()
    record = json.loads(lines[2])
    record["data"]["n"] = 99  # an edit that keeps the JSON valid
    lines[2] = json.dumps(record, sort_keys=True)
    log.path.write_text("\n".join(lines) + "\n")
    check = log.verify()
    assert not check.ok
    assert check.line == 3
    assert "edited" in (check.problem or "")


def test_removed_and_reordered_records_are_detected(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for n in range(4):
        log.append("event", {"n": n})
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], lines[2], lines[3]]) + "\n")
    assert not log.verify().ok
    log.path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert not log.verify().ok


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
    records = AuditLog(tmp_path / "a.jsonl").records()
    assert [r["seq"] for r in records] == [1, 2]
    assert records[1]["prev"] == records[0]["hash"]
