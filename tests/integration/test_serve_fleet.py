"""``serve`` runs the incidents of one alert on several hosts as one fleet: one webhook naming
nginx down on three lab hosts makes one run, with one check run and one apply run for all.

Three hosts of their own (sf1..sf3 on 198.18.142-144.x; a second xdist worker sfb1..sfb3 on
145-147; VERIS_TEST_SERVE_FLEET_LAB_PREFIX/_SUBNET override them), booted for this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import nginx_down_group, run_cli
from tests.integration.conftest import Estate, LabHandle, own_lab
from tests.serving import ServeProcess

pytestmark = pytest.mark.integration

TOKEN = "serve-fleet-test-token-0123456789abcdef"


def test_two_receivers_claim_disjoint_fleets_in_per_host_order(estate: Estate) -> None:
    """``claim_fleet``'s SQL on both databases, from two receivers' connections."""
    a, b = estate.open(), estate.open()
    rows = [
        ("HttpProbeFailed", "h1"), ("HttpProbeFailed", "h2"), ("DiskFull", "h3"),
        ("HttpProbeFailed", "h3"), ("HttpProbeFailedSoon", "h4"), ("HttpProbeFailed", "h5"),
        ("HttpProbeFailed", "h6"), ("HttpProbeFailed", "h1"),
    ]  # fmt: skip
    for n, (name, host) in enumerate(rows):
        key = f"{name}|fp{n}|2026-11-29T12:00:00+00:00"
        assert a.enqueue(key, f"fp{n}", host, b"{}", limit=100) == "queued"
    ids = [e.id for e in a.queue_entries()]
    # h3's HttpProbeFailed waits behind its DiskFull; another alert name is never taken.
    assert [e.id for e in a.claim_fleet(3)] == [ids[0], ids[1], ids[5]]
    # The other receiver: h1, h2, h5 are running; the oldest claimable row leads.
    assert [e.id for e in b.claim_fleet(3)] == [ids[2]]
    assert [e.id for e in b.claim_fleet(3)] == [ids[4]]
    assert [e.id for e in b.claim_fleet(3)] == [ids[6]]
    assert b.claim_fleet(3) == []
    assert {e.id for e in a.queue_entries("queued")} == {ids[3], ids[7]}


@pytest.fixture(scope="module")
def serve_fleet_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
    yield from own_lab(tmp_path_factory, 3, "SERVE_FLEET_LAB", "sf", 142)


def test_one_webhook_for_three_hosts_is_one_fleet_run(
    serve_fleet_lab: LabHandle, state_dir: Path
) -> None:
    lab = serve_fleet_lab
    hosts = [lab.name(i) for i in (1, 2, 3)]
    for h in hosts:
        lab.ssh(h, "systemctl", "stop", "nginx")
    try:
        env = {"VERIS_MAX_HOSTS": "3", "VERIS_SERVE_FLEET": "true"}
        with ServeProcess(state_dir, lab.inventory, token=TOKEN, env=env) as serve:
            status, answer = serve.post(nginx_down_group(hosts).encode())
            assert status == 202, answer
            assert len(answer["queued"]) == 3, answer
            serve.wait_for_entry(
                lambda _: all(e.status == "done" for e in serve.entries()),
                timeout=300,
                what="all three done",
            )
            entries = serve.entries()
            log = serve.log()
        assert sorted(str(e.host) for e in entries) == sorted(hosts)
        assert [e.outcome for e in entries] == ["resolved"] * 3, [
            (e.host, e.outcome, e.error) for e in entries
        ]
        for h in hosts:
            assert lab.is_active(h, "nginx") == "active"

        # One run covers the three rows: one check run and one apply run, as a fleet.
        run_ids = {e.run_id for e in entries}
        assert len(run_ids) == 1, run_ids
        (run_id,) = run_ids
        assert run_id is not None
        run_dir = state_dir / "runs" / run_id
        runs = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.glob("*/*/artifacts"))
        assert runs == ["fleet-0/apply", "fleet-0/check"], runs
        assert "as one fleet" in log

        # Each row finished on its own: one serve.finished record per row, this run's.
        finished = [r for r in serve.audited("serve.finished") if r["run_id"] == run_id]
        assert sorted(r["data"]["host"] for r in finished) == sorted(hosts)
        assert {r["data"]["outcome"] for r in finished} == {"resolved"}
        applied = [r["data"]["hosts"] for r in serve.audited("run.apply")]
        assert sorted(applied) == sorted([h] for h in hosts)
        assert run_cli(state_dir, "audit", "verify").rc == 0
    finally:
        for h in hosts:
            lab.ssh(h, "systemctl", "start", "nginx", check=False)
