"""Lab hosts for integration tests: booted once per session, removed whatever happens.

A test that needs a lab host and cannot get one fails; it never skips.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgServer, pgserver
from veris_remediate.exceptions import LabError
from veris_remediate.lab import Lab, require_root_and_tools
from veris_remediate.store import StateStore


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


def _worker_lab(
    env_prefix: str, prefix: str, env_subnet: str, subnet: int, span: int
) -> tuple[str, int]:
    """(prefix, first subnet) of a session lab for this pytest-xdist worker.

    Worker gw0 (or no xdist) gets ``prefix``/``subnet``; gw1 ``<prefix>b``/``subnet + span``,
    and so on: the workers boot their own hosts side by side. The environment overrides both.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0)
    own = prefix if index == 0 else f"{prefix}{chr(ord('a') + index)}"
    return (
        os.environ.get(env_prefix, own),
        int(os.environ.get(env_subnet, str(subnet + span * index))),
    )


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
    # Hosts lab1, lab2 on 198.18.1-2.x (a second xdist worker: labb1, labb2 on 3-4); tests
    # rename the example payloads' lab1/lab2 to these. Concurrent test runs on one machine
    # need their own (VERIS_TEST_LAB_PREFIX, VERIS_TEST_LAB_SUBNET).
    prefix, subnet = _worker_lab("VERIS_TEST_LAB_PREFIX", "lab", "VERIS_TEST_LAB_SUBNET", 1, 2)
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

    Host fx1 on 198.18.5.0/30 (a second xdist worker: fxb1 on 6;
    VERIS_TEST_FEATURE_LAB_PREFIX/_SUBNET override it).
    """
    _require_lab()
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    state = tmp_path_factory.mktemp("feature-lab-state")
    prefix, subnet = _worker_lab(
        "VERIS_TEST_FEATURE_LAB_PREFIX", "fx", "VERIS_TEST_FEATURE_LAB_SUBNET", 5, 1
    )
    the_lab = Lab(state, cache, prefix=prefix, first_subnet=subnet, features=("postgres", "docker"))
    try:
        inventory = the_lab.up(1)
        yield LabHandle(the_lab, inventory)
    finally:
        the_lab.down()


def own_lab(
    tmp_path_factory: pytest.TempPathFactory,
    hosts: int,
    env: str,
    prefix: str,
    subnet: int,
) -> Iterator[LabHandle]:
    """A test file's own lab of ``hosts`` hosts for a module fixture to yield from: prefix
    and first subnet per xdist worker (``_worker_lab``; ``VERIS_TEST_<env>_PREFIX``/``_SUBNET``
    override them), removed at the end whatever happens."""
    _require_lab()
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    state = tmp_path_factory.mktemp(f"{prefix}-lab-state")
    name, first = _worker_lab(
        f"VERIS_TEST_{env}_PREFIX", prefix, f"VERIS_TEST_{env}_SUBNET", subnet, hosts
    )
    the_lab = Lab(state, cache, prefix=name, first_subnet=first)
    try:
        inventory = the_lab.up(hosts)
        yield LabHandle(the_lab, inventory)
    finally:
        the_lab.down()


# -- one estate's state, on SQLite and on a real PostgreSQL ----------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with pgserver() as server:
        yield server


class Estate:
    """One estate's state: every ``open()`` is another receiver's view of it."""

    def __init__(self, state_dir: Path, url: str | None) -> None:
        self.state_dir = state_dir
        self.url = url
        self._stores: list[StateStore] = []

    def open(self) -> StateStore:
        store = StateStore(self.state_dir, url=self.url)
        self._stores.append(store)
        return store

    def close(self) -> None:
        for store in self._stores:
            store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def estate(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Estate]:
    """The test runs twice: on SQLite in the state dir, and on a fresh PostgreSQL database."""
    url = None
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("pg")
        url = server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    the_estate = Estate(tmp_path / "state", url)
    try:
        yield the_estate
    finally:
        the_estate.close()
