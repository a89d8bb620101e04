"""Run each role's molecule scenarios against lab hosts; a scenario passes only on exit 0.

Molecule's summary can say "Successful" after a failed idempotence step, so the exit
code is the only verdict. Needs root and the lab (systemd-nspawn, debootstrap).

The scenarios share lab hosts (labs.py): one per feature set, reset to a fresh boot
before each scenario, passed to molecule as MOLECULE_LAB_INVENTORY; molecule runs with
``--destroy=never``. create.yml and destroy.yml still boot and remove a host of their
own when no shared one is given (`molecule test -s X` in a role's directory):
test_standalone_create_and_destroy keeps that path honest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from .labs import (
    DEFAULT_BASE,
    DEFAULT_SUBNET,
    SLOTS,
    STANDALONE,
    WORKER_LETTERS,
    SharedHosts,
    slot_name,
)

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


def test_lab_down_removes_every_molecule_lab() -> None:
    """`make lab-down` (run whatever happens after `make test`) knows every name we boot."""
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(ROOT), "lab-down"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    loop = re.search(r"for p in ([a-z ]+); do", dry_run.stdout)
    assert loop is not None, dry_run.stdout
    listed = set(loop[1].split())
    for worker in [None, *(f"gw{i}" for i in range(len(WORKER_LETTERS)))]:
        for slot in SLOTS:
            prefix, _ = slot_name(DEFAULT_BASE, DEFAULT_SUBNET, worker, slot)
            assert prefix in listed, f"the Makefile's LAB_PREFIXES lacks {prefix}"


def _features(role: str, scenario: str) -> tuple[str, ...]:
    config = yaml.safe_load((ROLES / role / "molecule" / scenario / "molecule.yml").read_text())
    features = str(config.get("ansible", {}).get("env", {}).get("MOLECULE_LAB_FEATURES", ""))
    return tuple(sorted(f.strip() for f in features.split(",") if f.strip()))


def _env(tmp_path: Path, control_dir: str, **extra: str) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        # molecule calls ansible-config and ansible-playbook from PATH
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VERIS_PYTHON": sys.executable,
        "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "ephemeral"),
        # SSH masters of this scenario only: a shared host's address outlives its reset.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        **extra,
    }


def _molecule(role: str, env: dict[str, str], log: Path, *args: str) -> None:
    molecule = Path(sys.executable).parent / "molecule"
    proc = subprocess.run(
        [str(molecule), *args], cwd=ROLES / role, env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (
        f"molecule {' '.join(args)} in roles/{role} exited {proc.returncode}; "
        f"last output:\n{(proc.stdout + proc.stderr)[-6000:]}"
    )


@pytest.mark.molecule
@pytest.mark.parametrize(("role", "scenario"), SCENARIOS, ids=[f"{r}-{s}" for r, s in SCENARIOS])
def test_molecule_scenario(
    role: str, scenario: str, tmp_path: Path, molecule_hosts: SharedHosts
) -> None:
    inventory = molecule_hosts.clean_host(_features(role, scenario))
    with tempfile.TemporaryDirectory(prefix="mol-cp-") as control_dir:  # short: socket paths
        env = _env(tmp_path, control_dir, MOLECULE_LAB_INVENTORY=str(inventory))
        _molecule(role, env, tmp_path / "molecule.log",
                  "test", "--scenario-name", scenario, "--destroy=never")  # fmt: skip


@pytest.mark.molecule
def test_standalone_create_and_destroy(tmp_path: Path, molecule_hosts: SharedHosts) -> None:
    """Without a shared host, create.yml boots one of its own and destroy.yml removes it."""
    state = tmp_path / "lab-state"
    lab = molecule_hosts.lab(STANDALONE, state)  # its own name: never a shared host's
    with tempfile.TemporaryDirectory(prefix="mol-cp-") as control_dir:
        env = _env(
            tmp_path, control_dir, MOLECULE_LAB_STATE=str(state),
            MOLECULE_LAB_PREFIX=lab.prefix, MOLECULE_LAB_SUBNET=str(lab.first_subnet),
        )  # fmt: skip
        for name in ("MOLECULE_LAB_INVENTORY", "MOLECULE_LAB_FEATURES"):
            env.pop(name, None)
        link = tmp_path / "ephemeral" / "lab-inventory.yml"
        try:
            _molecule("config_baseline", env, tmp_path / "create.log", "create")
            assert link.resolve() == lab.inventory_path()
            hosts = lab.status()
            assert [(h.name, h.running, h.ready) for h in hosts] == [(f"{lab.prefix}1", True, True)]
            _molecule("config_baseline", env, tmp_path / "destroy.log", "destroy")
            assert lab.status() == []
            assert not link.exists()
            assert not Path(f"/run/netns/veris-{lab.prefix}1").exists()
        finally:
            lab.down()
