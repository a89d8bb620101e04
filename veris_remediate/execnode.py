"""Runs steps on an execution node: ansible-runner's transmit → worker (over SSH) → process.

The protocol AWX and Receptor use (docs/SCALING.md "Execution nodes"). For each run:

1. **stage** a private data dir holding everything the run reads on the controller: the
   playbook's directory (``project/``), the roles (``roles/``), each inventory source
   (``inventories/NN/``), ``env/`` (the ``!unsafe`` extra vars with controller paths
   rewritten to the node's, the runner settings), the key or short-lived certificate the
   node uses to reach the targets (``keys/``), the last-known-good copies the run may
   restore (``baseline/``) and the run's files directory (``artifacts/<ident>/controller``);
2. **transmit** it into ``ssh NODE ansible-runner worker --private-data-dir DIR --delete``;
3. **process** the worker's output here: the same EventFolder folds the events as they
   stream (``on_report`` hears a snapshot while the run is still going; paths under the
   node's files directory in reports read as the controller's), the artifacts come back
   into the run's own private data dir, and what the run fetched "to the controller"
   (baseline copies, snapshots) is moved into the run's files directory.

The runs of one remediation share one SSH connection to the node (a master in the
remediation's control directory, closed with the others when it ends).

ansible-runner's ``process`` never polls a cancel callback, so cancel and the
controller-side timeout stop the run on the node itself: a second SSH session kills every
process whose command line carries the run's directory on the node (the worker,
ansible-playbook, its forks and their SSH masters, exactly as ``runner.reap_run_processes``
does locally), and the worker's SSH session is then closed.

``delegate_to: localhost`` tasks run on the node, the vantage point of an execution node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .events import EventFolder
from .exceptions import RunnerError, UsageError
from .render import render_extravars
from .role_reports import Report
from .runner import (
    RunRequest,
    RunResult,
    RunStatus,
    ansible_env,
    connection_extravars,
)
from .settings import Settings

logger = logging.getLogger(__name__)

_NODE_URL = re.compile(
    r"ssh://(?:(?P<user>[a-z_][a-z0-9_.-]{0,31})@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?/?"
)
_REMOTE_COMMAND = re.compile(r"[A-Za-z0-9_./+-]{1,255}")
# A control socket path must fit in 108 bytes with "/node-", %C's 40 hex digits and the 17
# bytes ssh appends while binding; no '%' (ssh expands it) and no space (ends the option).
_CONTROL_DIR = re.compile(r"/[A-Za-z0-9_./-]{1,43}")
# Not copied to the node: test scenarios and caches (roles/*/molecule is most of roles/).
_ROLE_IGNORE = shutil.ignore_patterns("molecule", "__pycache__", "*.pyc", ".git")
# How often the cancel callback is polled while a run is in flight (the local runner: 1 s).
POLL_SECONDS = 0.5
# The worker enforces the job timeout itself; this much later the controller stops it.
TIMEOUT_GRACE_SECONDS = 30
# Kills what a stopped run left on the node, then removes its directory. Runs there with
# any python3: stdlib only; argv[1] is the run's directory. Its own ancestors (the shell
# that started it) carry the directory too and are spared.
_REAP = """
import os, shutil, signal, sys
mark = sys.argv[1].encode()
table = {}
for e in os.listdir('/proc'):
    if e.isdigit():
        try:
            stat = open('/proc/%s/stat' % e).read()
            cmd = open('/proc/%s/cmdline' % e, 'rb').read()
        except OSError:
            continue
        table[int(e)] = (int(stat.rsplit(')', 1)[1].split()[1]), cmd)
spare, pid = set(), os.getpid()
while pid in table and pid not in spare:
    spare.add(pid)
    pid = table[pid][0]
doomed = {p for p, (_, cmd) in table.items() if mark in cmd} - spare
kids = {}
for p, (pp, _) in table.items():
    kids.setdefault(pp, []).append(p)
