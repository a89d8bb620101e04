"""Boot, probe and remove disposable Debian lab hosts (systemd-nspawn, one netns each).

A lab is hosts ``<prefix>1..N``. They share one cached, read-only Debian bookworm root
file system (``--volatile=overlay``: a host's writes live in its own tmpfs and vanish
when it stops). Each host runs real systemd in its own network namespace, joined to the
controller by a veth pair on 198.18.<s>.0/30 (the benchmarking range, routed nowhere),
and root logs in over SSH with the lab's key. Everything a host leaves on the controller
(process, cgroups, netns, veth, nspawn run files) is found again by its name, so ``down``
also works when the state file is lost. Recipes verified in LAB.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from .exceptions import LabError

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "ufw", "iptables",
    "redis-server", "nginx-light", "procps", "iproute2", "sudo", "curl",
)  # fmt: skip
# Runs once in the new root file system (chroot). Part of the cache key: edit it, get a rebuild.
POST_SCRIPT = """\
set -eu
rm -f /etc/hostname             # else every host is named after the controller
install -d -m 0700 /root/.ssh   # sshd StrictModes; authorized_keys is bind-mounted per lab
systemctl enable ssh.service nginx.service redis-server.service
apt-get clean
# ufw stays installed but inactive (its package default, ENABLED=no): roles turn it on.
"""
NEEDED_UNITS = frozenset({"ssh.service", "nginx.service", "redis-server.service"})
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
    "-o", "IdentitiesOnly=yes",
)  # fmt: skip
_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
_PREFIX_RE = re.compile(r"[a-z]{1,6}")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_PARENT = "veris-lab"
_NETNS_DIR = Path("/run/netns")
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_NSPAWN_RUN = Path("/run/systemd/nspawn")
# nspawn reads SYSTEMD_NSPAWN_* from its environment (one makes /proc/sys writable, which
# would let a host change the controller's kernel settings): give it a clean one.
_NSPAWN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# The launcher joins the host's cgroups, then becomes nspawn ($$ stays nspawn's pid after
# exec). Without systemd on the controller every host would otherwise share one cgroup
# and `systemctl` inside them breaks. Paths come in as argv, never as shell text.
_JOIN_CGROUPS_AND_EXEC = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; '
    'shift; n=$((n - 1)); done; exec "$@"'
)


class LabHost(BaseModel):
    """One lab host as ``status`` sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    address: str
    netns: str
    pid: int | None
    running: bool
    ready: bool


class _HostRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pid: int | None = None
    cgroups: tuple[str, ...] = ()


