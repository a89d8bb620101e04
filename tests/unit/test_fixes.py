"""fixes: every installed spec is sound; a broken spec is refused with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from veris_remediate.exceptions import FixSpecError
from veris_remediate.fixes import load_fixes, load_spec
from veris_remediate.resources import playbooks_dir, roles_dir
from veris_remediate.role_reports import (
    Assessment,
    Restoration,
    Snapshot,
    Verification,
    known_kinds,
    report_kind,
    report_model,
)
from veris_remediate.role_reports.service import ServiceHealth

SPEC: dict[str, Any] = {
    "name": "probe",
    "summary": "a test fix",
    "scope": "service",
    "risk": "low",
    "reversible": True,
    "expected_changes": ["ansible.builtin.systemd_service"],
    "snapshot": "unit states",
    "playbook": "service_restart.yml",
    "rollback_playbook": "service_restart_rollback.yml",
    "reports": {
        "assess": "health",
        "verify": "verify",
        "snapshot": "units.snapshot",
        "rollback": "units.rollback",
    },
    "params": ["retries"],
    "requires": ["service"],
    "blockers": {"config_invalid": "config broken"},
}
ARGUMENT_SPECS: dict[str, Any] = {
    "argument_specs": {
        "main": {"options": {"probe_retries": {"type": "int", "description": "how often"}}},
        "rollback": {"options": {}},
    }
}


def _role(tmp_path: Path, spec: dict[str, Any], specs: dict[str, Any] | None = None) -> Path:
    role = tmp_path / "probe"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "veris_fix.yml").write_text(yaml.safe_dump(spec))
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(specs or ARGUMENT_SPECS))
    return role


def test_a_sound_spec_loads_with_typed_params(tmp_path: Path) -> None:
    spec = load_spec(_role(tmp_path, SPEC))
    assert (spec.name, spec.role, spec.scope, spec.risk) == ("probe", "probe", "service", "low")
    assert spec.params["retries"].role_var == "probe_retries"
    assert spec.params["retries"].type == "int"
    assert spec.params["retries"].description == "how often"
    assert spec.role_params({"retries": 2}, "rule r") == {"probe_retries": 2}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"name": "Bad-Name"}, "fix name"),
        ({"expected_changes": []}, "expected_changes is empty"),
        ({"reversible": False}, "rollback_playbook is needed exactly when reversible"),
        ({"rollback_playbook": None}, "rollback_playbook is needed exactly when reversible"),
        ({"playbook": "nope.yml"}, "playbook nope.yml is not in"),
        ({"reports": {**SPEC["reports"], "assess": "nope"}}, "has no model"),
        ({"reports": {**SPEC["reports"], "assess": "units.snapshot"}}, "is not a Assessment"),
        ({"reports": {**SPEC["reports"], "rollback": "health"}}, "is not a Restoration"),
        ({"reports": {**SPEC["reports"], "snapshot": None}}, "needs snapshot and rollback"),
        ({"params": ["colour"]}, "needs option probe_colour"),
        ({"requires": ["root_shell"]}, "requires"),
        ({"scope": "fleet"}, "scope"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_broken_spec_is_refused_with_the_reason(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(FixSpecError, match=r"veris_fix\.yml") as caught:
        load_spec(_role(tmp_path, {**SPEC, **change}))
    assert problem in caught.value.message
    assert caught.value.exit_code == 2


def test_params_must_be_scalars_and_entry_points_complete(tmp_path: Path) -> None:
    listy = {"argument_specs": {"main": {"options": {"probe_retries": {"type": "list"}}},
                                "rollback": {"options": {}}}}  # fmt: skip
    with pytest.raises(FixSpecError, match="params must be str, int or bool"):
        load_spec(_role(tmp_path / "a", SPEC, listy))
    no_rollback = {"argument_specs": {"main": ARGUMENT_SPECS["argument_specs"]["main"]}}
    with pytest.raises(FixSpecError, match="lacks entry point rollback"):
        load_spec(_role(tmp_path / "b", SPEC, no_rollback))


def test_every_installed_fix_is_whole() -> None:
    catalog = load_fixes()
    assert "service_restart" in catalog.fixes
    for spec in catalog.fixes.values():
        role = roles_dir() / spec.role
        assert (playbooks_dir() / spec.playbook).is_file()
        assert (role / "defaults" / "main.yml").is_file(), spec.name
        scenarios = {p.parent.name for p in role.glob("molecule/*/molecule.yml")}
        assert {"default", "rollback"} <= scenarios, spec.name
        assert isinstance(report_model(spec.reports.assess), type)
        assert issubclass(report_model(spec.reports.assess) or object, Assessment)
        assert issubclass(report_model(spec.reports.verify) or object, Verification)
        if spec.reversible:
            assert issubclass(report_model(spec.reports.snapshot or "") or object, Snapshot)
            assert issubclass(report_model(spec.reports.rollback or "") or object, Restoration)
    assert load_fixes() is catalog  # read once


def test_a_report_kind_has_one_model() -> None:
    assert {"health", "verify", "units.snapshot", "units.rollback", "baseline"} <= known_kinds()
    assert report_model("health") is ServiceHealth
    with pytest.raises(ValueError, match="registered twice"):
        report_kind("health")(type("Other", (Assessment,), {}))