stack = list(doomed)
while stack:
    for k in kids.get(stack.pop(), []):
        if k not in doomed and k not in spare:
            doomed.add(k)
            stack.append(k)
for p in doomed:
    try:
        os.kill(p, signal.SIGKILL)
    except OSError:
        pass
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class ExecutionNode(BaseModel):
    """Where runs execute, and how the controller and the node log in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    key_file: Path | None = None  # the controller's key for the node
    ssh_args: tuple[str, ...] = ()  # e.g. -o UserKnownHostsFile=… (host keys are checked)
    runner: str = "ansible-runner"  # ansible-runner on the node: a path or a name on PATH
    # The key the node uses to reach the targets, sent with each run (a run with a
    # short-lived certificate sends that instead). None: the node's own SSH setup.
    target_key_file: Path | None = None

    @classmethod
    def parse(cls, url: str, **options: Any) -> ExecutionNode:
        """``ssh://[user@]host[:port]`` plus the other fields."""
        match = _NODE_URL.fullmatch(url)
        if match is None:
            raise UsageError(f"execution node must be ssh://[user@]host[:port], not {url[:80]!r}")
        runner = options.get("runner", "ansible-runner")
        if not _REMOTE_COMMAND.fullmatch(runner):
            raise UsageError(f"unusable execution node runner path {runner[:80]!r}")
        return cls(
            host=match["host"].strip("[]"),
            user=match["user"],
            port=int(match["port"] or 22),
            **options,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ExecutionNode | None:
        if not settings.execution_node:
            return None
        try:
            ssh_args = tuple(shlex.split(settings.execution_node_ssh_args))
        except ValueError as exc:
            raise UsageError(f"VERIS_EXECUTION_NODE_SSH_ARGS: {exc}") from exc
        return cls.parse(
            settings.execution_node,
            key_file=settings.execution_node_key_file,
            ssh_args=ssh_args,
            runner=settings.execution_node_runner,
            target_key_file=settings.execution_node_target_key_file,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}:{self.port}"

    @property
    def python(self) -> str:
        """A python3 on the node: the runner's own, else the one on PATH."""
        if self.runner.startswith("/"):
            return str(Path(self.runner).parent / "python3")
        return "python3"

    def ssh_argv(self, command: Sequence[str], *, control_dir: Path | None = None) -> list[str]:
        """ssh running ``command`` on the node (quoted here: the node's shell splits it).

        With ``control_dir`` (a remediation's, runner.RunRequest), the runs of one
        remediation share one connection to the node, as they share one per target:
        later runs skip the handshake, and ``close_control_masters`` closes it with the
        others when the remediation ends.
        """
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-p", str(self.port)]  # fmt: skip
        if self.key_file is not None:
            argv += ["-i", str(self.key_file), "-o", "IdentitiesOnly=yes"]
        argv += [*self.ssh_args, "-l", self.user] if self.user else list(self.ssh_args)
        if control_dir is not None and _CONTROL_DIR.fullmatch(str(control_dir)):
            argv += ["-o", "ControlMaster=auto", "-o", "ControlPersist=120s",
                     "-o", f"ControlPath={control_dir}/node-%C"]  # fmt: skip
        return [*argv, "--", self.host, shlex.join(command)]


class Channel(Protocol):
    """The worker's SSH session, as the executor uses it (subprocess.Popen fits)."""

    stdin: IO[bytes] | None
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


def _spawn(argv: list[str], stderr: IO[bytes]) -> Channel:
    # Its own session: a Ctrl-C meant for the CLI must not cut the stream; stopping a run
    # is the cancel callback's decision (the run is then rolled back).
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        start_new_session=True,
    )  # fmt: skip


def _call(argv: list[str], timeout: float) -> int:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        return -1


class _Loader(yaml.SafeLoader):
    """Reads render.py's extra-vars file: its root mapping is tagged ``!unsafe``."""


