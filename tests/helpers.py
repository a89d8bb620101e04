"""Test helpers: fixture paths, and the CLI run the way a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parent.parent / "examples" / "alerts"


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def run_cli(
    state_dir: Path, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "veris_remediate", "--state-dir", str(state_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )
    return CliResult(proc)
