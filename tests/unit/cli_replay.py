"""The command line through click's runner, with recorded event streams in place of ansible.

``Replay(monkeypatch, scenario)`` makes every ``Remediator`` the CLI builds replay that
scenario (tests/fixtures/events) and read the scenario's recorded inventory listing, so the
CLI runs unchanged and starts no process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner, Result

from tests.helpers import FIXTURES
from tests.unit import recorded
from veris_remediate import pipeline
from veris_remediate.cli import main
from veris_remediate.inventory import Inventory, parse_inventory_listing

if TYPE_CHECKING:
    import pytest

LAB_LISTING = FIXTURES / "inventory" / "lab.listing.json"


def lab_inventory() -> Inventory:
    listing: dict[str, Any] = json.loads(LAB_LISTING.read_text())
    return parse_inventory_listing(listing, [FIXTURES / "inventory" / "lab.yml"])


class Replay:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, scenario: str) -> None:
        self.scenario = scenario
        folder = recorded.EVENTS / scenario
        inventory = (
            recorded.inventory(scenario) if (folder / "inventory.json").is_file() else None
        ) or lab_inventory()
        monkeypatch.setattr(pipeline, "load_inventory", lambda sources, **_: inventory)
        monkeypatch.setattr(
            pipeline, "AnsibleRunnerExecutor", lambda **_: recorded.RecordedExecutor(scenario)
        )

    @property
    def payload(self) -> bytes:
        return recorded.payload(self.scenario)


def invoke(state_dir: Path, *args: str, stdin: str | bytes | None = None) -> Result:
    """The CLI as a user runs it, but in this process: stdout and stderr kept apart."""
    runner = CliRunner()
    return runner.invoke(
        main, ["--state-dir", str(state_dir), *args], input=stdin, catch_exceptions=False
    )