class _State(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str
    first_subnet: int
    rootfs: str = ""
    hosts: dict[str, _HostRecord] = Field(default_factory=dict)

    def with_host(self, name: str, record: _HostRecord) -> _State:
        return self.model_copy(update={"hosts": {**self.hosts, name: record}})


def require_root_and_tools() -> None:
    """Raise LabError unless we are root and the controller has the lab's tools."""
    if os.geteuid() != 0:
        raise LabError(
            "lab hosts need root (network namespaces, cgroups, systemd-nspawn): run as root"
        )
    missing = sorted(tool for tool in _TOOLS if shutil.which(tool) is None)
    if missing:
        packages = " ".join(sorted({_TOOLS[tool] for tool in missing}))
        raise LabError(
            f"lab tools missing: {', '.join(missing)}; run `make setup` "
            f"or `apt-get install {packages}`"
        )


def recipe_digest() -> str:
    """First 12 hex digits of the root file system recipe's sha256 (the cache key)."""
    recipe = {"suite": SUITE, "variant": "minbase", "packages": PACKAGES, "post": POST_SCRIPT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_path(cache_dir: Path) -> Path:
    """Where the current recipe's root file system is cached."""
    return cache_dir.absolute() / f"rootfs-{recipe_digest()}"


def ensure_rootfs(cache_dir: Path) -> Path:
    """The cached root file system for the current recipe, built with debootstrap if absent."""
    final = rootfs_path(cache_dir)
    if final.is_dir():
        return final
    with _as_lab_error("building the lab root file system"):
        final.parent.mkdir(parents=True, exist_ok=True)
        # One lock for every build in this cache: concurrent debootstraps would also write
        # the same files in the shared debs/ download cache.
        with _flock(final.parent / "build.lock"):
            if not final.is_dir():  # else another process built it while we waited
                _debootstrap(final)
    return final


def _debootstrap(final: Path) -> None:
    """Build into a temporary directory beside ``final``, then rename it (atomic)."""
    cache_dir = final.parent
    for stale in cache_dir.glob(f".{final.name}.*"):  # a build that was killed
        _remove_tree(stale)
    debs = cache_dir / "debs"  # keeps downloads across recipe changes
    debs.mkdir(exist_ok=True)
    log_path = cache_dir / f"{final.name}.log"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        with log_path.open("w") as log_file:
            for argv in (
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 f"--cache-dir={debs}", SUITE, str(tmp)],
                ["chroot", str(tmp), "/bin/sh", "-c", POST_SCRIPT],
            ):  # fmt: skip
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    timeout=1800, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    raise LabError(
                        f"building the lab root file system failed ({argv[0]} exit "
                        f"{done.returncode}); see {log_path}:\n{_tail(log_path)}"
                    )
        tmp.chmod(0o755)  # mkdtemp made it 0700, and it becomes the hosts' "/"
        tmp.rename(final)
    except BaseException:
        _remove_tree(tmp)
        raise


class Lab:
    """Disposable lab hosts ``<prefix>1..N``, recorded under ``state_dir/lab``."""

    def __init__(
        self, state_dir: Path, cache_dir: Path, *, prefix: str = "lab", first_subnet: int = 1
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise LabError(f"lab prefix must be 1-6 lowercase letters, not {prefix!r}")
        if not 1 <= first_subnet <= 255:
            raise LabError(f"first_subnet must be in 1..255, not {first_subnet}")
        self.prefix = prefix
        self.first_subnet = first_subnet
        self._dir = Path(state_dir).absolute() / "lab"
        self._cache_dir = Path(cache_dir).absolute()
        if ":" in str(self._dir):  # nspawn's --bind-ro=SRC:DST cannot carry it
            raise LabError(f"lab state directory may not contain ':': {self._dir}")

    # -- names and addresses ----------------------------------------------------------------
    def _index(self, name: str) -> int:
        match = re.fullmatch(rf"{self.prefix}([1-9][0-9]{{0,2}})", name)
        if match is None or self.first_subnet + int(match[1]) - 1 > 255:
            raise LabError(f"{name!r} is not a host name of lab {self.prefix!r}")
        return int(match[1])

    def _address(self, name: str, side: int) -> str:
        return f"198.18.{self.first_subnet + self._index(name) - 1}.{side}"

    def inventory_path(self) -> Path:
        return self._dir / "inventory.yml"

    def ssh_argv(self, name: str) -> list[str]:
        """Argv prefix that runs a command on host ``name`` as root.

        Append the command as one shell-quoted string (``shlex.join``): ssh joins its
        arguments with spaces and the host's shell splits them again.
        """
        key = self._dir / "id_ed25519"
        return ["ssh", "-F", "/dev/null", "-i", str(key), *SSH_OPTIONS,
                f"root@{self._address(name, 2)}"]  # fmt: skip

    # -- public operations ------------------------------------------------------------------
    def up(self, hosts: int = 1, *, timeout: float = 120.0) -> Path:
        """Boot hosts 1..max(hosts, those already up) and wait until all are ready.

        Idempotent: running hosts are kept (never removed) and only waited for. ``timeout``
        bounds the wait for readiness, not a first root file system build.
        """
        require_root_and_tools()
        if hosts < 1 or self.first_subnet + hosts - 1 > 255:
            raise LabError(f"cannot have {hosts} hosts from subnet {self.first_subnet} (max 255)")
        with _as_lab_error("lab up"), self._locked():
            state = self._load_state()
            pub = self._ensure_key()
            rootfs = ensure_rootfs(self._cache_dir)
            count = max([hosts, *(self._index(name) for name in state.hosts)])
            names = [f"{self.prefix}{k}" for k in range(1, count + 1)]
            fresh: set[str] = set()
            state = state.model_copy(update={"rootfs": str(rootfs)})
            for name in names:
                record = state.hosts.get(name)
                if record is not None and _is_nspawn(record.pid, name):
                    continue
                _destroy(name, record)  # leftovers of a host that died or was killed
                state = self._save(state.with_host(name, _HostRecord()))
                state = self._save(state.with_host(name, self._boot(name, rootfs, pub)))
                fresh.add(name)
            deadline = time.monotonic() + timeout
            _parallel(
                lambda name: self._wait_ready(name, state, deadline, strict=name in fresh),
                names,
            )
            self._write_inventory(names)
        return self.inventory_path()

    def down(self) -> None:
        """Remove every host of this lab and all it left on the controller. Idempotent."""
        require_root_and_tools()
        with _as_lab_error("lab down"), self._locked():
            state = self._read_state()
            records = state.hosts if state else {}
            for name in sorted(set(records) | self._leftover_names()):
                _destroy(name, records.get(name))
            images = {rootfs_path(self._cache_dir)}
            if state and state.rootfs:
                images.add(Path(state.rootfs))
            for image in images:
                _drop_image_locks(image)
            for path in (self._dir / "state.json", self.inventory_path()):
                path.unlink(missing_ok=True)

    def status(self) -> list[LabHost]:
        state = self._read_state()
        if state is None:
            return []

        def probe(name: str) -> LabHost:
            pid = state.hosts[name].pid
            running = _is_nspawn(pid, name)
            return LabHost(
                name=name, address=self._address(name, 2), netns=f"veris-{name}",
                pid=pid if running else None, running=running,
                ready=running and self._system_state(name) in {"running", "degraded"},
            )  # fmt: skip

        return _parallel(probe, sorted(state.hosts, key=self._index))

    def reset_host(self, name: str, *, timeout: float = 60.0) -> None:
        """Kill host ``name`` and boot it again from the clean shared root; wait until ready."""
        require_root_and_tools()
        self._index(name)
        with _as_lab_error(f"resetting {name}"), self._locked():
            state = self._load_state()
            if name not in state.hosts:
                raise LabError(f"{name} is not up in this lab; run `lab up` first")
            _destroy(name, state.hosts[name])
            rootfs = Path(state.rootfs)
            if not rootfs.is_dir():
                rootfs = ensure_rootfs(self._cache_dir)
            state = self._save(state.with_host(name, _HostRecord()))
            state = self._save(state.with_host(name, self._boot(name, rootfs, self._ensure_key())))
            self._wait_ready(name, state, time.monotonic() + timeout, strict=True)

    # -- booting ----------------------------------------------------------------------------
    def _boot(self, name: str, rootfs: Path, pub: Path) -> _HostRecord:
        netns, outer, inner = f"veris-{name}", f"vh{name}", f"vt{name}"  # <= 11 < IFNAMSIZ
        for argv in (
            ["netns", "add", netns],
            ["link", "add", outer, "type", "veth", "peer", "name", inner],
            ["link", "set", inner, "netns", netns],
            # No IPv6 link-local addresses: the hosts use 198.18.0.0/15 and loopback only.
            ["link", "set", outer, "addrgenmode", "none"],
            ["-n", netns, "link", "set", inner, "addrgenmode", "none"],
            ["addr", "add", f"{self._address(name, 1)}/30", "dev", outer],
            ["link", "set", outer, "up"],
            ["-n", netns, "addr", "add", f"{self._address(name, 2)}/30", "dev", inner],
            ["-n", netns, "link", "set", inner, "up"],
            ["-n", netns, "link", "set", "lo", "up"],
        ):
            _run(["ip", *argv])
        hosts_file = self._dir / "hosts" / name
        hosts_file.parent.mkdir(exist_ok=True)
        # 127.0.1.1 <name>: sudo and friends resolve the host's own name without DNS.
        hosts_file.write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        log_path = self._dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(exist_ok=True)
        cgroups = _make_cgroups(name)
        nspawn = [
            shutil.which("systemd-nspawn") or "systemd-nspawn", "-D", str(rootfs),
            "--volatile=overlay", "--boot", f"--network-namespace-path={_NETNS_DIR / netns}",
            "--register=no", "--keep-unit", "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
            "-M", name, f"--bind-ro={pub}:/root/.ssh/authorized_keys",
            f"--bind-ro={hosts_file}:/etc/hosts",
        ]  # fmt: skip
        procs = [str(cgroup / "cgroup.procs") for cgroup in cgroups]
        # posix_spawn, not Popen: nothing runs in the child before exec (no preexec_fn), the
        # pid is nspawn's, and no Popen object warns when it outlives this process.
        pid = os.posix_spawn(
            "/bin/sh",
            ["sh", "-c", _JOIN_CGROUPS_AND_EXEC, "sh", str(len(procs)), *procs, *nspawn],
            _NSPAWN_ENV,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), _LOG_FLAGS, 0o640),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,  # its own session: survives this process and its terminal
        )
        return _HostRecord(pid=pid, cgroups=tuple(str(cgroup) for cgroup in cgroups))

    def _wait_ready(self, name: str, state: _State, deadline: float, *, strict: bool) -> None:
        """Wait until boot has finished and SSH works.

        ``strict`` (a fresh boot): a degraded host is refused when a unit we need failed.
        """
        pid = state.hosts[name].pid
        log_path = self._dir / "logs" / f"{name}.log"
        argv = [*self.ssh_argv(name), "systemctl", "is-system-running", "--wait"]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"{name} was not ready in time; boot log {log_path}")
            if not _is_alive(pid):  # the launcher shell counts: it becomes nspawn
                raise LabError(f"{name}: systemd-nspawn exited while booting:\n{_tail(log_path)}")
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=remaining, check=False
                )
            except subprocess.TimeoutExpired:
                continue
            system_state = done.stdout.strip()
            if system_state == "running":
                return
            if system_state == "degraded":
                failed = self._failed_units(name)
                if strict and NEEDED_UNITS & set(failed):
                    raise LabError(f"{name} booted degraded; failed units: {', '.join(failed)}")
                logger.warning("%s is degraded; failed units: %s", name, ", ".join(failed))
                return
            if done.returncode != 255 and system_state not in {"", "initializing", "starting"}:
                raise LabError(f"{name}: system state {system_state!r} {done.stderr.strip()}")
            time.sleep(0.2)  # 255: sshd not listening yet

    def _system_state(self, name: str) -> str:
        argv = [*self.ssh_argv(name), "systemctl", "is-system-running"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        except subprocess.TimeoutExpired:
            return "unknown"
        return done.stdout.strip() or "unreachable"

    def _failed_units(self, name: str) -> list[str]:
        argv = [*self.ssh_argv(name), "systemctl", "list-units", "--state=failed",
                "--no-legend", "--plain"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]

    # -- state on disk ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _flock(self._dir / ".lock"):
            yield

    def _ensure_key(self) -> Path:
        key = self._dir / "id_ed25519"
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "veris-lab", "-f", str(key)])
        key.chmod(0o600)
        pub = key.with_suffix(".pub")
        if not pub.exists():
            pub.write_text(_run(["ssh-keygen", "-y", "-f", str(key)]))
        return pub

    def _load_state(self) -> _State:
        """This lab's state (empty when there is none); refuses one made with other names."""
        path = self._dir / "state.json"
        if not path.exists():
            return _State(prefix=self.prefix, first_subnet=self.first_subnet)
        try:
            state = _State.model_validate_json(path.read_text())
        except (OSError, PydanticValidationError) as exc:
            raise LabError(f"lab state {path} is unreadable ({exc}); run `lab down`") from exc
        if (state.prefix, state.first_subnet) != (self.prefix, self.first_subnet):
            raise LabError(
                f"the lab in {self._dir} has prefix {state.prefix!r} and first subnet "
                f"{state.first_subnet}; use those, or run `lab down` first"
            )
        return state

    def _read_state(self) -> _State | None:
        """The state file as recorded, or None if it is lost or unreadable."""
        path = self._dir / "state.json"
        try:
            return _State.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, PydanticValidationError) as exc:
            logger.warning("ignoring unreadable lab state %s: %s", path, exc)
            return None

    def _save(self, state: _State) -> _State:
        _atomic_write(self._dir / "state.json", state.model_dump_json(indent=2))
        return state

    def _leftover_names(self) -> set[str]:
        """Names of this lab's hosts that left anything behind, state file or not."""
        candidates = [*_cgroups_by_name(), *(name for _, name in _nspawn_processes())]
        candidates += _listdir(_NSPAWN_RUN / "propagate")
        candidates += [n[6:] for n in _listdir(_NETNS_DIR) if n.startswith("veris-")]
        candidates += [n[2:] for n in _listdir(Path("/sys/class/net")) if n.startswith("vh")]
        host = re.compile(rf"{self.prefix}[1-9][0-9]{{0,2}}")
        return {name for name in candidates if host.fullmatch(name)}

    def _write_inventory(self, names: Iterable[str]) -> None:
        def services() -> dict[str, object]:  # a fresh dict per host: no YAML aliases
            return {
                "nginx": {
                    "unit": "nginx.service", "port": 80, "health_url": "http://127.0.0.1/",
                    "public": True, "config_files": ["/etc/nginx/nginx.conf"],
                    "validate": "nginx -t -c %s", "cache_dirs": ["/var/cache/nginx"],
                },
                "redis-server": {"unit": "redis-server.service", "port": 6379},
            }  # fmt: skip

        document = {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self._dir / "id_ed25519"),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                    "-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
                    "ansible_python_interpreter": "/usr/bin/python3",
                },
                "hosts": {
                    name: {"ansible_host": self._address(name, 2), "veris_services": services()}
                    for name in names
                },
            }
        }
        _atomic_write(self.inventory_path(), yaml.safe_dump(document, sort_keys=False, width=1000))


