"""The state directory's only writer: run directories, run records, host locks, the brake file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .exceptions import UsageError
from .planner import PlaybookStep
from .redaction import redact, redact_payload
from .render import TARGET_GROUP, render_extravars, render_target_inventory

_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
# The extra vars that carry alert data (planner.py): untrusted, printed by the playbooks,
# and sometimes holding a sender's credentials. Only a redacted copy is written.
_ALERT_VARS = ("veris_alert", "veris_alert_summary")
# A host name the fleet inventory writes as a key: the inventory's own names, nothing odd.
_HOST_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}$")


def render_fleet_inventory(hostvars: Mapping[str, Mapping[str, Any]]) -> str:
    """The target group with each host's own run data as ``!unsafe`` host vars.

    A fleet run (fleet.py) targets several hosts whose data differ (service, alert,
    assessment, snapshot). Extra vars are one set for the whole run, so each host's
    data goes beside its name instead, rendered by ``render_extravars``: the same
    ``!unsafe``-tagged mapping with every string double-quoted, so Ansible never
    templates it and no value changes type.
    """
    lines = ["all:", "  children:", f"    {TARGET_GROUP}:", "      hosts:"]
    for host, data in hostvars.items():
        if not _HOST_NAME.match(host):
            raise UsageError(f"not a usable inventory host name: {host[:80]!r}")
        body = [line for line in render_extravars(data).splitlines() if not line.startswith("#")]
        tag, rest = body[0], body[1:]
        if tag != "!unsafe":
            raise ValueError("render_extravars no longer tags its root mapping !unsafe")
        lines.append(f"        {json.dumps(host)}: {tag}")
        lines += [f"          {line}" for line in rest]
    return "\n".join(lines) + "\n"


def _alike(datas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The keys every mapping has, with the same value in each (none of fewer than two)."""
    if len(datas) < 2:
        return {}
    first, rest = datas[0], datas[1:]
    return {k: v for k, v in first.items() if all(k in d and d[k] == v for d in rest)}


class History(BaseModel):
    """One fix's recent outcomes on one host, which later decisions weigh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolved: int = 0
    rolled_back: int = 0
    failed: int = 0


class PreparedStep(BaseModel):
    """Where ansible-runner finds one step's files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: str
    check: bool
    private_data_dir: Path
    target_inventory: Path


