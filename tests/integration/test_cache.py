"""cache_clear for real: the CLI's whole loop against a lab host (real sshd, systemd, journald,
apt, a hostile local user), checking what is left on the host afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import EXAMPLES, FIXTURES, CliResult, run_cli
from tests.integration.conftest import LabHandle

pytestmark = pytest.mark.integration

CACHE = "/var/cache/nginx"
OUTSIDE = "/srv/outside"
CACHE_DIR_FULL = EXAMPLES / "generic-disk-cache.json"  # labels.path=/var/cache/nginx
NODE_FULL = FIXTURES / "payloads" / "cache-node-filesystem-full.json"  # mountpoint "/"
FULL_AT_ZERO = FIXTURES / "rules" / "cache-full-at-zero.yml"
MiB = 1024 * 1024


def _sh(lab: LabHandle, host: str, script: str, *, check: bool = True) -> str:
    return lab.ssh(host, "sh", "-c", script, check=check).stdout


@pytest.fixture
def host(lab: LabHandle) -> Iterator[str]:
    """The lab's first host, with whatever a test left in the cache and outside removed."""
    name = lab.name(1)
    cleanup = (
        f"systemctl stop cc-racer 2>/dev/null; chattr -R -i {CACHE} 2>/dev/null; "
        f"rm -rf {CACHE} {OUTSIDE}; true"
    )
    _sh(lab, name, cleanup)
    yield name
    _sh(lab, name, cleanup, check=False)


def _fill(lab: LabHandle, host: str) -> None:
    """20 MiB in the cache dir and a symlink inside it to a directory outside."""
    _sh(
        lab,
        host,
        f"mkdir -p {CACHE}/levels/a/b {OUTSIDE} && "
        f"head -c {10 * MiB} /dev/urandom > {CACHE}/levels/a/b/blob && "
        f"head -c {10 * MiB} /dev/urandom > {CACHE}/big && "
        f"echo keep > {OUTSIDE}/keep && head -c 4096 /dev/urandom > {OUTSIDE}/data && "
        f"ln -s {OUTSIDE} {CACHE}/outside && chown -R www-data:www-data {CACHE}",
    )


def _outside(lab: LabHandle, host: str) -> str:
    return _sh(lab, host, f"cd {OUTSIDE} && ls -A && cat keep && sha256sum data")


def _listing(lab: LabHandle, host: str) -> list[str]:
    return _sh(lab, host, f"ls -A {CACHE}").split()


def _payload(path: Path, host: str) -> str:
    return path.read_text().replace("lab2", host).replace("lab1", host)


def _handle(
    state: Path, lab: LabHandle, payload: str, *extra: str, inventory: Path | None = None
) -> CliResult:
    inv = str(inventory or lab.inventory)
    return run_cli(state, "handle", "-", "-i", inv, "--json", *extra, stdin=payload)


def _messages(report: dict[str, Any]) -> list[str]:
    return [f["message"] for f in report["findings"]]


def _phase(report: dict[str, Any], name: str) -> float:
    return next(p["seconds"] for p in report["phases"] if p["name"] == name)


def test_full_cache_dir_with_a_symlink_out_is_emptied(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _fill(lab, host)
    before = _outside(lab, host)
    assert int(_sh(lab, host, f"du -sb {CACHE}").split()[0]) >= 20 * MiB

    started = time.monotonic()
    result = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host))
    elapsed = time.monotonic() - started

    report = result.json
    assert result.rc == 0, report
    assert report["outcome"] == "resolved"
    assert report["remediation"] == "cache_clear"
    assert report["decision"] == "apply"
    assert report["rolled_back"] is False
    assert [p["name"] for p in report["phases"]][-5:] == [
        "plan", "check", "decide", "apply", "verify"
    ]  # fmt: skip
    # Emptied; the dir itself kept (not a link); the symlink's target and its files survive.
    assert _listing(lab, host) == []
    assert _sh(lab, host, f"test -d {CACHE} && test ! -L {CACHE} && echo dir").strip() == "dir"
    assert _outside(lab, host) == before
    # The preview said exactly what would go, and the report says what was freed.
    (change,) = report["preview"]
    assert "would delete from /var/cache/nginx (3 entries" in change["diff"]
    assert "symlink outside" in change["diff"]
    assert "the link only; its target is not touched" in change["diff"]
    assert any(m.startswith("freed 20.0 MiB from /var/cache/nginx") for m in _messages(report))
    assert any("after the fix: freed 20.0 MiB" in r for r in report["reasons"])
    print(
        f"\ncache_clear handle loop: {elapsed:.1f} s wall; check {_phase(report, 'check')} s, "
        f"apply {_phase(report, 'apply')} s"
    )