# -- teardown -------------------------------------------------------------------------------
def _destroy(name: str, record: _HostRecord | None) -> None:
    """Kill host ``name`` and remove all it left on the controller (LAB.md's teardown).

    A SIGTERM to nspawn can leave the host's processes running, so: SIGKILL nspawn, kill
    the host's cgroups until they are empty, remove them deepest first, then the nspawn
    run files and the network namespace (the veth goes with it).
    """
    if not re.fullmatch(r"[a-z]{1,6}[1-9][0-9]{0,2}", name):
        raise LabError(f"refusing to tear down {name!r}: not a lab host name")
    for pid, machine in list(_nspawn_processes()):
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
    cgroups.update(_cgroups_by_name().get(name, []))
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
    shutil.rmtree(_NSPAWN_RUN / "propagate" / name, ignore_errors=True)
    if (_NETNS_DIR / netns).exists():
        _run(["ip", "netns", "del", netns])
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


def _drop_image_locks(rootfs: Path) -> None:
    """Remove nspawn's lock files for ``rootfs`` when no host holds them (SIGKILL leaves them)."""
    with contextlib.suppress(OSError):
        info = rootfs.stat()
        for lock in (
            _NSPAWN_RUN / "locks" / f"inode-{info.st_dev}:{info.st_ino}",
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
    if not _is_alive(pid):
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


def _is_nspawn(pid: int | None, name: str) -> bool:
    return _machine_of(pid) == name


def _is_alive(pid: int | None) -> bool:
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


def _nspawn_processes() -> Iterator[tuple[int, str]]:
    for entry in _listdir(Path("/proc")):
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


def _make_cgroups(name: str) -> list[Path]:
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


def _cgroups_by_name() -> dict[str, list[Path]]:
    """Every ``veris-lab/<name>`` cgroup in every hierarchy, whichever process made it."""
    found: dict[str, list[Path]] = {}
    for directory, subdirs, _files in os.walk(_CGROUP_ROOT):
        if _CGROUP_PARENT in subdirs:
            subdirs.remove(_CGROUP_PARENT)  # the hosts' own trees are not searched
            for name in _listdir(Path(directory) / _CGROUP_PARENT):
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
    if not (_NETNS_DIR / netns).exists():
        return set()
    done = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return {int(pid) for pid in done.stdout.split() if pid.isdigit()}


# -- small helpers --------------------------------------------------------------------------
def _parallel(function: Callable[[str], _T], names: list[str]) -> list[_T]:
    """``function(name)`` for all names at once; every failure is reported, together."""
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(function, name) for name in names]
    errors = [exc for future in futures if (exc := future.exception()) is not None]
    if errors:
        raise LabError("; ".join(str(exc) for exc in errors)) from errors[0]
    return [future.result() for future in futures]


@contextlib.contextmanager
def _as_lab_error(action: str) -> Iterator[None]:
    """OSError (a cgroup file, the state directory, a missing tool) is a LabError to callers."""
    try:
        yield
    except OSError as exc:
        raise LabError(f"{action} failed: {exc}") from exc


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` timed out") from exc
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[-lines:])


def _remove_tree(path: Path) -> None:
    """rm -rf for a failed build; first unmounts what debootstrap left mounted inside."""

    def mounts_below() -> list[str]:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        points = [
            re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), ln.split()[4]) for ln in lines
        ]
        return sorted(
            (p for p in points if p == str(path) or p.startswith(f"{path}/")), reverse=True
        )

    for point in mounts_below():
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if mounts_below():  # never rm -rf through a mounted /dev, /proc or /sys
        raise LabError(f"{path} still has mounts inside; unmount them and remove it by hand")
    shutil.rmtree(path, ignore_errors=True)
