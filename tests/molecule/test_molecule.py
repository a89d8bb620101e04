"""Run each role's molecule scenarios against lab hosts; a scenario passes only on exit 0.

Molecule's summary can say "Successful" after a failed idempotence step, so the exit
code is the only verdict. Needs root and the lab (systemd-nspawn, debootstrap).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
SCENARIOS = sorted(
    (path.parents[2].name, path.parent.name) for path in ROLES.glob("*/molecule/*/molecule.yml")
)


def test_every_role_has_scenarios() -> None:
    roles = {role for role, _ in SCENARIOS}
    assert {path.name for path in ROLES.iterdir() if path.is_dir()} == roles
    fix_roles = {p.parents[1].name for p in ROLES.glob("*/meta/veris_fix.yml")}
    assert {"service_restart", "ufw_harden", "cache_clear", "config_repair"} <= fix_roles
    for role in fix_roles:  # every fix family proves its rollback entry point
        assert (role, "default") in SCENARIOS
        assert (role, "rollback") in SCENARIOS


@pytest.mark.molecule
@pytest.mark.parametrize(("role", "scenario"), SCENARIOS, ids=[f"{r}-{s}" for r, s in SCENARIOS])
def test_molecule_scenario(role: str, scenario: str, tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        # molecule calls ansible-config and ansible-playbook from PATH
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VERIS_PYTHON": sys.executable,
        "MOLECULE_LAB_STATE": str(tmp_path / "lab-state"),
        "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "ephemeral"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }
    proc = subprocess.run(
        [str(Path(bindir) / "molecule"), "test", "--scenario-name", scenario],
        cwd=ROLES / role,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = tmp_path / "molecule.log"
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (
        f"molecule test -s {scenario} in roles/{role} exited {proc.returncode}; "
        f"last output:\n{(proc.stdout + proc.stderr)[-6000:]}"
    )
