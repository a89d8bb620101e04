"""inventory_cache: a listing is reused only while every input is unchanged; never stale."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from veris_remediate.inventory import load_inventory, parse_inventory_listing
from veris_remediate.inventory_cache import InventoryCache, run_ansible_inventory

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inventory"


def listing() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "lab.listing.json").read_text())
    return data


class CountingRun:
    """Stands in for subprocess.run: counts the ansible-inventory processes it replaces."""

    def __init__(self, stdout: str, returncode: int = 0, side_effect: Any = None) -> None:
        self.stdout = stdout
        self.returncode = returncode
        self.side_effect = side_effect
        self.calls = 0

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        if self.side_effect is not None:
            self.side_effect()
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "")


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    source = tmp_path / "inv" / "hosts.yml"
    source.parent.mkdir()
    source.write_text((FIXTURES / "lab.yml").read_text())
    return source


@pytest.fixture
def tool(tmp_path: Path) -> str:
    path = tmp_path / "bin" / "ansible-inventory"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def run(
    monkeypatch: pytest.MonkeyPatch,
    fake: CountingRun,
    tool: str,
    sources: list[Path],
    cache: Path | None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    monkeypatch.setattr(subprocess, "run", fake)
    argv = [tool, *[a for s in sources for a in ("-i", str(s))], "--list"]
    return run_ansible_inventory(
        argv, sources, env=env or {"HOME": "/root"}, timeout=5, cache_dir=cache
    )


def test_a_second_call_is_served_from_disk(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun(json.dumps(listing()))
    first = run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    second = run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 1
    assert second.returncode == 0
    assert json.loads(second.stdout) == json.loads(first.stdout) == listing()


def test_entries_are_private(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    run(monkeypatch, CountingRun(json.dumps(listing())), tool, [inv], tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_without_a_cache_dir_every_call_runs(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str
) -> None:
    fake = CountingRun(json.dumps(listing()))
    for _ in range(2):
        run(monkeypatch, fake, tool, [inv], None)
    assert fake.calls == 2


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun(json.dumps(listing()))
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    before = inv.stat()
    text = inv.read_text()
    inv.write_text(text.replace("198.18.1.2", "198.18.1.3"))  # same length
    os.utime(inv, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert inv.stat().st_size == before.st_size
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 2


@pytest.mark.parametrize(
    "where", ["group_vars/all.yml", "host_vars/lab1.yml", "group_vars/web/x.yml"]
)
def test_vars_next_to_the_source_are_inputs(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path, where: str
) -> None:
    fake = CountingRun(json.dumps(listing()))
    (inv.parent / "group_vars").mkdir()
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    path = inv.parent / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("veris_services: {}\n")
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    path.write_text("veris_services: {nginx: {}}\n")
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 3


def test_a_directory_source_covers_every_file_in_it(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun(json.dumps(listing()))
    run(monkeypatch, fake, tool, [inv.parent], tmp_path / "cache")
    run(monkeypatch, fake, tool, [inv.parent], tmp_path / "cache")
    (inv.parent / "more.ini").write_text("[web]\nlab9\n")
    run(monkeypatch, fake, tool, [inv.parent], tmp_path / "cache")
    assert fake.calls == 2


def test_ansible_environment_and_config_are_inputs(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun(json.dumps(listing()))
    cache = tmp_path / "cache"
    run(monkeypatch, fake, tool, [inv], cache, {"HOME": "/root"})
    run(monkeypatch, fake, tool, [inv], cache, {"HOME": "/root", "ANSIBLE_VARS_ENABLED": "x"})
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    run(monkeypatch, fake, tool, [inv], cache, {"HOME": "/root", "ANSIBLE_CONFIG": str(cfg)})
    cfg.write_text("[defaults]\nvars_plugins_enabled = host_group_vars,other\n")
    run(monkeypatch, fake, tool, [inv], cache, {"HOME": "/root", "ANSIBLE_CONFIG": str(cfg)})
    run(monkeypatch, fake, tool, [inv], cache, {"HOME": "/root", "ANSIBLE_CONFIG": str(cfg)})
    assert fake.calls == 4


def test_the_tool_is_an_input(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun(json.dumps(listing()))
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    Path(tool).write_text("#!/bin/sh\n# upgraded\n")
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 2


def test_inventory_scripts_are_never_cached(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    inv.chmod(0o755)
    fake = CountingRun(json.dumps(listing()))
    for _ in range(2):
        run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 2
    assert not (tmp_path / "cache").exists()


def test_inventory_plugin_configs_are_never_cached(
    monkeypatch: pytest.MonkeyPatch, tool: str, tmp_path: Path
) -> None:
    source = tmp_path / "aws.aws_ec2.yml"
    source.write_text("---\nplugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n")
    fake = CountingRun(json.dumps(listing()))
    for _ in range(2):
        run(monkeypatch, fake, tool, [source], tmp_path / "cache")
    assert fake.calls == 2


def test_a_failed_run_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    failing = CountingRun("", returncode=1)
    run(monkeypatch, failing, tool, [inv], tmp_path / "cache")
    ok = CountingRun(json.dumps(listing()))
    run(monkeypatch, ok, tool, [inv], tmp_path / "cache")
    assert (failing.calls, ok.calls) == (1, 1)


def test_output_that_is_not_a_json_object_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun("[]")
    for _ in range(2):
        run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 2


def test_an_input_edited_while_ansible_inventory_runs_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    def edit() -> None:
        with inv.open("a") as fh:
            fh.write("# edited during the run\n")

    racing = CountingRun(json.dumps(listing()), side_effect=edit)
    run(monkeypatch, racing, tool, [inv], tmp_path / "cache")
    after = CountingRun(json.dumps(listing()))
    run(monkeypatch, after, tool, [inv], tmp_path / "cache")
    assert after.calls == 1  # what the first run read may not be what the file says now


def test_a_corrupt_entry_falls_back_to_ansible_inventory(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    fake = CountingRun(json.dumps(listing()))
    run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    entry.write_text("{not json")
    done = run(monkeypatch, fake, tool, [inv], tmp_path / "cache")
    assert fake.calls == 2
    assert json.loads(done.stdout) == listing()
    assert run(monkeypatch, fake, tool, [inv], tmp_path / "cache").returncode == 0
    assert fake.calls == 2  # the fallback's output was kept again


def test_an_unwritable_cache_dir_only_costs_the_cache(
    monkeypatch: pytest.MonkeyPatch, inv: Path, tool: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the directory should be")
    fake = CountingRun(json.dumps(listing()))
    assert run(monkeypatch, fake, tool, [inv], blocker).returncode == 0
    assert run(monkeypatch, fake, tool, [inv], blocker).returncode == 0
    assert fake.calls == 2


def test_sources_in_a_different_order_are_another_entry(inv: Path, tool: str) -> None:
    other = inv.parent / "other.yml"
    other.write_text("all: {}\n")
    env = {"HOME": "/root"}
    a = InventoryCache(inv.parent / "c", [inv, other], tool, env)
    b = InventoryCache(inv.parent / "c", [other, inv], tool, env)
    assert a.path != b.path
    assert a.key != b.key


def test_load_inventory_parses_and_checks_a_cached_listing_the_same_way(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "lab.yml"
    source.write_text((FIXTURES / "lab.yml").read_text())
    fake = CountingRun(json.dumps(listing()))
    monkeypatch.setattr(subprocess, "run", fake)
    fresh = load_inventory([source], cache_dir=tmp_path / "cache")
    cached = load_inventory([source], cache_dir=tmp_path / "cache")
    assert fake.calls == 1
    assert cached == fresh == parse_inventory_listing(listing(), [source])


def test_host_variables_the_parser_does_not_read_never_reach_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "lab.yml"
    source.write_text((FIXTURES / "lab.yml").read_text())
    data = listing()
    for variables in data["_meta"]["hostvars"].values():
        variables["ansible_become_password"] = "planted-become-7f3a"
        variables["app_db_password"] = "planted-db-91c2"
    fake = CountingRun(json.dumps(data))
    monkeypatch.setattr(subprocess, "run", fake)
    fresh = load_inventory([source], cache_dir=tmp_path / "cache")
    cached = load_inventory([source], cache_dir=tmp_path / "cache")
    assert fake.calls == 1
    assert cached == fresh
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"ansible_host" in stored
    assert b"planted-" not in stored
