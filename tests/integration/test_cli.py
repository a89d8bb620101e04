"""The command line as a new user meets it: real processes, a real lab, a real fix.

The lab has its own prefix and subnets (ux, 198.18.50-51.0/30; VERIS_TEST_CLI_LAB_PREFIX and
_SUBNET override them), booted and removed through the CLI itself. Tests run in file order:
the last ones take the lab down and look at what is left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES, CliResult

pytestmark = pytest.mark.integration

PREFIX = os.environ.get("VERIS_TEST_CLI_LAB_PREFIX", "ux")
SUBNET = int(os.environ.get("VERIS_TEST_CLI_LAB_SUBNET", "50"))
VR = Path(sys.executable).parent / "veris-remediate"


def vr(state: Path, *args: str, stdin: str | None = None, timeout: float = 600) -> CliResult:
    """The installed veris-remediate command, in a pipe (not a terminal)."""
    if not VR.exists():
        pytest.fail(f"the veris-remediate command is not installed at {VR} (run make setup)")
    proc = subprocess.run(
        [str(VR), "--state-dir", str(state), *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return CliResult(proc)


def one_error_line(result: CliResult) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("cli-state")
    try:
        yield state
    finally:
        vr(state, "lab", "down", "--prefix", PREFIX)


@pytest.fixture(scope="module")
def inventory(state: Path) -> Path:
    """Two hosts booted by `lab up --progress` in a pipe: the path on stdout, progress on stderr."""
    up = vr(state, "--progress", "lab", "up", "--prefix", PREFIX, "--first-subnet", str(SUBNET),
            "--hosts", "2")  # fmt: skip
    if up.rc != 0:
        pytest.fail(f"lab up failed (exit {up.rc}): {up.stderr}")
    path = Path(up.stdout.strip())
    assert path.is_file(), up.stdout
    assert up.stdout == f"{path}\n"  # only the path: INV=$(veris-remediate lab up) works
    for host, address in ((f"{PREFIX}1", f"198.18.{SUBNET}.2"),
                          (f"{PREFIX}2", f"198.18.{SUBNET + 1}.2")):  # fmt: skip
        assert re.search(rf"^✓ booting\s+{host}\s+[\d.]+ s\s+ready at {address}$", up.stderr,
                         re.M), up.stderr  # fmt: skip
    return path


def _alert(host: str) -> str:
    text = (EXAMPLES / "alertmanager-nginx-down.json").read_text()
    return text.replace("http://lab1/", f"http://198.18.{SUBNET}.2/").replace("lab1", host)


def test_version_and_help_as_installed(state: Path) -> None:
    version = vr(state, "--version")
    assert (version.rc, version.stdout.split()[:2]) == (0, ["veris-remediate,", "version"])
    module = subprocess.run([sys.executable, "-m", "veris_remediate", "lab", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert module.returncode == 0
    assert module.stdout.startswith("Usage: veris-remediate lab [OPTIONS] COMMAND [ARGS]...")


def test_lab_status_needs_no_prefix(state: Path, inventory: Path) -> None:
    status = vr(state, "lab", "status")
    assert status.rc == 0, status.stderr
    rows = [line.split() for line in status.stdout.splitlines()]
    assert rows == [
        ["host", "address", "running", "ready"],
        [f"{PREFIX}1", f"198.18.{SUBNET}.2", "yes", "yes"],
        [f"{PREFIX}2", f"198.18.{SUBNET + 1}.2", "yes", "yes"],
    ]
    other = vr(state, "lab", "status", "--prefix", "lab")
    assert other.rc == 2
    assert f"has prefix {PREFIX!r}" in one_error_line(other)
    assert vr(state, "lab", "inventory").stdout.strip() == str(inventory)


def test_lab_ssh_runs_the_command_and_returns_its_status(state: Path, inventory: Path) -> None:
    name = vr(state, "lab", "ssh", f"{PREFIX}1", "--", "hostname")
    assert (name.rc, name.stdout.strip()) == (0, f"{PREFIX}1")
    assert vr(state, "lab", "ssh", f"{PREFIX}1", "--", "sh", "-c", "exit 3").rc == 3
    unknown = vr(state, "lab", "ssh", "nosuchhost", "--", "true")
    assert unknown.rc == 2
    assert "'nosuchhost' is not a host of lab" in one_error_line(unknown)


def test_handle_in_words_then_the_report_as_printed(
    state: Path, inventory: Path, tmp_path: Path
) -> None:
    host = f"{PREFIX}1"
    assert vr(state, "lab", "ssh", host, "--", "systemctl", "stop", "nginx").rc == 0
    alert = tmp_path / "alert.json"
    alert.write_text(_alert(host))

    preview = vr(state, "handle", str(alert), "-i", str(inventory), "--check-only")
    assert preview.rc == 0, preview.stderr
    assert preview.stdout.splitlines()[:2] == [
        f"HttpProbeFailed on {host}: previewed",
        "previewed only: nothing was applied (exit 0)",
    ]
    assert re.search(r"^decision\s+would apply \(confidence", preview.stdout, re.M)
    assert preview.stderr == ""  # a pipe: no progress unless asked
    inactive = vr(state, "lab", "ssh", host, "--", "systemctl", "is-active", "nginx")
    assert inactive.stdout.strip() == "inactive"  # the preview changed nothing

    fixed = vr(state, "--progress", "handle", str(alert), "-i", str(inventory))
    assert fixed.rc == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.splitlines()[0] == f"HttpProbeFailed on {host}: resolved"
    assert re.search(r"^✓ check run \(--check --diff\)\s+" + host + r"\s+[\d.]+ s\s+\d+ tasks; ",
                     fixed.stderr, re.M), fixed.stderr  # fmt: skip
    assert re.search(r"^✓ verifying health\s+" + host, fixed.stderr, re.M)
    active = vr(state, "lab", "ssh", host, "--", "systemctl", "is-active", "nginx")
    assert active.stdout.strip() == "active"

    (line,) = [ln for ln in fixed.stdout.splitlines() if ln.startswith("report ")]
    argv = shlex.split(line.removeprefix("report"))
    assert argv[0] == "veris-remediate"
    as_printed = subprocess.run([str(VR), *argv[1:]], capture_output=True, text=True,
                                timeout=60, check=False)  # fmt: skip
    assert as_printed.returncode == 0, as_printed.stderr
    assert as_printed.stdout.startswith(f"## HttpProbeFailed on {host}: resolved")
    html = tmp_path / "report.html"
    written = subprocess.run([str(VR), *argv[1:], "--format", "html", "-o", str(html)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert "<h2>Timeline</h2>" in html.read_text()


def test_ssh_to_a_stopped_host_fails_at_once(state: Path, inventory: Path) -> None:
    listed = json.loads(vr(state, "lab", "status", "--json").stdout)["hosts"]
    (second,) = [h for h in listed if h["name"] == f"{PREFIX}2"]
    os.kill(second["pid"], signal.SIGKILL)  # the host dies under us
    time.sleep(0.5)
    started = time.monotonic()
    result = vr(state, "lab", "ssh", f"{PREFIX}2", "--", "true")
    assert result.rc == 6
    assert one_error_line(result).startswith(f"error: {PREFIX}2 is not running")
    assert time.monotonic() - started < 30  # no SSH timeouts, no retries


def test_after_lab_down_nothing_pretends_to_be_there(state: Path, inventory: Path) -> None:
    down = vr(state, "lab", "down")
    assert (down.rc, down.stdout.strip()) == (0, f"removed {PREFIX}1, {PREFIX}2")
    status = vr(state, "lab", "status")
    assert status.rc == 0
    assert status.stdout.startswith(f"no lab hosts in {state};")
    assert json.loads(vr(state, "lab", "status", "--json").stdout) == {"hosts": []}
    gone = vr(state, "lab", "inventory")
    assert gone.rc == 6
    assert "no lab is up" in one_error_line(gone)
    assert not inventory.exists()
    again = vr(state, "lab", "down", "--prefix", PREFIX, "--json")
    assert (again.rc, json.loads(again.stdout)) == (0, {"removed": []})


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yml", "all:\n  hosts:\n    a: {ansible_host: 1.2.3.4\n    b:\n",
         "inventory {path}, line 4, column 6: YAML parsing failed"),
        ("hosts.ini", "[web]\nh1 ansible_host\n",
         "inventory {path}, line 2: Expected key=value host variable assignment"),
        ("empty.yml", "", "inventory {path} is empty"),
    ],
)  # fmt: skip
def test_real_ansible_inventory_errors_are_one_line(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = vr(tmp_path / "state", "handle", str(EXAMPLES / "alertmanager-nginx-down.json"),
                "-i", str(path))  # fmt: skip
    assert result.rc == 2
    assert one_error_line(result).startswith(f"error: {expected.format(path=path)}")
