"""The execution-node executor without a node: staging, the worker's stream replayed.

No process starts: the worker's SSH session is a fake channel whose output is a worker
stream built from a recorded real run (tests/fixtures/events), the way the other unit
tests replay events in place of ansible-runner.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from ansible_runner.utils.streaming import stream_dir, unstream_dir

from tests.unit.recorded import events, inventory
from veris_remediate.events import fold_events
from veris_remediate.exceptions import LabError, RunnerError, UsageError
from veris_remediate.execnode import (
    ExecutionNode,
    StreamingExecutor,
    collect_controller_files,
    stage_run,
    worker_command,
)
from veris_remediate.lab import Lab
from veris_remediate.lab.hosts import execnode_binds
from veris_remediate.pipeline import Remediator
from veris_remediate.planner import PlaybookStep
from veris_remediate.role_reports import Report
from veris_remediate.runner import AnsibleRunnerExecutor, RunRequest
from veris_remediate.settings import Settings, settings_from_env
from veris_remediate.workspace import Workspace

REMOTE = "/tmp/veris-0123456789abcdef01234567"


# -- the node's address -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "user", "host", "port"),
    [
        ("ssh://root@node1.example.com", "root", "node1.example.com", 22),
        ("ssh://198.18.90.2:2222", None, "198.18.90.2", 2222),
        ("ssh://runner@[2001:db8::7]:22", "runner", "2001:db8::7", 22),
    ],
)
def test_node_urls(url: str, user: str | None, host: str, port: int) -> None:
    node = ExecutionNode.parse(url)
    assert (node.user, node.host, node.port) == (user, host, port)


@pytest.mark.parametrize(
    "url",
    [
        "root@node1",  # no scheme
        "ssh://-oProxyCommand=touch${IFS}x",  # an option for ssh, not a host
        "ssh://root@node1;reboot",
        "ssh://root@node 1",
        "ssh://ROOT$(id)@node1",
        "https://node1",
    ],
)
def test_hostile_or_odd_node_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError, match="execution node must be ssh://"):
        ExecutionNode.parse(url)


def test_runner_path_is_checked() -> None:
    with pytest.raises(UsageError, match="runner path"):
        ExecutionNode.parse("ssh://node1", runner="ansible-runner; reboot")


def test_ssh_argv_quotes_the_remote_command_as_one_word() -> None:
    node = ExecutionNode.parse(
        "ssh://root@node1:2200",
        key_file=Path("/keys/node"),
        ssh_args=("-o", "UserKnownHostsFile=/etc/veris/known_hosts"),
    )
    argv = node.ssh_argv(["echo", "a b", "$(id)"])
    assert argv[-3:] == ["--", "node1", "echo 'a b' '$(id)'"]
    assert argv[argv.index("-p") + 1] == "2200"
    assert argv[argv.index("-i") + 1] == "/keys/node"
    assert "IdentitiesOnly=yes" in argv
    assert "UserKnownHostsFile=/etc/veris/known_hosts" in argv
    assert argv[argv.index("-l") + 1] == "root"
    assert "StrictHostKeyChecking=no" not in argv  # host keys are checked unless told


def test_one_remediation_shares_one_connection_to_the_node() -> None:
    node = ExecutionNode.parse("ssh://root@node1")
    argv = node.ssh_argv(["true"], control_dir=Path("/tmp/veris-cp-abcdef-123"))
    assert "ControlPath=/tmp/veris-cp-abcdef-123/node-%C" in argv
    assert "ControlPersist=120s" in argv
    assert argv.index("ControlMaster=auto") < argv.index("--")
    # A socket that would not fit (or a path ssh would expand or split): no sharing.
    for odd in ("/tmp/" + "x" * 60, "/tmp/a%hb", "/tmp/a b"):
        assert not any(
            a.startswith("ControlPath") for a in node.ssh_argv([], control_dir=Path(odd))
        )


def test_settings_name_the_node() -> None:
    settings = settings_from_env({
        "VERIS_EXECUTION_NODE": "ssh://root@node1:2222",
        "VERIS_EXECUTION_NODE_KEY_FILE": "/keys/node",
        "VERIS_EXECUTION_NODE_SSH_ARGS": "-o 'UserKnownHostsFile=/etc/veris/known hosts'",
        "VERIS_EXECUTION_NODE_RUNNER": "/opt/runner/bin/ansible-runner",
        "VERIS_EXECUTION_NODE_TARGET_KEY_FILE": "/keys/targets",
    })  # fmt: skip
    node = ExecutionNode.from_settings(settings)
    assert node is not None
    assert node.url == "ssh://root@node1:2222"
    assert node.ssh_args == ("-o", "UserKnownHostsFile=/etc/veris/known hosts")
    assert node.key_file == Path("/keys/node")
    assert node.target_key_file == Path("/keys/targets")
    assert node.python == "/opt/runner/bin/python3"
    assert ExecutionNode.from_settings(Settings()) is None


def test_remediator_runs_on_the_node_the_settings_name(tmp_path: Path) -> None:
    here = Remediator(inventory("resolved"), Settings(state_dir=tmp_path / "a"))
    assert isinstance(here.executor, AnsibleRunnerExecutor)
    there = Remediator(
        inventory("resolved"),
        Settings(state_dir=tmp_path / "b", execution_node="ssh://root@198.18.90.2"),
    )
    assert isinstance(there.executor, StreamingExecutor)
    assert there.executor.node.host == "198.18.90.2"


# -- staging -------------------------------------------------------------------------------


def _request(
    tmp_path: Path, *, check: bool = False, certificate: bool = False, phase: str = "apply"
) -> tuple[RunRequest, Path]:
    """A prepared step as the pipeline makes one; returns it and the run's files dir."""
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "fix.yml").write_text("- hosts: veris_targets\n  tasks: []\n")
    (playbooks / "other.yaml").write_text("[]\n")
    (playbooks / "README.txt").write_text("not a playbook\n")
    (playbooks / "state").mkdir()  # a directory next to the playbook is not sent
    roles = tmp_path / "roles"
    (roles / "fix" / "tasks").mkdir(parents=True)
    (roles / "fix" / "tasks" / "main.yml").write_text("[]\n")
    (roles / "fix" / "molecule" / "default").mkdir(parents=True)
    (roles / "fix" / "molecule" / "default" / "molecule.yml").write_text("{}\n")
    inv = tmp_path / "inv"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    web1:\n")
    (inv / "group_vars" / "all.yml").write_text("x: 1\n")
    (inv / "secret.key").write_text("next to the inventory, never sent\n")
    copy = tmp_path / "baselines" / "nginx.conf"
    copy.parent.mkdir()
    copy.write_text("good config\n")
    ws = Workspace(tmp_path / "state")
    step = PlaybookStep(
        phase=phase, playbook="fix.yml", check=check,
        extravars={
            "veris_alert_summary": "{{ lookup('pipe', 'id') }}",
            "veris_baseline": [{"path": "/etc/nginx/nginx.conf", "src": str(copy), "sha256": "ab"}],
        },
    )  # fmt: skip
    run_id = ws.new_run_id()
    prepared = ws.prepare_step(run_id, "0-web1", step, "web1", idle_timeout=60)
    files = prepared.private_data_dir.parent / "files"
    (files / "snapshot").mkdir(parents=True)
    (files / "snapshot" / "before").write_text("snapshot from the check run\n")
    identity = cert = None
    if certificate:
        identity, cert = tmp_path / "ssh" / "id", tmp_path / "ssh" / "id-cert.pub"
        identity.parent.mkdir()
        identity.write_text("PRIVATE\n")
        cert.write_text("CERT\n")
    request = RunRequest(
        phase=phase,
        private_data_dir=prepared.private_data_dir,
        playbook=playbooks / "fix.yml",
        inventories=(inv / "hosts.yml", prepared.target_inventory),
        check=check,
        roles_path=roles,
        control_dir=tmp_path / "cp",
        job_timeout=60,
        ssh_identity=identity,
        ssh_certificate=cert,
    )
    return request, files


