"""Secrets at rest: redaction rules, and what the workspace writes (modes, masked alert data).

The same guarantees are checked end to end against lab hosts in
tests/integration/test_secrets.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from veris_remediate.alerts import parse_payload
from veris_remediate.exceptions import InventoryError
from veris_remediate.inventory import parse_inventory_listing
from veris_remediate.planner import PlaybookStep
from veris_remediate.redaction import (
    REDACTED,
    is_secret_name,
    redact,
    redact_payload,
    redact_text,
)
from veris_remediate.workspace import Workspace

from .test_inventory import LAB, with_services

S = "s3cr3t-Value_1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abc.def-1", f"Bearer {REDACTED}"),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {REDACTED}"),
        (f'curl -H "Authorization: Bearer {S}" x', f'curl -H "Authorization: Bearer {REDACTED}" x'),
        (f"https://h/cb?alert=1&token={S}&x=2", f"https://h/cb?alert=1&token={REDACTED}&x=2"),
        (f"db_pass={S} pwd: {S}", f"db_pass={REDACTED} pwd: {REDACTED}"),
        (f"secret='{S} x'", f"secret='{REDACTED}'"),
        (f'{{"api_key": "{S}"}}', f'{{"api_key": "{REDACTED}"}}'),
        (f"postgresql://app:{S}@db:5432/x", f"postgresql://app:{REDACTED}@db:5432/x"),
        # Ordinary words and text stay as they are.
        ("tests passed: 3, author: bob", "tests passed: 3, author: bob"),
        ('password authentication failed for user "app"', None),
        ("HTTP probe of http://lab1/ failing for 10s", None),
        ("signal: SIGTERM, session closed", None),
    ],
)
def test_redact_text(text: str, expected: str | None) -> None:
    masked = redact_text(text)
    assert masked == (text if expected is None else expected)
    assert redact_text(masked) == masked  # idempotent
    assert S not in masked


def test_secret_names() -> None:
    for name in ("password", "db_pass", "PGPASSWORD", "api_token", "Authorization", "apikey",
                 "http_auth", "private_key", "session_id", "Cookie", "client_secret"):  # fmt: skip
        assert is_secret_name(name), name
    for name in ("passed", "passive", "author", "instance", "service", "severity", "path"):
        assert not is_secret_name(name), name


def test_redact_structures_and_label_pairs() -> None:
    data = {
        "labels": [
            {"name": "authorization", "value": f"Bearer {S}"},
            {"name": "api_token", "value": S},
            {"name": "path", "value": "/var/cache/nginx"},
        ],
        "summary": f"ack https://h/a?token={S}",
        "nested": {"DB_PASSWORD": S, "count": 3, "ok": True, "none": None},
    }
    masked = redact(data)
    assert S not in json.dumps(masked)
    assert masked["labels"][0] == {"name": "authorization", "value": REDACTED}
    assert masked["labels"][2] == {"name": "path", "value": "/var/cache/nginx"}
    assert masked["nested"] == {"DB_PASSWORD": REDACTED, "count": 3, "ok": True, "none": None}
    assert redact(masked) == masked


def _payload() -> str:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "HttpProbeFailed",
                        "instance": "http://lab1/",
                        "service": "nginx",
                        "authorization": f"Bearer {S}",
                    },
                    "annotations": {"summary": f"down; ack https://h/a?token={S}"},
                    "fingerprint": "5e3f0a7c2b1d4e6f",
                }
            ],
        }
    )


def test_a_redacted_payload_still_parses_to_the_same_alert() -> None:
    raw = _payload()
    stored = redact_payload(raw)
    assert S.encode() not in stored
    original, again = parse_payload(raw).firing[0], parse_payload(stored).firing[0]
    assert (again.name, again.fingerprint, again.labels["instance"], again.labels["service"]) == (
        original.name, original.fingerprint, "http://lab1/", "nginx",
    )  # fmt: skip
    assert redact_payload(stored) == stored
    assert redact_payload(b"not json; password=x") == f"not json; password={REDACTED}".encode()


def _step() -> PlaybookStep:
    return PlaybookStep(
        phase="check",
        playbook="service_restart.yml",
        check=True,
        extravars={
            "veris_run_id": "r",
            "veris_alert_summary": f"down; ack https://h/a?token={S}",
            "veris_alert": {
                "name": "HttpProbeFailed",
                "severity": "critical",
                "summary": f"down; ack https://h/a?token={S}",
                "labels": [
                    {"name": "authorization", "value": f"Bearer {S}"},
                    {"name": "mountpoint", "value": "/var"},
                ],
            },
            "veris_host": {"name": "lab1", "services": []},
        },
    )


def _modes(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): stat.S_IMODE(p.stat().st_mode) for p in [top, *top.rglob("*")]}


def test_run_directories_are_private_and_alert_secrets_are_not_written(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ws = Workspace(tmp_path / "state")
        run_id = ws.new_run_id()
        prepared = ws.prepare_step(run_id, "0-lab1", _step(), "lab1", idle_timeout=60)
        ws.save_payload(run_id, _payload())
        ws.write_record(run_id, "report", {"ok": True})
    finally:
        os.umask(old)
    extravars = (prepared.private_data_dir / "env" / "extravars").read_text()
    assert S not in extravars
    assert "/var" in extravars  # labels that are not secrets still reach the roles
    vars_ = yaml.safe_load(extravars.replace("!unsafe", ""))
    assert vars_["veris_alert"]["labels"][0] == {"name": "authorization", "value": REDACTED}
    assert S not in (ws.run_dir(run_id) / "payload").read_text()
    modes = _modes(tmp_path / "state")
    loose = {path: oct(mode) for path, mode in modes.items() if mode & 0o077}
    assert not loose, loose  # mkdir -p would have made state/runs/RUN/SLOT/PHASE 0755


def test_scrub_removes_the_env_copy_and_tightens_what_ansible_runner_made(
    tmp_path: Path,
) -> None:
    ws = Workspace(tmp_path / "state")
    run_id = ws.new_run_id()
    prepared = ws.prepare_step(run_id, "0-lab1", _step(), "lab1", idle_timeout=60)
    # What ansible-runner 2.4 leaves: artifacts/ 0755 (os.makedirs), stderr 0644, the env copy.
    artifacts = prepared.private_data_dir / "artifacts"
    (artifacts / "check" / "job_events").mkdir(parents=True, mode=0o755)
    artifacts.chmod(0o755)
    (artifacts / "check" / "command").write_text(json.dumps({"env": {"TOKEN": S}}))
    (artifacts / "check" / "stderr").write_text("")
    (artifacts / "check" / "stderr").chmod(0o644)
    fetched = prepared.private_data_dir.parent / "files" / "lab1" / "etc" / "nginx.conf"
    fetched.parent.mkdir(parents=True)
    fetched.write_text("events {}\n")
    fetched.chmod(0o644)
    outside = tmp_path / "outside.txt"  # a link out of the run dir is never followed
    outside.write_text("")
    outside.chmod(0o644)
    (artifacts / "check" / "link").symlink_to(outside)

    ws.scrub(prepared)

    assert not (artifacts / "check" / "command").exists()
    assert stat.S_IMODE(artifacts.stat().st_mode) == 0o700
    assert stat.S_IMODE((artifacts / "check" / "stderr").stat().st_mode) == 0o600
    assert stat.S_IMODE(fetched.stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_a_loose_runs_dir_is_tightened(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "state")
    ws.runs_dir.mkdir(parents=True, mode=0o755)
    ws.runs_dir.chmod(0o755)
    ws.write_record(ws.new_run_id(), "report", {})
    assert stat.S_IMODE(ws.runs_dir.stat().st_mode) == 0o700


def test_health_url_with_credentials_is_refused_without_echoing_them() -> None:
    listing = with_services({"nginx": {"health_url": f"http://probe:{S}@127.0.0.1/"}})
    with pytest.raises(InventoryError) as info:
        parse_inventory_listing(listing, [LAB])
    assert "must not carry credentials" in info.value.message
    assert S not in info.value.message


def test_scrub_run_cleans_the_steps_a_killed_process_left(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "state")
    run_id = ws.new_run_id()
    for phase in ("check", "apply"):
        step = _step().model_copy(update={"phase": phase})
        prepared = ws.prepare_step(run_id, "0-lab1", step, "lab1", idle_timeout=60)
        left = prepared.private_data_dir / "artifacts" / phase
        left.mkdir(parents=True)
        (left / "command").write_text(json.dumps({"env": {"TOKEN": S}}))
    ws.scrub_run(run_id)
    assert not list(ws.run_dir(run_id).rglob("command"))
