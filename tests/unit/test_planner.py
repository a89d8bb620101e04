from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES
from veris_remediate.alerts import parse_payload
from veris_remediate.baselines import BaselineCopy
from veris_remediate.exceptions import NoRuleError
from veris_remediate.fixes import FixCatalog, load_fixes
from veris_remediate.inventory import (
    FirewallPolicy,
    Inventory,
    InventoryHost,
    ServiceSpec,
    parse_inventory_listing,
)
from veris_remediate.planner import apply_step, build_plan, rollback_step
from veris_remediate.role_reports.service import UnitsSnapshot, UnitState
from veris_remediate.routing import Route, load_rules, route_alert
from veris_remediate.settings import Settings
from veris_remediate.targeting import resolve_target

RESTART = load_fixes().fixes["service_restart"]


def _inventory() -> Inventory:
    listing: dict[str, Any] = json.loads((FIXTURES / "inventory" / "lab.listing.json").read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


def _route(inventory: Inventory, payload: str = "alertmanager-nginx-down.json") -> Route:
    alert = parse_payload((FIXTURES / "payloads" / payload).read_bytes()).firing[0]
    return route_alert(alert, resolve_target(alert, inventory), inventory, load_rules(None))


def test_nginx_down_plans_preview_then_apply_of_the_same_playbook(tmp_path: Path) -> None:
    inv = _inventory()
    plan = build_plan(_route(inv), inv, Settings(state_dir=tmp_path, health_retries=7), "rid")
    assert plan.host == "lab1"
    assert plan.fix == RESTART
    assert plan.units == ("nginx.service",)
    assert plan.preview is not None
    assert plan.apply is not None
    assert plan.preview.check is True
    assert plan.apply.check is False
    assert plan.preview.playbook == plan.apply.playbook == "service_restart.yml"
    assert plan.diagnose is not None
    assert plan.diagnose.check is True  # diagnosis never changes anything
    v = plan.apply.extravars
    assert v["veris_service"]["unit"] == "nginx.service"
    assert v["veris_service"]["validate"] == "nginx -t -c %s"
    assert v["veris_health_retries"] == 7
    assert v["veris_alert_summary"] == "HTTP probe of http://lab1/ failing for 10s"
    assert v["veris_alert"]["name"] == "HttpProbeFailed"
    assert {"name": "service", "value": "nginx"} in v["veris_alert"]["labels"]
    # Every run sees what the host declares, whatever the family.
    assert [s["name"] for s in v["veris_host"]["services"]] == ["nginx", "redis-server"]
    assert v["veris_host"]["firewall"] == {"allow": [], "prune": True}
    assert v["veris_scope"]["units"] == ["nginx.service"]
    assert v["veris_scope"]["cache_dirs"] == ["/var/cache/nginx"]
    assert "veris_baseline" not in v  # only for fixes that require one


def test_dependencies_come_first(tmp_path: Path) -> None:
    base = _inventory()
    web = ServiceSpec(name="nginx", unit="nginx.service", port=80, depends_on=("php",))
    php = ServiceSpec(name="php", unit="php8.2-fpm.service")
    host = InventoryHost(
        name="lab1", address="198.18.1.2", groups=(), services={"nginx": web, "php": php}
    )
    inv = Inventory(sources=base.sources, hosts={**base.hosts, "lab1": host})
    plan = build_plan(_route(inv), inv, Settings(state_dir=tmp_path), "rid")
    assert plan.units == ("php8.2-fpm.service", "nginx.service")
    assert plan.apply is not None
    assert plan.apply.extravars["veris_units_in_order"] == ["php8.2-fpm.service", "nginx.service"]
    assert plan.scope.units == ("php8.2-fpm.service", "nginx.service")


def test_rollback_restores_only_units_the_plan_owns(tmp_path: Path) -> None:
    inv = _inventory()
    plan = build_plan(_route(inv), inv, Settings(state_dir=tmp_path), "rid")
    snapshot = UnitsSnapshot(
        kind="units.snapshot",
        units=(
            UnitState(unit="nginx.service", active_state="inactive", unit_file_state="enabled"),
            UnitState(unit="ssh.service", active_state="inactive", unit_file_state="enabled"),
        ),
        # The target's own Requires=, started if down but never declared: never restored.
        required=(
            UnitState(unit="redis-server.service", active_state="inactive", unit_file_state=""),
        ),
    )
    step = rollback_step(plan, snapshot)
    assert step.phase == "rollback"
    assert step.playbook == "service_restart_rollback.yml"
    # A unit is handed back with its three fields only (a container adds its own two).
    assert step.extravars["veris_snapshot"] == {
        "kind": "units.snapshot",
        "units": [
            {"unit": "nginx.service", "active_state": "inactive", "unit_file_state": "enabled"}
        ],
        "required": [],
    }


def test_apply_gets_the_check_runs_assessment(tmp_path: Path) -> None:
    from tests.unit.recorded import summary

    inv = _inventory()
    plan = build_plan(_route(inv), inv, Settings(state_dir=tmp_path), "rid")
    health = summary("resolved", "check").host("lab1").reports["health"]
    from veris_remediate.role_reports import Assessment

    assert isinstance(health, Assessment)
    step = apply_step(plan, health)
    assert step.check is False
    assert step.extravars["veris_assessment"]["healthy"] is False
    assert step.extravars["veris_assessment"]["unit"] == "nginx.service"


def test_a_plan_without_fix_cannot_roll_back(tmp_path: Path) -> None:
    inv = _inventory()
    route = _route(inv).model_copy(update={"fix": None})
    plan = build_plan(route, inv, Settings(state_dir=tmp_path), "rid")
    assert plan.preview is None
    assert plan.apply is None
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback_step(plan, UnitsSnapshot(kind="units.snapshot", units=()))


def _catalog(**changes: Any) -> FixCatalog:
    base = load_fixes()
    probe = RESTART.model_copy(update={"name": "probe", **changes})
    return FixCatalog(fixes={**base.fixes, "probe": probe})


def _copy(path: str, sha: str) -> BaselineCopy:
    return BaselineCopy(
        host="lab1", service="nginx", path=path, sha256=sha, size=1, mode="0644", owner="root",
        group="root", recorded_at="t", last_seen="t", run_id="r", src=f"/state/{sha}",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("requires", "host_change", "problem"),
    [
        (("firewall_policy",), {"firewall": None}, "does not declare veris_firewall"),
        (("cache_dirs",), {"services": {}}, "no cache_dirs are declared"),
        (("baseline",), {}, "no last-known-good copy"),
    ],
)
def test_unmet_requirements_escalate_with_the_reason(
    tmp_path: Path, requires: tuple[str, ...], host_change: dict[str, Any], problem: str
) -> None:
    inv = _inventory()
    host = inv.hosts["lab1"]
    if host_change.get("services") == {}:  # keep nginx, without its cache dir
        nginx = host.services["nginx"].model_copy(update={"cache_dirs": ()})
        host_change = {"services": {"nginx": nginx}}
    inv = inv.model_copy(
        update={"hosts": {**inv.hosts, "lab1": host.model_copy(update=host_change)}}
    )
    route = _route(inv).model_copy(update={"fix": "probe"})
    with pytest.raises(NoRuleError, match=problem) as caught:
        build_plan(
            route, inv, Settings(state_dir=tmp_path), "rid", catalog=_catalog(requires=requires)
        )
    assert "fix probe cannot run on lab1/nginx" in caught.value.message
    assert caught.value.exit_code == 4


def test_baseline_copies_reach_the_run_only_for_the_services_files(tmp_path: Path) -> None:
    inv = _inventory()
    route = _route(inv).model_copy(update={"fix": "probe"})
    copies = [_copy("/etc/nginx/nginx.conf", "a" * 64), _copy("/etc/other.conf", "b" * 64)]
    plan = build_plan(
        route, inv, Settings(state_dir=tmp_path), "rid",
        catalog=_catalog(requires=("service", "baseline")), baseline=copies,
    )  # fmt: skip
    assert plan.preview is not None
    assert [c["sha256"] for c in plan.preview.extravars["veris_baseline"]] == ["a" * 64]
    assert plan.scope.baseline_sha256 == ("a" * 64,)


def test_a_host_wide_plan_has_no_service_and_the_whole_hosts_scope(tmp_path: Path) -> None:
    inv = _inventory()
    route = _route(inv).model_copy(update={"fix": "probe", "service": None})
    plan = build_plan(
        route, inv, Settings(state_dir=tmp_path), "rid",
        catalog=_catalog(scope="host", requires=("firewall_policy",)),
    )  # fmt: skip
    assert plan.service is None
    assert plan.units == ()
    assert plan.diagnose is None  # the service diagnosis needs a service
    assert plan.scope.services == ("nginx", "redis-server")
    assert plan.scope.cache_dirs == ("/var/cache/nginx",)
    assert plan.preview is not None
    assert plan.preview.extravars["veris_service"] is None
    firewall = FirewallPolicy().model_dump(mode="json")
    assert plan.preview.extravars["veris_host"]["firewall"] == firewall