def _node(tmp_path: Path, **options: Any) -> ExecutionNode:
    key = tmp_path / "target_key"
    key.write_text("TARGET KEY\n")
    key.chmod(0o644)
    return ExecutionNode.parse(
        "ssh://root@node1", runner="/opt/runner/bin/ansible-runner", target_key_file=key,
        **options,
    )  # fmt: skip


def _files(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}


def test_stage_holds_what_the_run_reads_and_nothing_else(tmp_path: Path) -> None:
    request, files = _request(tmp_path, check=True)
    stage = tmp_path / "stage"
    stage.mkdir()
    staged = stage_run(request, _node(tmp_path), stage, REMOTE)

    assert _files(stage) == {
        "project/fix.yml", "project/other.yaml",
        "roles/fix/tasks/main.yml",
        "inventories/00/hosts.yml", "inventories/00/group_vars/all.yml",
        "inventories/01/target_inventory.yml",
        "env/extravars", "env/settings",
        "keys/id",
        "baseline/000-nginx.conf",
        "artifacts/apply/controller/snapshot/before",
    }  # fmt: skip
    assert stat.S_IMODE((stage / "keys" / "id").stat().st_mode) == 0o600
    assert staged.files_dir == files
    kwargs = staged.kwargs
    assert kwargs["playbook"] == "fix.yml"
    assert kwargs["ident"] == "apply"
    assert kwargs["suppress_env_files"] is True
    assert kwargs["timeout"] == 60
    assert shlex.split(kwargs["cmdline"]) == [
        "-i", f"{REMOTE}/inventories/00/hosts.yml",
        "-i", f"{REMOTE}/inventories/01/target_inventory.yml",
        "--check", "--diff",
    ]  # fmt: skip
    env = kwargs["envvars"]
    assert env["ANSIBLE_ROLES_PATH"] == f"{REMOTE}/roles"
    assert env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == f"{REMOTE}/cp"
    assert env["PATH"].split(":")[0] == "/opt/runner/bin"
    assert str(tmp_path) not in json.dumps(kwargs)  # no controller path reaches the node
    assert kwargs["extravars"] == {
        "ansible_private_key_file": f"{REMOTE}/keys/id",
        "ansible_ssh_private_key_file": f"{REMOTE}/keys/id",
    }


