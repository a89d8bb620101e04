"""Fleets with recorded real event streams: each host replays its own recorded scenario."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import EXAMPLES, FIXTURES
from tests.unit.recorded import EVENTS, SAME_RUN, events, hold_lease
from veris_remediate.audit import AuditLog
from veris_remediate.events import EventFolder, HostSummary, RunSummary
from veris_remediate.exceptions import UsageError
from veris_remediate.fleet import batches
from veris_remediate.inventory import Inventory, parse_inventory_listing
from veris_remediate.pipeline import Remediator
from veris_remediate.render import render_target_inventory
from veris_remediate.routing import Route
from veris_remediate.runner import RunRequest, RunResult
from veris_remediate.settings import Settings
from veris_remediate.store import StateStore
from veris_remediate.workspace import Workspace, render_fleet_inventory


class _Loader(yaml.SafeLoader):
    """Reads our target inventories: ``!unsafe`` marks data, which is all we need here."""


_Loader.add_constructor(
    "!unsafe",
    lambda loader, node: loader.construct_mapping(node, deep=True),  # type: ignore[arg-type]
)


def _host_vars(request: RunRequest) -> dict[str, Any]:
    """Each host the run targets, with the host vars the target inventory gives it."""
    data = yaml.load(request.inventories[-1].read_text(), Loader=_Loader)
    hosts: dict[str, Any] = data["all"]["children"]["veris_targets"]["hosts"]
    return {h: v or {} for h, v in hosts.items()}


def _extra_vars(request: RunRequest) -> dict[str, Any]:
    path = request.private_data_dir / "env" / "extravars"
    return yaml.load(path.read_text(), Loader=_Loader) if path.exists() else {}


def _targets(request: RunRequest) -> dict[str, Any]:
    """Each host the run targets, with the variables Ansible gives it: its host vars under
    the run's extra vars (which outrank them; no key may be in both)."""
    extra = _extra_vars(request)
    hosts = _host_vars(request)
    for host, own in hosts.items():
        assert not set(own) & set(extra), f"{host}: {sorted(set(own) & set(extra))} in both"
    return {h: {**own, **extra} for h, own in hosts.items()}


def _renamed(
    stream: Iterator[dict[str, Any]], recorded: str, host: str
) -> Iterator[dict[str, Any]]:
    for recorded_event in stream:
        event = copy.deepcopy(recorded_event)
        data = event.get("event_data", {})
        if data.get("host") == recorded:
            data["host"] = host
        if event.get("event") == "playbook_on_stats":
            for value in list(data.values()):
                if isinstance(value, dict) and recorded in value:
                    value[host] = value.pop(recorded)
        yield event


class FleetExecutor:
    """One run over several hosts: each host replays the scenario recorded for it."""

    def __init__(self, scenarios: Mapping[str, str]) -> None:
        self.scenarios = dict(scenarios)
        self.requests: list[tuple[RunRequest, dict[str, Any]]] = []

    def run(self, request: RunRequest) -> RunResult:
        targets = _targets(request)
        self.requests.append((request, targets))
        stem = SAME_RUN.get(request.phase, request.phase)
        hosts: dict[str, HostSummary] = {}
        completed, statuses = True, []
        for host in targets:
            scenario = self.scenarios[host]
            recorded = (EVENTS / scenario / "host").read_text().strip()
            folder = EventFolder(check=request.check)
            for event in _renamed(events(scenario, stem), recorded, host):
                folder(event)
            summary = folder.summary()
            hosts[host] = summary.host(host)
            completed = completed and summary.completed
            statuses.append((EVENTS / scenario / f"{stem}.status").read_text().strip())
        status = "successful" if all(s == "successful" for s in statuses) else "failed"
        return RunResult(
            phase=request.phase,
            status=status,
            rc=0 if status == "successful" else 2,
            seconds=0.0,
            summary=RunSummary(check=request.check, hosts=hosts, completed=completed),
        )


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def _group(*hosts: str, summaries: Mapping[str, str] | None = None) -> bytes:
    """The example nginx alert, once per host, in one Alertmanager group."""
    base = json.loads((EXAMPLES / "alertmanager-nginx-down.json").read_text())
    one = base["alerts"][0]
    alerts = []
    for i, host in enumerate(hosts):
        alert = copy.deepcopy(one)
        alert["labels"]["instance"] = f"http://{host}/"
        alert["fingerprint"] = f"{i:016x}"
        if summaries and host in summaries:
            alert["annotations"]["summary"] = summaries[host]
        alerts.append(alert)
    return json.dumps({**base, "alerts": alerts}).encode()


