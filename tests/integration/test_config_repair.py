"""Config repair against a real lab host: baseline, break nginx.conf, handle the alert.

service_restart finds the config invalid (blocker ``config_invalid``); the default rules
hand the alert to config_repair, which restores the last-known-good copy recorded by
``baseline`` (or escalates without one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, CliResult, run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

CONF = "/etc/nginx/nginx.conf"
BREAK = "echo 'this is not nginx syntax' >> /etc/nginx/nginx.conf"


@pytest.fixture
def host(lab: LabHandle) -> Iterator[str]:
    """Host 1 with nginx healthy; booted clean again afterwards (the tests break it)."""
    name = lab.name(1)
    lab.ssh(name, "systemctl", "start", "nginx")
    try:
        yield name
    finally:
        lab.reset(name)


def _sh(lab: LabHandle, host: str, script: str) -> str:
    return lab.ssh(host, "sh", "-c", script).stdout.strip()


def _file_state(lab: LabHandle, host: str) -> str:
    """sha256, mode, owner and group of nginx.conf."""
    return _sh(lab, host, f"sha256sum {CONF} | cut -d' ' -f1; stat -c '%a %U %G' {CONF}")


def _payload(lab: LabHandle) -> str:
    return (EXAMPLES / "alertmanager-nginx-down.json").read_text().replace("lab1", lab.name(1))


def _baseline(state: Path, lab: LabHandle, host: str) -> None:
    """Record last-known-good copies of the host's config files, as an operator would."""
    result = run_cli(state, "baseline", "-i", str(lab.inventory), "--limit", host)
    assert result.rc == 0, result.stdout + result.stderr


def _handle(state: Path, lab: LabHandle, *extra: str) -> CliResult:
    return run_cli(
        state, "handle", "-", "-i", str(lab.inventory), "--json", *extra, stdin=_payload(lab)
    )


def _phases(report: dict[str, Any]) -> list[str]:
    return [p["name"] for p in report["phases"]]


def test_baseline_then_broken_config_is_restored_byte_identical(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    good = _file_state(lab, host)
    _baseline(state_dir, lab, host)
    _sh(lab, host, f"systemctl stop nginx; {BREAK}")
    assert _file_state(lab, host) != good

    result = _handle(state_dir, lab)

    assert result.rc == 0, result.stdout + result.stderr
    report = result.json
    assert report["outcome"] == "resolved"
    assert report["remediation"] == "config_repair"
    assert report["decision"] == "apply"
    assert report["confidence"] >= 0.7
    assert _phases(report).count("check") == 2  # service_restart's, then config_repair's
    assert {"apply", "verify"} <= set(_phases(report))
    assert "rollback" not in _phases(report)
    assert any("service_restart cannot help" in r for r in report["reasons"])
    assert any("configuration validates" in f["message"] for f in report["findings"])
    # Byte-identical, with its owner and mode; nginx runs on it.
    assert _file_state(lab, host) == good
    assert lab.is_active(host, "nginx") == "active"
    assert run_cli(state_dir, "audit", "verify").rc == 0


def test_without_a_baseline_it_escalates_and_leaves_the_file_alone(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _sh(lab, host, f"systemctl stop nginx; {BREAK}")
    broken = _file_state(lab, host)

    result = _handle(state_dir, lab)

    assert result.rc == 4, result.stdout + result.stderr
    report = result.json
    assert report["outcome"] == "escalated"
    assert "apply" not in _phases(report)
    reasons = " | ".join(report["reasons"])
    assert "on config_invalid, try config_repair" in reasons
    assert "no last-known-good copy of its config files is recorded" in reasons
    assert _file_state(lab, host) == broken
    assert lab.is_active(host, "nginx") == "inactive"


def test_check_only_previews_the_restore_diff_and_changes_nothing(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _baseline(state_dir, lab, host)
    _sh(lab, host, f"systemctl stop nginx; {BREAK}")
    broken = _file_state(lab, host)

    result = _handle(state_dir, lab, "--check-only")

    assert result.rc == 0, result.stdout + result.stderr
    report = result.json
    assert report["outcome"] == "previewed"
    restore = [p for p in report["preview"] if p["action"] == "ansible.builtin.copy"]
    assert [p["task"] for p in restore] == [f"Restore the last-known-good copy of {CONF}"]
    assert f"--- {CONF}" in restore[0]["diff"]
    assert "-this is not nginx syntax" in restore[0]["diff"]
    assert any(p["action"] == "ansible.builtin.systemd_service" for p in report["preview"])
    assert _file_state(lab, host) == broken
    assert lab.is_active(host, "nginx") == "inactive"


def test_a_repair_that_fails_verify_is_rolled_back_byte_identically(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _baseline(state_dir, lab, host)
    # The copy validates and nginx starts, but its document root is unreadable: HTTP 403.
    _sh(lab, host, f"systemctl stop nginx; {BREAK}; chmod 000 /var/www/html")
    broken = _file_state(lab, host)

    result = _handle(state_dir, lab)

    assert result.rc == 5, result.stdout + result.stderr
    report = result.json
    assert report["outcome"] == "rolled_back"
    assert report["rolled_back"] is True
    assert "rollback" in _phases(report)
    assert any("HTTP probe failing (403)" in r for r in report["reasons"])
    assert any(r.startswith("prior state restored") for r in report["reasons"])
    assert _file_state(lab, host) == broken
    assert lab.is_active(host, "nginx") == "inactive"