def test_extra_vars_stay_unsafe_and_point_at_the_node(tmp_path: Path) -> None:
    request, _ = _request(tmp_path)
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_run(request, _node(tmp_path), stage, REMOTE)
    text = (stage / "env" / "extravars").read_text()
    assert "\n!unsafe\n" in text or text.splitlines()[2].startswith("!unsafe")
    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_constructor("!unsafe", lambda ld, node: ld.construct_mapping(node, deep=True))
    data = yaml.load(text, Loader=loader)
    assert data["veris_controller_dir"] == f"{REMOTE}/artifacts/apply/controller"
    assert data["veris_baseline"][0]["src"] == f"{REMOTE}/baseline/000-nginx.conf"
    assert data["veris_alert_summary"] == "{{ lookup('pipe', 'id') }}"  # data, not a template
    assert (stage / "env" / "settings").read_text() == (
        request.private_data_dir / "env" / "settings"
    ).read_text()


def test_a_short_lived_certificate_replaces_the_target_key(tmp_path: Path) -> None:
    request, _ = _request(tmp_path, certificate=True)
    stage = tmp_path / "stage"
    stage.mkdir()
    staged = stage_run(request, _node(tmp_path), stage, REMOTE)
    assert (stage / "keys" / "id").read_text() == "PRIVATE\n"
    assert (stage / "keys" / "id-cert.pub").read_text() == "CERT\n"
    ssh_args = staged.kwargs["envvars"]["ANSIBLE_SSH_ARGS"]
    assert f'IdentityFile="{REMOTE}/keys/id"' in ssh_args
    assert f'CertificateFile="{REMOTE}/keys/id-cert.pub"' in ssh_args
    assert "IdentitiesOnly=yes" in ssh_args
    assert staged.kwargs["extravars"]["ansible_ssh_private_key_file"] == f"{REMOTE}/keys/id"


