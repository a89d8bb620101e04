"""The lab's Debian root file system: its recipe, and the cached debootstrap build."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

from ..exceptions import LabError
from ..progress import ProgressCallback, ProgressEvent, emit
from ._util import (
    as_lab_error,
    flock,
    log_tail,
    remove_tree,
)

SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "ufw", "iptables",
    "redis-server", "nginx-light", "procps", "iproute2", "sudo", "curl",
    # Opt-in features (masked on hosts that do not ask for them, LAB.md): PostgreSQL with
    # the driver community.postgresql needs; Docker with the SDK community.docker uses.
    "postgresql", "python3-psycopg2",
    "docker.io", "containerd", "runc", "tini", "busybox-static", "python3-docker",
    "python3-requests",
)  # fmt: skip
# Runs once in the new root file system (chroot). Part of the cache key: edit it, get a rebuild.
POST_SCRIPT = """\
set -eu
rm -f /etc/hostname             # else every host is named after the controller
install -d -m 0700 /root/.ssh   # sshd StrictModes; authorized_keys is bind-mounted per lab
systemctl enable ssh.service nginx.service redis-server.service
# PostgreSQL: debootstrap's chroot creates no cluster; initdb needs /proc. Reachable from
# the controller's side of the veth; the password is set after boot (the root is volatile).
mount -t proc proc /proc
trap 'umount /proc' EXIT
[ -d /etc/postgresql/15/main ] || pg_createcluster --start-conf=auto 15 main
printf "listen_addresses = '*'\\n" > /etc/postgresql/15/main/conf.d/lab.conf
echo "host all all 198.18.0.0/15 scram-sha-256" >> /etc/postgresql/15/main/pg_hba.conf
# Docker inside a container: vfs storage, writable cgroup controllers before it starts.
install -d /etc/docker
echo '{"storage-driver": "vfs"}' > /etc/docker/daemon.json
cat > /usr/local/sbin/veris-lab-cgroups <<'SCRIPT'
#!/bin/sh
for d in /sys/fs/cgroup/*/; do
  case $d in */systemd/|*/unified/) ;; *) mount -o remount,bind,rw "$d" ;; esac
done
SCRIPT
cat > /etc/systemd/system/veris-lab-cgroups.service <<'UNIT'
[Unit]
Description=Writable cgroup controllers for Docker in a lab host
Before=containerd.service docker.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/veris-lab-cgroups
[Install]
WantedBy=containerd.service docker.service
UNIT
# No registry is reachable: a busybox image from busybox-static, and one container "web"
# (httpd on 8080) that exists from boot, so there is a container to diagnose and restart.
install -d /opt/veris-lab/image/bin /opt/veris-lab/image/www
cp /bin/busybox /opt/veris-lab/image/bin/busybox
for tool in sh httpd sleep cat echo ls ps; do ln -s busybox /opt/veris-lab/image/bin/$tool; done
echo "veris lab container" > /opt/veris-lab/image/www/index.html
cat > /usr/local/sbin/veris-lab-web <<'SCRIPT'
#!/bin/sh
set -e
docker image inspect local/busybox >/dev/null 2>&1 ||
  tar -C /opt/veris-lab/image -c . | docker import -c 'CMD /bin/sh' - local/busybox
docker container inspect web >/dev/null 2>&1 ||
  docker run -d --init --name web -p 8080:8080 local/busybox httpd -f -p 8080 -h /www
SCRIPT
chmod 0755 /usr/local/sbin/veris-lab-cgroups /usr/local/sbin/veris-lab-web
cat > /etc/systemd/system/veris-lab-web.service <<'UNIT'
[Unit]
Description=The lab's busybox image and its container "web"
After=docker.service
Requires=docker.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/veris-lab-web
[Install]
WantedBy=docker.service
UNIT
systemctl enable veris-lab-cgroups.service veris-lab-web.service
apt-get clean
# ufw stays installed but inactive (its package default, ENABLED=no): roles turn it on.
"""


def recipe_digest() -> str:
    """First 12 hex digits of the root file system recipe's sha256 (the cache key)."""
    recipe = {"suite": SUITE, "variant": "minbase", "packages": PACKAGES, "post": POST_SCRIPT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_path(cache_dir: Path) -> Path:
    """Where the current recipe's root file system is cached."""
    return cache_dir.absolute() / f"rootfs-{recipe_digest()}"


def ensure_rootfs(cache_dir: Path, progress: ProgressCallback | None = None) -> Path:
    """The cached root file system for the current recipe, built with debootstrap if absent.

    ``progress`` hears the start and end of a build (phase ``rootfs``), if one is needed.
    """
    final = rootfs_path(cache_dir)
    if final.is_dir():
        return final
    emit(progress, ProgressEvent(kind="start", phase="rootfs"))
    start, status = time.monotonic(), "failed"
    try:
        with as_lab_error("building the lab root file system"):
            final.parent.mkdir(parents=True, exist_ok=True)
            # One lock for every build in this cache: concurrent debootstraps would also
            # write the same files in the shared debs/ download cache.
            with flock(final.parent / "build.lock"):
                if not final.is_dir():  # else another process built it while we waited
                    _debootstrap(final)
        status = "ok"
    finally:
        seconds = round(time.monotonic() - start, 1)
        emit(progress, ProgressEvent(
            kind="end", phase="rootfs", status=status, seconds=seconds, detail=str(final),
        ))  # fmt: skip
    return final


def _debootstrap(final: Path) -> None:
    """Build into a temporary directory beside ``final``, then rename it (atomic)."""
    cache_dir = final.parent
    for stale in cache_dir.glob(f".{final.name}.*"):  # a build that was killed
        remove_tree(stale)
    debs = cache_dir / "debs"  # keeps downloads across recipe changes
    debs.mkdir(exist_ok=True)
    log_path = cache_dir / f"{final.name}.log"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    # mkdtemp made it 0700, and it becomes the hosts' "/": users other than root (postgres
    # running initdb in the chroot) must be able to traverse it, during the build too.
    tmp.chmod(0o755)
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
                    last = log_tail(log_path, 1).strip()
                    raise LabError(
                        f"building the lab root file system failed ({argv[0]} exit "
                        f"{done.returncode}{': ' + last if last else ''}); see {log_path}"
                    )
        tmp.rename(final)
    except BaseException:
        remove_tree(tmp)
        raise
