"""The audit log through the real command line: records written by real commands, then a real
edit, a real truncation and a chain recomputed without the key, each caught by `audit verify`.

No lab host is needed: `brake engage` / `brake release` append audit records on their own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

VR = Path(sys.executable).parent / "veris-remediate"
GENESIS = "0" * 64


def _env(key_file: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIS_AUDIT_")}
    if key_file is not None:
        env["VERIS_AUDIT_KEY_FILE"] = str(key_file)
    return {**env, **extra}


def _vr(state: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if not VR.exists():
        pytest.fail(f"the veris-remediate command is not installed at {VR} (run make setup)")
    return subprocess.run(
        [str(VR), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _write_records(state: Path, env: dict[str, str], pairs: int = 2) -> None:
    for n in range(pairs):
        for args in (("brake", "engage", "--reason", f"drill {n}"), ("brake", "release")):
            proc = _vr(state, env, *args)
            assert proc.returncode == 0, proc.stderr


def _verify(state: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    as_json = _vr(state, env, "audit", "verify", "--json")
    text = _vr(state, env, "audit", "verify")
    assert as_json.returncode == text.returncode
    assert "Traceback" not in as_json.stderr + text.stderr
    return as_json.returncode, json.loads(as_json.stdout), text.stdout.strip()


def _key_file(tmp_path: Path, key: bytes) -> Path:
    path = tmp_path / "audit.key"
    path.write_bytes(key.hex().encode() + b"\n")
    path.chmod(0o600)
    return path


def _rehash(records: list[dict[str, Any]], prev: str, key: bytes | None) -> list[str]:
    """The attacker's step: re-chain edited records with plain SHA-256 or a key of their own."""
    out = []
    for record in records:
        body = {k: v for k, v in record.items() if k != "hash"}
        body["prev"] = prev
        message = (prev + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()
        if key is None:
            prev = hashlib.sha256(message).hexdigest()
        else:
            prev = hmac.new(key, message, hashlib.sha256).hexdigest()
        out.append(json.dumps({**body, "hash": prev}, sort_keys=True))
    return out


def _rewrite_head(state: Path, last_line: str) -> None:
    """Make the head agree with the forged log (an attacker without the key cannot MAC it)."""
    head_path = state / "audit.jsonl.head"
    head = json.loads(head_path.read_text())
    last = json.loads(last_line)
    head.update(count=last["seq"], last=last["hash"])
    head_path.write_text(json.dumps(head) + "\n")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_an_edited_record_is_named(state: Path) -> None:
    env = _env()
    _write_records(state, env)
    rc, check, text = _verify(state, env)
    assert rc == 0, text
    assert (check["records"], check["anchored"], check["keyed"]) == (4, True, False)
    assert text == "ok: 4 records, not keyed, anchored"

    log = state / "audit.jsonl"
    lines = log.read_text().splitlines()
    assert "drill 0" in lines[0]
    lines[0] = lines[0].replace("drill 0", "nothing happened")
    log.write_text("".join(line + "\n" for line in lines))
    rc, check, text = _verify(state, env)
    assert rc == 6
    assert (check["ok"], check["line"], check["seq"]) == (False, 1, 1)
    assert text.startswith("FAILED: line 1 (seq 1): record edited")


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
@pytest.mark.parametrize("cut", [1, 2])
def test_a_cut_tail_is_caught(tmp_path: Path, state: Path, keyed: bool, cut: int) -> None:
    env = _env(_key_file(tmp_path, os.urandom(32)) if keyed else None)
    _write_records(state, env)
    rc, check, _ = _verify(state, env)
    assert (rc, check["keyed"]) == (0, keyed)

    log = state / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    os.truncate(log, sum(len(line) for line in lines[:-cut]))
    rc, check, text = _verify(state, env)
    assert rc == 6
    assert check["problem"] == f"log truncated: head says 4 records, log has {4 - cut}"
    assert f"line {5 - cut}" in text
    assert "log truncated" in text

    # The writer will not paper over the cut with a fresh head.
    proc = _vr(state, env, "brake", "engage", "--reason", "after the cut")
    assert proc.returncode == 6
    assert "does not match its head anchor" in " ".join(proc.stderr.split())
    assert len(log.read_bytes().splitlines()) == 4 - cut


@pytest.mark.parametrize("attacker_key", [None, b"a guessed key, not the real one"])
def test_a_keyed_chain_recomputed_without_the_key_is_caught(
    tmp_path: Path, state: Path, attacker_key: bytes | None
) -> None:
    env = _env(_key_file(tmp_path, os.urandom(32)))
    _write_records(state, env)
    rc, check, text = _verify(state, env)
    assert rc == 0, text
    assert (check["keyed"], check["anchored"]) == (True, True)
    assert text == "ok: 4 records, keyed (hmac-sha256), anchored"

    log = state / "audit.jsonl"
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(r["alg"] == "hmac-sha256" for r in records)
    records[1]["data"]["reason"] = "forged"  # record 2 is `brake release`: give it data
    forged = lines[:1] + _rehash(records[1:], records[0]["hash"], attacker_key)
    log.write_text("".join(line + "\n" for line in forged))
    _rewrite_head(state, forged[-1])

    rc, check, text = _verify(state, env)
    assert rc == 6
    assert (check["line"], check["seq"]) == (2, 2)
    assert "HMAC mismatch" in check["problem"]
    assert text.startswith("FAILED: line 2 (seq 2)")


def test_a_keyed_log_cannot_be_checked_or_extended_without_its_key(
    tmp_path: Path, state: Path
) -> None:
    env = _env(_key_file(tmp_path, os.urandom(32)))
    _write_records(state, env, pairs=1)
    rc, check, text = _verify(state, _env())
    assert rc == 6
    assert check["keyed"]
    assert "cannot check" in check["problem"]
    assert "cannot check" in text
    proc = _vr(state, _env(), "brake", "engage", "--reason", "no key")
    assert proc.returncode == 6
    assert "keyed" in proc.stderr


def test_an_insecure_key_file_is_refused_in_one_line(tmp_path: Path, state: Path) -> None:
    key_file = _key_file(tmp_path, os.urandom(32))
    _write_records(state, _env(), pairs=1)
    key_file.chmod(0o644)
    for args in (("audit", "verify"), ("audit", "tail")):
        proc = _vr(state, _env(key_file), *args)
        assert proc.returncode == 6
        assert "chmod 600" in " ".join(proc.stderr.split())
        assert "Traceback" not in proc.stderr
    proc = _vr(state, _env(key_file), "audit", "verify", "--json")
    assert json.loads(proc.stdout)["exit_code"] == 6


def test_tail_skips_a_damaged_line_that_verify_names(state: Path) -> None:
    env = _env()
    _write_records(state, env)
    log = state / "audit.jsonl"
    lines = log.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # half a record
    log.write_text("".join(line + "\n" for line in lines))

    tail = _vr(state, env, "audit", "tail", "--json")
    assert tail.returncode == 0, tail.stderr
    out = json.loads(tail.stdout)
    assert [r["seq"] for r in out["records"]] == [1, 2, 4]
    assert out["skipped_lines"] == [3]
    text = _vr(state, env, "audit", "tail", "-n", "2")
    assert text.returncode == 0
    assert [line.split()[0] for line in text.stdout.splitlines()] == ["2", "4"]
    assert "skipped 1 damaged line(s): 3;" in text.stderr

    rc, check, text_out = _verify(state, env)
    assert rc == 6
    assert check["line"] == 3
    assert text_out.startswith("FAILED: line 3")


def test_the_head_goes_to_the_journal(tmp_path: Path, state: Path) -> None:
    # A stand-in systemd-cat first on PATH: it keeps what it is sent.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    received = tmp_path / "journal.txt"
    fake = bin_dir / "systemd-cat"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {received}\ncat >> {received}\necho >> {received}\n')
    fake.chmod(0o755)
    env = _env(
        _key_file(tmp_path, os.urandom(32)),
        VERIS_AUDIT_JOURNAL="1",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    _write_records(state, env, pairs=1)
    sent = received.read_text().splitlines()
    assert sent[0] == "-t veris-audit"
    heads = [json.loads(line) for line in sent if line.startswith("{")]
    assert [h["count"] for h in heads] == [1, 2]
    records = (state / "audit.jsonl").read_text().splitlines()
    assert heads[-1]["last"] == json.loads(records[-1])["hash"]
    assert heads[-1]["mac"]


def test_an_unreachable_journal_does_not_stop_the_command(tmp_path: Path, state: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("systemd-cat", "logger"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'no journal here' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    env = _env(VERIS_AUDIT_JOURNAL="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = _vr(state, env, "brake", "engage", "--reason", "journal down")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("not sent to the system journal") == 1
    rc, check, _ = _verify(state, env)
    assert (rc, check["records"]) == (0, 1)
