"""The host-wide diagnosis workflows for real: a lab host is put in exactly one state, and
`veris-remediate diagnose` names the cause with its evidence (performance, security,
firewall, general)."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import FIXTURES, run_cli
from tests.integration.conftest import LabHandle
from veris_remediate.lab.system import cgroups_by_name

pytestmark = pytest.mark.integration

RULES = FIXTURES / "rules" / "diag-workflows.yml"
PAYLOADS = FIXTURES / "payloads"
MiB = 1024 * 1024
BOGUS_LOGINS = 30


def _sh(lab: LabHandle, host: str, script: str, *, check: bool = True) -> str:
    return lab.ssh(host, "sh", "-c", script, check=check).stdout


def _diagnose(
    state_dir: Path,
    lab: LabHandle,
    host: str,
    payload: str,
    *,
    command: str = "diagnose",
    rules: Path | None = RULES,
    inventory: Path | None = None,
) -> dict[str, Any]:
    text = (PAYLOADS / payload).read_text().replace("lab1", host)
    argv = [command, "-", "-i", str(inventory or lab.inventory), "--json"]
    argv += ["--rules", str(rules)] if rules else []
    result = run_cli(state_dir, *argv, stdin=text)
    report: dict[str, Any] = result.json
    expected = 0 if command == "diagnose" else 4
    assert result.rc == expected, (result.rc, report, result.stderr[-2000:])
    (remediation,) = report["remediations"]
    run = next(p for p in remediation["phases"] if p["name"] == "diagnose")
    # Read-only: the workflow's one run went through and changed nothing.
    assert run["detail"] == "successful, 0 changed", run
    return report


def _cause(report: dict[str, Any], code: str) -> dict[str, Any]:
    found = [c for c in report["causes"] if c["code"] == code]
    assert found, f"no cause {code}: {[c['code'] for c in report['causes']]}"
    cause: dict[str, Any] = found[0]
    return cause


def _codes(report: dict[str, Any]) -> set[str]:
    return {c["code"] for c in report["causes"]}


def _evidence(cause: dict[str, Any]) -> str:
    return "\n".join(cause["evidence"])


@pytest.fixture
def host(lab: LabHandle) -> str:
    """The lab's first host; each test undoes what it changes."""
    return lab.name(1)


@pytest.fixture
def fresh(lab: LabHandle) -> Iterator[str]:
    """The lab's first host freshly booted (an empty journal), and booted again after."""
    name = lab.name(1)
    lab.reset(name)
    yield name
    lab.reset(name)


def _without_firewall(lab: LabHandle, tmp_path: Path) -> Path:
    inventory = yaml.safe_load(lab.inventory.read_text())
    for spec in inventory["all"]["hosts"].values():
        spec.pop("veris_firewall", None)
    path = tmp_path / "no-firewall.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


# -- security -------------------------------------------------------------------------------


def test_ssh_brute_force_names_the_source_and_the_count(
    lab: LabHandle, fresh: str, state_dir: Path
) -> None:
    address = lab.address(1)
    controller = address.rpartition(".")[0] + ".1"
    for n in range(BOGUS_LOGINS):
        done = subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
             "-o", "IdentityFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
             f"intruder{n % 3}@{address}", "true"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 255, done.stderr

    report = _diagnose(state_dir, lab, fresh, "diag-ssh-brute-force.json")
    cause = _cause(report, "ssh_brute_force")
    evidence = _evidence(cause)
    assert f"{BOGUS_LOGINS} failed SSH login(s) from {controller}" in evidence, evidence
    assert f"({BOGUS_LOGINS} connection(s), {BOGUS_LOGINS} for invalid users)" in evidence
    assert "'intruder0', 'intruder1', 'intruder2'" in evidence
    assert "threshold: 20 failed logins from one address in 60 min" in evidence
    assert f"{controller} is the address this diagnosis itself connected from" in evidence
    assert cause["implied_fix"] is None
    assert cause["confidence"] == 0.85
    assert controller in cause["summary"]
    messages = [f["message"] for f in report["findings"]]
    assert any(m.startswith(f"{BOGUS_LOGINS} failed SSH login(s)") for m in messages)

    # handle: no fix for this rule, so the workflow runs and the alert escalates, causes attached.
    handled = _diagnose(state_dir, lab, fresh, "diag-ssh-brute-force.json", command="handle")
    assert handled["outcome"] == "escalated"
    assert "ssh_brute_force" in _codes(handled)


