"""The README's library snippet runs as written, and handle() takes every payload form it names.

Only the I/O is replayed (a recorded lab run and its inventory listing, tests/unit/cli_replay):
the snippet's text is executed unchanged, in a directory holding its two files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES, FIXTURES
from tests.unit.cli_replay import Replay
from veris_remediate import Remediator
from veris_remediate.settings import Settings

README = Path(__file__).parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    after = text.index("The library API")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, after)
    assert match is not None, "README has no python block after 'The library API'"
    return match[1]


def test_the_readme_snippet_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Replay(monkeypatch, "resolved")
    shutil.copy(FIXTURES / "inventory" / "lab.yml", tmp_path / "inventory.yml")
    shutil.copy(EXAMPLES / "alertmanager-nginx-down.json", tmp_path / "alert.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VERIS_STATE_DIR", str(tmp_path / "state"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_snippet(), str(README), "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "previewed 0"
    assert (
        lines[1] == "would change: Start the service, or restart it when it runs but is unhealthy"
    )
    assert lines[-1] == "resolved 0 False"


class _PathLike:
    """A path-like that is not a pathlib.Path (os.PathLike is a protocol)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.mark.parametrize("form", ["mapping", "bytes", "json text", "Path", "os.PathLike"])
def test_handle_takes_each_payload_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    Replay(monkeypatch, "resolved")
    raw = (EXAMPLES / "alertmanager-nginx-down.json").read_bytes()
    file = tmp_path / "alert.json"
    file.write_bytes(raw)
    payload: object = {
        "mapping": json.loads(raw),
        "bytes": raw,
        "json text": raw.decode(),
        "Path": file,
        "os.PathLike": _PathLike(file),
    }[form]
    assert isinstance(payload, (dict, bytes, str, os.PathLike))
    remediator = Remediator(FIXTURES / "inventory" / "lab.yml", Settings(state_dir=tmp_path / "s"))
    report = remediator.handle(payload)
    assert (report.outcome, report.exit_code, report.hosts) == ("resolved", 0, ("lab1",))
