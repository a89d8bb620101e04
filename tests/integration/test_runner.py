"""The runner against real ansible-playbook runs on localhost: inert data, timeouts, PATH."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from veris_remediate.planner import PlaybookStep
from veris_remediate.role_reports import Report, report_kind
from veris_remediate.runner import AnsibleRunnerExecutor, RunRequest
from veris_remediate.workspace import Workspace

pytestmark = pytest.mark.integration


@report_kind("test.echo")
class Echo(Report):
    """The echo playbook's report: the untrusted values as Ansible saw them."""

    kind: Literal["test.echo"]
    summary: str
    unit: str
    first_unit: str


PLAYBOOK = """
- name: Echo untrusted data back
  hosts: veris_targets
  gather_facts: false
  tasks:
    - name: Use the values the way our roles do
      ansible.builtin.set_fact:
        veris_report:
          kind: test.echo
          summary: "{{ veris_alert_summary }}"
          unit: "{{ veris_service.unit }}"
          first_unit: "{{ veris_units_in_order[0] }}"
    - name: Report
      ansible.builtin.debug:
        var: veris_report
    - name: Pass it to a command as one argv element
      ansible.builtin.command:
        argv: [/bin/echo, "{{ veris_alert_summary }}"]
      changed_when: false
"""


def _local_request(
    tmp_path: Path, playbook_text: str, extravars: dict[str, Any] | None = None, **timeouts: int
) -> RunRequest:
    """A run of ``playbook_text`` on localhost (local connection), set up as the pipeline does."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(playbook_text)
    ws = Workspace(tmp_path / "state")
    step = PlaybookStep(phase="apply", playbook="play.yml", check=False, extravars=extravars or {})
    prepared = ws.prepare_step(
        ws.new_run_id(), "0", step, "localhost", idle_timeout=timeouts.get("idle", 60)
    )
    return RunRequest(
        phase="apply",
        private_data_dir=prepared.private_data_dir,
        playbook=playbook,
        inventories=(inventory, prepared.target_inventory),
        check=False,
        roles_path=tmp_path,
        control_dir=tmp_path,
        job_timeout=timeouts.get("job", 60),
    )


def test_template_and_shell_text_in_vars_is_inert(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = [
        f"{{{{ lookup('pipe', 'touch {marker}') }}}}",
        f"{{% set x = lookup('pipe', 'touch {marker}') %}}",
        f"; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "line1\nfoo: {{ bar }}\n- item",
    ]
    executor = AnsibleRunnerExecutor()
    for text in hostile:
        extravars = {
            "veris_alert_summary": text,
            "veris_service": {"unit": text},
            "veris_units_in_order": [text],
        }
        result = executor.run(_local_request(tmp_path, PLAYBOOK, extravars))
        assert result.status == "successful", result
        report = result.summary.host("localhost").reports["test.echo"]
        assert isinstance(report, Echo)
        assert (report.summary, report.unit, report.first_unit) == (text, text, text)
        assert not marker.exists(), f"{text!r} was executed"


def test_strings_that_look_like_other_types_arrive_as_strings(tmp_path: Path) -> None:
    # ansible-core re-resolves a scalar tagged !unsafe as if unquoted ("yes" -> True,
    # "0123" -> 83): the render tags the root instead. The Echo model takes only str.
    executor = AnsibleRunnerExecutor()
    for text in ("yes", "no", "0123", "null", "~", "2026-12-01 10:00:00", "1e3", "true"):
        extravars = {
            "veris_alert_summary": text,
            "veris_service": {"unit": text},
            "veris_units_in_order": [text],
        }
        result = executor.run(_local_request(tmp_path, PLAYBOOK, extravars))
        hs = result.summary.host("localhost")
        assert hs.report_errors == (), (text, hs.report_errors)
        report = hs.reports["test.echo"]
        assert isinstance(report, Echo)
        assert (report.summary, report.unit, report.first_unit) == (text, text, text)


SLOW_PLAYBOOK = """
- name: Take too long
  hosts: veris_targets
  gather_facts: false
  tasks:
    - name: Print, then go quiet
      ansible.builtin.debug:
        msg: started
    - name: Sleep silently
      ansible.builtin.command:
        argv: [sleep, "30"]
      changed_when: false
"""


@pytest.mark.parametrize("which", ["job", "idle"])
def test_timeouts_stop_the_run_and_leave_it_incomplete(tmp_path: Path, which: str) -> None:
    import time

    start = time.monotonic()
    result = AnsibleRunnerExecutor().run(_local_request(tmp_path, SLOW_PLAYBOOK, **{which: 3}))
    assert time.monotonic() - start < 20
    assert result.status == "timeout"
    assert result.summary.completed is False  # so the decision can never apply on it
    assert [t.task for t in result.summary.host("localhost").tasks] == ["Print, then go quiet"]
    # Nothing of the run survives it: no ansible-playbook worker, no `sleep 30` below one.
    time.sleep(0.5)
    marker = str(tmp_path).encode()
    survivors = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and (marker in cmdline or cmdline == b"sleep\x0030\x00"):
            survivors.append(cmdline)
    assert survivors == []


def test_ansible_playbook_is_found_beside_the_interpreter_without_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unactivated venv: PATH does not name it, the runner still finds its tools."""
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    fast = SLOW_PLAYBOOK.replace('argv: [sleep, "30"]', "argv: [/bin/true]")
    result = AnsibleRunnerExecutor().run(_local_request(tmp_path, fast))
    assert result.status == "successful"
    assert result.summary.completed is True
