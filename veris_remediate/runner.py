"""The only module that starts ansible-runner: run one prepared step, fold its events."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from .events import EventFolder, RunSummary
from .exceptions import RunnerError
from .resources import find_tool
from .role_reports import Report

RunStatus = Literal["successful", "failed", "timeout", "canceled", "error"]


class RunRequest(BaseModel):
    """One playbook run. Nothing alert-derived is in here: that lives in env/extravars."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: str
    private_data_dir: Path
    playbook: Path
    inventories: tuple[Path, ...]
    check: bool
    roles_path: Path
    control_dir: Path
    job_timeout: int  # the idle timeout is in the private data dir's env/settings
    # A short-lived SSH certificate (sshca.py) and its private key: when set, they replace
    # the inventory's key file (docs/SSH_CERTIFICATES.md says what else could add one).
    ssh_identity: Path | None = None
    ssh_certificate: Path | None = None

    @model_validator(mode="after")
    def _identity_with_certificate(self) -> RunRequest:
        if (self.ssh_identity is None) != (self.ssh_certificate is None):
            raise ValueError("ssh_identity and ssh_certificate are given together or not at all")
        for path in (self.ssh_identity, self.ssh_certificate):
            # They reach Ansible as (templated) extra vars and ssh as %-expanded options.
            if path is not None and (not path.is_absolute() or set(str(path)) & set("{}%#'\"\\")):
                raise ValueError(f"unusable SSH credential path {str(path)[:80]!r}")
        return self


class RunResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: str
    status: RunStatus
    rc: int | None
    seconds: float
    summary: RunSummary


class Executor(Protocol):
    def run(self, request: RunRequest) -> RunResult: ...


def tool_path(name: str) -> str:
    """An Ansible executable next to the running interpreter (an unactivated venv), else PATH."""
    found = find_tool(name)
    if found is None:
        raise RunnerError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def ssh_args(request: RunRequest) -> str:
    """ssh_args for every ssh, sftp and scp of the run.

    Ansible puts ssh_args first on ssh's command line, and ssh keeps the first value it
    is given for an option: these beat the inventory's ``ansible_ssh_common_args``.
    With a certificate, ``IdentitiesOnly`` keeps ssh-agent keys out of the run.
    """
    args = "-o ControlMaster=auto -o ControlPersist=120s"
    if request.ssh_identity is not None and request.ssh_certificate is not None:
        args += (
            f' -o IdentitiesOnly=yes -o IdentityFile="{request.ssh_identity}"'
            f' -o CertificateFile="{request.ssh_certificate}"'
        )
    return args


def connection_extravars(request: RunRequest) -> dict[str, str]:
    """Extra vars that make the certificate's key the run's only key file.

    IdentityFile adds up rather than being replaced, so the inventory's own
    ``ansible_ssh_private_key_file`` would be offered after the certificate and quietly
    let an expired certificate's run in. Extra vars outrank every inventory variable.
    """
    if request.ssh_identity is None:
        return {}
    key = str(request.ssh_identity)
    return {"ansible_private_key_file": key, "ansible_ssh_private_key_file": key}


def ansible_env(request: RunRequest) -> dict[str, str]:
    """Environment for ansible-playbook: fast SSH, no fact gathering, our roles only."""
    bindir = str(Path(sys.executable).parent)
    return {
        "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "ANSIBLE_ROLES_PATH": str(request.roles_path),
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": ssh_args(request),
        # Steps of one run share one SSH master: one handshake per host per run.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(request.control_dir),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_TIMEOUT": "10",
    }


class AnsibleRunnerExecutor:
    """Runs steps with ansible-runner; ``cancel(request)`` is polled while a run is in flight."""

    def __init__(
        self,
        cancel: Callable[[RunRequest], bool] | None = None,
        on_report: Callable[[RunRequest, str, Report], None] | None = None,
    ) -> None:
        self._cancel = cancel
        self._on_report = on_report

    def run(self, request: RunRequest) -> RunResult:
        import ansible_runner  # only here: importing it costs time and the rest never needs it

        tool_path("ansible-playbook")  # fail clearly before ansible-runner fails obscurely

        hook = self._on_report
        folder = EventFolder(
            check=request.check,
            on_report=(lambda host, report: hook(request, host, report)) if hook else None,
        )
        started = time.monotonic()
        kwargs: dict[str, Any] = {
            "private_data_dir": str(request.private_data_dir),
            "playbook": str(request.playbook),
            "inventory": [str(p) for p in request.inventories],
            # Not `binary=`: that switches ansible-runner to raw mode and drops the playbook.
            # PATH in envvars puts the interpreter's own ansible-playbook first instead.
            "envvars": ansible_env(request),
            "event_handler": folder,
            "quiet": True,
            # ansible-runner would otherwise copy the whole environment and argv to disk.
            "suppress_env_files": True,
            "timeout": request.job_timeout,
            "ident": request.phase,
        }
        if request.check:
            kwargs["cmdline"] = "--check --diff"
        if extravars := connection_extravars(request):
            # A second `-e` after the workspace's env/extravars file; nothing else sets these.
            kwargs["extravars"] = extravars
        if self._cancel is not None:
            cancel = self._cancel
            kwargs["cancel_callback"] = lambda: cancel(request)
        try:
            result = ansible_runner.run(**kwargs)
        except Exception as exc:  # ansible-runner raises bare ConfigurationError/OSError types
            raise RunnerError(
                f"ansible-runner could not run {request.playbook.name}: {exc}"
            ) from exc
        status = _status(result.status)
        if status in ("timeout", "canceled"):
            reap_run_processes(request.private_data_dir)
        return RunResult(
            phase=request.phase,
            status=status,
            rc=result.rc if isinstance(result.rc, int) else None,
            seconds=round(time.monotonic() - started, 3),
            summary=folder.summary(),
        )


def _process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone already, or not ours to read
        # The command name in stat may hold spaces and parentheses: split after the last ')'.
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def reap_run_processes(private_data_dir: Path) -> list[int]:
    """Kill what a stopped run left behind; return the pids signalled.

    ansible-runner's timeout and cancel kill ansible-playbook's process group, but its
    forked workers are not always in it and keep running tasks. Each of them carries
    this run's own extra-vars path on its command line, so they are found exactly;
    their descendants (module processes, ssh) go with them.
    """
    marker = str(private_data_dir).encode()
    table = _process_table()
    doomed = {pid for pid, (_, cmdline) in table.items() if marker in cmdline}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(doomed)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in doomed:
                doomed.add(child)
                stack.append(child)
    doomed.discard(os.getpid())
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(doomed)


def _status(raw: object) -> RunStatus:
    if raw in ("successful", "failed", "timeout", "canceled"):
        return raw
    return "error"


def close_control_masters(control_dir: Path) -> None:
    """Close SSH masters: an open master outlives a short-lived certificate."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "veris-control"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    shutil.rmtree(control_dir, ignore_errors=True)
