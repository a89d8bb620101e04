"""Lab hosts: state, boot, readiness, inventory; the Lab class."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from ..exceptions import LabError
from ..progress import ProgressCallback, ProgressEvent, emit
from ._util import (
    as_lab_error,
    atomic_write,
    flock,
    in_parallel,
    list_names,
    log_tail,
    run_tool,
)
from .rootfs import ensure_rootfs, rootfs_path
from .system import (
    NETNS_DIR,
    NSPAWN_RUN,
    HostRecord,
    cgroups_by_name,
    destroy_host,
    drop_image_locks,
    is_alive,
    is_nspawn,
    make_cgroups,
    nspawn_processes,
    raise_inotify_limits,
)

logger = logging.getLogger(__name__)

NEEDED_UNITS = frozenset({"ssh.service", "nginx.service", "redis-server.service"})
# Opt-in features: their units are masked on hosts that do not ask for them (LAB.md), so
# lean hosts stay lean (~22 MiB each; ~90 MiB with both).
FEATURE_UNITS: dict[str, tuple[str, ...]] = {
    "postgres": ("postgresql.service",),
    "docker": ("docker.service", "docker.socket", "containerd.service"),
    # An execution node (execnode.py): no unit, the controller's Python and venv (with
    # ansible-runner) bind-mounted read-only at their own paths (execnode_binds).
    "execnode": (),
}
FEATURE_NEEDS: dict[str, frozenset[str]] = {
    "postgres": frozenset({"postgresql@15-main.service"}),
    "docker": frozenset({"docker.service", "veris-lab-web.service"}),
    "execnode": frozenset(),
}
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
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
# Where a host's sshd finds the lab CA: bind-mounted at boot, so the cached root file
# system stays as it is (its sshd_config includes sshd_config.d/*.conf first).
_CA_PUB_IN_HOST = "/etc/ssh/veris_lab_user_ca.pub"
_CA_CONF_IN_HOST = "/etc/ssh/sshd_config.d/veris-lab-ca.conf"
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


def execnode_binds() -> tuple[Path, ...]:
    """What an execution-node host mounts read-only at the same paths: the venv this process
    runs from (ansible-runner, ansible-core, collections) and the Python it links to.

    The cached root file system stays as it is. A Python under /usr is the host's own
    Debian one (same release as the root file system): never mounted over it.
    """
    paths: list[Path] = []
    for prefix in (sys.prefix, sys.base_prefix):
        path = Path(prefix).resolve()
        if path.is_relative_to("/usr") or path == Path("/") or path in paths:
            continue
        if set(str(path)) & set(":,"):  # nspawn's --bind-ro=SRC[:DST[:OPTS]] cannot carry it
            raise LabError(f"execnode: cannot bind-mount {path} (':' or ',' in the path)")
        paths.append(path)
    if not (Path(sys.prefix) / "bin" / "ansible-runner").exists():
        raise LabError(f"execnode: no ansible-runner in {sys.prefix}/bin to lend the host")
    return tuple(paths)


class LabHost(BaseModel):
    """One lab host as ``status`` sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    address: str
    netns: str
    pid: int | None
    running: bool
    ready: bool


