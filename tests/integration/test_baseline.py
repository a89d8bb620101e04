"""`baseline`: last-known-good config copies, recorded only while a service is healthy and valid."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.integration.conftest import LabHandle
from veris_remediate.baselines import BaselineStore

pytestmark = pytest.mark.integration
CONF = "/etc/nginx/nginx.conf"


@pytest.fixture
def one(lab: LabHandle) -> Iterator[tuple[LabHandle, str]]:
    """The lab's first host with nginx running and its config as booted; restored after."""
    host = lab.name(1)
    original = lab.ssh(host, "cat", CONF).stdout
    lab.ssh(host, "systemctl", "start", "nginx")
    yield lab, host
    lab.ssh(host, "sh", "-c", f"printf '%s' \"$0\" > {CONF}", original)
    lab.ssh(host, "systemctl", "start", "nginx", check=False)


def _baseline(state: Path, lab: LabHandle, host: str) -> dict[str, object]:
    result = run_cli(state, "baseline", "-i", str(lab.inventory), "--limit", host, "--json")
    assert result.rc == 0, (result.stdout, result.stderr)
    data: dict[str, object] = result.json
    return data


def _entries(data: dict[str, object], service: str) -> list[dict[str, str]]:
    entries = data["entries"]
    assert isinstance(entries, list)
    return [e for e in entries if e["service"] == service]


def test_a_healthy_services_config_is_recorded_byte_for_byte(
    one: tuple[LabHandle, str], state_dir: Path
) -> None:
    lab, host = one
    content = lab.ssh(host, "cat", CONF).stdout.encode()

    (nginx,) = _entries(_baseline(state_dir, lab, host), "nginx")
    assert (nginx["path"], nginx["status"]) == (CONF, "recorded")
    assert nginx["sha256"] == hashlib.sha256(content).hexdigest()
    (redis,) = _entries(_baseline(state_dir, lab, host), "redis-server")
    assert redis["status"] == "skipped"
    assert "validate" in redis["reason"]

    (copy,) = BaselineStore(state_dir).copies(host)
    assert Path(copy.src).read_bytes() == content
    assert (copy.mode, copy.owner, copy.group) == ("0644", "root", "root")
    assert stat.S_IMODE(Path(copy.src).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(copy.src).parent.stat().st_mode) == 0o700
    # Seen good again: the same copy, confirmed, not stored twice.
    (again,) = _entries(_baseline(state_dir, lab, host), "nginx")
    assert again["status"] == "confirmed"
    (same,) = BaselineStore(state_dir).copies(host)
    assert (same.sha256, same.recorded_at) == (copy.sha256, copy.recorded_at)
    assert same.last_seen > copy.last_seen


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (["systemctl", "stop", "nginx"], "service is not healthy"),
        (["sh", "-c", f"echo 'not nginx syntax;' >> {CONF}"], "does not validate"),
    ],
)
def test_nothing_is_recorded_from_an_unhealthy_or_invalid_service(
    one: tuple[LabHandle, str], state_dir: Path, breakage: list[str], reason: str
) -> None:
    lab, host = one
    lab.ssh(host, *breakage)
    (nginx,) = _entries(_baseline(state_dir, lab, host), "nginx")
    assert nginx["status"] == "skipped"
    assert reason in nginx["reason"]
    assert BaselineStore(state_dir).copies(host) == []
    # The host was only read.
    assert lab.is_active(host, "nginx") in ("active", "inactive")


def test_an_unknown_host_is_a_usage_error(lab: LabHandle, state_dir: Path) -> None:
    result = run_cli(state_dir, "baseline", "-i", str(lab.inventory), "--limit", "nope", "--json")
    assert result.rc == 2
    assert "not a host of the inventory" in json.loads(result.stdout)["error"]
