"""A non-editable wheel carries roles/ and playbooks/ and works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import EXAMPLES, FIXTURES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_wheel_plans_from_elsewhere(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    wheel = next(wheels.glob("veris_remediate-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    assert (site / "veris_remediate" / "_ansible" / "roles" / "service_restart").is_dir()
    assert (site / "veris_remediate" / "_ansible" / "playbooks" / "service_restart.yml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import veris_remediate, sys; print(veris_remediate.__file__); "
            "from veris_remediate.cli import main; "
            "sys.argv[0] = 'veris-remediate'; main()",
            "--state-dir",
            str(tmp_path / "state"),
            "plan",
            str(EXAMPLES / "alertmanager-nginx-down.json"),
            "-i",
            str(FIXTURES / "inventory" / "lab.yml"),
            "--out",
            str(out),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(site))
    apply_dir = out / "0-lab1" / "apply"
    assert (apply_dir / "service_restart.yml").is_file()
    extravars = (apply_dir / "extravars.yml").read_text()
    assert "!unsafe" in extravars
    inv = yaml.safe_load((apply_dir / "target_inventory.yml").read_text())
    assert inv["all"]["children"]["veris_targets"]["hosts"] == {"lab1": None}
