"""The service family's diagnosis and restart on real lab hosts: each likely cause staged for
real and named with its evidence by `diagnose --json`; a restart refused when the cause
rules it out; dependency order proved by systemd's own activation timestamps; Docker
containers diagnosed, restarted and rolled back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import EXAMPLES, CliResult, run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

NGINX_DOWN = EXAMPLES / "alertmanager-nginx-down.json"


def _payload(host: str, service: str = "nginx", port: int | None = None) -> str:
    """An Alertmanager payload about ``service`` on ``host`` (the examples name lab1)."""
    data = json.loads(NGINX_DOWN.read_text())
    labels = data["alerts"][0]["labels"]
    labels["instance"] = f"http://{host}{f':{port}' if port else ''}/"
    labels["service"] = service
    data["commonLabels"]["service"] = service
    return json.dumps(data)


def _cli(state: Path, inventory: Path, command: str, payload: str) -> CliResult:
    return run_cli(state, command, "-", "-i", str(inventory), "--json", stdin=payload)


def _cause(report: dict[str, Any], code: str) -> dict[str, Any]:
    causes = {c["code"]: c for c in report["causes"]}
    assert code in causes, report["causes"]
    cause: dict[str, Any] = causes[code]
    return cause


@pytest.fixture
def host(lab: LabHandle) -> Iterator[str]:
    """lab host 1 with nginx and redis running; reset (a fresh boot) afterwards."""
    name = lab.name(1)
    lab.ssh(name, "systemctl", "start", "nginx", "redis-server")
    yield name
    lab.reset(name)


def _crash_loop(lab: LabHandle, host: str) -> None:
    """nginx with Restart=always, its main process killed whenever it is up, until systemd
    gives up (the start limit)."""
    lab.ssh(
        host, "sh", "-c",
        "mkdir -p /etc/systemd/system/nginx.service.d && "
        "printf '[Service]\\nRestart=always\\nRestartSec=100ms\\n' "
        "> /etc/systemd/system/nginx.service.d/restart.conf && "
        "systemctl daemon-reload && systemctl restart nginx && "
        "for i in $(seq 1 100); do s=$(systemctl is-active nginx); [ $s = failed ] && break; "
        '[ $s = active ] && kill -9 "$(systemctl show -p MainPID --value nginx)"; sleep 0.3; '
        "done",
    )  # fmt: skip
    assert lab.is_active(host, "nginx") == "failed"


def _requires_redis(lab: LabHandle, host: str) -> None:
    lab.ssh(
        host, "sh", "-c",
        "mkdir -p /etc/systemd/system/nginx.service.d && "
        "printf '[Unit]\\nRequires=redis-server.service\\nAfter=redis-server.service\\n' "
        "> /etc/systemd/system/nginx.service.d/redis.conf && systemctl daemon-reload",
    )  # fmt: skip


# -- each cause on a host put in exactly that state -----------------------------------------


def test_a_squatter_is_named_escalated_and_left_alone(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    lab.ssh(host, "systemctl", "stop", "nginx")
    lab.ssh(
        host, "systemd-run", "--unit=squatter", "--", "python3", "-m", "http.server", "80",
        "--bind", "0.0.0.0", "--directory", "/tmp",
    )  # fmt: skip
    lab.ssh(
        host, "sh", "-c",
        "for i in $(seq 50); do ss -Htln 'sport = :80' | grep -q . && break; sleep 0.1; done",
    )  # fmt: skip
    pid = lab.prop(host, "squatter", "MainPID")
    nginx_before = lab.prop(host, "nginx", "InactiveEnterTimestampMonotonic")

    diagnosis = _cli(state_dir, lab.inventory, "diagnose", _payload(host))
    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "port_held")
    assert (
        f"port 80 is held by python3 (pid {pid}, squatter.service), not by nginx.service"
        in (cause["evidence"])
    )
    assert cause["implied_fix"] is None
    assert cause["rules_out"] == ["service_restart"]

    result = _cli(state_dir, lab.inventory, "handle", _payload(host))
    assert result.rc == 4, result.stdout
    report = result.json
    assert report["outcome"] == "escalated"
    assert "apply" not in [p["name"] for p in report["phases"]]
    assert any("likely cause: port 80 is held by another process" in r for r in report["reasons"])
    # Nothing restarted; the squatter untouched, by the same process.
    assert lab.is_active(host, "nginx") == "inactive"
    assert lab.prop(host, "nginx", "InactiveEnterTimestampMonotonic") == nginx_before
    assert lab.is_active(host, "squatter") == "active"
    assert lab.prop(host, "squatter", "MainPID") == pid


def test_start_limit_hit_is_named_and_escalated(lab: LabHandle, host: str, state_dir: Path) -> None:
    _crash_loop(lab, host)
    restarts = lab.prop(host, "nginx", "NRestarts")
    diagnosis = _cli(state_dir, lab.inventory, "diagnose", _payload(host))
    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "start_limit_hit")
    assert (
        f"NRestarts={restarts}, StartLimitBurst=5 within 10s (Restart=always)"
        in (cause["evidence"])
    )
    assert int(restarts) >= 5
    assert cause["rules_out"] == ["service_restart"]
    result = _cli(state_dir, lab.inventory, "handle", _payload(host))
    assert result.rc == 4, result.stdout
    assert result.json["outcome"] == "escalated"
    assert lab.is_active(host, "nginx") == "failed"


def test_an_invalid_config_is_named_with_the_validators_words(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    lab.ssh(host, "systemctl", "stop", "nginx")
    lab.ssh(host, "sh", "-c", "echo 'this is not nginx syntax' >> /etc/nginx/nginx.conf")
    diagnosis = _cli(state_dir, lab.inventory, "diagnose", _payload(host))
    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "config_invalid")
    assert any("[emerg]" in line and "nginx.conf" in line for line in cause["evidence"])
    assert cause["implied_fix"] == "config_repair"


def test_a_required_unit_down_is_named(lab: LabHandle, host: str, state_dir: Path) -> None:
    _requires_redis(lab, host)
    lab.ssh(host, "systemctl", "stop", "redis-server", "nginx")
    diagnosis = _cli(state_dir, lab.inventory, "diagnose", _payload(host))
    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "dependency_down")
    assert (
        "redis-server.service is inactive (dead; its own Requires=/BindsTo=)" in (cause["evidence"])
    )
    assert cause["implied_fix"] == "service_restart"


@pytest.mark.parametrize(
    ("mountpoint", "implied"), [("/var/cache/nginx", "cache_clear"), ("/var/log", None)]
)
def test_a_full_filesystem_is_named_and_nothing_restarted(
    lab: LabHandle, host: str, state_dir: Path, mountpoint: str, implied: str | None
) -> None:
    lab.ssh(host, "systemctl", "stop", "nginx")
    # A small filesystem of its own at the mountpoint, with what was there, then filled.
    lab.ssh(
        host, "sh", "-c",
        f"mkdir -p {mountpoint} && cp -a {mountpoint} /tmp/saved && "
        f"mount -t tmpfs -o size=64m tmpfs {mountpoint} && cp -a /tmp/saved/. {mountpoint}/ && "
        f"(dd if=/dev/zero of={mountpoint}/fill bs=1M count=64 2>/dev/null; true)",
    )  # fmt: skip
    diagnosis = _cli(state_dir, lab.inventory, "diagnose", _payload(host))
    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "disk_full")
    assert any(e.startswith(f"{mountpoint}: 100% used") for e in cause["evidence"]), cause
    assert cause["implied_fix"] == implied
    result = _cli(state_dir, lab.inventory, "handle", _payload(host))
    assert result.rc == 4, result.stdout
    assert lab.is_active(host, "nginx") == "inactive"


# -- restart in dependency order ------------------------------------------------------------


def _inventory_with_dependency(lab: LabHandle, tmp_path: Path) -> Path:
    """The lab's inventory, with nginx declaring depends_on: [redis-server]."""
    document = yaml.safe_load(lab.inventory.read_text())
    for hostvars in document["all"]["hosts"].values():
        hostvars["veris_services"]["nginx"]["depends_on"] = ["redis-server"]
    path = tmp_path / "service-depends.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_dependencies_start_first_and_the_order_is_systemds(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    inventory = _inventory_with_dependency(lab, tmp_path)
    lab.ssh(host, "systemctl", "stop", "nginx", "redis-server")
    before = int(lab.prop(host, "redis-server", "ActiveEnterTimestampMonotonic"))

    result = _cli(state_dir, inventory, "handle", _payload(host))

    assert result.rc == 0, result.stdout
    report = result.json
    assert report["outcome"] == "resolved"
    assert _cause(report, "dependency_down")["evidence"][0] == (
        "redis-server.service is inactive (dead; declared depends_on)"
    )
    assert lab.is_active(host, "redis-server") == "active"
    assert lab.is_active(host, "nginx") == "active"
    redis = int(lab.prop(host, "redis-server", "ActiveEnterTimestampMonotonic"))
    nginx = int(lab.prop(host, "nginx", "ActiveEnterTimestampMonotonic"))
    assert before < redis < nginx, (before, redis, nginx)


