"""The molecule scenarios' shared lab hosts (tests/molecule/labs.py), one set per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from veris_remediate.exceptions import LabError
from veris_remediate.lab import require_root_and_tools

from .labs import DEFAULT_BASE, DEFAULT_SUBNET, SharedHosts


@pytest.fixture(scope="session")
def molecule_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedHosts]:
    """Booted on first use, removed at the end of the session whatever happens."""
    try:
        require_root_and_tools()
    except LabError as exc:
        pytest.fail(f"molecule scenarios need lab hosts: {exc.message}")
    hosts = SharedHosts(
        tmp_path_factory.mktemp("molecule-labs"),
        Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate")),
        os.environ.get("MOLECULE_LAB_PREFIX") or DEFAULT_BASE,
        int(os.environ.get("MOLECULE_LAB_SUBNET") or DEFAULT_SUBNET),
    )
    try:
        yield hosts
    finally:
        hosts.down()
