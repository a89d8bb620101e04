"""Real lab hosts: boot two, use them, reset one, and tear everything down without a trace.

Needs root, systemd-nspawn and debootstrap (the first run builds the root file system,
~1-2 min). Uses prefix "lt" and subnets 198.18.200-202.0/30 so it never meets the labs
other people run on the same machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from veris_remediate.exceptions import LabError
from veris_remediate.lab import Lab, require_root_and_tools

pytestmark = pytest.mark.integration

PREFIX = "lt"
FIRST_SUBNET = 200
NAMES = ("lt1", "lt2", "lt3")


def _cache_dir() -> Path:
    return Path(os.environ.get("VERIS_LAB_CACHE") or "/var/cache/veris-remediate")


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab-state")


@pytest.fixture(scope="module")
def lab(state_dir: Path) -> Iterator[Lab]:
    """Two booted hosts for the whole module; torn down even when a test fails."""
    lab = Lab(state_dir, _cache_dir(), prefix=PREFIX, first_subnet=FIRST_SUBNET)
    try:
        lab.up(2)
        yield lab
    finally:
        lab.down()


def ssh(lab: Lab, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    # ssh joins its arguments with spaces for the remote shell: quote them into one.
    return subprocess.run(
        [*lab.ssh_argv(name), shlex.join(command)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def pids(lab: Lab) -> dict[str, int | None]:
    return {host.name: host.pid for host in lab.status()}


def leftovers(names: tuple[str, ...]) -> list[str]:
    """Everything hosts ``names`` could leave on the controller, looked up independently."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn"):
            machine = argv[argv.index(b"-M") + 1].decode() if b"-M" in argv else ""
            if machine in names:
                found.append(f"nspawn process {proc.name} for {machine}")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    listed = {line.split()[0] for line in netns.stdout.splitlines() if line.strip()}
    for name in names:
        if f"veris-{name}" in listed:
            found.append(f"netns veris-{name}")
        for link in (f"vh{name}", f"vt{name}"):
            if Path("/sys/class/net", link).exists():
                found.append(f"link {link}")
        if Path("/run/systemd/nspawn/propagate", name).exists():
            found.append(f"/run/systemd/nspawn/propagate/{name}")
    for directory, subdirs, _files in os.walk("/sys/fs/cgroup"):
        if Path(directory).name == "veris-lab":
            found += [f"cgroup {directory}/{sub}" for sub in subdirs if sub in names]
            subdirs.clear()
    return found


def test_not_root_is_a_clear_lab_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="need root") as caught:
        require_root_and_tools()
    assert caught.value.exit_code == 6


def test_missing_tool_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda tool: None if tool == "debootstrap" else real_which(tool)
    )
    with pytest.raises(LabError, match=r"debootstrap.*make setup.*apt-get install debootstrap"):
        require_root_and_tools()


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="prefix"):
        Lab(tmp_path, tmp_path, prefix="Lab-1")
    with pytest.raises(LabError, match="first_subnet"):
        Lab(tmp_path, tmp_path, first_subnet=0)
    with pytest.raises(LabError, match="not a host name"):
        Lab(tmp_path, tmp_path, prefix="lt").ssh_argv("lab1")


def test_up_boots_ready_isolated_hosts(lab: Lab) -> None:
    hosts = lab.status()
    assert [h.name for h in hosts] == ["lt1", "lt2"]
    assert all(h.running and h.ready and h.pid for h in hosts), hosts
    assert [h.address for h in hosts] == ["198.18.200.2", "198.18.201.2"]
    assert [h.netns for h in hosts] == ["veris-lt1", "veris-lt2"]

    inventory = yaml.safe_load(lab.inventory_path().read_text())["all"]
    key = Path(inventory["vars"]["ansible_ssh_private_key_file"])
    assert key.is_absolute()
    assert key.stat().st_mode & 0o777 == 0o600
    assert inventory["vars"]["ansible_user"] == "root"
    for host in hosts:
        entry = inventory["hosts"][host.name]
        assert entry["ansible_host"] == host.address
        assert entry["veris_services"]["nginx"]["public"] is True
        assert entry["veris_services"]["redis-server"]["port"] == 6379

    for host in hosts:
        active = ssh(lab, host.name, "systemctl", "is-active", "nginx", "redis-server", "ssh")
        assert active.stdout.split() == ["active"] * 3, active
        assert ssh(lab, host.name, "hostname").stdout.strip() == host.name
        # Own cgroups per host: systemctl can tell the units apart (shared ones break it).
        assert "nginx: master" in ssh(lab, host.name, "systemctl", "status", "nginx").stdout
        assert "Status: inactive" in ssh(lab, host.name, "ufw", "status").stdout
        assert f"127.0.1.1\t{host.name}" in ssh(lab, host.name, "cat", "/etc/hosts").stdout
        assert ssh(lab, host.name, "systemctl", "is-system-running").stdout.strip() == "running"
        # nginx from the controller, over the veth (only ever 198.18.x.x; no proxy).
        assert host.address.startswith("198.18.")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{host.address}/", timeout=5) as response:
            assert response.status == 200
            assert b"nginx" in response.read()

    # Shared read-only root, separate writes; separate networks.
    assert ssh(lab, "lt1", "touch", "/root/only-on-lt1").returncode == 0
    assert ssh(lab, "lt2", "test", "-e", "/root/only-on-lt1").returncode == 1
    reach = ssh(lab, "lt1", "curl", "-s", "-m", "2", "-o", "/dev/null", "http://198.18.201.2/")
    assert reach.returncode != 0, "lt1 must not reach lt2"


