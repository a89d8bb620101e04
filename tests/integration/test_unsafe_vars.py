"""Alert text reaches a real ansible-playbook run as data: ``{{ }}`` in it is never templated."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from veris_remediate.planner import PlaybookStep
from veris_remediate.runner import AnsibleRunnerExecutor, RunRequest
from veris_remediate.workspace import Workspace

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Echo untrusted data back
  hosts: veris_targets
  gather_facts: false
  tasks:
    - name: Use the values the way our roles do
      ansible.builtin.set_fact:
        veris_report:
          kind: echo
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
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    playbook = tmp_path / "echo.yml"
    playbook.write_text(PLAYBOOK)
    ws = Workspace(tmp_path / "state")
    run_id = ws.new_run_id()
    executor = AnsibleRunnerExecutor()
    for n, text in enumerate(hostile):
        step = PlaybookStep(
            phase="check",
            playbook="echo.yml",
            check=False,
            extravars={
                "veris_alert_summary": text,
                "veris_service": {"unit": text},
                "veris_units_in_order": [text],
            },
        )
        prepared = ws.prepare_step(run_id, str(n), step, "localhost")
        result = executor.run(
            RunRequest(
                phase="check",
                private_data_dir=prepared.private_data_dir,
                playbook=playbook,
                inventories=(inventory, prepared.target_inventory),
                check=False,
                roles_path=tmp_path,
                control_dir=tmp_path,
                job_timeout=60,
                idle_timeout=30,
            )
        )
        assert result.status == "successful", result
        report = result.summary.host("localhost").reports["echo"]
        assert report["summary"] == text
        assert report["unit"] == text
        assert report["first_unit"] == text
        assert not marker.exists(), f"payload {n} was executed"