def test_one_check_one_apply_and_a_rollback_of_the_failed_host_alone(tmp_path: Path) -> None:
    executor = FleetExecutor({"lab1": "resolved", "lab2": "rolled_back"})
    remediator = Remediator(_inventory(), Settings(state_dir=tmp_path), executor=executor)
    hostile = "{{ lookup('pipe', 'id') }}"
    report = remediator.handle(_group("lab1", "lab2", summaries={"lab2": hostile}))

    ran = [(r.phase, sorted(t)) for r, t in executor.requests]
    assert ran == [
        ("check", ["lab1", "lab2"]),
        ("apply", ["lab1", "lab2"]),
        ("rollback", ["lab2"]),
    ]
    by_host = {r.host: r for r in report.remediations}
    assert by_host["lab1"].outcome == "resolved"
    assert by_host["lab2"].outcome == "rolled_back"
    assert by_host["lab2"].rolled_back is True
    assert [p.name for p in by_host["lab1"].phases] == [
        "plan", "check", "decide", "apply", "verify",
    ]  # fmt: skip
    assert "rollback" in [p.name for p in by_host["lab2"].phases]
    assert report.exit_code == 5
    # Each host's own data, as host vars; the alert text stays text; its own files dir.
    request, targets = executor.requests[0]
    run_dir = tmp_path / "runs" / report.run_id
    for i, host in enumerate(("lab1", "lab2")):
        assert targets[host]["veris_host"]["name"] == host
        assert targets[host]["veris_service"]["name"] == "nginx"
        assert targets[host]["veris_controller_dir"] == str(run_dir / f"{i}-{host}" / "files")
    assert targets["lab2"]["veris_alert_summary"] == hostile
    # What the hosts share stays an extra var, as in a single-host run; what differs is a
    # host var of each.
    shared, own = _extra_vars(request), _host_vars(request)
    assert "veris_service" in shared
    assert {"veris_host", "veris_controller_dir"} <= set(own["lab1"]) & set(own["lab2"])
    assert "veris_alert_summary" in own["lab2"]
    envvars = json.loads((request.private_data_dir / "env" / "envvars").read_text())
    assert envvars == {"ANSIBLE_FORKS": "2"}
    apply_targets = executor.requests[1][1]
    assert "veris_assessment" in apply_targets["lab1"]
    assert "veris_snapshot" in executor.requests[2][1]["lab2"]
    # Per host: snapshot, history, audit records.
    for i, host in enumerate(("lab1", "lab2")):
        assert json.loads((run_dir / f"{i}-{host}" / "snapshot.json").read_text())["host"] == host
    store = StateStore(tmp_path)
    assert [e.outcome for e in store.history(host="lab1", fix="service_restart")] == ["resolved"]
    assert [e.outcome for e in store.history(host="lab2", fix="service_restart")] == ["rolled_back"]
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    kinds = [(e["kind"], str(e["data"].get("hosts", e["data"].get("host")))) for e in audit]
    assert ("run.rollback", "['lab2']") in kinds
    assert ("run.rollback", "['lab1']") not in kinds
    assert {("decision", "lab1"), ("decision", "lab2")} <= set(kinds)
    assert AuditLog(tmp_path / "audit.jsonl").verify().ok
    assert store.journal() == []  # every host's journal entry closed


def test_a_busy_host_defers_and_the_other_runs_alone(tmp_path: Path) -> None:
    executor = FleetExecutor({"lab1": "resolved", "lab2": "resolved"})
    remediator = Remediator(_inventory(), Settings(state_dir=tmp_path), executor=executor)
    hold_lease(tmp_path, "lab2")
    report = remediator.handle(_group("lab1", "lab2"))
    by_host = {r.host: r.outcome for r in report.remediations}
    assert by_host == {"lab1": "resolved", "lab2": "deferred"}
    assert [(r.phase, sorted(t)) for r, t in executor.requests] == [
        ("check", ["lab1"]),
        ("apply", ["lab1"]),
    ]