def test_an_undeclared_listener_is_named_with_its_process(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    _sh(lab, host, "systemd-run --unit=diag-squatter python3 -m http.server 8081 "
        "--bind 0.0.0.0 --directory /tmp && sleep 1")  # fmt: skip
    try:
        pid = lab.prop(host, "diag-squatter.service", "MainPID")
        report = _diagnose(state_dir, lab, host, "diag-unexpected-listener.json")
        cause = _cause(report, "unexpected_listener")
        label = f"8081/tcp (python3, pid {pid}, diag-squatter.service)"
        assert f"{label} on 0.0.0.0: reachable from anywhere" in cause["evidence"]
        assert cause["implied_fix"] == "ufw_harden"  # the lab declares veris_firewall
        assert cause["confidence"] == 0.8
        # Declared services and SSH are not unexpected.
        assert "nginx" not in _evidence(cause)
        assert "sshd" not in _evidence(cause)

        # A host that does not opt in to hardening: the same cause, escalated.
        bare = _diagnose(state_dir, lab, host, "diag-unexpected-listener.json",
                         inventory=_without_firewall(lab, tmp_path))  # fmt: skip
        assert _cause(bare, "unexpected_listener")["implied_fix"] is None
    finally:
        _sh(lab, host, "systemctl stop diag-squatter", check=False)


# -- firewall -------------------------------------------------------------------------------


def test_firewall_inactive_through_the_default_rules(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    # The lab boots with ufw inactive; FirewallInactive routes to the firewall workflow.
    assert "inactive" in _sh(lab, host, "ufw status", check=False)
    report = _diagnose(state_dir, lab, host, "diag-firewall-inactive.json", rules=None)
    assert report["remediations"][0]["workflow"] == "firewall"
    cause = _cause(report, "firewall_inactive")
    assert cause["confidence"] == 0.9
    assert cause["implied_fix"] == "ufw_harden"
    evidence = _evidence(cause)
    assert "ufw is inactive (ENABLED=no in /etc/ufw/ufw.conf" in evidence
    assert "22/tcp (ssh)" in evidence
    assert "80/tcp (nginx)" in evidence
    assert "firewall_blocks_declared_port" not in _codes(report)
    messages = [f["message"] for f in report["findings"]]
    assert "declared 80/tcp (nginx): reachable from the controller" in messages


def test_ufw_blocking_a_declared_public_port(lab: LabHandle, host: str, state_dir: Path) -> None:
    _sh(lab, host, "ufw allow 22/tcp >/dev/null && ufw --force enable >/dev/null")
    try:
        started = time.monotonic()
        report = _diagnose(state_dir, lab, host, "diag-port-blocked.json")
        elapsed = time.monotonic() - started
        cause = _cause(report, "firewall_blocks_declared_port")
        evidence = _evidence(cause)
        target = lab.address(1)
        assert (
            f"80/tcp (nginx): listening on the host, but a TCP connect from the controller "
            f"to {target}:80 failed (timed out after 1s)"
        ) in evidence, evidence
        assert "80/tcp (nginx): no ufw rule lets" in evidence
        assert "default incoming deny" in evidence
        assert cause["confidence"] == 0.9
        assert cause["implied_fix"] == "ufw_harden"
        assert "firewall_inactive" not in _codes(report)
        # SSH, allowed, answered; only the dropped port cost the connect timeout, once.
        messages = [f["message"] for f in report["findings"]]
        assert "declared 22/tcp (ssh): reachable from the controller" in messages
        assert elapsed < 30
    finally:
        _sh(lab, host, "ufw --force reset >/dev/null", check=False)


# -- general --------------------------------------------------------------------------------


def test_a_full_declared_cache_dir(lab: LabHandle, host: str, state_dir: Path) -> None:
    cache = "/var/cache/nginx"
    _sh(lab, host, f"mkdir -p {cache} && mount -t tmpfs -o size=16m diag-cache {cache} && "
        f"(head -c {20 * MiB} /dev/zero > {cache}/fill 2>/dev/null; true)")  # fmt: skip
    try:
        report = _diagnose(state_dir, lab, host, "diag-disk-full.json")
        disk = _cause(report, "disk_full")
        assert f"{cache} (tmpfs) 100% full: 16.0 MiB used, 0 B available of 16.0 MiB" in (
            _evidence(disk)
        )
        assert disk["rules_out"] == ["service_restart"]
        assert disk["implied_fix"] == "cache_clear"
        assert disk["confidence"] == 0.95
        assert "a restart cannot help" in disk["summary"]
        full = _cause(report, "cache_dir_full")
        assert f"nginx's cache dir {cache} holds 16.0 MiB in 1 entries" in full["evidence"]
        assert f"the cache dir(s) hold 100% of what is used on {cache}" in full["evidence"]
        assert full["implied_fix"] == "cache_clear"
        assert full["confidence"] == 0.9
    finally:
        _sh(lab, host, f"umount {cache}", check=False)


def test_a_full_data_filesystem_escalates(lab: LabHandle, host: str, state_dir: Path) -> None:
    data = "/srv/diag-data"
    _sh(lab, host, f"mkdir -p {data} && mount -t tmpfs -o size=8m diag-data {data} && "
        f"(head -c {10 * MiB} /dev/zero > {data}/fill 2>/dev/null; true)")  # fmt: skip
    try:
        report = _diagnose(state_dir, lab, host, "diag-disk-full.json")
        disk = _cause(report, "disk_full")
        assert f"{data} (tmpfs) 100% full: 8.0 MiB used, 0 B available of 8.0 MiB" in (
            _evidence(disk)
        )
        assert disk["implied_fix"] is None  # no declared cache dir there: nothing safe to clear
        assert disk["rules_out"] == ["service_restart"]
        assert "cache_dir_full" not in _codes(report)
    finally:
        _sh(lab, host, f"umount {data}", check=False)


def test_a_name_the_resolver_cannot_resolve(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    # The lab's resolv.conf names a resolver no lab host can reach; its own name resolves
    # from /etc/hosts. Ask for one more name, as an operator would, per host.
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["all"]["hosts"][host]["diag_general_dns_names"] = ["veris-diag.invalid"]
    own = tmp_path / "dns.yml"
    own.write_text(yaml.safe_dump(inventory))
    report = _diagnose(state_dir, lab, host, "diag-disk-full.json", inventory=own)
    cause = _cause(report, "dns_failure")
    evidence = _evidence(cause)
    assert "cannot resolve veris-diag.invalid: " in evidence, evidence
    nameservers = _sh(lab, host, "awk '/^nameserver/ {print $2}' /etc/resolv.conf").split()
    assert f"nameservers in /etc/resolv.conf: {', '.join(nameservers)}" in evidence
    assert (cause["confidence"], cause["implied_fix"]) == (0.7, None)
    assert f"resolves {host}: 127.0.1.1" in [f["message"] for f in report["findings"]]


# -- performance ----------------------------------------------------------------------------


def _memory_cgroup(host: str) -> Path:
    """The host's memory cgroup on the controller (v1, as the lab makes it): the live one."""
    for cgroup in cgroups_by_name().get(host, []):
        if "/memory/" in str(cgroup) and (cgroup / "cgroup.procs").read_text().split():
            return cgroup
    raise AssertionError(f"no memory cgroup with processes for {host}")


def _hog(tens_of_mib: int, seconds: int) -> str:
    """A python3 -c argument (shell-quoted) that holds that much memory, then sleeps."""
    code = (
        f"import time; a = [b'x' * (10 << 20) for _ in range({tens_of_mib})]; time.sleep({seconds})"
    )
    return shlex.quote(code)


def _wait_failed(lab: LabHandle, host: str, unit: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while lab.is_active(host, unit) != "failed":
        assert time.monotonic() < deadline, f"{unit} did not fail"
        time.sleep(0.5)


def test_an_oom_kill_names_the_unit_and_when(lab: LabHandle, fresh: str, state_dir: Path) -> None:
    cgroup = _memory_cgroup(fresh)
    usage = int((cgroup / "memory.usage_in_bytes").read_text())
    # The lab's cgroups are v1 and read-only inside the host (no MemoryMax): the limit is
    # set on the host's own memory cgroup from outside; the kernel's OOM killer does the rest.
    (cgroup / "memory.limit_in_bytes").write_text(str(usage + 100 * MiB))
    try:
        _sh(lab, fresh, f"systemd-run --unit=diag-hog python3 -c {_hog(40, 60)}")
        _wait_failed(lab, fresh, "diag-hog.service")
    finally:
        (cgroup / "memory.limit_in_bytes").write_text("-1")
    assert "oom_kill 1" in (cgroup / "memory.oom_control").read_text()

    report = _diagnose(state_dir, lab, fresh, "diag-oom.json")
    cause = _cause(report, "oom_kill")
    evidence = _evidence(cause)
    assert "this host's memory cgroup (/) counted 1 OOM kill(s)" in evidence, evidence
    assert "diag-hog.service main process was killed by SIGKILL" in evidence
    assert "now failed" in evidence
    assert "diag-hog.service" in cause["summary"]
    assert cause["confidence"] == 0.75
    assert cause["implied_fix"] is None  # not a declared service


def test_memory_pressure_in_the_hosts_cgroup(
    lab: LabHandle, fresh: str, state_dir: Path, tmp_path: Path
) -> None:
    cgroup = _memory_cgroup(fresh)
    usage = int((cgroup / "memory.usage_in_bytes").read_text())
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["all"]["hosts"][fresh]["diag_performance_cgroup_memory_percent"] = 60
    own = tmp_path / "pressure.yml"
    own.write_text(yaml.safe_dump(inventory))
    (cgroup / "memory.limit_in_bytes").write_text(str(usage + 300 * MiB))
    try:
        _sh(lab, fresh, f"systemd-run --unit=diag-hog python3 -c {_hog(22, 120)} && sleep 2")
        report = _diagnose(state_dir, lab, fresh, "diag-oom.json", inventory=own)
    finally:
        (cgroup / "memory.limit_in_bytes").write_text("-1")
        _sh(lab, fresh, "systemctl stop diag-hog", check=False)
    cause = _cause(report, "memory_pressure")
    evidence = _evidence(cause)
    assert "this host's cgroup uses" in evidence, evidence
    assert "threshold 60%" in evidence
    assert "largest: python3" in evidence
    assert "diag-hog.service" in evidence
    assert cause["implied_fix"] is None
    assert "oom_kill" not in _codes(report)


def test_cpu_saturation_names_the_busiest_processes(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    # Two niced busy loops on a two-CPU host for a few seconds; the load threshold is
    # lowered per host (the 1-minute load needs a minute to climb), the busy threshold not.
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["all"]["hosts"][host]["diag_performance_load_per_cpu"] = 0.1
    own = tmp_path / "cpu.yml"
    own.write_text(yaml.safe_dump(inventory))
    burn = shlex.quote("import time; end = time.time() + 60\nwhile time.time() < end: pass")
    for n in (1, 2):
        _sh(lab, host, f"systemd-run --unit=diag-burn{n} nice -n 19 python3 -c {burn}")
    try:
        time.sleep(1)
        report = _diagnose(state_dir, lab, host, "diag-oom.json", inventory=own)
    finally:
        _sh(lab, host, "systemctl stop diag-burn1 diag-burn2", check=False)
    cause = _cause(report, "cpu_saturation")
    evidence = _evidence(cause)
    assert "threshold 0.1) with the CPUs " in evidence, evidence
    assert "python3 (pid " in evidence
    assert "diag-burn1.service" in evidence or "diag-burn2.service" in evidence
    assert cause["implied_fix"] is None