_Loader.add_constructor(
    "!unsafe",
    lambda loader, node: loader.construct_mapping(node, deep=True),  # type: ignore[arg-type]
)


class Staged(BaseModel):
    """A private data dir ready to transmit, and what the worker is told about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    directory: Path  # on the controller (temporary)
    remote_dir: str  # where the worker unpacks it on the node
    kwargs: dict[str, Any]  # for ansible_runner.run(streamer="transmit", ...)
    files_dir: Path | None  # the run's files directory on the controller, if it has one


def _copy_file(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(src, dest)


def _stage_inventories(sources: Sequence[Path], stage: Path, remote: str) -> list[str]:
    """Copy each source into its own directory (a file with its group_vars/host_vars)."""
    args: list[str] = []
    for index, source in enumerate(sources):
        rel = Path("inventories") / f"{index:02d}" / source.name
        if source.is_dir():
            shutil.copytree(source, stage / rel, ignore=_ROLE_IGNORE)
        else:
            _copy_file(source, stage / rel)
            for sibling in ("group_vars", "host_vars"):
                if (source.parent / sibling).is_dir():
                    shutil.copytree(source.parent / sibling, stage / rel.parent / sibling)
        args += ["-i", f"{remote}/{rel}"]
    return args


def _stage_extravars(request: RunRequest, stage: Path, remote: str, controller: str) -> Path | None:
    """Copy env/, the extra vars rewritten to the node's paths; return the files dir.

    The run's files directory (``veris_controller_dir``) travels inside the artifacts
    directory, so what the run fetches there comes back with the artifacts; the
    last-known-good copies a repair may restore travel in ``baseline/``. Everything
    stays ``!unsafe`` (render.py writes the new file too).
    """
    env = request.private_data_dir / "env"
    files_dir: Path | None = None
    if not env.is_dir():
        return None
    for item in env.iterdir():
        if item.is_file() and item.name != "extravars":
            _copy_file(item, stage / "env" / item.name)
    source = env / "extravars"
    if not source.is_file():
        return None
    data = yaml.load(source.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader
    if not isinstance(data, dict):
        raise RunnerError(f"{source} is not a mapping")
    if isinstance(data.get("veris_controller_dir"), str):
        files_dir = Path(data["veris_controller_dir"])
        if files_dir.is_dir():
            shutil.copytree(files_dir, stage / "artifacts" / request.phase / "controller")
        data["veris_controller_dir"] = controller
    for index, copy in enumerate(data.get("veris_baseline") or []):
        if isinstance(copy, dict) and isinstance(copy.get("src"), str):
            rel = f"baseline/{index:03d}-{Path(copy['src']).name}"
            with contextlib.suppress(FileNotFoundError):  # the role reports a missing copy
                _copy_file(Path(copy["src"]), stage / rel)
            copy["src"] = f"{remote}/{rel}"
    (stage / "env").mkdir(exist_ok=True, mode=0o700)
    (stage / "env" / "extravars").write_text(render_extravars(data))
    return files_dir


def _controller_dir(remote: str, request: RunRequest) -> str:
    """The run's files directory on the node: inside the artifacts, so it comes back."""
    return f"{remote}/artifacts/{request.phase}/controller"