def test_check_only_previews_and_deletes_nothing(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _fill(lab, host)
    result = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host), "--check-only")
    report = result.json
    assert result.rc == 0, report
    assert report["outcome"] == "previewed"
    assert "apply" not in [p["name"] for p in report["phases"]]
    assert sorted(_listing(lab, host)) == ["big", "levels", "outside"]
    (change,) = report["preview"]
    assert change["action"] == "veris_cache_clear"
    for name in ("big", "levels", "outside"):
        assert f" {name}  " in change["diff"]


def test_undeclared_path_is_blocked_and_touches_nothing(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _fill(lab, host)
    before = _outside(lab, host)
    payload = _payload(CACHE_DIR_FULL, host).replace(CACHE, OUTSIDE)
    result = _handle(state_dir, lab, payload)
    report = result.json
    assert result.rc == 4, report
    assert report["outcome"] == "escalated"
    assert any("'/srv/outside' is not a declared cache dir" in r for r in report["reasons"])
    assert report["preview"] == []
    assert _outside(lab, host) == before
    assert sorted(_listing(lab, host)) == ["big", "levels", "outside"]


def test_symlinked_cache_dir_is_refused(lab: LabHandle, host: str, state_dir: Path) -> None:
    _sh(lab, host, f"mkdir -p {OUTSIDE} && echo keep > {OUTSIDE}/keep && ln -s {OUTSIDE} {CACHE}")
    result = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host))
    report = result.json
    assert result.rc == 4, report
    assert any("is a symlink (to /srv/outside)" in r for r in report["reasons"])
    assert _sh(lab, host, f"cat {OUTSIDE}/keep").strip() == "keep"


def test_verify_failure_reports_that_nothing_could_be_rolled_back(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _fill(lab, host)
    _sh(lab, host, f"chattr +i {CACHE}/levels/a/b/blob")
    result = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host))
    report = result.json
    assert result.rc == 6, report
    assert report["outcome"] == "failed"
    assert report["rolled_back"] is False
    assert "rollback" not in [p["name"] for p in report["phases"]]
    assert "cache_clear is irreversible: nothing could be rolled back" in report["reasons"]
    assert any("could not delete /var/cache/nginx/levels" in m for m in _messages(report))
    # What could go went; the pinned file and its directories stayed.
    assert sorted(_listing(lab, host)) == ["levels"]
    # The next alert for this host is not applied: the failure counts against it.
    _sh(lab, host, f"chattr -i {CACHE}/levels/a/b/blob")
    again = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host))
    assert again.rc == 4, again.json
    assert any("it failed on" in r for r in again.json["reasons"])


