"""Fleets against real lab hosts: one payload, three hosts, one check run and one apply run.

Three hosts of their own (fu1..fu3 on 198.18.135-137.x; a second xdist worker fub1..fub3
on 138-140; VERIS_TEST_FLEET_LAB_PREFIX/_SUBNET override them), booted for this module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import nginx_down_group, run_cli
from tests.integration.conftest import LabHandle, own_lab
from veris_remediate.store import StateStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
    yield from own_lab(tmp_path_factory, 3, "FLEET_LAB", "fu", 135)


def _audit(state_dir: Path, run_id: str) -> list[dict[str, Any]]:
    lines = (state_dir / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("run_id") == run_id]


def test_one_check_run_one_apply_run_and_only_the_failed_host_rolled_back(
    fleet: LabHandle, state_dir: Path
) -> None:
    h1, h2, h3 = (fleet.name(i) for i in (1, 2, 3))
    for h in (h1, h2, h3):
        fleet.ssh(h, "systemctl", "stop", "nginx")
    # h3's nginx starts but answers 403 (docroot unreadable): its verify fails.
    fleet.ssh(h3, "chmod", "000", "/var/www/html")
    # Alert text that would run a command on the controller if Ansible templated it.
    marker = Path(f"/tmp/veris-fleet-{uuid.uuid4().hex}")  # never created
    hostile = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    try:
        result = run_cli(
            state_dir, "handle", "-", "-i", str(fleet.inventory), "--json",
            stdin=nginx_down_group([h1, h2, h3], {h2: hostile}),
        )  # fmt: skip
        report = result.json
        assert result.rc == 5, (result.stdout, result.stderr)
        by_host = {r["host"]: r for r in report["remediations"]}
        assert set(by_host) == {h1, h2, h3}
        for h in (h1, h2):
            assert by_host[h]["outcome"] == "resolved", by_host[h]["reasons"]
            assert by_host[h]["rolled_back"] is False
            assert [p["name"] for p in by_host[h]["phases"]] == [
                "plan", "check", "decide", "apply", "verify",
            ]  # fmt: skip
            assert fleet.is_active(h, "nginx") == "active"
        assert by_host[h3]["outcome"] == "rolled_back", by_host[h3]["reasons"]
        assert by_host[h3]["rolled_back"] is True
        assert "rollback" in [p["name"] for p in by_host[h3]["phases"]]
        assert any("HTTP probe failing (403)" in r for r in by_host[h3]["reasons"])
        assert fleet.is_active(h3, "nginx") == "inactive"  # as it was before the fix
        assert not marker.exists()

        # One check run and one apply run for all three; one rollback run for h3 alone.
        run_dir = state_dir / "runs" / report["run_id"]
        runs = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.glob("*/*/artifacts"))
        assert runs == ["fleet-0/apply", "fleet-0/check", "fleet-0/rollback"], runs
        inventories = {
            phase: (run_dir / "fleet-0" / phase / "target_inventory.yml").read_text()
            for phase in ("check", "apply", "rollback")
        }
        for phase in ("check", "apply"):
            assert all(f'"{h}": !unsafe' in inventories[phase] for h in (h1, h2, h3))
        assert f'"{h3}": !unsafe' in inventories["rollback"]
        assert h1 not in inventories["rollback"]
        assert h2 not in inventories["rollback"]
        # Each host keeps its own snapshot in its own slot, as a single remediation does.
        for i, h in enumerate((h1, h2, h3)):
            saved = json.loads((run_dir / f"{i}-{h}" / "snapshot.json").read_text())
            assert saved["host"] == h

        # Per-host audit records, history and breaker accounting.
        audit = _audit(state_dir, report["run_id"])
        decisions = [e["data"]["host"] for e in audit if e["kind"] == "decision"]
        assert sorted(decisions) == sorted([h1, h2, h3])
        applied = [e["data"]["hosts"] for e in audit if e["kind"] == "run.apply"]
        assert sorted(applied) == sorted([[h1], [h2], [h3]])
        assert [e["data"]["hosts"] for e in audit if e["kind"] == "run.rollback"] == [[h3]]
        store = StateStore(state_dir)
        for h, outcome in ((h1, "resolved"), (h2, "resolved"), (h3, "rolled_back")):
            assert [e.outcome for e in store.history(host=h, fix="service_restart")] == [outcome]
        assert run_cli(state_dir, "audit", "verify").rc == 0
    finally:
        fleet.ssh(h3, "chmod", "755", "/var/www/html")
        for h in (h1, h2, h3):
            fleet.ssh(h, "systemctl", "start", "nginx", check=False)


def test_a_busy_host_defers_alone(fleet: LabHandle, state_dir: Path) -> None:
    """Another process holds h2's lease: h1 and h3 are still fixed, in one run."""
    from tests.unit.recorded import hold_lease

    h1, h2, h3 = (fleet.name(i) for i in (1, 2, 3))
    for h in (h1, h2, h3):
        fleet.ssh(h, "systemctl", "stop", "nginx")
    hold_lease(state_dir, h2)
    try:
        result = run_cli(
            state_dir, "handle", "-", "-i", str(fleet.inventory), "--json",
            stdin=nginx_down_group([h1, h2, h3], {}),
        )  # fmt: skip
        by_host = {r["host"]: r for r in result.json["remediations"]}
        assert by_host[h2]["outcome"] == "deferred"
        assert by_host[h1]["outcome"] == by_host[h3]["outcome"] == "resolved"
        assert fleet.is_active(h2, "nginx") == "inactive"
        run_dir = state_dir / "runs" / result.json["run_id"]
        check = (run_dir / "fleet-0" / "check" / "target_inventory.yml").read_text()
        assert h2 not in check
        assert h1 in check
        assert h3 in check
    finally:
        for h in (h1, h2, h3):
            fleet.ssh(h, "systemctl", "start", "nginx", check=False)
