"""Lab hosts for integration tests: booted once per session, removed whatever happens.

A test that needs a lab host and cannot get one fails; it never skips.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from veris_remediate.exceptions import LabError
from veris_remediate.lab import Lab, require_root_and_tools


class LabHandle:
    def __init__(self, lab: Lab, inventory: Path) -> None:
        self.lab = lab
        self.inventory = inventory

    def name(self, index: int) -> str:
        """Host ``index`` (1-based) of this lab: lab1, or fw1 under another prefix."""
        return f"{self.lab.prefix}{index}"

    def address(self, index: int) -> str:
        return f"198.18.{self.lab.first_subnet + index - 1}.2"

    def ssh(self, host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # ssh joins its arguments with spaces for the remote shell: quote them as one string.
        return subprocess.run(
            [*self.lab.ssh_argv(host), shlex.join(argv)],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def is_active(self, host: str, unit: str) -> str:
        return self.ssh(host, "systemctl", "is-active", unit, check=False).stdout.strip()

    def prop(self, host: str, unit: str, name: str) -> str:
        out = self.ssh(host, "systemctl", "show", unit, f"--property={name}", "--value")
        return out.stdout.strip()

    def reset(self, host: str) -> None:
        # As long as `up` waits: under pytest-xdist the other worker keeps the CPUs busy.
        self.lab.reset_host(host, timeout=120)


def _require_lab() -> None:
    try:
        require_root_and_tools()
    except LabError as exc:
        pytest.fail(f"integration tests need lab hosts: {exc.message}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
    _require_lab()
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    state = tmp_path_factory.mktemp("lab-state")
    # Hosts lab1, lab2 on 198.18.1-2.x; concurrent test runs on one machine need their own
    # (the alert fixtures name lab1/lab2, so tests that use them need the default prefix).
    prefix = os.environ.get("VERIS_TEST_LAB_PREFIX", "lab")
    subnet = int(os.environ.get("VERIS_TEST_LAB_SUBNET", "1"))
    the_lab = Lab(state, cache, prefix=prefix, first_subnet=subnet)
    try:
        inventory = the_lab.up(2)
        yield LabHandle(the_lab, inventory)
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def feature_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
    """One host that also runs PostgreSQL and Docker (container "web"), for the database
    and container tests; booted on first use, removed at the end of the session.

    Host fx1 on 198.18.5.0/30 (VERIS_TEST_FEATURE_LAB_PREFIX/_SUBNET override it).
    """
    _require_lab()
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    state = tmp_path_factory.mktemp("feature-lab-state")
    prefix = os.environ.get("VERIS_TEST_FEATURE_LAB_PREFIX", "fx")
    subnet = int(os.environ.get("VERIS_TEST_FEATURE_LAB_SUBNET", "5"))
    the_lab = Lab(state, cache, prefix=prefix, first_subnet=subnet, features=("postgres", "docker"))
    try:
        inventory = the_lab.up(1)
        yield LabHandle(the_lab, inventory)
    finally:
        the_lab.down()