def test_disk_full_relieves_the_host_as_declared(
    lab: LabHandle, host: str, state_dir: Path, tmp_path: Path
) -> None:
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["all"]["hosts"][host]["veris_cache"] = {
        "journal_vacuum_size": "1K",
        "apt_clean": True,
        "drop_page_cache": True,
    }
    own = tmp_path / "cache-inventory.yml"
    own.write_text(yaml.safe_dump(inventory))
    _fill(lab, host)
    _sh(
        lab,
        host,
        "logger veris-cache-test && journalctl --rotate && "
        "head -c 300000 /dev/urandom > /var/cache/apt/archives/veris-test_1.0_all.deb",
    )
    archived = "find /var/log/journal /run/log/journal -name '*@*.journal' 2>/dev/null"
    assert _sh(lab, host, archived).split()

    result = _handle(
        state_dir, lab, _payload(NODE_FULL, host), "--rules", str(FULL_AT_ZERO), inventory=own
    )
    report = result.json
    assert result.rc == 0, report
    assert report["outcome"] == "resolved"
    assert {c["task"] for c in report["preview"]} == {
        "Empty the declared cache dirs", "Vacuum the journal to 1K", "Clean apt's package cache"
    }  # fmt: skip
    messages = _messages(report)
    assert (
        "page cache not dropped: /proc/sys/vm/drop_caches is read-only inside a container "
        "(systemd-nspawn)" in messages
    )
    assert any(m.startswith("journal vacuum freed") for m in messages)
    assert any(m.startswith("apt-get clean freed") for m in messages)
    # The prediction was exact: nothing predicted was left, nothing unpredicted went.
    assert not any("left predicted files" in m or "also removed" in m for m in messages)
    assert _sh(lab, host, archived).split() == []
    assert _sh(lab, host, "ls /var/cache/apt/archives/*.deb 2>/dev/null", check=False) == ""
    assert _listing(lab, host) == []
    assert any("filesystem / now" in r for r in report["reasons"])


def test_filesystem_below_the_threshold_is_not_needed(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    _fill(lab, host)
    result = _handle(state_dir, lab, _payload(NODE_FULL, host))
    report = result.json
    assert result.rc == 0, report
    assert report["outcome"] == "not_needed"
    assert any("threshold 90%" in r for r in report["reasons"])
    assert sorted(_listing(lab, host)) == ["big", "levels", "outside"]


def test_brake_blocks_the_clear(lab: LabHandle, host: str, state_dir: Path) -> None:
    _fill(lab, host)
    assert run_cli(state_dir, "brake", "engage", "--reason", "disk forensics").rc == 0
    result = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host))
    assert result.rc == 7, result.stdout
    assert result.json["outcome"] == "blocked"
    assert sorted(_listing(lab, host)) == ["big", "levels", "outside"]


def test_a_local_user_racing_the_clear_cannot_make_it_delete_outside(
    lab: LabHandle, host: str, state_dir: Path
) -> None:
    """www-data owns the cache and keeps swapping its directories for links to /srv/outside."""
    _sh(
        lab,
        host,
        f"mkdir -p {OUTSIDE} && for i in $(seq 0 29); do echo p > {OUTSIDE}/p$i; done && "
        f"for i in $(seq 0 39); do mkdir -p {CACHE}/d$i/sub && "
        f"for j in $(seq 0 19); do echo c > {CACHE}/d$i/sub/f$j; done; done && "
        f"chown -R www-data:www-data {CACHE}",
    )
    swap = (
        f"while :; do for d in {CACHE}/d* {CACHE}/d*/sub; do "
        f'mv "$d" "$d.x" 2>/dev/null && ln -s {OUTSIDE} "$d" && rm -f "$d" && mv "$d.x" "$d"; '
        "done; done"
    )
    lab.ssh(host, "systemd-run", "--unit=cc-racer", "--uid=www-data", "sh", "-c", swap)
    try:
        result = _handle(state_dir, lab, _payload(CACHE_DIR_FULL, host))
        racing = lab.ssh(host, "systemctl", "is-active", "cc-racer", check=False).stdout
    finally:
        lab.ssh(host, "systemctl", "stop", "cc-racer", check=False)
    assert racing.strip() == "active"  # it raced the whole run
    assert result.rc in (0, 6), result.stdout  # resolved, or a removal the race made fail
    files = _sh(lab, host, f"ls {OUTSIDE} | sort -V").split()
    assert files == [f"p{i}" for i in range(30)]
    assert _sh(lab, host, f"cat {OUTSIDE}/*").split() == ["p"] * 30
    assert _sh(lab, host, f"test -d {CACHE} && test ! -L {CACHE} && echo dir").strip() == "dir"
