from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES
from veris_remediate.alerts import parse_payload
from veris_remediate.inventory import Inventory, InventoryHost, ServiceSpec, parse_inventory_listing
from veris_remediate.planner import FIXES, build_plan, rollback_step
from veris_remediate.routing import Route, load_rules, route_alert
from veris_remediate.settings import Settings
from veris_remediate.targeting import resolve_target


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
    assert plan.fix == FIXES["service_restart"]
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


def test_rollback_restores_only_units_the_plan_owns(tmp_path: Path) -> None:
    inv = _inventory()
    plan = build_plan(_route(inv), inv, Settings(state_dir=tmp_path), "rid")
    snapshot = [
        {"unit": "nginx.service", "active_state": "inactive", "unit_file_state": "enabled"},
        {"unit": "ssh.service", "active_state": "inactive", "unit_file_state": "enabled"},
    ]
    step = rollback_step(plan, snapshot)
    assert step.phase == "rollback"
    assert step.playbook == "service_restart_rollback.yml"
    assert step.extravars["veris_prior_states"] == [snapshot[0]]


def test_a_plan_without_fix_cannot_roll_back(tmp_path: Path) -> None:
    inv = _inventory()
    route = _route(inv).model_copy(update={"fix": None})
    plan = build_plan(route, inv, Settings(state_dir=tmp_path), "rid")
    assert plan.preview is None
    assert plan.apply is None
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback_step(plan, [])
