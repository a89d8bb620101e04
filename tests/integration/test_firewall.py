"""ufw_harden through the CLI against real lab hosts: real ufw, sshd, nginx, redis, systemd.

Every test starts from a freshly booted host and leaves one behind (the firewall state of
one test must never reach another).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import EXAMPLES, FIXTURES, role_module, run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

INACTIVE = EXAMPLES / "alertmanager-firewall-exposed.json"
SENTINEL = EXAMPLES / "sentinel-s11-firewall.json"
LOCKOUT_RULES = FIXTURES / "rules" / "firewall-lockout.yml"
SNAPSHOTS = "/var/lib/veris-remediate/ufw"
LISTENER_8081 = (
    "systemd-run --unit=undeclared-8081 -- python3 -m http.server 8081 --bind 0.0.0.0 "
    "--directory /tmp && sleep 1"
)
# The firewall as files and kernel rules: /etc/ufw and /etc/default/ufw (paths, modes,
# owners, contents), then iptables-save and ip6tables-save without comments.
FINGERPRINT = (
    "find /etc/ufw /etc/default/ufw | sort | while read -r f; do "
    'stat -c "%n %a %U %G %F" "$f"; if [ -f "$f" ]; then sha256sum < "$f"; fi; done; '
    "echo @@v4; iptables-save | grep -v '^#' || true; "
    "echo @@v6; ip6tables-save | grep -v '^#' || true"
)


PROBE = role_module("ufw_harden", "ufw_harden_probe")


@pytest.fixture
def host(lab: LabHandle) -> Iterator[str]:
    """lab host 1, freshly booted (ufw inactive), and booted again afterwards."""
    name = lab.name(1)
    lab.reset(name)
    yield name
    lab.reset(name)


def _sh(lab: LabHandle, host: str, command: str) -> str:
    return lab.ssh(host, "sh", "-c", command).stdout


def _payload(path: Path, host: str) -> str:
    return path.read_text().replace("lab1", host)


def _handle(state: Path, lab: LabHandle, payload: str, *extra: str) -> Any:
    return run_cli(state, "handle", "-", "-i", str(lab.inventory), "--json", *extra, stdin=payload)


def _answers(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _fingerprint(lab: LabHandle, host: str) -> tuple[str, str, str]:
    """(/etc/ufw tree, normalized live v4, normalized live v6) of the host."""
    text = _sh(lab, host, FINGERPRINT)
    tree, _, rest = text.partition("@@v4\n")
    v4, _, v6 = rest.partition("@@v6\n")
    return tree, PROBE.normalize_ruleset(v4), PROBE.normalize_ruleset(v6)


def _controller(lab: LabHandle) -> str:
    return lab.address(1).rsplit(".", 1)[0] + ".1"


def test_inactive_ufw_is_hardened_and_only_declared_ports_answer(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    address = lab.address(1)
    _sh(lab, host, LISTENER_8081)
    _sh(lab, host, "redis-cli config set bind '* -::*'")  # declared, not public
    assert all(_answers(address, port) for port in (80, 8081, 6379))

    started = time.monotonic()
    result = _handle(state_dir, lab, _payload(INACTIVE, host))
    seconds = time.monotonic() - started

    assert result.rc == 0, (result.stdout, result.stderr)
    report = result.json
    assert (report["outcome"], report["decision"], report["remediation"]) == (
        "resolved", "apply", "ufw_harden"
    )  # fmt: skip
    assert report["hosts"] == [host]
    assert {"check", "decide", "apply", "verify"} <= {p["name"] for p in report["phases"]}
    # SSH over a new connection (lab.ssh never reuses one), the public port from the
    # controller; the undeclared listener and the non-public redis port are closed.
    assert lab.ssh(host, "true").returncode == 0
    assert _answers(address, 80)
    assert not _answers(address, 8081)
    assert not _answers(address, 6379)
    assert "Status: active" in _sh(lab, host, "ufw status")
    assert lab.ssh(host, "systemctl", "list-units", "--all", "veris-ufw-revert-*",
                   "--no-legend").stdout.strip() == ""  # fmt: skip
    print(f"\nfull handle loop (check, apply, verify): {seconds:.1f}s")

    again = _handle(state_dir, lab, _payload(INACTIVE, host))
    assert again.rc == 0, again.stdout
    assert again.json["outcome"] == "not_needed"
    assert "apply" not in {p["name"] for p in again.json["phases"]}


def test_declared_allow_entries_stay_open_and_prune_false_keeps_rules(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    """veris_firewall.allow: a port from one address only, a UDP range; prune off."""
    controller = _controller(lab)
    declared = tmp_path / "firewall.yml"
    declared.write_text(
        yaml.safe_dump({"all": {"hosts": {host: {"veris_firewall": {
            "prune": False,
            "allow": [
                {"port": 8081, "from": f"{controller}/32", "comment": "lab controller"},
                {"port": "9000:9010", "proto": "udp"},
            ],
        }}}}})
    )  # fmt: skip
    _sh(lab, host, LISTENER_8081)
    _sh(lab, host, "redis-cli config set bind '* -::*' && ufw allow 7777/tcp")

    result = run_cli(
        state_dir, "handle", "-", "-i", str(lab.inventory), "-i", str(declared), "--json",
        stdin=_payload(INACTIVE, host),
    )  # fmt: skip

    assert result.rc == 0, (result.stdout, result.stderr)
    assert result.json["outcome"] == "resolved"
    status = _sh(lab, host, "ufw status")
    assert f"8081/tcp                   ALLOW       {controller}" in status, status
    assert "# lab controller" in status
    assert "9000:9010/udp" in status
    assert "7777/tcp" in status  # undeclared, but prune is off
    assert _answers(lab.address(1), 8081)  # from the controller: declared
    assert not _answers(lab.address(1), 6379)
    assert lab.ssh(host, "true").returncode == 0


def test_check_only_previews_rules_closing_ports_and_connected_clients(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _sh(lab, host, LISTENER_8081)
    before = _fingerprint(lab, host)
    with socket.create_connection((lab.address(1), 8081), timeout=5):
        held = _handle(state_dir, lab, _payload(INACTIVE, host), "--check-only")
    assert held.rc == 4, held.stdout
    report = held.json
    assert (report["outcome"], report["remediation"]) == ("escalated", "ufw_harden")
    assert report["confidence"] == pytest.approx(0.68)
    tasks = [c["task"] for c in report["preview"]]
    # The firewall before and after leads the preview; the ufw tasks follow.
    diff = report["preview"][0]["diff"]
    assert "+ufw active" in diff
    assert f"-client {_controller(lab)} on 8081/tcp" in diff
    assert "Allow incoming 22/tcp from any, 80/tcp from any" in tasks
    client = f"shuts out {_controller(lab)} on 8081/tcp"
    assert any("closes 8081/tcp (python3)" in t and client in t for t in tasks), tasks
    assert any(
        f["severity"] == "critical" and _controller(lab) in f["message"] for f in report["findings"]
    )

    free = _handle(state_dir, lab, _payload(INACTIVE, host), "--check-only")
    assert free.rc == 0, free.stdout
    assert (free.json["outcome"], free.json["decision"]) == ("previewed", "apply")
    # Nothing changed on the host: the check runs only read and predict.
    assert _fingerprint(lab, host) == before
    assert "Status: inactive" in _sh(lab, host, "ufw status")
    assert _answers(lab.address(1), 8081)


def test_firewall_alert_on_a_host_with_two_services_is_routed(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    result = _handle(state_dir, lab, _payload(SENTINEL, host), "--check-only")
    assert result.rc == 0, (result.stdout, result.stderr)
    report = result.json
    assert (report["outcome"], report["remediation"], report["hosts"]) == (
        "previewed", "ufw_harden", [host]
    )  # fmt: skip
    assert report["remediations"][0]["service"] is None


def test_rollback_restores_the_exact_prior_rules(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    """ufw active with rules of its own; a foreign DROP keeps port 80 from answering."""
    _sh(lab, host, LISTENER_8081)
    _sh(lab, host, "ufw default allow incoming && ufw allow 8081/tcp && ufw deny 23 && "
        "ufw limit 2222/tcp && ufw allow from 10.0.0.0/8 to any port 5000:5010 proto udp "
        "comment 'lab partners' && ufw --force enable")  # fmt: skip
    _sh(lab, host, "iptables -I INPUT 1 -p tcp --dport 80 -j DROP")
    raw = "iptables-save | grep -v '^#' | sed 's/\\[[0-9]*:[0-9]*\\]//g'"
    before, before_raw = _fingerprint(lab, host), _sh(lab, host, raw)

    result = _handle(state_dir, lab, _payload(INACTIVE, host))

    assert result.rc == 5, (result.stdout, result.stderr)
    report = result.json
    assert (report["outcome"], report["rolled_back"]) == ("rolled_back", True)
    reasons = " | ".join(report["reasons"])
    assert "public 80/tcp (nginx) does NOT answer from the controller" in reasons
    assert "restored from the snapshot by the rollback run" in reasons
    assert _fingerprint(lab, host) == before
    assert _sh(lab, host, raw) == before_raw  # even the raw rule set, counters aside
    assert _answers(lab.address(1), 8081)


def test_wrong_ssh_port_lockout_is_healed_by_the_on_host_revert(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _sh(lab, host, LISTENER_8081)
    before = _fingerprint(lab, host)

    started = time.monotonic()
    result = _handle(state_dir, lab, _payload(INACTIVE, host), "--rules", str(LOCKOUT_RULES))
    seconds = time.monotonic() - started

    assert result.rc == 5, (result.stdout, result.stderr)
    report = result.json
    assert (report["outcome"], report["rolled_back"]) == ("rolled_back", True)
    reasons = " | ".join(report["reasons"])
    assert "apply failed at 'Connect afresh through the new firewall'" in reasons
    assert "the on-host revert restored the firewall at " in reasons
    assert "the host was reachable again without the controller" in reasons
    # The timer on the host restored it; the rollback run only found it restored.
    markers = _sh(lab, host, f"ls {SNAPSHOTS}/*/").split()
    assert "restored-by-timer" in markers
    assert "restored-by-rollback" not in markers
    assert lab.ssh(host, "true").returncode == 0
    assert _fingerprint(lab, host) == before
    assert "Status: inactive" in _sh(lab, host, "ufw status")
    print(f"\nlockout drill (check, apply, revert, rollback): {seconds:.1f}s")
