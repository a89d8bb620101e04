"""Runs through a real execution node: a lab host runs ansible-runner's worker over SSH.

The node (xn1, booted with the ``execnode`` feature: the controller's Python and venv
bind-mounted read-only) cannot route to other lab hosts, so it targets itself at its own
address with the key (or short-lived certificate) it receives with each run. That makes
the proof plain: Ansible's SSH logins to the target come from the node's own address
(198.18.90.2), never from the controller's end of the link (198.18.90.1); while a report
streams in, ansible-playbook is in the node's process list and not in the controller's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LabHandle
from tests.unit.recorded import payload as recorded_payload
from veris_remediate import Remediator
from veris_remediate.exceptions import LabError, RunnerError
from veris_remediate.execnode import ExecutionNode, StreamingExecutor, node_info
from veris_remediate.lab import Lab, require_root_and_tools
from veris_remediate.planner import PlaybookStep
from veris_remediate.role_reports import Report
from veris_remediate.runner import RunRequest
from veris_remediate.settings import Settings
from veris_remediate.workspace import Workspace

pytestmark = pytest.mark.integration

RUNNER = str(Path(sys.prefix) / "bin" / "ansible-runner")
NO_HOST_KEYS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
SLEEP_PLAYBOOK = """
- name: Sleep on the target
  hosts: veris_targets
  gather_facts: false
  tasks:
    - name: Sleep long enough to be stopped
      ansible.builtin.command:
        argv: [/bin/sleep, "117"]
      changed_when: false
"""


@pytest.fixture(scope="module")
def node_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
    """Host xn1 on 198.18.90.0/30 with the execnode feature (VERIS_TEST_EXECNODE_PREFIX
    and _SUBNET override them)."""
    try:
        require_root_and_tools()
    except LabError as exc:
        pytest.fail(f"integration tests need lab hosts: {exc.message}")
    cache = Path(os.environ.get("VERIS_LAB_CACHE", "/var/cache/veris-remediate"))
    state = tmp_path_factory.mktemp("execnode-lab")
    prefix = os.environ.get("VERIS_TEST_EXECNODE_PREFIX", "xn")
    subnet = int(os.environ.get("VERIS_TEST_EXECNODE_SUBNET", "90"))
    the_lab = Lab(state, cache, prefix=prefix, first_subnet=subnet, features=("execnode",))
    try:
        inventory = the_lab.up(1)
        yield LabHandle(the_lab, inventory)
    finally:
        the_lab.down()


def _key(lab: LabHandle) -> Path:
    """The lab's key, as its inventory names it (what an operator would hand the node)."""
    match = re.search(r"ansible_ssh_private_key_file: (\S+)", lab.inventory.read_text())
    assert match, "the lab inventory names no key file"
    return Path(match[1])


def _node(lab: LabHandle, **options: object) -> ExecutionNode:
    return ExecutionNode.parse(
        f"ssh://root@{lab.address(1)}",
        key_file=_key(lab),
        ssh_args=tuple(NO_HOST_KEYS.split()),
        runner=RUNNER,
        **options,
    )


def _settings(lab: LabHandle, state: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "state_dir": state,
        "breaker_cooldown_seconds": 0,
        "execution_node": f"ssh://root@{lab.address(1)}",
        "execution_node_key_file": _key(lab),
        "execution_node_ssh_args": NO_HOST_KEYS,
        "execution_node_runner": RUNNER,
        "execution_node_target_key_file": _key(lab),
    }
    values.update(extra)
    return Settings.model_validate(values)