def test_up_again_is_a_noop(lab: Lab) -> None:
    before = pids(lab)
    assert lab.up(2) == lab.inventory_path()
    assert pids(lab) == before


def test_up_with_more_hosts_boots_only_the_new_ones(lab: Lab) -> None:
    before = pids(lab)
    lab.up(3)
    after = pids(lab)
    assert {name: after[name] for name in before} == before
    assert after["lt3"]
    assert ssh(lab, "lt3", "hostname").stdout.strip() == "lt3"
    lab.up(1)  # never removes hosts
    assert pids(lab) == after
    inventory = yaml.safe_load(lab.inventory_path().read_text())["all"]["hosts"]
    assert inventory["lt3"]["ansible_host"] == "198.18.202.2"


def test_reset_host_boots_a_fresh_host(lab: Lab) -> None:
    before = pids(lab)
    assert ssh(lab, "lt1", "sh", "-c", "echo dirty > /root/marker").returncode == 0
    lab.reset_host("lt1")
    after = pids(lab)
    assert after["lt1"] != before["lt1"]
    assert after["lt2"] == before["lt2"]
    assert after["lt3"] == before["lt3"]
    assert ssh(lab, "lt1", "test", "-e", "/root/marker").returncode == 1
    assert ssh(lab, "lt1", "systemctl", "is-active", "nginx").stdout.strip() == "active"
    with pytest.raises(LabError, match="not up"):
        lab.reset_host("lt4")


# --- opt-in features: PostgreSQL and Docker ------------------------------------------------


def test_lean_hosts_mask_the_optional_services(lab: Lab) -> None:
    for unit in ("postgresql.service", "docker.service", "containerd.service"):
        assert ssh(lab, "lt1", "systemctl", "is-enabled", unit).stdout.strip() == "masked"
    assert ssh(lab, "lt1", "systemctl", "is-active", "postgresql@15-main").stdout.strip() != (
        "active"
    )


def test_a_lab_keeps_its_features(lab: Lab, state_dir: Path) -> None:
    other = Lab(state_dir, _cache_dir(), prefix=PREFIX, first_subnet=FIRST_SUBNET,
                features=("docker",))  # fmt: skip
    with pytest.raises(LabError, match="runs with features none"):
        other.up(2)
    with pytest.raises(LabError, match="unknown lab feature"):
        Lab(state_dir, _cache_dir(), prefix=PREFIX, features=("mysql",))


def test_a_feature_host_runs_postgres_and_a_docker_container(tmp_path: Path) -> None:
    from veris_remediate.inventory import load_inventory

    lab = Lab(tmp_path / "state", _cache_dir(), prefix="lf", first_subnet=203,
              features=("postgres", "docker"))  # fmt: skip
    try:
        inventory = lab.up(1)
        host = lab.status()[0]
        assert host.ready
        # PostgreSQL answers locally, and from the controller with the lab's password.
        local = ssh(lab, "lf1", "runuser", "-u", "postgres", "--", "psql", "-tAc", "select 1")
        assert local.stdout.strip() == "1", local.stderr
        sql = "select count(*) from pg_stat_activity"
        remote = ssh(lab, "lf1", "env", f"PGPASSWORD={lab.postgres_password()}", "psql",
                     "-h", "198.18.203.2", "-U", "postgres", "-tAc", sql)  # fmt: skip
        assert remote.returncode == 0, remote.stderr
        # Docker runs the container "web", published on 8080 and reachable from here.
        running = ssh(lab, "lf1", "docker", "inspect", "-f", "{{.State.Running}}", "web")
        assert running.stdout.strip() == "true", running.stderr
        with urllib.request.urlopen("http://198.18.203.2:8080/", timeout=10) as reply:
            assert b"veris lab container" in reply.read()
        # The inventory declares them, and our loader accepts it.
        services = load_inventory([inventory]).hosts["lf1"].services
        assert services["postgresql"].port == 5432
        assert services["web"].container == "web"
        assert services["web"].depends_on == ("docker",)
    finally:
        lab.down()
    assert not Path("/run/netns/veris-lf1").exists()


def test_down_leaves_nothing_behind(lab: Lab, state_dir: Path) -> None:
    assert leftovers(NAMES), "the probe must see the running hosts"
    lab.down()
    assert leftovers(NAMES) == []
    assert lab.status() == []
    assert not lab.inventory_path().exists()
    lab.down()  # twice is fine

    # Lost state file: down still finds the host by its names.
    lab.up(1)
    assert leftovers(("lt1",))
    (state_dir / "lab" / "state.json").unlink()
    Lab(state_dir, _cache_dir(), prefix=PREFIX, first_subnet=FIRST_SUBNET).down()
    assert leftovers(NAMES) == []