def _local_paths(value: Any, remote: str, local: str) -> Any:
    if isinstance(value, str):
        inside = value == remote or value.startswith(remote + "/")
        return local + value[len(remote) :] if inside else value
    if isinstance(value, dict):
        return {k: _local_paths(v, remote, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_paths(v, remote, local) for v in value]
    return value


def _with_local_paths(
    folder: EventFolder, remote: str, staged: Staged
) -> Callable[[Mapping[str, Any]], bool]:
    """The folder, hearing the run's files under their controller paths.

    Reports name files the run fetched "to the controller" (baseline copies, snapshots):
    by the time the pipeline reads them they are there (collect_controller_files).
    """
    if staged.files_dir is None:
        return folder
    local = str(staged.files_dir)

    def handler(event: Mapping[str, Any]) -> bool:
        return folder(_local_paths(dict(event), remote, local))

    return handler


def stage_run(request: RunRequest, node: ExecutionNode, stage: Path, remote: str) -> Staged:
    """Fill ``stage`` with what the run reads on the controller; build the worker's kwargs."""
    stage.chmod(0o700)
    project = stage / "project"
    project.mkdir(mode=0o700)
    # The playbook's own directory, files only (entry playbooks may import siblings).
    for item in request.playbook.parent.iterdir():
        if item.is_file() and item.suffix in (".yml", ".yaml"):
            shutil.copy2(item, project / item.name)
    shutil.copytree(request.roles_path, stage / "roles", ignore=_ROLE_IGNORE)
    inventory_args = _stage_inventories(request.inventories, stage, remote)
    files_dir = _stage_extravars(request, stage, remote, _controller_dir(remote, request))
    updates: dict[str, Any] = {
        "roles_path": Path(f"{remote}/roles"),
        # Short: a socket path must fit in 108 bytes with ssh's suffix.
        "control_dir": Path(f"{remote}/cp"),
    }
    if request.ssh_identity is not None and request.ssh_certificate is not None:
        _copy_file(request.ssh_identity, stage / "keys" / "id")
        _copy_file(request.ssh_certificate, stage / "keys" / "id-cert.pub")
        updates["ssh_identity"] = Path(f"{remote}/keys/id")
        updates["ssh_certificate"] = Path(f"{remote}/keys/id-cert.pub")
    elif node.target_key_file is not None:
        _copy_file(node.target_key_file, stage / "keys" / "id")
    if (stage / "keys").is_dir():
        for key in (stage / "keys").iterdir():
            key.chmod(0o600)
    on_node = request.model_copy(update=updates)
    envvars = ansible_env(on_node)
    # The node's own PATH: the runner's directory first, where ansible-playbook lives.
    runner_bin = [str(Path(node.runner).parent)] if node.runner.startswith("/") else []
    envvars["PATH"] = ":".join([*runner_bin, "/usr/local/bin", "/usr/bin", "/bin",
                                "/usr/local/sbin", "/usr/sbin", "/sbin"])  # fmt: skip
    extravars = connection_extravars(on_node)
    if not extravars and node.target_key_file is not None:
        # As with a certificate: extra vars outrank the inventory's key file.
        extravars = connection_extravars(
            on_node.model_copy(update={"ssh_identity": Path(f"{remote}/keys/id")})
        )
    cmdline = [*inventory_args, *(["--check", "--diff"] if request.check else [])]
    kwargs: dict[str, Any] = {
        "playbook": request.playbook.name,
        "ident": request.phase,
        "envvars": envvars,
        "cmdline": shlex.join(cmdline),
        "quiet": True,
        "suppress_env_files": True,
        "timeout": request.job_timeout,
    }
    if extravars:
        kwargs["extravars"] = extravars
    return Staged(directory=stage, remote_dir=remote, kwargs=kwargs, files_dir=files_dir)


def worker_command(node: ExecutionNode, remote: str) -> list[str]:
    """The node's side: the worker, then the reaper for what it leaves (SSH masters)."""
    script = (
        f"{shlex.quote(node.runner)} worker --private-data-dir {shlex.quote(remote)} --delete; "
        f"rc=$?; {shlex.quote(node.python)} -c {shlex.quote(_REAP)} {shlex.quote(remote)}; "
        "exit $rc"
    )
    return ["sh", "-c", script]


def reap_command(node: ExecutionNode, remote: str) -> list[str]:
    return [node.python, "-c", _REAP, remote]


def collect_controller_files(request: RunRequest, files_dir: Path | None) -> list[Path]:
    """Move what the run fetched on the node into the run's files directory."""
    returned = request.private_data_dir / "artifacts" / request.phase / "controller"
    moved: list[Path] = []
    if files_dir is not None and returned.is_dir():
        for root, _dirs, names in os.walk(returned):
            for name in names:
                src = Path(root) / name
                if src.is_symlink() or not src.is_file():
                    continue  # only plain files come back
                dest = files_dir / src.relative_to(returned)
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.replace(src, dest)
                moved.append(dest)
    shutil.rmtree(returned, ignore_errors=True)
    return moved


def _read_rc(request: RunRequest) -> int | None:
    try:
        return int((request.private_data_dir / "artifacts" / request.phase / "rc").read_text())
    except (OSError, ValueError):
        return None


def _status(raw: object) -> RunStatus:
    if raw in ("successful", "failed", "timeout", "canceled"):
        return raw
    return "error"


class StreamingExecutor:
    """Runs steps on an execution node; ``cancel(request)`` is polled while a run is in flight."""

    def __init__(
        self,
        node: ExecutionNode,
        cancel: Callable[[RunRequest], bool] | None = None,
        on_report: Callable[[RunRequest, str, Report], None] | None = None,
        *,
        spawn: Callable[[list[str], IO[bytes]], Channel] = _spawn,
        call: Callable[[list[str], float], int] = _call,
    ) -> None:
        self.node = node
        self._cancel = cancel
        self._on_report = on_report
        self._spawn = spawn  # tests hand in a channel that replays a worker's stream
        self._call = call

    def run(self, request: RunRequest) -> RunResult:
        hook = self._on_report
        folder = EventFolder(
            check=request.check,
            on_report=(lambda host, report: hook(request, host, report)) if hook else None,
        )
        started = time.monotonic()
        remote = f"/tmp/veris-{secrets.token_hex(12)}"  # noqa: S108 - see stage_run
        with tempfile.TemporaryFile() as stderr:
            staged, channel = self._start(request, remote, stderr)
            try:
                transmitted = time.monotonic() - started
                handler = _with_local_paths(folder, _controller_dir(remote, request), staged)
                stopped, outcome = self._process(request, handler, channel, remote, started)
                outcome["transmitted"] = transmitted
                rc = _wait(channel)
            finally:
                _close(channel)
            stderr.seek(0)
            ssh_error = stderr.read()[-2000:].decode(errors="replace").strip()
        if "error" in outcome:
            raise RunnerError(
                f"processing the stream from {self.node.url} failed: {outcome['error']}"
            ) from outcome["error"]
        status: RunStatus = stopped or _status(outcome.get("status"))
        if "at_starting" not in outcome and stopped is None:  # ansible-playbook never ran
            lines = [x for x in ssh_error.splitlines() if x and not x.startswith("Warning:")]
            why = "; ".join(lines[-3:]) or outcome.get("explanation")
            raise RunnerError(
                f"execution node {self.node.url} did not run {request.playbook.name} "
                f"(ssh exit {rc}): {why or 'no output'}"
            )
        collect_controller_files(request, staged.files_dir)
        logger.debug(
            "%s on %s: staged+transmitted in %.2f s, worker %s",
            request.phase, self.node.url, outcome.get("transmitted", 0.0),
            ", ".join(f"{k[3:]} at {v:.2f} s" for k, v in outcome.items() if k.startswith("at_")),
        )  # fmt: skip
        return RunResult(
            phase=request.phase,
            status=status,
            rc=254 if stopped else _read_rc(request),
            seconds=round(time.monotonic() - started, 3),
            summary=folder.summary(),
        )

    def _start(self, request: RunRequest, remote: str, stderr: IO[bytes]) -> tuple[Staged, Channel]:
        """Stage the run, open the worker's session and transmit; the staged copy (keys
        included) is deleted before this returns."""
        import ansible_runner  # only here: importing it costs time and the rest never needs it

        with tempfile.TemporaryDirectory(prefix="veris-transmit-") as tmp:
            try:
                staged = stage_run(request, self.node, Path(tmp), remote)
            except (OSError, yaml.YAMLError) as exc:
                raise RunnerError(f"could not stage {request.playbook.name}: {exc}") from exc
            argv = self.node.ssh_argv(
                worker_command(self.node, remote), control_dir=request.control_dir
            )
            channel = self._spawn(argv, stderr)
            try:
                ansible_runner.run(
                    streamer="transmit", _output=channel.stdin,
                    private_data_dir=str(staged.directory), cancel_callback=lambda: False,
                    **staged.kwargs,
                )  # fmt: skip
                assert channel.stdin is not None
                channel.stdin.close()  # the worker starts at end of input
            except (OSError, ValueError) as exc:  # the session died under us: process says why
                logger.warning("transmit to %s failed: %s", self.node.url, exc)
            except BaseException:
                _close(channel)
                raise
        return staged, channel

    def _process(
        self,
        request: RunRequest,
        handler: Callable[[Mapping[str, Any]], bool],
        channel: Channel,
        remote: str,
        started: float,
    ) -> tuple[RunStatus | None, dict[str, Any]]:
        """Fold the worker's stream in a thread; poll cancel and the deadline meanwhile."""
        import ansible_runner

        outcome: dict[str, Any] = {}

        def status_handler(data: Mapping[str, Any], runner_config: object = None) -> None:
            outcome.setdefault(f"at_{data.get('status')}", time.monotonic() - started)
            if data.get("job_explanation"):  # the worker's, or process's own about the stream
                outcome.setdefault("explanation", str(data["job_explanation"])[:500])

        def process() -> None:
            try:
                result = ansible_runner.run(
                    streamer="process", _input=channel.stdout,
                    private_data_dir=str(request.private_data_dir), ident=request.phase,
                    event_handler=handler, status_handler=status_handler, quiet=True,
                    cancel_callback=lambda: False,
                )  # fmt: skip
                outcome["status"] = result.status
            except Exception as exc:  # ansible-runner raises bare types; re-raised as ours
                outcome["error"] = exc

        thread = threading.Thread(target=process, name=f"veris-process-{request.phase}")
        thread.start()
        deadline = started + request.job_timeout + TIMEOUT_GRACE_SECONDS
        stopped: RunStatus | None = None
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            if stopped is not None or not thread.is_alive():
                continue
            if self._cancel is not None and self._cancel(request):
                stopped = "canceled"
            elif time.monotonic() > deadline:
                stopped = "timeout"
            if stopped is not None:
                self._stop(channel, remote, request.control_dir)
        return stopped, outcome

    def _stop(self, channel: Channel, remote: str, control_dir: Path) -> None:
        """Kill the run on the node, then close the worker's session."""
        argv = self.node.ssh_argv(reap_command(self.node, remote), control_dir=control_dir)
        rc = self._call(argv, 30.0)
        if rc != 0:
            logger.warning("could not stop the run on %s (ssh exit %s)", self.node.url, rc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            channel.wait(timeout=5)
        if channel.poll() is None:
            channel.kill()


def _close(channel: Channel) -> None:
    for stream in (channel.stdin, channel.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if channel.poll() is None:
        channel.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            channel.wait(timeout=5)


def _wait(channel: Channel) -> int | None:
    try:
        return channel.wait(timeout=30)
    except subprocess.TimeoutExpired:
        channel.kill()
        return None


def node_info(node: ExecutionNode, timeout: float = 30.0) -> dict[str, Any]:
    """``ansible-runner worker --worker-info`` on the node (version, CPUs, memory)."""
    argv = node.ssh_argv([node.runner, "worker", "--worker-info"])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RunnerError(f"execution node {node.url} did not answer in {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise RunnerError(f"execution node {node.url}: {done.stderr.strip()[-500:]}")
    info = yaml.safe_load(done.stdout)
    if not isinstance(info, dict):
        raise RunnerError(f"execution node {node.url} answered {done.stdout[:200]!r}")
    return {str(k): v for k, v in info.items()} | {"node": node.url}
