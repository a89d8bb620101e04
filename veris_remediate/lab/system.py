"""Controller-side plumbing of lab hosts: cgroups, processes, namespaces, teardown."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..exceptions import LabError
from ._util import (
    list_names,
    run_tool,
)

logger = logging.getLogger(__name__)

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_PARENT = "veris-lab"
NETNS_DIR = Path("/run/netns")
NSPAWN_RUN = Path("/run/systemd/nspawn")


class HostRecord(BaseModel):
    """What the controller holds for one booted host: nspawn's pid and the host's cgroups."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pid: int | None = None
    cgroups: tuple[str, ...] = ()


# Each host's systemd (and its services, dockerd) holds inotify instances of root's; the
# kernel's default of 128 per user runs out at ~15 hosts ("Failed to allocate manager object:
# Too many open files" in the boot log). These floors carry 100+ hosts.
INOTIFY_FLOORS = {"max_user_instances": 8192, "max_user_watches": 1048576}
_INOTIFY = Path("/proc/sys/fs/inotify")


def raise_inotify_limits(sysctl_dir: Path = _INOTIFY) -> list[str]:
    """Raise the controller's inotify limits to INOTIFY_FLOORS where they are lower (never
    lowers one). Returns what it changed, as ``name: old -> new``."""
    changed = []
    for name, floor in INOTIFY_FLOORS.items():
        path = sysctl_dir / name
        try:
            current = int(path.read_text().strip())
            if current < floor:
                path.write_text(f"{floor}\n")
                changed.append(f"fs.inotify.{name}: {current} -> {floor}")
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot raise fs.inotify.{name} to {floor}: {exc}") from exc
    for line in changed:
        logger.info("raised %s for the lab's hosts", line)
    return changed


# -- teardown -------------------------------------------------------------------------------
def destroy_host(name: str, record: HostRecord | None) -> None:
    """Kill host ``name`` and remove all it left on the controller (LAB.md's teardown).

    A SIGTERM to nspawn can leave the host's processes running, so: SIGKILL nspawn, kill
    the host's cgroups until they are empty, remove them deepest first, then the nspawn
    run files and the network namespace (the veth goes with it).
    """
    if not re.fullmatch(r"[a-z]{1,6}[1-9][0-9]{0,2}", name):
        raise LabError(f"refusing to tear down {name!r}: not a lab host name")
    for pid, machine in list(nspawn_processes()):
        if machine == name:
            _kill(pid)
            with contextlib.suppress(ChildProcessError):  # not ours: init reaps it
                os.waitpid(pid, 0)
    # Recorded paths are used only if they look like ours: a damaged state file must
    # not make us kill a whole cgroup of the controller.
    cgroups = {
        cgroup
        for cgroup in map(Path, record.cgroups if record else ())
        if cgroup.parts[-2:] == (_CGROUP_PARENT, name)
        and cgroup.is_relative_to(_CGROUP_ROOT)
        and ".." not in cgroup.parts
    }
    cgroups.update(cgroups_by_name().get(name, []))
    netns = f"veris-{name}"
    deadline = time.monotonic() + 20
    while left := _cgroup_pids(cgroups) | _netns_pids(netns):
        if time.monotonic() > deadline:
            raise LabError(f"{name}: processes {sorted(left)} survive SIGKILL")
        for cgroup in cgroups:
            with contextlib.suppress(OSError):  # cgroup v1 has no cgroup.kill
                (cgroup / "cgroup.kill").write_text("1")
        for pid in left:
            _kill(pid)
        time.sleep(0.05)
    for cgroup in cgroups:  # the shared veris-lab/ parents stay, like /run/netns
        _remove_cgroup(cgroup, deadline)
    shutil.rmtree(NSPAWN_RUN / "propagate" / name, ignore_errors=True)
    if (NETNS_DIR / netns).exists():
        run_tool(["ip", "netns", "del", netns])
    outer = Path("/sys/class/net") / f"vh{name}"
    while outer.exists():  # the kernel frees a namespace (and its veth) asynchronously
        if time.monotonic() > deadline:
            raise LabError(f"{name}: network interface {outer.name} does not go away")
        subprocess.run(["ip", "link", "del", outer.name], capture_output=True, check=False)
        time.sleep(0.05)


