"""Errors on the command line: one line and a hint, never a traceback (unless --debug), the
exit code of the table; inventory errors naming file, line and problem; help everywhere.

No process is started: ansible-inventory's failures are replayed from what it printed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest

from tests.helpers import EXAMPLES
from tests.unit.cli_replay import invoke
from veris_remediate import workspace
from veris_remediate.cli import main
from veris_remediate.exceptions import InventoryError
from veris_remediate.inventory import MAX_DIRECTORY_FILES, ansible_inventory_problem, load_inventory

ALERT = str(EXAMPLES / "alertmanager-nginx-down.json")

# What ansible-inventory 2.19 printed (stderr) for a YAML and an INI mistake.
YAML_COLON = """\
[WARNING]: Failed to parse inventory with 'auto' plugin: YAML parsing failed: Colons in \
unquoted values must be followed by a non-space character.

Failed to parse inventory with 'auto' plugin.

<<< caused by >>>

YAML parsing failed: Colons in unquoted values must be followed by a non-space character.
Origin: {path}:4:6

2   hosts:
3     a: {{ansible_host: 1.2.3.4
4     b:
       ^ column 6

[WARNING]: Failed to parse inventory with 'yaml' plugin: YAML parsing failed: Colons in \
unquoted values must be followed by a non-space character.

Failed to parse inventory with 'yaml' plugin.

<<< caused by >>>

YAML parsing failed: Colons in unquoted values must be followed by a non-space character.
Origin: <inventory plugin 'yaml' with source '{path}'>

[WARNING]: Failed to parse inventory with 'ini' plugin: Failed to parse inventory: Invalid \
host pattern 'all:' supplied, ending in ':' is not allowed, this character is reserved to \
provide a port.

Failed to parse inventory with 'ini' plugin.

<<< caused by >>>

Failed to parse inventory: Invalid host pattern 'all:' supplied, ending in ':' is not \
allowed, this character is reserved to provide a port.
Origin: {path}

[ERROR]: Completely failed to parse inventory source {path}
"""
INI_NO_VALUE = """\
[WARNING]: Failed to parse inventory with 'ini' plugin: Failed to parse inventory: Expected \
key=value host variable assignment, got: ansible_host

Failed to parse inventory with 'ini' plugin.

<<< caused by >>>

Failed to parse inventory: Expected key=value host variable assignment, got: ansible_host
Origin: {path}

[ERROR]: Completely failed to parse inventory source {path}
"""
YAML_LIST = """\
[WARNING]: Failed to parse inventory with 'auto' plugin: no root 'plugin' key found, \
'{path}' is not a valid YAML inventory plugin config file
Origin: <inventory plugin 'auto' with source '{path}'>
[WARNING]: Failed to parse inventory with 'yaml' plugin: Invalid "hosts" entry for "all" \
group, requires a dictionary, found "<class 'ansible.module_utils._internal._datatag.\
_AnsibleTaggedList'>" instead.
Origin: <inventory plugin 'yaml' with source '{path}'>
[ERROR]: Completely failed to parse inventory source {path}
"""


class FakeRun:
    """Stands in for subprocess.run (ansible-inventory), with what it printed."""

    def __init__(self, returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.result = subprocess.CompletedProcess[str]([], returncode, stdout, stderr)
        self.calls = 0

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        return self.result


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("name", "text", "stderr", "expected"),
    [
        ("bad.yml", "all:\n  hosts:\n    a: {ansible_host: 1.2.3.4\n    b:\n", YAML_COLON,
         "inventory {path}, line 4, column 6: YAML parsing failed: Colons in unquoted values "
         "must be followed by a non-space character"),
        ("bad.ini", "[web]\nh1 ansible_host\n", INI_NO_VALUE,
         "inventory {path}, line 2: Expected key=value host variable assignment, "
         "got: ansible_host"),
        ("list.yml", "all:\n  hosts:\n    - a\n", YAML_LIST,
         'inventory {path}: Invalid "hosts" entry for "all" group, requires a dictionary, '
         "found a list instead"),
    ],
)  # fmt: skip
def test_a_malformed_inventory_is_one_line_with_file_and_line(
    tmp_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    text: str,
    stderr: str,
    expected: str,
) -> None:
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setattr(subprocess, "run", FakeRun(1, "", stderr.format(path=path)))
    result = invoke(state_dir, "handle", ALERT, "-i", str(path))
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == f"error: {expected.format(path=path)}"


def test_an_unclosed_ini_section_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("# lab\n[web\nfoo\n")
    stderr = (
        "[WARNING]: Failed to parse inventory with 'ini' plugin: Failed to parse inventory: "
        f"not enough values to unpack (expected 3, got 2)\nOrigin: {path}\n"
    )
    assert ansible_inventory_problem(stderr, 1) == (
        f"inventory {path}, line 2: section header '[web' has no closing ']'"
    )


def test_unknown_stderr_still_gives_one_line() -> None:
    stderr = "[WARNING]: something\n\n[ERROR]: Unable to parse x.yml as an inventory source\n"
    assert ansible_inventory_problem(stderr, 1) == (
        "ansible-inventory failed (exit 1): Unable to parse x.yml as an inventory source"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "inventory {path} is empty"), ("# nothing yet\n\n", "inventory {path} is empty"),
     ("all:\n  hosts: {}\n", "inventory {path} names no hosts")],
)  # fmt: skip
def test_an_empty_inventory_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    listing = {"_meta": {"hostvars": {}}, "all": {"children": ["ungrouped"]}}
    monkeypatch.setattr(subprocess, "run", FakeRun(0, json.dumps(listing)))
    with pytest.raises(InventoryError) as caught:
        load_inventory([path])
    assert caught.value.message.startswith(expected.format(path=path))


def test_a_directory_is_checked_before_ansible_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun(0, "{}")
    monkeypatch.setattr(subprocess, "run", fake)
    empty = tmp_path / "empty"
    (empty / "group_vars").mkdir(parents=True)
    (empty / "README.md").write_text("not read by ansible\n")
    with pytest.raises(InventoryError, match=f"inventory directory {empty} holds no inventory"):
        load_inventory([empty])
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "hosts.yml").write_text("all:\n  hosts:\n    h1:\n")
    (junk / "core").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64))
    with pytest.raises(InventoryError) as caught:
        load_inventory([junk])
    assert caught.value.message == (
        f"inventory directory {junk}: {junk / 'core'} is not an inventory (a binary file); "
        "point -i at the inventory file"
    )
    big = tmp_path / "big"
    (big / "sub").mkdir(parents=True)
    for n in range(MAX_DIRECTORY_FILES + 50):
        (big / "sub" / f"f{n}").write_text("")
    with pytest.raises(InventoryError, match=f"holds more than {MAX_DIRECTORY_FILES} files"):
        load_inventory([big])
    assert fake.calls == 0  # ansible-inventory never saw any of them


def test_a_binary_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", FakeRun(0, "{}"))
    blob = tmp_path / "inventory"
    blob.write_bytes(b"\x00\x01binary")
    with pytest.raises(InventoryError, match="is not an inventory \\(a binary file\\)"):
        load_inventory([blob])


def test_usage_errors_are_one_line_with_a_hint(state_dir: Path) -> None:
    result = invoke(state_dir, "handle", "--nope")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "No such option '--nope'" in line
    assert line.endswith("(hint: see `veris-remediate handle --help`)")
    missing = invoke(state_dir, "handle", str(state_dir / "nope.json"), "-i", ALERT)
    assert missing.exit_code == 2
    assert _one_error_line(missing.stderr).startswith("error: cannot read ")


def test_a_missing_run_says_where_it_looked_and_what_to_try(state_dir: Path) -> None:
    result = invoke(state_dir, "report", "20260101T000000Z-abcdef")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert f"looked for {state_dir}/runs/20260101T000000Z-abcdef/report.json" in line
    assert "hint: runs stay in the state dir that made them: pass that --state-dir" in line
    as_json = invoke(state_dir, "report", "20260101T000000Z-abcdef", "--format", "json")
    body = json.loads(as_json.stdout)
    assert body["exit_code"] == 2
    assert body["error"].startswith("no run 20260101T000000Z-abcdef")


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object) -> list[str]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(workspace.Workspace, "list_runs", broken)
    result = invoke(state_dir, "runs", "list")
    assert result.exit_code == 6
    line = _one_error_line(result.stderr)
    assert line.startswith("error: internal error: RuntimeError: disk on fire")
    assert "rerun with --debug" in line
    debug = invoke(state_dir, "--debug", "runs", "list")
    assert debug.exit_code == 6
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("error: internal error")


def test_version(state_dir: Path) -> None:
    result = invoke(state_dir, "--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("veris-remediate, version ")


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += _commands(sub, (*path, name))
    return found


def test_every_command_and_option_has_help_text() -> None:
    missing = []
    for path, command in _commands(main):
        if not (command.help or "").strip():
            missing.append(" ".join(path) or "main")
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert missing == []


def test_every_command_with_output_has_json() -> None:
    # lab ssh runs the remote command and prints what it prints: JSON makes no sense there.
    without = [
        " ".join(path)
        for path, command in _commands(main)
        if not isinstance(command, click.Group)
        and path not in {("lab", "ssh"), ("serve",)}
        and not any("--json" in getattr(p, "opts", ()) for p in command.params)
    ]
    assert without == []


def test_lab_commands_fail_with_one_line_and_the_tables_exit_code(state_dir: Path) -> None:
    unknown = invoke(state_dir, "lab", "ssh", "nosuchhost", "--", "true")
    assert unknown.exit_code == 2
    assert "'nosuchhost' is not a host of lab 'lab'" in _one_error_line(unknown.stderr)
    status = invoke(state_dir, "lab", "status")
    assert (status.exit_code, status.stdout.split(";")[0]) == (0, f"no lab hosts in {state_dir}")
    inventory = invoke(state_dir, "lab", "inventory")
    assert inventory.exit_code == 6
    assert "no lab is up" in _one_error_line(inventory.stderr)


def test_lab_commands_use_the_recorded_lab(state_dir: Path) -> None:
    """A state dir whose lab has prefix ux: no --prefix needed, a wrong one is one line."""
    lab_dir = state_dir / "lab"
    lab_dir.mkdir(parents=True)
    state = {"prefix": "ux", "first_subnet": 50, "hosts": {"ux1": {"pid": None}}}
    (lab_dir / "state.json").write_text(json.dumps(state))
    status = invoke(state_dir, "lab", "status")
    assert status.exit_code == 0, status.stderr
    assert status.stdout.splitlines()[1].split() == ["ux1", "198.18.50.2", "no", "no"]
    wrong = invoke(state_dir, "lab", "status", "--prefix", "lab")
    assert wrong.exit_code == 2
    assert "has prefix 'ux' and first subnet 50" in _one_error_line(wrong.stderr)
    stopped = invoke(state_dir, "lab", "ssh", "ux1", "--", "true")
    assert stopped.exit_code == 6
    assert _one_error_line(stopped.stderr).startswith("error: ux1 is not running")
    not_up = invoke(state_dir, "lab", "ssh", "ux2")
    assert not_up.exit_code == 2
    assert "ux2 is not a host of this lab (hosts up: ux1)" in _one_error_line(not_up.stderr)