def test_control_sockets_fit_in_a_unix_socket_path(tmp_path: Path) -> None:
    request, _ = _request(tmp_path)
    stage = tmp_path / "stage"
    stage.mkdir()
    staged = stage_run(request, _node(tmp_path), stage, REMOTE)
    # Ansible's %(directory)s/%%C (40 hex) plus the 17 bytes ssh adds while binding.
    longest = len(staged.kwargs["envvars"]["ANSIBLE_SSH_CONTROL_PATH_DIR"]) + 1 + 40 + 17
    assert longest < 108


def test_worker_command_deletes_its_directory_and_reaps_what_outlives_it() -> None:
    node = ExecutionNode.parse("ssh://node1", runner="/opt/runner/bin/ansible-runner")
    argv = worker_command(node, REMOTE)
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    assert script.startswith(
        f"/opt/runner/bin/ansible-runner worker --private-data-dir {REMOTE} --delete;"
    )
    assert "/opt/runner/bin/python3 -c" in script
    assert script.endswith(f" {REMOTE}; exit $rc")


def test_only_plain_files_come_back(tmp_path: Path) -> None:
    request, files = _request(tmp_path)
    returned = request.private_data_dir / "artifacts" / "apply" / "controller"
    (returned / "snapshot").mkdir(parents=True)
    (returned / "snapshot" / "new").write_text("fetched on the node\n")
    (returned / "evil").symlink_to("/etc/passwd")
    moved = collect_controller_files(request, files)
    assert moved == [files / "snapshot" / "new"]
    assert (files / "snapshot" / "new").read_text() == "fetched on the node\n"
    assert not (files / "evil").exists()
    assert not returned.exists()


# -- the worker's stream, replayed -----------------------------------------------------------


class _Sink(io.BytesIO):
    """The worker's stdin: keeps what was transmitted after it is closed."""

    name = "<ssh stdin>"
    sent = b""

    def close(self) -> None:
        if not self.closed:
            self.sent = self.getvalue()
        super().close()


class _Channel:
    def __init__(self, stdout: IO[bytes], rc: int = 0) -> None:
        self.stdin: IO[bytes] | None = _Sink()
        self.stdout: IO[bytes] | None = stdout
        self.rc = rc
        self.killed = False
        self.done = threading.Event()

    def poll(self) -> int | None:
        return self.rc if self.done.is_set() or self.killed else None

    def wait(self, timeout: float | None = None) -> int:
        self.done.set()
        return self.rc

    def kill(self) -> None:
        self.killed = True


def _worker_stream(tmp_path: Path, scenario: str, stem: str, status: str) -> bytes:
    """What ``ansible-runner worker`` writes: statuses, events, the artifacts, eof."""
    out = io.BytesIO()
    out.name = "<worker stdout>"  # type: ignore[misc]  # stream_dir looks at it

    def line(data: dict[str, Any]) -> None:
        out.write(json.dumps(data).encode() + b"\n")

    line({"status": "starting", "runner_ident": stem, "command": [], "env": {}, "cwd": "/"})
    line({"status": "running", "runner_ident": stem})
    for event in events(scenario, stem):
        line(event)
    line({"status": status, "runner_ident": stem})
    artifacts = tmp_path / "worker-artifacts"
    (artifacts / "controller" / "snapshot").mkdir(parents=True)
    (artifacts / "rc").write_text("0" if status == "successful" else "2")
    (artifacts / "status").write_text(status)
    (artifacts / "controller" / "snapshot" / "units").write_text("fetched on the node\n")
    stream_dir(str(artifacts), out)  # type: ignore[arg-type]
    line({"eof": True})
    return out.getvalue()