def test_check_only_is_never_batched(tmp_path: Path) -> None:
    executor = FleetExecutor({"lab1": "resolved", "lab2": "resolved"})
    remediator = Remediator(_inventory(), Settings(state_dir=tmp_path), executor=executor)
    report = remediator.handle(_group("lab1", "lab2"), check_only=True)
    assert {r.outcome for r in report.remediations} == {"previewed"}
    assert [(r.phase, sorted(t)) for r, t in executor.requests] == [
        ("check", ["lab1"]),
        ("check", ["lab2"]),
    ]


def test_the_blast_radius_cap_holds_before_anything_runs(tmp_path: Path) -> None:
    executor = FleetExecutor({"lab1": "resolved", "lab2": "resolved"})
    settings = Settings(state_dir=tmp_path, max_hosts=1)
    report = Remediator(_inventory(), settings, executor=executor).handle(_group("lab1", "lab2"))
    assert {r.outcome for r in report.remediations} == {"escalated"}
    assert executor.requests == []


def _route(host: str, fix: str | None = "service_restart", **params: Any) -> Route:
    remediator = Remediator(_inventory(), Settings(state_dir=Path("/nonexistent")))
    payload = _group(host)
    from veris_remediate.alerts import parse_payload
    from veris_remediate.routing import route_alert
    from veris_remediate.targeting import resolve_target

    alert = parse_payload(payload).firing[0]
    route = route_alert(
        alert, resolve_target(alert, remediator.inventory), remediator.inventory,
        remediator.rules, remediator.fixes,
    )  # fmt: skip
    return route.model_copy(update={"fix": fix, "fix_params": params})


def test_batches_group_one_fix_with_the_same_params_one_host_each() -> None:
    a1, a2 = _route("lab1"), _route("lab2")
    other = _route("lab2", fix="service_restart", service_restart_force=True)
    again = _route("lab1")
    none = _route("lab1", fix=None)
    slots = [("0-lab1", a1), ("1-lab2", a2), ("2-lab2", other), ("3-lab1", again),
             ("4-lab1", none)]  # fmt: skip
    groups = [[slot for slot, _ in group] for group in batches(slots)]
    # Other params: a fleet of its own; lab1 again: not in the fleet that has lab1 already.
    assert groups == [["0-lab1", "1-lab2"], ["2-lab2"], ["3-lab1"], ["4-lab1"]]


def test_fleet_inventory_keeps_every_value_inert_text() -> None:
    text = render_fleet_inventory({
        "ft1": {"veris_service": {"name": "nginx", "port": 80, "x": "{{ 7 * 6 }}"}},
        "ft2": {"veris_alert_summary": "yes", "n": "0123", "multi": "a\nb: c"},
    })  # fmt: skip
    assert '"ft1": !unsafe' in text
    assert '"ft2": !unsafe' in text
    hosts = yaml.load(text, Loader=_Loader)["all"]["children"]["veris_targets"]["hosts"]
    assert hosts["ft1"]["veris_service"] == {"name": "nginx", "port": 80, "x": "{{ 7 * 6 }}"}
    assert hosts["ft2"] == {"veris_alert_summary": "yes", "n": "0123", "multi": "a\nb: c"}
    # Without any per-host vars it is the single path's one-group inventory.
    assert yaml.safe_load(render_target_inventory("ft1")) == {
        "all": {"children": {"veris_targets": {"hosts": {"ft1": None}}}}
    }


@pytest.mark.parametrize("name", ["../x", "a/b", "", "-x", "a b"])
def test_fleet_inventory_refuses_odd_host_names(name: str) -> None:
    with pytest.raises(UsageError):
        render_fleet_inventory({name: {"veris_run_id": "r"}})


def test_prepare_fleet_step_masks_alert_secrets_and_sets_forks(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run_id = ws.new_run_id()
    alert = {"name": "X", "labels": [{"name": "token", "value": "password=hunter2"}]}
    prepared = ws.prepare_fleet_step(
        run_id, "fleet-0", "check", True,
        {"lab1": ("0-lab1", {"veris_alert": alert}), "lab2": ("1-lab2", {"veris_run_id": run_id})},
        idle_timeout=60,
    )  # fmt: skip
    text = prepared.target_inventory.read_text()
    assert "hunter2" not in text
    env = json.loads((prepared.private_data_dir / "env" / "envvars").read_text())
    assert env == {"ANSIBLE_FORKS": "2"}
    assert (tmp_path / "runs" / run_id / "1-lab2" / "files").is_dir()
    assert oct(prepared.target_inventory.stat().st_mode & 0o777) == "0o600"