def _remove_cgroup(cgroup: Path, deadline: float) -> None:
    while True:
        try:
            for directory, _dirs, _files in os.walk(cgroup, topdown=False):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(directory)
            return
        except OSError as exc:  # EBUSY for a moment while the kernel releases the cgroup
            if time.monotonic() > deadline:
                raise LabError(f"cannot remove cgroup {cgroup}: {exc}") from exc
            time.sleep(0.05)


def drop_image_locks(rootfs: Path) -> None:
    """Remove nspawn's lock files for ``rootfs`` when no host holds them (SIGKILL leaves them)."""
    with contextlib.suppress(OSError):
        info = rootfs.stat()
        for lock in (
            NSPAWN_RUN / "locks" / f"inode-{info.st_dev}:{info.st_ino}",
            rootfs.parent / f".#{rootfs.name}.lck",
        ):
            with contextlib.suppress(OSError), lock.open("r+") as handle:
                # A running host holds an OFD read lock; a POSIX lock conflicts with it
                # (flock would not), so this fails and leaves the file while any host is up.
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                lock.unlink()


# -- processes and cgroups ------------------------------------------------------------------
def _machine_of(pid: int | None) -> str | None:
    """The machine name if ``pid`` is a live systemd-nspawn."""
    if not is_alive(pid):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if Path(argv[0]).name != "systemd-nspawn":
        return None
    for flag, value in itertools.pairwise(argv):
        if flag in {"-M", "--machine"}:
            return value
    return None


def is_nspawn(pid: int | None, name: str) -> bool:
    return _machine_of(pid) == name


def is_alive(pid: int | None) -> bool:
    """True while ``pid`` runs and is no zombie (one of ours is reaped)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def nspawn_processes() -> Iterator[tuple[int, str]]:
    for entry in list_names(Path("/proc")):
        if entry.isdigit() and (machine := _machine_of(int(entry))) is not None:
            yield int(entry), machine


def _kill(pid: int) -> None:
    if pid > 1 and pid != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _hierarchy_dir(hierarchy_id: str, controllers: str) -> Path | None:
    """Where a line of /proc/self/cgroup is mounted (hybrid, pure v1 or pure v2)."""
    if hierarchy_id == "0":
        candidates = [_CGROUP_ROOT / "unified", _CGROUP_ROOT]
    else:
        name = controllers.removeprefix("name=")
        candidates = [_CGROUP_ROOT / part for part in (name, *name.split(",")) if part]
    return next((path for path in candidates if (path / "cgroup.procs").exists()), None)


def make_cgroups(name: str) -> list[Path]:
    """Create ``.../veris-lab/<name>`` below this process's cgroup in every hierarchy."""
    made = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        base = _hierarchy_dir(hierarchy_id, controllers)
        if base is None:
            continue
        parent = base / path.lstrip("/") / _CGROUP_PARENT
        for directory in (parent, parent / name):
            directory.mkdir(exist_ok=True)
            if "cpuset" in controllers.split(","):
                # A new cpuset has no CPUs and takes no process until given its parent's.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (directory / knob).read_text().strip():
                        (directory / knob).write_text((directory.parent / knob).read_text())
        made.append(parent / name)
    return made


def cgroups_by_name() -> dict[str, list[Path]]:
    """Every ``veris-lab/<name>`` cgroup in every hierarchy, whichever process made it."""
    found: dict[str, list[Path]] = {}
    for directory, subdirs, _files in os.walk(_CGROUP_ROOT):
        if _CGROUP_PARENT in subdirs:
            subdirs.remove(_CGROUP_PARENT)  # the hosts' own trees are not searched
            for name in list_names(Path(directory) / _CGROUP_PARENT):
                cgroup = Path(directory) / _CGROUP_PARENT / name
                if cgroup.is_dir():
                    found.setdefault(name, []).append(cgroup)
    return found


def _cgroup_pids(cgroups: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for cgroup in cgroups:
        for directory, _dirs, files in os.walk(cgroup):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    pids.update(map(int, (Path(directory) / "cgroup.procs").read_text().split()))
    return pids


def _netns_pids(netns: str) -> set[int]:
    if not (NETNS_DIR / netns).exists():
        return set()
    done = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return {int(pid) for pid in done.stdout.split() if pid.isdigit()}