def _transmitted(sent: bytes, into: Path) -> dict[str, Any]:
    """Unpack what was transmitted, as the worker does; return its kwargs."""
    stream = io.BytesIO(sent)
    kwargs: dict[str, Any] = json.loads(stream.readline())["kwargs"]
    zipped = json.loads(stream.readline())["zipfile"]
    into.mkdir()
    unstream_dir(stream, zipped, str(into))  # type: ignore[arg-type]
    assert json.loads(stream.readline()) == {"eof": True}
    return kwargs


def _executor(
    channel: _Channel, tmp_path: Path, **kwargs: Any
) -> tuple[StreamingExecutor, list[list[str]]]:
    spawned: list[list[str]] = []

    def spawn(argv: list[str], stderr: IO[bytes]) -> _Channel:
        spawned.append(argv)
        return channel

    return StreamingExecutor(_node(tmp_path), spawn=spawn, **kwargs), spawned


def test_a_replayed_run_folds_like_a_local_one(tmp_path: Path) -> None:
    request, files = _request(tmp_path)
    channel = _Channel(io.BytesIO(_worker_stream(tmp_path, "resolved", "apply", "successful")))
    reports: list[tuple[str, str, Report]] = []
    executor, spawned = _executor(
        channel, tmp_path, on_report=lambda req, host, rep: reports.append((req.phase, host, rep))
    )

    result = executor.run(request)

    assert result.status == "successful"
    assert result.rc == 0
    assert result.summary == fold_events(events("resolved", "apply"), check=False)
    assert [(phase, rep.kind) for phase, _, rep in reports] == [
        ("apply", "units.snapshot"), ("apply", "verify"),
    ]  # fmt: skip
    # What the run fetched on the node is in the run's files dir; the check run's is kept.
    assert (files / "snapshot" / "units").read_text() == "fetched on the node\n"
    assert (files / "snapshot" / "before").is_file()
    # The worker ran in one directory, named in the session's command and the transmission.
    remote = shlex.split(spawned[0][-1])[2].split()[3]
    assert remote.startswith("/tmp/veris-")
    assert isinstance(channel.stdin, _Sink)
    kwargs = _transmitted(channel.stdin.sent, tmp_path / "unpacked")
    assert f"{remote}/inventories/00/hosts.yml" in kwargs["cmdline"]
    assert (tmp_path / "unpacked" / "project" / "fix.yml").is_file()
    assert (tmp_path / "unpacked" / "keys" / "id").read_text() == "TARGET KEY\n"
    # The staged copy (with the key) is gone from the controller.
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("veris-transmit-*/keys/id"))


def test_paths_in_reports_name_the_controller_copy(tmp_path: Path) -> None:
    """A report naming a file fetched on the node names where it lands on the controller."""
    from veris_remediate.execnode import _local_paths

    node_dir = f"{REMOTE}/artifacts/baseline/controller"
    event = {
        "event": "runner_on_ok",
        "event_data": {"res": {"veris_report": {"files": [
            {"path": "/etc/nginx/nginx.conf", "fetched": f"{node_dir}/web1/nginx.conf"},
            {"path": f"{node_dir}-not-it/x", "fetched": node_dir},
        ]}}},
    }  # fmt: skip
    local = _local_paths(event, node_dir, "/state/runs/r/0/files")
    assert local["event_data"]["res"]["veris_report"]["files"] == [
        {"path": "/etc/nginx/nginx.conf", "fetched": "/state/runs/r/0/files/web1/nginx.conf"},
        {"path": f"{node_dir}-not-it/x", "fetched": "/state/runs/r/0/files"},
    ]