def test_a_dependency_that_will_not_start_stops_the_chain(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    inventory = _inventory_with_dependency(lab, tmp_path)
    lab.ssh(
        host, "sh", "-c",
        "mkdir -p /etc/systemd/system/redis-server.service.d && "
        "printf '[Service]\\nExecStartPre=/bin/false\\n' "
        "> /etc/systemd/system/redis-server.service.d/broken.conf && systemctl daemon-reload",
    )  # fmt: skip
    lab.ssh(host, "systemctl", "stop", "nginx", "redis-server")
    nginx_before = lab.prop(host, "nginx", "InactiveEnterTimestampMonotonic")

    result = _cli(state_dir, inventory, "handle", _payload(host))

    report = result.json
    assert result.rc == 5, report
    assert report["outcome"] == "rolled_back"
    assert any(
        "redis-server.service did not start, so nothing that needs it was touched "
        "(nginx.service was neither started nor restarted)" in r
        for r in report["reasons"]
    ), report["reasons"]
    # nginx was never started: the same inactive state as before, not a start undone.
    assert lab.is_active(host, "nginx") == "inactive"
    assert lab.prop(host, "nginx", "InactiveEnterTimestampMonotonic") == nginx_before


# -- Docker -----------------------------------------------------------------------------------


@pytest.fixture
def docker_host(feature_lab: LabHandle) -> Iterator[str]:
    """The feature lab's host with Docker and container "web"; reset afterwards."""
    name = feature_lab.name(1)
    feature_lab.ssh(name, "systemctl", "start", "docker")
    yield name
    feature_lab.reset(name)


def _web(lab: LabHandle, host: str, fmt: str) -> str:
    return lab.ssh(host, "docker", "inspect", "--format", fmt, "web").stdout.strip()


def test_a_stopped_container_is_resolved(
    feature_lab: LabHandle, docker_host: str, state_dir: Path
) -> None:
    feature_lab.ssh(docker_host, "docker", "stop", "web")
    payload = _payload(docker_host, "web", 8080)

    result = _cli(state_dir, feature_lab.inventory, "handle", payload)

    assert result.rc == 0, result.stdout
    report = result.json
    assert report["outcome"] == "resolved"
    assert report["remediation"] == "service_restart"
    assert _cause(report, "stopped")["evidence"][0] == "container web is exited (exit code 143)"
    assert _web(feature_lab, docker_host, "{{.State.Running}}") == "true"
    http = feature_lab.ssh(docker_host, "curl", "-s", "http://127.0.0.1:8080/").stdout
    assert "veris lab container" in http


def test_a_container_that_fails_its_check_is_rolled_back_to_stopped(
    feature_lab: LabHandle, docker_host: str, state_dir: Path
) -> None:
    # web serves a directory without an index.html: every request for / is a 404.
    feature_lab.ssh(
        docker_host, "sh", "-c",
        "docker rm -f web && docker create --init --name web -p 8080:8080 local/busybox "
        "httpd -f -p 8080 -h /bin",
    )  # fmt: skip
    assert _web(feature_lab, docker_host, "{{.State.Status}}") == "created"

    result = _cli(state_dir, feature_lab.inventory, "handle", _payload(docker_host, "web", 8080))

    report = result.json
    assert result.rc == 5, report
    assert report["outcome"] == "rolled_back"
    assert any("HTTP probe failing (404)" in r for r in report["reasons"]), report["reasons"]
    assert _web(feature_lab, docker_host, "{{.State.Running}}") == "false"
    assert feature_lab.is_active(docker_host, "docker") == "active"


def test_an_oom_killed_container_is_named(
    feature_lab: LabHandle, docker_host: str, state_dir: Path
) -> None:
    feature_lab.ssh(
        docker_host, "sh", "-c",
        "docker rm -f web && docker run -d --name web -m 16m --memory-swap 16m -p 8080:8080 "
        "local/busybox busybox dd if=/dev/zero of=/dev/null bs=64M count=1 && "
        "for i in $(seq 50); do [ $(docker inspect -f '{{.State.Running}}' web) = false ] "
        "&& break; sleep 0.1; done",
    )  # fmt: skip
    assert _web(feature_lab, docker_host, "{{.State.OOMKilled}}") == "true"

    diagnosis = _cli(
        state_dir, feature_lab.inventory, "diagnose", _payload(docker_host, "web", 8080)
    )

    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "oom_kill")
    assert cause["evidence"] == ["OOMKilled=true", "container web is exited (exit code 137)"]
    assert cause["implied_fix"] == "service_restart"
    assert cause["rules_out"] == []


def test_a_stopped_engine_is_named_without_starting_it(
    feature_lab: LabHandle, docker_host: str, state_dir: Path
) -> None:
    feature_lab.ssh(docker_host, "systemctl", "stop", "docker.socket", "docker.service")
    payload = _payload(docker_host, "web", 8080)

    diagnosis = _cli(state_dir, feature_lab.inventory, "diagnose", payload)

    assert diagnosis.rc == 0, diagnosis.stderr
    cause = _cause(diagnosis.json, "dependency_down")
    assert "docker.service is inactive (dead; declared depends_on)" in cause["evidence"]
    # Read-only: asking Docker through its socket would have started it.
    assert feature_lab.is_active(docker_host, "docker.service") == "inactive"
    assert feature_lab.is_active(docker_host, "docker.socket") == "inactive"

    result = _cli(state_dir, feature_lab.inventory, "handle", payload)
    assert result.rc == 0, result.stdout
    assert result.json["outcome"] == "resolved"
    assert feature_lab.is_active(docker_host, "docker.service") == "active"
    assert _web(feature_lab, docker_host, "{{.State.Running}}") == "true"
