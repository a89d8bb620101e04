"""What the command line prints, through click's runner with recorded lab runs replayed.

Text for people by default (aligned, no colour and no wrapping in a pipe, outcomes in
words), one JSON object with --json, progress on stderr only when asked, and run ids
printed so that the printed `report` command works as printed.
"""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES
from tests.unit.cli_replay import Replay, invoke
from veris_remediate.console import make_console, report_view
from veris_remediate.report import RunReport

INVENTORY = str(Path(__file__).parents[1] / "fixtures" / "inventory" / "lab.yml")
ANSI = re.compile(r"\x1b\[")
SGR = re.compile(r"\x1b\[[0-9;]*m")
# A foreground colour among the SGR parameters (NO_COLOR keeps bold and dim: not colours).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m")


def _handle(
    state_dir: Path, replay: Replay, *extra: str, before: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    """``veris-remediate [BEFORE] handle - -i lab.yml [EXTRA]`` on the scenario's payload."""
    result = invoke(
        state_dir, *before, "handle", "-", "-i", INVENTORY, *extra, stdin=replay.payload
    )
    return result.exit_code, result.stdout, result.stderr


def _report_command(stdout: str) -> list[str]:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("report ")]
    return shlex.split(line.removeprefix("report").strip())


def test_handle_text_tells_the_story_in_words(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, err = _handle(state_dir, Replay(monkeypatch, "rolled_back"))
    assert rc == 5
    lines = out.splitlines()
    assert lines[0] == "HttpProbeFailed on lab1: rolled_back"
    assert lines[1] == "the fix did not make it healthy: rolled back to the prior state (exit 5)"
    labels = {ln.split("  ")[0] for ln in lines if ln and not ln.startswith(" ")}
    assert {"fix", "decision", "likely cause", "before", "after the fix", "restored"} <= labels
    assert {"applied", "why", "findings", "report"} <= labels
    assert "nginx.service is inactive (dead), port 80 closed" in out  # health before
    assert re.search(r"^verify\s+lab1\s+failed", out, re.M)  # the phases, aligned
    assert err == ""  # no progress in a pipe unless asked


def test_text_in_a_pipe_has_no_colour_no_wrapping_no_trailing_blanks(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = _handle(state_dir, Replay(monkeypatch, "rolled_back"))
    assert not ANSI.search(out)
    assert all(line == line.rstrip() for line in out.splitlines())
    # The journal finding is ~300 characters: one line, whole.
    (journal,) = [ln for ln in out.splitlines() if "journal: Starting nginx.service" in ln]
    assert journal.rstrip().endswith("Stopped nginx.service - A high performance web server "
                                     "and a reverse proxy server.")  # fmt: skip
    assert len(journal) > 200


def test_check_only_never_reads_as_applied(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, _ = _handle(state_dir, Replay(monkeypatch, "fw_previewed"), "--check-only")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "FirewallInactive on rfw1: previewed"
    assert lines[1] == "previewed only: nothing was applied (exit 0)"
    assert re.search(r"^decision\s+would apply \(confidence 0\.85\); --check-only: nothing applied",
                     out, re.M)  # fmt: skip
    assert re.search(r"^preview\s+~ ", out, re.M)
    assert not re.search(r"^applied\b", out, re.M)
    assert "decision apply" not in out
    assert "+ufw active" in out  # the diff of the preview


def test_json_is_one_object_with_the_contract_fields(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, err = _handle(state_dir, Replay(monkeypatch, "resolved"), "--json")
    assert rc == 0
    assert len(out.splitlines()) == 1
    report = json.loads(out)
    for key in ("run_id", "alert_type", "remediation", "hosts", "decision", "confidence",
                "outcome", "rolled_back", "phases", "findings"):  # fmt: skip
        assert key in report
    assert err == ""


def test_progress_goes_to_stderr_with_the_check_runs_task_count(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, err = _handle(
        state_dir, Replay(monkeypatch, "resolved"), "--json", before=("--progress",)
    )
    assert rc == 0
    json.loads(out)  # stdout stays one JSON object
    ended = [ln for ln in err.splitlines() if ln.startswith("✓")]
    names = [re.split(r"\s{2,}", ln[2:])[0] for ln in ended]
    assert names == ["reading the alert", "finding host, service and fix", "planning",
                     "check run (--check --diff)", "deciding", "applying the fix",
                     "verifying health"]  # fmt: skip
    (check,) = [ln for ln in ended if "check run" in ln]
    assert re.search(r"lab1\s+\d+\.\d\d s\s+\d+ tasks; successful, 1 changed", check), check
    assert "… check run (--check --diff) lab1" in err  # announced when it starts


def test_no_progress_wins(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, err = _handle(state_dir, Replay(monkeypatch, "resolved"), before=("--no-progress",))
    assert err == ""


def test_the_printed_report_command_works_as_printed(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = _handle(state_dir, Replay(monkeypatch, "rolled_back"))
    argv = _report_command(out)
    assert argv[:3] == ["veris-remediate", "--state-dir", str(state_dir)]
    run_id = argv[-1]
    for fmt, check in (
        ("md", lambda text: text.startswith("## HttpProbeFailed on lab1: rolled\\_back")),
        ("json", lambda text: json.loads(text)["run_id"] == run_id),
        ("html", lambda text: text.startswith("<!DOCTYPE html>") and run_id in text),
    ):
        result = invoke(state_dir, *argv[3:], "--format", fmt)
        assert result.exit_code == 0, result.stderr
        assert check(result.stdout), fmt


def test_report_writes_a_file_with_output(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = _handle(state_dir, Replay(monkeypatch, "resolved"))
    run_id = _report_command(out)[-1]
    target = state_dir.parent / "incident.html"
    result = invoke(state_dir, "report", run_id, "--format", "html", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout.strip() == str(target)
    assert "<title>HttpProbeFailed on lab1: resolved" in target.read_text()


def test_markdown_is_ready_to_paste(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = _handle(state_dir, Replay(monkeypatch, "rolled_back"))
    md = invoke(state_dir, "report", _report_command(out)[-1]).stdout
    headings = re.findall(r"^#+ .*$", md, re.M)
    assert headings[:2] == ["## HttpProbeFailed on lab1: rolled\\_back", "### Likely cause"]
    for section in ("### Health", "### Preview (check run, `--check --diff`) on lab1",
                    "### Decision: apply (confidence 1.00)", "### Applied", "### Rollback",
                    "### Findings", "### Timeline"):  # fmt: skip
        assert section in headings
    assert "- before: nginx.service is inactive (dead)" in md
    assert "- rolled back: nginx.service=inactive" in md
    # Every table row has the header's number of cells (a "|" in host text is escaped).
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    timeline = [r for r in rows if re.match(r"\| \d+\.\d\d \|", r)]
    assert [len(re.split(r"(?<!\\)\|", r)) for r in timeline] == [8] * 8


def test_runs_list_and_show(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = invoke(state_dir, "runs", "list")
    assert empty.stdout.strip() == f"no runs yet in {state_dir}"
    assert json.loads(invoke(state_dir, "runs", "list", "--json").stdout) == {"runs": []}
    _, out, _ = _handle(state_dir, Replay(monkeypatch, "resolved"))
    run_id = _report_command(out)[-1]
    listed = invoke(state_dir, "runs", "list").stdout.splitlines()
    assert listed[0].split() == ["run", "alert", "hosts", "outcome"]
    assert listed[1].split() == [run_id, "HttpProbeFailed", "lab1", "resolved"]
    shown = invoke(state_dir, "runs", "show", run_id)
    assert shown.stdout.splitlines()[0] == "HttpProbeFailed on lab1: resolved"
    as_json = invoke(state_dir, "runs", "show", run_id, "--json")
    assert json.loads(as_json.stdout)["run_id"] == run_id
    assert len(as_json.stdout.splitlines()) == 1


@pytest.mark.parametrize("details", [{}, {"host": "nosuchhost"}])
def test_a_sentinel_alert_without_a_known_host_never_says_on_dash(
    state_dir: Path, details: dict[str, str]
) -> None:
    payload = json.loads((EXAMPLES / "sentinel-s11-firewall.json").read_text())
    payload["details"] = details
    result = invoke(state_dir, "handle", "-", "-i", INVENTORY, stdin=json.dumps(payload))
    assert result.exit_code == 3
    first = result.stdout.splitlines()[0]
    assert first == "S11-firewall-status: rejected"
    assert " on -" not in result.stdout


def test_brake_prints_its_reason_as_text(state_dir: Path) -> None:
    released = invoke(state_dir, "brake", "release")
    assert released.stdout.strip() == "brake was not engaged"
    assert invoke(state_dir, "brake", "status").stdout.strip().startswith("brake not engaged")
    engaged = invoke(state_dir, "brake", "engage", "--reason", "change freeze until 18:00")
    assert engaged.exit_code == 0
    status = invoke(state_dir, "brake", "status").stdout
    assert status.splitlines()[0] == "brake engaged: no fix is applied"
    assert re.search(r"^reason\s+change freeze until 18:00$", status, re.M)
    assert "{" not in status
    as_json = json.loads(invoke(state_dir, "brake", "status", "--json").stdout)
    assert (as_json["engaged"], as_json["reason"]) == (True, "change freeze until 18:00")
    assert invoke(state_dir, "brake", "release").stdout.startswith("brake released (it was ")


def test_every_json_option_gives_one_object(state_dir: Path) -> None:
    for argv in (
        ["runs", "list"], ["brake", "status"], ["approvals"], ["breaker", "status"],
        ["audit", "tail"], ["audit", "verify"], ["lab", "status"],
    ):  # fmt: skip
        result = invoke(state_dir, *argv, "--json")
        assert isinstance(json.loads(result.stdout), dict), argv
        assert len(result.stdout.splitlines()) == 1, argv


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rendered(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    report = RunReport.model_validate_json(
        (
            Path(__file__).parents[1] / "fixtures" / "events" / "rolled_back" / "report.json"
        ).read_text()
    )
    make_console(stream).print(report_view(report))
    return stream.getvalue()


def test_colour_and_width_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    on_tty = _rendered(_Terminal(), monkeypatch, TERM="xterm-256color", COLUMNS="70")
    assert COLOUR.search(on_tty)
    assert max(len(line) for line in SGR.sub("", on_tty).splitlines()) <= 70
    no_color = _rendered(_Terminal(), monkeypatch, TERM="xterm-256color", COLUMNS="70",
                         NO_COLOR="1")  # fmt: skip
    assert not COLOUR.search(no_color)
    assert SGR.sub("", no_color) == SGR.sub("", on_tty)
    piped = _rendered(io.StringIO(), monkeypatch, TERM="xterm-256color", COLUMNS="70")
    assert not ANSI.search(piped)
    assert max(len(line) for line in piped.splitlines()) > 200  # never wrapped