def _payload(host: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(recorded_payload("resolved"))
    alerts = data["alerts"]
    assert isinstance(alerts, list)
    alerts[0]["labels"]["instance"] = f"http://{host}/"
    return data


def _logins_since(lab: LabHandle, since: float) -> list[str]:
    """sshd's "Accepted …" lines on xn1 since ``since`` (epoch seconds)."""
    out = lab.ssh(
        lab.name(1), "journalctl", "-u", "ssh", "--no-pager", "-o", "cat",
        f"--since=@{int(since) - 1}",
    ).stdout  # fmt: skip
    return [line for line in out.splitlines() if line.startswith("Accepted ")]


def _controller_cmdlines(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _node_leftovers(lab: LabHandle) -> tuple[list[str], list[str]]:
    """Processes and directories of runs on the node (``/tmp/veris-*``)."""
    procs = lab.ssh(lab.name(1), "ps", "-eo", "args").stdout.splitlines()
    dirs = lab.ssh(lab.name(1), "sh", "-c", "ls -d /tmp/veris-* 2>/dev/null", check=False)
    return [p for p in procs if "/tmp/veris-" in p], dirs.stdout.split()


def test_node_reports_its_runner(node_lab: LabHandle) -> None:
    info = node_info(_node(node_lab))
    assert info["runner_version"].startswith("2.")
    assert info["cpu_count"] >= 1
    assert info["node"] == f"ssh://root@{node_lab.address(1)}:22"


def test_service_restart_runs_on_the_node(node_lab: LabHandle, tmp_path: Path) -> None:
    host = node_lab.name(1)
    node_lab.ssh(host, "systemctl", "stop", "nginx")
    remediator = Remediator(node_lab.inventory, _settings(node_lab, tmp_path / "state"))
    assert isinstance(remediator.executor, StreamingExecutor)  # chosen from the settings

    seen: list[dict[str, object]] = []

    def spy(request: RunRequest, target: str, report: Report) -> None:
        remediator.on_report(request, target, report)  # the snapshot is still kept
        if any(s["phase"] == request.phase for s in seen):
            return
        node_ps = node_lab.ssh(host, "ps", "-eo", "args").stdout
        seen.append({
            "phase": request.phase,
            "kind": report.kind,
            "node_playbooks": [p for p in node_ps.splitlines() if "ansible-playbook" in p],
            "controller": _controller_cmdlines(str(request.private_data_dir)),
        })  # fmt: skip

    remediator.executor = StreamingExecutor(
        _node(node_lab, target_key_file=_key(node_lab)),
        cancel=remediator.should_cancel,
        on_report=spy,
    )
    since = time.time()
    report = remediator.handle(_payload(host))

    assert report.outcome == "resolved", report.reasons
    assert node_lab.is_active(host, "nginx") == "active"
    phases = {p.name: p for p in report.phases}
    assert phases["check"].status == phases["apply"].status == "ok"
    assert {s["phase"] for s in seen} == {"check", "apply"}
    for sample in seen:
        # Mid-run, ansible-playbook runs on the node from the unpacked private data dir...
        assert any("/tmp/veris-" in p for p in sample["node_playbooks"]), sample  # type: ignore[attr-defined]
        # ...and nothing on the controller runs from the run's own private data dir.
        assert sample["controller"] == [], sample
    snapshot = tmp_path / "state" / "runs" / report.run_id
    assert (next(snapshot.glob("*/live-snapshot.json"))).is_file()  # on_report worked
    # Ansible's logins to the target come from the node itself: one per run (check, apply).
    # (The controller's own logins, from the other end of the link, are the worker
    # sessions and this test's probes.)
    logins = _logins_since(node_lab, since)
    assert len([x for x in logins if f" from {node_lab.address(1)} " in x]) >= 2, logins
    assert _node_leftovers(node_lab) == ([], [])


def test_short_lived_certificate_travels_with_the_run(node_lab: LabHandle, tmp_path: Path) -> None:
    """No target key: the run's certificate (signed by the lab's CA) is all the node has."""
    host = node_lab.name(1)
    settings = _settings(
        node_lab, tmp_path / "state",
        execution_node_target_key_file=None, ssh_ca_key=node_lab.lab.ssh_ca_key(),
    )  # fmt: skip
    since = time.time()
    report = Remediator(node_lab.inventory, settings).handle(_payload(host), check_only=True)
    assert report.exit_code == 0, report.reasons
    assert report.outcome == "not_needed", report.reasons  # nginx runs: nothing to fix
    from_node = [x for x in _logins_since(node_lab, since) if node_lab.address(1) + " " in x]
    assert from_node, "the node never logged in to the target"
    assert all("-CERT " in x and f" ID {report.run_id} " in x for x in from_node), from_node


def test_config_repair_round_trips_controller_files(node_lab: LabHandle, tmp_path: Path) -> None:
    """Files the playbooks keep "on the controller" travel both ways: ``baseline`` fetches
    last-known-good copies (back with the artifacts), the repair receives them and fetches
    its snapshot (back again), and the file is restored byte-identical."""
    host = node_lab.name(1)
    state = tmp_path / "state"
    conf = "/etc/nginx/nginx.conf"
    good = node_lab.ssh(host, "sha256sum", conf).stdout.split()[0]
    remediator = Remediator(node_lab.inventory, _settings(node_lab, state))
    try:
        baseline = remediator.baseline(limit=host)
        assert baseline.exit_code == 0
        assert [e.sha256 for e in baseline.entries if e.path == conf] == [good]
        node_lab.ssh(host, "sh", "-c", f"systemctl stop nginx; echo 'not nginx' >> {conf}")

        report = remediator.handle(_payload(host))

        assert report.remediation == "config_repair", report.reasons
        assert report.outcome == "resolved", report.reasons
        assert node_lab.ssh(host, "sha256sum", conf).stdout.split()[0] == good
        assert node_lab.is_active(host, "nginx") == "active"
        snapshots = list((state / "runs" / report.run_id).glob("*/files/snapshot/*"))
        assert snapshots, "the snapshot the node fetched did not come back"
    finally:
        node_lab.reset(host)


def _sleep_request(lab: LabHandle, tmp_path: Path, job_timeout: int) -> RunRequest:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "sleep.yml").write_text(SLEEP_PLAYBOOK)
    (tmp_path / "roles").mkdir()
    ws = Workspace(tmp_path / "state")
    step = PlaybookStep(phase="apply", playbook="sleep.yml", check=False, extravars={})
    prepared = ws.prepare_step(ws.new_run_id(), "0", step, lab.name(1), idle_timeout=300)
    return RunRequest(
        phase="apply",
        private_data_dir=prepared.private_data_dir,
        playbook=playbooks / "sleep.yml",
        inventories=(lab.inventory, prepared.target_inventory),
        check=False,
        roles_path=tmp_path / "roles",
        control_dir=tmp_path,
        job_timeout=job_timeout,
    )


def _wait_for_sleep(lab: LabHandle) -> bool:
    out = lab.ssh(lab.name(1), "ps", "-eo", "args").stdout
    return any(shlex.split(line)[:2] == ["/bin/sleep", "117"] for line in out.splitlines())


def test_cancel_kills_the_run_on_the_node(node_lab: LabHandle, tmp_path: Path) -> None:
    request = _sleep_request(node_lab, tmp_path, job_timeout=300)
    asked: list[float] = []

    def cancel(req: RunRequest) -> bool:
        # Cancel once the task is really running on the target (the brake's case).
        if not asked and _wait_for_sleep(node_lab):
            asked.append(time.monotonic())
        return bool(asked)

    executor = StreamingExecutor(_node(node_lab, target_key_file=_key(node_lab)), cancel=cancel)
    started = time.monotonic()
    result = executor.run(request)
    assert result.status == "canceled"
    assert result.rc == 254
    assert asked, "the sleep never started on the node"
    assert time.monotonic() - asked[0] < 15  # not the 117 s of the task
    assert time.monotonic() - started < 60
    procs, dirs = _node_leftovers(node_lab)
    assert (procs, dirs) == ([], [])


def test_job_timeout_stops_the_run_on_the_node(node_lab: LabHandle, tmp_path: Path) -> None:
    request = _sleep_request(node_lab, tmp_path, job_timeout=10)
    executor = StreamingExecutor(_node(node_lab, target_key_file=_key(node_lab)))
    started = time.monotonic()
    result = executor.run(request)
    assert result.status == "timeout"  # the worker's own timeout, reported through the stream
    assert time.monotonic() - started < 40
    assert _node_leftovers(node_lab) == ([], [])


def test_unreachable_node_fails_clearly(node_lab: LabHandle, tmp_path: Path) -> None:
    request = _sleep_request(node_lab, tmp_path, job_timeout=60)
    node = ExecutionNode.parse(
        f"ssh://root@{node_lab.address(1)}:1", key_file=_key(node_lab), runner=RUNNER
    )
    with pytest.raises(RunnerError, match=r"did not run sleep\.yml \(ssh exit 255\)"):
        StreamingExecutor(node).run(request)


def test_plain_cli_pipeline_runs_on_the_node(node_lab: LabHandle, tmp_path: Path) -> None:
    """The node serves the plain CLI pipeline docs/SCALING.md shows (no veris code on it)."""
    demo = tmp_path / "demo"
    (demo / "project").mkdir(parents=True)
    (demo / "project" / "ping.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n        msg: \"on {{ lookup('pipe', 'hostname') }}\"\n"
    )
    ssh = " ".join(shlex.quote(a) for a in _node(node_lab).ssh_argv([RUNNER, "worker"])[:-1])
    pipeline = (
        f"{shlex.quote(RUNNER)} transmit {demo} -p ping.yml"
        # The node's PATH must reach ansible-playbook: put the venv's bin first, as an
        # operator's profile would.
        f" | {ssh} {shlex.quote(f'PATH={Path(RUNNER).parent}:$PATH ansible-runner worker')}"
        f" | {shlex.quote(RUNNER)} process {demo}"
    )
    done = subprocess.run(
        pipeline, shell=True, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"on {node_lab.name(1)}" in done.stdout  # the lookup ran on the node