class _State(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str
    first_subnet: int
    features: tuple[str, ...] = ()
    rootfs: str = ""
    hosts: dict[str, HostRecord] = Field(default_factory=dict)

    def with_host(self, name: str, record: HostRecord) -> _State:
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


class Lab:
    """Disposable lab hosts ``<prefix>1..N``, recorded under ``state_dir/lab``."""

    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path,
        *,
        prefix: str = "lab",
        first_subnet: int = 1,
        features: Iterable[str] = (),
        progress: ProgressCallback | None = None,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise LabError(f"lab prefix must be 1-6 lowercase letters, not {prefix!r}")
        if not 1 <= first_subnet <= 255:
            raise LabError(f"first_subnet must be in 1..255, not {first_subnet}")
        unknown = set(features) - set(FEATURE_UNITS)
        if unknown:
            raise LabError(
                f"unknown lab feature(s) {', '.join(sorted(unknown))}: "
                f"choose from {', '.join(sorted(FEATURE_UNITS))}"
            )
        self.prefix = prefix
        self.first_subnet = first_subnet
        self.features = tuple(sorted(set(features)))
        # Hears the root file system build and each host's boot (veris_remediate.progress).
        self.progress = progress
        self._dir = Path(state_dir).absolute() / "lab"
        self._cache_dir = Path(cache_dir).absolute()
        if ":" in str(self._dir):  # nspawn's --bind-ro=SRC:DST cannot carry it
            raise LabError(f"lab state directory may not contain ':': {self._dir}")

    @classmethod
    def recorded(
        cls, state_dir: Path, cache_dir: Path, *, progress: ProgressCallback | None = None
    ) -> Lab | None:
        """The lab recorded in ``state_dir`` (its prefix, subnet and features), if any."""
        path = Path(state_dir).absolute() / "lab" / "state.json"
        try:
            state = _State.model_validate_json(path.read_text())
        except (OSError, PydanticValidationError):
            return None
        try:
            return cls(state_dir, cache_dir, prefix=state.prefix, first_subnet=state.first_subnet,
                       features=state.features, progress=progress)  # fmt: skip
        except LabError:
            return None

    # -- names and addresses ----------------------------------------------------------------
    def _index(self, name: str) -> int:
        match = re.fullmatch(rf"{self.prefix}([1-9][0-9]{{0,2}})", name)
        if match is None or self.first_subnet + int(match[1]) - 1 > 255:
            raise LabError(f"{name!r} is not a host name of lab {self.prefix!r}")
        return int(match[1])

    def _address(self, name: str, side: int) -> str:
        return f"198.18.{self.first_subnet + self._index(name) - 1}.{side}"

    def inventory_path(self) -> Path:
        """Where the lab's inventory is (written by ``up``, removed by ``down``)."""
        return self._dir / "inventory.yml"

    def host_names(self) -> list[str]:
        """The hosts this lab's state records, in order (running or not)."""
        state = self._read_state()
        if state is None or (state.prefix, state.first_subnet) != (self.prefix, self.first_subnet):
            return []
        return sorted(state.hosts, key=self._index)

    def require_running(self, name: str) -> None:
        """Raise LabError unless ``name`` is a host of this lab and it is running.

        An unknown name is a usage error (exit 2); a host that is not running fails (exit 6)
        at once, instead of after SSH's connect timeout.
        """
        try:
            self._index(name)
        except LabError as exc:
            known = ", ".join(self.host_names()) or "none is up"
            raise LabError(
                f"{name!r} is not a host of lab {self.prefix!r} (its hosts: {known})",
                exit_code=2,
            ) from exc
        state = self._read_state()
        mismatch = state is not None and state.prefix != self.prefix
        record = state.hosts.get(name) if state is not None and not mismatch else None
        if record is None:
            known = ", ".join(self.host_names()) or "none"
            raise LabError(
                f"{name} is not a host of this lab (hosts up: {known}); "
                f"boot it with `veris-remediate lab up --hosts {self._index(name)}`",
                exit_code=2,
            )
        if not is_nspawn(record.pid, name):
            raise LabError(f"{name} is not running; boot it again with `veris-remediate lab up`")

    def ssh_argv(self, name: str) -> list[str]:
        """Argv prefix that runs a command on host ``name`` as root.

        Append the command as one shell-quoted string (``shlex.join``): ssh joins its
        arguments with spaces and the host's shell splits them again.
        """
        key = self._dir / "id_ed25519"
        return ["ssh", "-F", "/dev/null", "-i", str(key), *SSH_OPTIONS,
                f"root@{self._address(name, 2)}"]  # fmt: skip

    def ssh_ca_key(self) -> Path:
        """The private key of the lab's SSH CA (made on first use). Hosts booted since
        trust the user certificates it signs, for the user they name (VERIS_SSH_CA_KEY)."""
        with as_lab_error("making the lab's SSH CA"), self._locked():
            self._ensure_ca()
        return self._dir / "ssh_ca"

    # -- public operations ------------------------------------------------------------------
    def up(self, hosts: int = 1, *, timeout: float = 120.0) -> Path:
        """Boot hosts 1..max(hosts, those already up) and wait until all are ready.

        Idempotent: running hosts are kept (never removed) and only waited for. ``timeout``
        bounds the wait for readiness, not a first root file system build.
        """
        require_root_and_tools()
        if hosts < 1 or self.first_subnet + hosts - 1 > 255:
            raise LabError(f"cannot have {hosts} hosts from subnet {self.first_subnet} (max 255)")
        with as_lab_error("lab up"), self._locked():
            state = self._load_state()
            if state.hosts and state.features != self.features:
                raise LabError(
                    f"the lab in {self._dir} runs with features "
                    f"{', '.join(state.features) or 'none'}; use those, or run `lab down` first"
                )
            state = state.model_copy(update={"features": self.features})
            pub = self._ensure_key()
            rootfs = ensure_rootfs(self._cache_dir, self.progress)
            count = max([hosts, *(self._index(name) for name in state.hosts)])
            names = [f"{self.prefix}{k}" for k in range(1, count + 1)]
            fresh: dict[str, float] = {}  # booted now: when
            state = state.model_copy(update={"rootfs": str(rootfs)})
            raise_inotify_limits()
            for name in names:
                record = state.hosts.get(name)
                if record is not None and is_nspawn(record.pid, name):
                    continue
                destroy_host(name, record)  # leftovers of a host that died or was killed
                state = self._save(state.with_host(name, HostRecord()))
                emit(self.progress, ProgressEvent(kind="start", phase="boot", host=name))
                fresh[name] = time.monotonic()
                record = self._boot(name, rootfs, pub, state.features)
                state = self._save(state.with_host(name, record))
            deadline = time.monotonic() + timeout
            in_parallel(lambda name: self._ready(name, state, deadline, fresh.get(name)), names)
            if "postgres" in state.features:
                in_parallel(self._set_postgres_password, sorted(fresh))
            self._write_inventory(names, state.features)
        return self.inventory_path()

    def down(self) -> list[str]:
        """Remove every host of this lab and all it left on the controller. Idempotent.

        Returns the names of the hosts it removed (recorded, or found left behind).
        """
        require_root_and_tools()
        with as_lab_error("lab down"), self._locked():
            state = self._read_state()
            records = state.hosts if state else {}
            names = sorted(set(records) | self._leftover_names())
            for name in names:
                destroy_host(name, records.get(name))
            images = {rootfs_path(self._cache_dir)}
            if state and state.rootfs:
                images.add(Path(state.rootfs))
            for image in images:
                drop_image_locks(image)
            for path in (self._dir / "state.json", self.inventory_path()):
                path.unlink(missing_ok=True)
        return names

    def status(self) -> list[LabHost]:
        """The recorded hosts, probed: running, and ready (systemd up, SSH answering)."""
        state = self._read_state()
        if state is None:
            return []
        if (state.prefix, state.first_subnet) != (self.prefix, self.first_subnet):
            raise LabError(
                f"the lab in {self._dir} has prefix {state.prefix!r} and first subnet "
                f"{state.first_subnet}, not {self.prefix!r} and {self.first_subnet}; "
                "omit --prefix and --first-subnet to use it",
                exit_code=2,
            )

        def probe(name: str) -> LabHost:
            pid = state.hosts[name].pid
            running = is_nspawn(pid, name)
            return LabHost(
                name=name, address=self._address(name, 2), netns=f"veris-{name}",
                pid=pid if running else None, running=running,
                ready=running and self._system_state(name) in {"running", "degraded"},
            )  # fmt: skip

        return in_parallel(probe, sorted(state.hosts, key=self._index))

    def reset_host(self, name: str, *, timeout: float = 60.0) -> None:
        """Kill host ``name`` and boot it again from the clean shared root; wait until ready."""
        require_root_and_tools()
        self._index(name)
        with as_lab_error(f"resetting {name}"), self._locked():
            state = self._load_state()
            if name not in state.hosts:
                raise LabError(f"{name} is not up in this lab; run `lab up` first")
            destroy_host(name, state.hosts[name])
            rootfs = Path(state.rootfs)
            if not rootfs.is_dir():
                rootfs = ensure_rootfs(self._cache_dir)
            state = self._save(state.with_host(name, HostRecord()))
            record = self._boot(name, rootfs, self._ensure_key(), state.features)
            state = self._save(state.with_host(name, record))
            self._wait_ready(name, state, time.monotonic() + timeout, strict=True)
            if "postgres" in state.features:
                self._set_postgres_password(name)

    # -- booting ----------------------------------------------------------------------------
    def _boot(self, name: str, rootfs: Path, pub: Path, features: tuple[str, ...]) -> HostRecord:
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
            run_tool(["ip", *argv])
        if "docker" in features:
            # /proc/sys is read-only inside the host, and dockerd refuses to start without
            # forwarding: switch it on in the host's namespace from outside (LAB.md).
            run_tool(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        hosts_file = self._dir / "hosts" / name
        hosts_file.parent.mkdir(exist_ok=True)
        # 127.0.1.1 <name>: sudo and friends resolve the host's own name without DNS.
        hosts_file.write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        log_path = self._dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(exist_ok=True)
        ca_pub, ca_conf = self._ensure_ca()
        cgroups = make_cgroups(name)
        nspawn = [
            shutil.which("systemd-nspawn") or "systemd-nspawn", "-D", str(rootfs),
            "--volatile=overlay", "--boot", f"--network-namespace-path={NETNS_DIR / netns}",
            "--register=no", "--keep-unit", "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
            "-M", name, f"--bind-ro={pub}:/root/.ssh/authorized_keys",
            f"--bind-ro={hosts_file}:/etc/hosts",
            f"--bind-ro={ca_pub}:{_CA_PUB_IN_HOST}", f"--bind-ro={ca_conf}:{_CA_CONF_IN_HOST}",
            *(f"--bind-ro=/dev/null:/etc/systemd/system/{unit}"
              for feature, units in FEATURE_UNITS.items() if feature not in features
              for unit in units),
            *(["--system-call-filter=add_key keyctl"] if "docker" in features else []),
            *(f"--bind-ro={path}" for path in (execnode_binds() if "execnode" in features else ())),
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
        return HostRecord(pid=pid, cgroups=tuple(str(cgroup) for cgroup in cgroups))

    def _ready(self, name: str, state: _State, deadline: float, booted: float | None) -> None:
        """Wait for a host; one booted now (at ``booted``) is strict, and reported."""
        if booted is None:
            self._wait_ready(name, state, deadline, strict=False)
            return
        status, detail = "failed", ""
        try:
            self._wait_ready(name, state, deadline, strict=True)
            status, detail = "ok", f"ready at {self._address(name, 2)}"
        finally:
            seconds = round(time.monotonic() - booted, 2)
            emit(self.progress, ProgressEvent(
                kind="end", phase="boot", host=name, status=status, seconds=seconds,
                detail=detail,
            ))  # fmt: skip

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
            if not is_alive(pid):  # the launcher shell counts: it becomes nspawn
                last = log_tail(log_path, 1).strip()
                raise LabError(
                    f"{name}: systemd-nspawn exited while booting"
                    f"{' (' + last + ')' if last else ''}; boot log {log_path}"
                )
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
                needed = NEEDED_UNITS.union(*(FEATURE_NEEDS[f] for f in state.features))
                if strict and needed & set(failed):
                    raise LabError(f"{name} booted degraded; failed units: {', '.join(failed)}")
                logger.warning("%s is degraded; failed units: %s", name, ", ".join(failed))
                return
            if done.returncode != 255 and system_state not in {"", "initializing", "starting"}:
                raise LabError(f"{name}: system state {system_state!r} {done.stderr.strip()}")
            time.sleep(0.2)  # 255: sshd not listening yet

    def postgres_password(self) -> str:
        """The lab's password of PostgreSQL's postgres role (hosts with the postgres feature)."""
        path = self._dir / "postgres_password"
        if not path.exists():
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        return path.read_text().strip()

    def _set_postgres_password(self, name: str) -> None:
        # The root file system is volatile: the password is set after every boot.
        sql = f"ALTER USER postgres PASSWORD '{self.postgres_password()}'"  # hex only: no quoting
        command = shlex.join(["runuser", "-u", "postgres", "--", "psql", "-qc", sql])
        done = subprocess.run(
            [*self.ssh_argv(name), command], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise LabError(f"{name}: setting the postgres password failed: {done.stderr.strip()}")

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
        with flock(self._dir / ".lock"):
            yield

    def _ensure_key(self) -> Path:
        key = self._dir / "id_ed25519"
        if not key.exists():
            run_tool(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "veris-lab", "-f", str(key)]
            )
        key.chmod(0o600)
        pub = key.with_suffix(".pub")
        if not pub.exists():
            pub.write_text(run_tool(["ssh-keygen", "-y", "-f", str(key)]))
        return pub

    def _ensure_ca(self) -> tuple[Path, Path]:
        """The lab CA's public key and the sshd drop-in that trusts it (made if missing)."""
        key = self._dir / "ssh_ca"
        if not key.exists():
            run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "veris-lab-ca",
                      "-f", str(key)])  # fmt: skip
        key.chmod(0o600)
        pub = key.with_suffix(".pub")
        if not pub.exists():
            pub.write_text(run_tool(["ssh-keygen", "-y", "-f", str(key)]))
        conf = self._dir / "sshd_ca.conf"
        if not conf.exists():
            # No AuthorizedPrincipalsFile: a certificate must name the user it logs in as.
            atomic_write(conf, f"TrustedUserCAKeys {_CA_PUB_IN_HOST}\n")
        return pub, conf

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
        atomic_write(self._dir / "state.json", state.model_dump_json(indent=2))
        return state

    def _leftover_names(self) -> set[str]:
        """Names of this lab's hosts that left anything behind, state file or not."""
        candidates = [*cgroups_by_name(), *(name for _, name in nspawn_processes())]
        candidates += list_names(NSPAWN_RUN / "propagate")
        candidates += [n[6:] for n in list_names(NETNS_DIR) if n.startswith("veris-")]
        candidates += [n[2:] for n in list_names(Path("/sys/class/net")) if n.startswith("vh")]
        host = re.compile(rf"{self.prefix}[1-9][0-9]{{0,2}}")
        return {name for name in candidates if host.fullmatch(name)}

    def _write_inventory(self, names: Iterable[str], features: tuple[str, ...]) -> None:
        def services() -> dict[str, object]:  # a fresh dict per host: no YAML aliases
            declared: dict[str, object] = {
                "nginx": {
                    "unit": "nginx.service", "port": 80, "health_url": "http://127.0.0.1/",
                    "public": True, "config_files": ["/etc/nginx/nginx.conf"],
                    "validate": "nginx -t -c %s", "cache_dirs": ["/var/cache/nginx"],
                },
                "redis-server": {"unit": "redis-server.service", "port": 6379},
            }  # fmt: skip
            if "postgres" in features:
                declared["postgresql"] = {"unit": "postgresql@15-main.service", "port": 5432}
            if "docker" in features:
                declared["docker"] = {"unit": "docker.service"}
                declared["web"] = {
                    "container": "web", "port": 8080, "health_url": "http://127.0.0.1:8080/",
                    "depends_on": ["docker"],
                }  # fmt: skip
            return declared

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
                    name: {
                        "ansible_host": self._address(name, 2),
                        "veris_services": services(),
                        # Opt in to firewall hardening: SSH and nginx (public) stay open.
                        "veris_firewall": {"allow": []},
                        # Opt in to connection relief: idle sessions older than 5 min.
                        **({"veris_postgres": {"idle_age": 300}} if "postgres" in features else {}),
                    }
                    for name in names
                },
            }
        }
        atomic_write(self.inventory_path(), yaml.safe_dump(document, sort_keys=False, width=1000))