def test_a_failed_run_keeps_its_status_and_rc(tmp_path: Path) -> None:
    request, _ = _request(tmp_path)
    channel = _Channel(io.BytesIO(_worker_stream(tmp_path, "resolved", "apply", "failed")))
    result = _executor(channel, tmp_path)[0].run(request)
    assert (result.status, result.rc) == ("failed", 2)


def test_a_node_that_never_ran_the_playbook_is_an_error(tmp_path: Path) -> None:
    request, _ = _request(tmp_path)
    channel = _Channel(io.BytesIO(b""), rc=255)

    def spawn(argv: list[str], stderr: IO[bytes]) -> _Channel:
        stderr.write(b"Warning: Permanently added 'node1'\nssh: connect to host node1: No route\n")
        return channel

    executor = StreamingExecutor(_node(tmp_path), spawn=spawn)
    with pytest.raises(RunnerError, match=r"did not run fix\.yml \(ssh exit 255\): ssh: connect"):
        executor.run(request)


@pytest.fixture
def endless() -> Iterator[tuple[IO[bytes], Callable[[], None]]]:
    """A worker stream that goes quiet mid-run until the node side is killed."""
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "wb")
    writer.write(json.dumps({"status": "starting", "runner_ident": "apply"}).encode() + b"\n")
    writer.flush()
    reader = os.fdopen(read_fd, "rb")

    def die() -> None:
        if not writer.closed:
            writer.close()

    yield reader, die
    die()
    reader.close()


def test_cancel_kills_the_run_on_the_node_then_the_session(
    tmp_path: Path, endless: tuple[IO[bytes], Callable[[], None]]
) -> None:
    request, _ = _request(tmp_path)
    reader, die = endless
    channel = _Channel(reader)
    calls: list[list[str]] = []

    def call(argv: list[str], timeout: float) -> int:
        calls.append(argv)
        die()  # the reaper killed the worker: its output ends
        return 0

    executor, spawned = _executor(channel, tmp_path, cancel=lambda req: True, call=call)
    result = executor.run(request)
    assert (result.status, result.rc) == ("canceled", 254)
    remote = shlex.split(spawned[0][-1])[2].split()[3]
    assert len(calls) == 1
    reap = shlex.split(calls[0][-1])
    assert reap[0] == "/opt/runner/bin/python3"
    assert reap[-1] == remote  # the reaper is told the run's directory on the node


def test_a_run_past_its_deadline_is_stopped_as_timeout(
    tmp_path: Path,
    endless: tuple[IO[bytes], Callable[[], None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from veris_remediate import execnode

    monkeypatch.setattr(execnode, "TIMEOUT_GRACE_SECONDS", 0)
    request, _ = _request(tmp_path)
    request = request.model_copy(update={"job_timeout": 1})
    reader, die = endless
    executor, _ = _executor(_Channel(reader), tmp_path, call=lambda argv, timeout: die() or 0)
    result = executor.run(request)
    assert result.status == "timeout"


# -- the lab's execution-node feature ------------------------------------------------------------


def test_execnode_lends_the_venv_and_its_python(tmp_path: Path) -> None:
    binds = execnode_binds()
    assert binds[0] == Path(sys.prefix).resolve()
    assert (binds[0] / "bin" / "ansible-runner").exists()
    assert all(not b.is_relative_to("/usr") for b in binds)
    if sys.prefix != sys.base_prefix and not Path(sys.base_prefix).is_relative_to("/usr"):
        assert Path(sys.base_prefix).resolve() in binds
    lab = Lab(tmp_path, tmp_path, prefix="xn", first_subnet=90, features=("execnode",))
    assert lab.features == ("execnode",)
    with pytest.raises(LabError, match="unknown lab feature"):
        Lab(tmp_path, tmp_path, features=("nodes",))