def _private_dir(path: Path) -> Path:
    """Create ``path`` and every missing parent 0700 (``mkdir -p`` would make parents 0755)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            directory.mkdir(mode=0o700)
    return path


def _tighten(path: Path) -> None:
    """Drop group and other permissions from one file or directory of ours (not a link)."""
    try:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    except (FileNotFoundError, PermissionError):
        pass  # gone already, or not ours to change


def _tighten_tree(top: Path) -> None:
    if not top.is_dir():
        return
    _tighten(top)
    for root, dirs, files in os.walk(top):  # does not follow symlinks
        for name in (*dirs, *files):
            _tighten(Path(root) / name)


def _scrub_step(private_data_dir: Path) -> None:
    for command in (private_data_dir / "artifacts").glob("*/command"):
        command.unlink(missing_ok=True)
    _tighten_tree(private_data_dir)
    _tighten_tree(private_data_dir.parent / "files")


def _write_private(path: Path, data: str | bytes) -> None:
    """Write a file only its owner can read, in directories only its owner can open."""
    _private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


class Workspace:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runs_dir = state_dir / "runs"

    def new_run_id(self) -> str:
        return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"

    def run_dir(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise UsageError(f"not a run id: {run_id[:40]!r}")
        return self.runs_dir / run_id

    def _private_run_dir(self, run_id: str) -> Path:
        """The run's directory, made (with the state and runs dirs) 0700 before any write.

        Run directories hold the extra vars, what Ansible printed and fetched copies of
        config files. The runs dir is ours alone, so one made looser (by hand, or by an
        older version) is tightened; a state dir the operator made is left as it is.
        """
        path = _private_dir(self.run_dir(run_id))
        _tighten(self.runs_dir)
        _tighten(path)
        return path

    def prepare_step(
        self,
        run_id: str,
        slot: str,
        step: PlaybookStep,
        hosts: str | Sequence[str],
        *,
        idle_timeout: int,
    ) -> PreparedStep:
        """Write one step's private data dir: !unsafe extra vars, target inventory, settings."""
        pdd = self._private_run_dir(run_id) / slot / step.phase
        # One private directory per remediation where runs may fetch files (snapshots),
        # shared by its check, apply and rollback runs.
        files = _private_dir(self.run_dir(run_id) / slot / "files")
        extravars = {**step.extravars, "veris_controller_dir": str(files)}
        for key in _ALERT_VARS:
            if key in extravars:
                extravars[key] = redact(extravars[key])
        # ansible-runner passes an existing env/extravars as `-e @file` without parsing it.
        _write_private(pdd / "env" / "extravars", render_extravars(extravars))
        target = pdd / "target_inventory.yml"
        _write_private(
            target, render_target_inventory(*([hosts] if isinstance(hosts, str) else hosts))
        )
        # ansible-runner drops a `settings=` argument when env/settings is missing, so the
        # idle timeout only takes effect from this file.
        # pexpect_timeout is how often ansible-runner polls the cancel callback (default 5 s):
        # the brake must stop a fix run within a second or two.
        _write_private(
            pdd / "env" / "settings",
            json.dumps({"idle_timeout": idle_timeout, "pexpect_timeout": 1}) + "\n",
        )
        _private_dir(pdd / "project")
        return PreparedStep(
            phase=step.phase, check=step.check, private_data_dir=pdd, target_inventory=target
        )

    def prepare_fleet_step(
        self,
        run_id: str,
        group: str,
        phase: str,
        check: bool,
        members: Mapping[str, tuple[str, Mapping[str, Any]]],
        *,
        idle_timeout: int,
    ) -> PreparedStep:
        """One run over several hosts (fleet.py): ``members`` maps each host to its slot and
        its step's extra vars. What every host has alike (the rule's role params among it)
        stays an extra var, with the precedence it has in a single-host run; what differs
        (service, alert, assessment, its own slot's files directory) goes into the target
        inventory as that host's own ``!unsafe`` host vars. No key is both: an extra var
        would outrank the host var. Forks: one per host."""
        pdd = self._private_run_dir(run_id) / group / phase
        hostvars: dict[str, dict[str, Any]] = {}
        for host, (slot, extravars) in members.items():
            files = _private_dir(self.run_dir(run_id) / slot / "files")
            data = {**extravars, "veris_controller_dir": str(files)}
            for key in _ALERT_VARS:
                if key in data:
                    data[key] = redact(data[key])
            hostvars[host] = data
        shared = _alike(list(hostvars.values()))
        hostvars = {h: {k: v for k, v in d.items() if k not in shared} for h, d in hostvars.items()}
        if shared:
            _write_private(pdd / "env" / "extravars", render_extravars(shared))
        target = pdd / "target_inventory.yml"
        _write_private(target, render_fleet_inventory(hostvars))
        _write_private(
            pdd / "env" / "settings",
            json.dumps({"idle_timeout": idle_timeout, "pexpect_timeout": 1}) + "\n",
        )
        # ansible-runner adds env/envvars over its own environment: every host at once.
        _write_private(
            pdd / "env" / "envvars", json.dumps({"ANSIBLE_FORKS": str(max(len(members), 1))})
        )
        _private_dir(pdd / "project")
        return PreparedStep(phase=phase, check=check, private_data_dir=pdd, target_inventory=target)

    def scrub_files(self, run_id: str, slots: Sequence[str]) -> None:
        """Tighten what a fleet run fetched into each of its hosts' slot directories."""
        for slot in slots:
            _tighten_tree(self.run_dir(run_id) / slot / "files")

    def scrub(self, prepared: PreparedStep) -> None:
        """After a run: delete the environment copy ansible-runner leaves in artifacts (it
        holds the whole process environment), and take group and other permissions off
        what ansible-runner and Ansible made (``artifacts/`` and ``stderr`` come out world
        readable, fetched files as the umask says)."""
        _scrub_step(prepared.private_data_dir)

    def scrub_run(self, run_id: str) -> None:
        """Scrub every step of a run: a process killed mid-run never scrubbed its last one
        (recovery calls this before anything else)."""
        for artifacts in self.run_dir(run_id).glob("*/*/artifacts"):
            _scrub_step(artifacts.parent)

    def control_dir(self, run_id: str) -> Path:
        """SSH ControlMaster sockets shared by one run's steps (closed when the run ends)."""
        path = Path("/tmp") / f"veris-cp-{run_id[-6:]}-{os.getpid()}"  # noqa: S108 - socket paths must stay short
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def save_payload(self, run_id: str, payload: bytes | str) -> Path:
        """The payload as received, its secrets masked (redaction.py): ``approve``,
        ``rollback`` and recovery route it again, and no route needs a sender's credentials."""
        path = self._private_run_dir(run_id) / "payload"
        _write_private(path, redact_payload(payload))
        return path

    def load_payload(self, run_id: str) -> bytes:
        try:
            return (self.run_dir(run_id) / "payload").read_bytes()
        except FileNotFoundError as exc:
            raise UsageError(f"run {run_id} kept no payload (made by an older version?)") from exc

    def write_file(self, path: Path, text: str) -> None:
        """A private file inside the state dir (0600 in 0700 directories)."""
        if not path.resolve().is_relative_to(self.state_dir.resolve()):
            raise UsageError(f"{path} is outside the state dir {self.state_dir}")
        _write_private(path, text)

    def write_record(self, run_id: str, name: str, data: Mapping[str, Any]) -> Path:
        path = self._private_run_dir(run_id) / f"{name}.json"
        _write_private(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def read_record(self, run_id: str, name: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UsageError(f"no run {run_id} (looked for {path})") from exc
        return data

    def list_runs(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if _RUN_ID.match(p.name))
