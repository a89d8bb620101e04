"""cache_clear: recorded real runs replayed through the loop, the report models, the decision's
irreversible rule, and the host-side module's deletion (symlinks, other filesystems, races)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import role_module
from tests.unit import recorded
from tests.unit.recorded import RecordedExecutor
from veris_remediate.audit import AuditLog
from veris_remediate.decision import decide
from veris_remediate.events import RunSummary, TaskResult
from veris_remediate.fixes import load_fixes
from veris_remediate.pipeline import Remediator
from veris_remediate.report import RunReport
from veris_remediate.role_reports import ReportError, Scope, parse_report
from veris_remediate.role_reports.cache import CachePlan, CacheResult
from veris_remediate.routing import load_rules
from veris_remediate.settings import Settings
from veris_remediate.workspace import History

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "cache_clear"
FIX = load_fixes().fixes["cache_clear"]
SCENARIOS = [s for s in recorded.SCENARIOS if s.startswith("cc_")]


def _handle(
    tmp_path: Path, scenario: str, *, check_only: bool = False
) -> tuple[RunReport, RecordedExecutor]:
    executor = RecordedExecutor(scenario)
    settings = Settings(state_dir=tmp_path, rules_file=recorded.rules_file(scenario))
    remediator = Remediator(recorded.inventory(scenario), settings, executor=executor)
    return remediator.handle(recorded.payload(scenario), check_only=check_only), executor


def _plan(scenario: str) -> CachePlan:
    report = recorded.summary(scenario, "check").host(recorded.host(scenario)).report("cache.plan")
    assert isinstance(report, CachePlan)
    return report


def _result(scenario: str) -> CacheResult:
    report = (
        recorded.summary(scenario, "apply").host(recorded.host(scenario)).report("cache.result")
    )
    assert isinstance(report, CacheResult)
    return report


# -- the recorded runs, replayed through the whole loop ------------------------------------


def test_every_scenario_of_the_family_is_recorded() -> None:
    assert set(SCENARIOS) >= {
        "cc_resolved", "cc_check_only", "cc_not_needed", "cc_undeclared_path",
        "cc_symlinked_dir", "cc_verify_failed", "cc_disk_full", "cc_disk_below_threshold",
        "cc_nothing_reclaimable", "cc_unknown_mountpoint",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "outcome", "exit_code", "phases"),
    [
        ("cc_resolved", "resolved", 0, ["check", "apply"]),
        ("cc_check_only", "previewed", 0, ["check"]),
        ("cc_not_needed", "not_needed", 0, ["check"]),
        ("cc_undeclared_path", "escalated", 4, ["check"]),
        ("cc_symlinked_dir", "escalated", 4, ["check"]),
        ("cc_verify_failed", "failed", 6, ["check", "apply"]),
        ("cc_disk_full", "resolved", 0, ["check", "apply"]),
        ("cc_disk_below_threshold", "not_needed", 0, ["check"]),
        ("cc_nothing_reclaimable", "escalated", 4, ["check"]),
        ("cc_unknown_mountpoint", "escalated", 4, ["check"]),
    ],
)
def test_recorded_scenarios_reach_the_recorded_outcome(
    tmp_path: Path, scenario: str, outcome: str, exit_code: int, phases: list[str]
) -> None:
    mode = (recorded.EVENTS / scenario / "mode").read_text().strip()
    report, executor = _handle(tmp_path, scenario, check_only=mode == "check_only")
    assert report.outcome == outcome == recorded.recorded_report(scenario)["outcome"]
    assert report.exit_code == exit_code
    assert [r.phase for r in executor.requests] == phases
    assert all(r.playbook.name == "cache_clear.yml" for r in executor.requests)
    assert report.remediation == "cache_clear"
    assert report.rolled_back is False  # irreversible: never
    assert AuditLog(tmp_path / "audit.jsonl").verify().ok


def test_resolved_empties_the_dir_and_reports_the_bytes_freed(tmp_path: Path) -> None:
    report, executor = _handle(tmp_path, "cc_resolved")
    assert report.decision == "apply"
    # Irreversible, medium risk: 0.85 at best; reversible=False is said in the reasons.
    assert report.confidence == pytest.approx(0.85)
    assert any("irreversible: no rollback" in r for r in report.reasons)
    result = _result("cc_resolved")
    assert result.passed()
    (nginx,) = result.dirs
    assert sorted(nginx.deleted) == ["big", "levels", "outside"]
    assert nginx.still_directory
    assert nginx.bytes_freed >= 20 * 1024 * 1024
    assert result.bytes_freed() == nginx.bytes_freed
    assert any(
        f.message.startswith("freed 20.0 MiB from /var/cache/nginx") for f in report.findings
    )
    assert any("removed as links, their targets untouched: outside" in f.message
               for f in report.findings)  # fmt: skip
    # The apply run got the check run's plan back, cut down to the declared dirs.
    extravars = (executor.requests[1].private_data_dir / "env" / "extravars").read_text()
    assert "veris_assessment" in extravars
    assert "/var/cache/nginx" in extravars


def test_preview_lists_exactly_what_goes_and_check_only_applies_nothing(tmp_path: Path) -> None:
    report, executor = _handle(tmp_path, "cc_check_only", check_only=True)
    assert report.outcome == "previewed"
    assert [r.phase for r in executor.requests] == ["check"]
    (change,) = report.preview
    assert change.action == "veris_cache_clear"
    assert change.action in FIX.expected_changes
    assert "would delete from /var/cache/nginx (3 entries" in change.diff
    assert "symlink outside" in change.diff
    assert "the link only; its target is not touched" in change.diff
    assert "the directory itself stays" in change.diff
    plan = _plan("cc_check_only")
    assert [e.name for e in plan.dirs[0].entries] == ["big", "levels", "outside"]
    assert {e.name: e.type for e in plan.dirs[0].entries}["outside"] == "symlink"


def test_empty_cache_dir_is_not_needed(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "cc_not_needed")
    assert report.decision == "skip"
    assert "/var/cache/nginx is empty" in report.reasons[0]
    assert _plan("cc_not_needed").problem_present() is False


def test_undeclared_path_is_a_blocker_and_touches_nothing(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "cc_undeclared_path")
    plan = _plan("cc_undeclared_path")
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "path_not_declared"
    assert blocker.code in FIX.blockers
    assert plan.problem_present() is True  # escalate, never not_needed
    assert not any(d.selected for d in plan.dirs)
    assert all(d.entries == () for d in plan.dirs)  # nothing measured, nothing previewed
    assert report.preview == ()
    assert any("'/etc' is not a declared cache dir" in r for r in report.reasons)


def test_symlinked_cache_dir_is_refused(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "cc_symlinked_dir")
    plan = _plan("cc_symlinked_dir")
    assert plan.dirs[0].state == "symlink"
    blocker = plan.blocker()
    assert blocker is not None
    assert blocker.code == "cache_dir_unsafe"
    assert blocker.code in FIX.blockers
    assert report.preview == ()
    assert any("is a symlink (to /srv/outside)" in r for r in report.reasons)


def test_verify_failure_says_nothing_could_be_rolled_back(tmp_path: Path) -> None:
    report, executor = _handle(tmp_path, "cc_verify_failed")
    assert report.outcome == "failed"
    assert report.rolled_back is False
    # No rollback run for an irreversible fix: the pipeline says so instead.
    assert "rollback" not in [r.phase for r in executor.requests]
    assert "cache_clear is irreversible: nothing could be rolled back" in report.reasons
    result = _result("cc_verify_failed")
    assert not result.passed()
    (nginx,) = result.dirs
    assert nginx.deleted == ("loose",)
    assert [f.name for f in nginx.failed] == ["levels"]
    assert "Operation not permitted" in nginx.failed[0].error
    assert any(f.severity == "critical" and "could not delete" in f.message
               for f in report.findings)  # fmt: skip
    # The failure counts: the next decision for this host escalates outright.
    again, executor2 = _handle(tmp_path, "cc_resolved")
    assert again.outcome == "escalated"
    assert [r.phase for r in executor2.requests] == ["check"]
    assert any("irreversible fix, applied only on an exact preview: it failed on rcc1" in r
               for r in again.reasons)  # fmt: skip


def test_disk_full_narrows_to_the_dirs_on_that_filesystem(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "cc_disk_full")
    plan = _plan("cc_disk_full")
    assert plan.mountpoint_label == "/"
    assert plan.full_percent == 0
    assert plan.filesystem is not None
    assert plan.filesystem.found
    assert plan.dirs[0].on_filesystem is True
    result = _result("cc_disk_full")
    assert result.filesystem is not None
    assert result.filesystem.used_percent is not None  # usage now, after the clear
    assert any("filesystem / now" in r for r in report.reasons)


def test_below_the_threshold_nothing_is_done(tmp_path: Path) -> None:
    plan = _plan("cc_disk_below_threshold")
    assert plan.full_percent == 90
    assert plan.filesystem is not None
    assert plan.filesystem.used_percent is not None
    assert plan.filesystem.used_percent < 90
    assert plan.problem_present() is False
    assert plan.dirs[0].entries  # there was something, but the filesystem is not full


def test_full_with_nothing_reclaimable_escalates_as_not_helping(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "cc_nothing_reclaimable")
    assert _plan("cc_nothing_reclaimable").problem_present() is True
    assert report.decision == "escalate"
    assert any("predicts no change the fix is meant to make: it would not help" in r
               for r in report.reasons)  # fmt: skip


def test_unknown_mountpoint_is_a_blocker(tmp_path: Path) -> None:
    report, _ = _handle(tmp_path, "cc_unknown_mountpoint")
    blocker = _plan("cc_unknown_mountpoint").blocker()
    assert blocker is not None
    assert blocker.code == "no_cache_dir_on_filesystem"
    assert any("no filesystem is mounted at '/data'" in r for r in report.reasons)


def test_brake_previews_and_a_busy_host_is_deferred(tmp_path: Path) -> None:
    executor = RecordedExecutor("cc_resolved")
    remediator = Remediator(
        recorded.inventory("cc_resolved"), Settings(state_dir=tmp_path), executor=executor
    )
    remediator.store.engage_brake("incident 7", by="carol", source="operator")
    braked = remediator.handle(recorded.payload("cc_resolved"))
    assert braked.outcome == "blocked"
    assert [r.phase for r in executor.requests] == ["check"]  # previewed, never applied
    assert braked.preview
    remediator.store.release_brake()
    executor.requests.clear()
    recorded.hold_lease(tmp_path, "rcc1")
    busy = remediator.handle(recorded.payload("cc_resolved"))
    assert busy.outcome == "deferred"
    assert executor.requests == []


# -- the decision: an irreversible fix by its own rule ---------------------------------------


def _doctored(scenario: str, *extra: TaskResult) -> RunSummary:
    s = recorded.summary(scenario, "check")
    host = recorded.host(scenario)
    hs = s.host(host)
    doctored = hs.model_copy(update={"tasks": (*hs.tasks, *extra)})
    return s.model_copy(update={"hosts": {**s.hosts, host: doctored}})


def _task(action: str, **kw: Any) -> TaskResult:
    return TaskResult(host="rcc1", task=f"a {action} task", action=action, **kw)


def test_irreversible_fix_escalates_outright_on_any_other_predicted_change() -> None:
    s = _doctored("cc_resolved", _task("ansible.builtin.file", status="changed"))
    d = decide(s, "rcc1", FIX, History(), 0.0)  # even with no threshold at all
    assert d.action == "escalate"
    assert d.confidence == 0.0
    assert any("irreversible fix, applied only on an exact preview: it predicts other changes"
               in r for r in d.reasons)  # fmt: skip
    # The same preview for a reversible fix only costs confidence.
    reversible = FIX.model_copy(update={"reversible": True})
    assert decide(s, "rcc1", reversible, History(), 0.0).action == "apply"


def test_irreversible_fix_escalates_on_a_task_check_mode_cannot_predict() -> None:
    s = _doctored(
        "cc_resolved", _task("ansible.builtin.command", status="skipped", unpredictable=True)
    )
    d = decide(s, "rcc1", FIX, History(), 0.0)
    assert d.action == "escalate"
    assert any("check mode cannot predict" in r for r in d.reasons)


def test_irreversible_fix_escalates_after_a_recent_failure() -> None:
    d = decide(recorded.summary("cc_resolved", "check"), "rcc1", FIX, History(failed=1), 0.0)
    assert d.action == "escalate"
    assert any("it failed on rcc1 recently" in r for r in d.reasons)
    clean = decide(recorded.summary("cc_resolved", "check"), "rcc1", FIX, History(), 0.7)
    assert clean.action == "apply"


# -- the spec and the rules ----------------------------------------------------------------


def test_spec_matches_the_role() -> None:
    assert FIX.scope == "host"
    assert FIX.reversible is False
    assert FIX.rollback_playbook is None
    assert FIX.reports.snapshot is None
    assert FIX.expected_changes == {"veris_cache_clear", "veris_cache_relief"}
    assert FIX.requires == ("cache_dirs",)
    assert FIX.params["full_percent"].type == "int"
    assert set(FIX.blockers) == {
        "path_not_declared", "no_cache_dir_on_filesystem", "cache_dir_unsafe"
    }  # fmt: skip
    defaults = (ROLE / "defaults" / "main.yml").read_text()
    assert "cache_clear_full_percent: 90" in defaults


@pytest.mark.parametrize(
    "name", ["CacheDirFull", "DiskFull", "NodeFilesystemAlmostOutOfSpace",
             "NodeFilesystemSpaceFillingUp"],
)  # fmt: skip
def test_default_rules_route_full_disks_to_cache_clear(name: str) -> None:
    rules = load_rules(None)
    rule = next(r for r in rules.rules if name in r.match_alertnames)
    assert rule.fix == "cache_clear"
    assert rule.workflow == "performance"
    assert sum(name in r.match_alertnames for r in rules.rules) == 1


# -- the report models -----------------------------------------------------------------------


def _plan_dict(**over: Any) -> dict[str, Any]:
    base = _plan("cc_resolved").model_dump(mode="json")
    base.update(over)
    return base


def test_plan_refuses_unknown_fields() -> None:
    with pytest.raises(ReportError):
        parse_report(_plan_dict(extra="x"))
    bad = _plan_dict()
    bad["dirs"][0]["entries"][0]["type"] = "device"
    with pytest.raises(ReportError):
        parse_report(bad)


def test_restricted_keeps_only_direct_children_of_declared_dirs_in_scope() -> None:
    raw = _plan_dict()
    nginx = raw["dirs"][0]
    nginx["entries"] += [
        {"name": n, "type": "file", "bytes": 1}
        for n in ["../../etc", "a/b", "", ".", "..", "bad\nname", "x\x00y"]
    ]
    other = {**nginx, "path": "/var/cache/other"}
    unsafe = {**nginx, "path": "/var/cache/linked", "state": "symlink"}
    unselected = {**nginx, "path": "/var/cache/unselected", "selected": False}
    raw["dirs"] = [nginx, other, unsafe, unselected]
    plan = parse_report(raw)
    assert isinstance(plan, CachePlan)
    scope = Scope(
        host="rcc1",
        cache_dirs=("/var/cache/nginx", "/var/cache/linked", "/var/cache/unselected"),
    )
    seen = plan.restricted(scope)
    assert [d.path for d in seen.dirs] == [
        "/var/cache/nginx", "/var/cache/linked", "/var/cache/unselected"
    ]  # fmt: skip
    assert [e.name for e in seen.dirs[0].entries] == ["big", "levels", "outside"]
    assert seen.dirs[1].entries == ()
    assert seen.dirs[2].entries == ()
    # What the apply run is handed is the restricted plan, as JSON.
    dumped = json.dumps(seen.model_dump(mode="json"))
    assert "../../etc" not in dumped
    assert "/var/cache/other" not in dumped


def test_problem_present_follows_the_threshold() -> None:
    plan = _plan("cc_disk_full")
    fs = plan.filesystem
    assert fs is not None
    assert fs.used_percent is not None
    above = plan.model_copy(update={"full_percent": int(fs.used_percent)})
    below = plan.model_copy(update={"full_percent": int(fs.used_percent) + 1})
    assert above.problem_present() is True
    assert below.problem_present() is False


def test_an_unsafe_dir_next_to_a_usable_one_only_lowers_confidence() -> None:
    raw = _plan_dict()
    refused = {
        **raw["dirs"][0], "path": "/var/cache/linked", "state": "through_symlink",
        "detail": "/var/cache/linked is reached through the symlink /var/cache/l", "entries": [],
    }  # fmt: skip
    raw["dirs"] = [raw["dirs"][0], refused]
    plan = parse_report(raw)
    assert isinstance(plan, CachePlan)
    assert plan.blocker() is None
    assert [s.penalty for s in plan.signals()] == [0.1]
    assert any(f.severity == "warning" and "reached through the symlink" in f.message
               for f in plan.findings("rcc1"))  # fmt: skip


def _result_dict(**over: Any) -> dict[str, Any]:
    base = _result("cc_resolved").model_dump(mode="json")
    base.update(over)
    return base


def test_result_passes_only_when_everything_predicted_is_gone_and_dirs_remain() -> None:
    assert CacheResult.model_validate(_result_dict()).passed()
    moved = _result_dict()
    moved["dirs"][0]["still_directory"] = False
    assert not CacheResult.model_validate(moved).passed()
    failed = _result_dict()
    failed["dirs"][0]["failed"] = [{"name": "big", "error": "Operation not permitted"}]
    assert not CacheResult.model_validate(failed).passed()
    refused = _result_dict()
    refused["dirs"][0]["state"] = "symlink"
    assert not CacheResult.model_validate(refused).passed()
    tool = _result_dict(
        apt={
            "ran": True, "rc": 100, "error": "E: Unable to lock directory",
            "removed": [], "bytes_freed": 0, "not_removed": [], "unpredicted": [],
        }
    )  # fmt: skip
    bad = CacheResult.model_validate(tool)
    assert not bad.passed()
    assert any("apt-get clean failed (rc 100)" in f.message for f in bad.findings("rcc1"))


def test_page_cache_in_a_container_is_a_finding_not_a_failure() -> None:
    raw = _plan_dict(
        page_cache={
            "permitted": False,
            "reason": "/proc/sys/vm/drop_caches is read-only inside a container (systemd-nspawn)",
            "container": "systemd-nspawn",
        }
    )
    plan = parse_report(raw)
    messages = [f.message for f in plan.findings("rcc1")]
    assert (
        "page cache not dropped: /proc/sys/vm/drop_caches is read-only inside a container "
        "(systemd-nspawn)" in messages
    )
    assert isinstance(plan, CachePlan)
    assert plan.blocker() is None


# -- the module on the host: deletion that never follows a link or leaves its tree ---------


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    # The module imports its helpers the way Ansible ships them (role module_utils).
    role_module(
        "cache_clear", "veris_cache_fs", kind="module_utils",
        as_name="ansible.module_utils.veris_cache_fs",
    )  # fmt: skip
    return role_module("cache_clear", "veris_cache_clear")


def _tree(root: Path) -> tuple[Path, Path]:
    cache, outside = root / "cache", root / "outside"
    (cache / "levels" / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (cache / "levels" / "a" / "blob").write_bytes(os.urandom(64 * 1024))
    (cache / "file").write_bytes(b"x" * 5000)
    (cache / "link-to-dir").symlink_to(outside)
    (cache / "link-to-file").symlink_to(outside / "keep")
    (cache / "levels" / "a" / "nested-link").symlink_to(outside)
    return cache, outside


def _clear(mod: ModuleType, cache: Path, names: list[str]) -> dict[str, Any]:
    fd = mod.open_dir(str(cache))
    try:
        result: dict[str, Any] = mod.clear(fd, os.fstat(fd), str(cache), names, frozenset())
    finally:
        os.close(fd)
    return result


def test_module_empties_the_dir_and_removes_symlinks_as_links(
    mod: ModuleType, tmp_path: Path
) -> None:
    cache, outside = _tree(tmp_path)
    names = sorted(p.name for p in cache.iterdir())
    result = _clear(mod, cache, [*names, "gone-already"])
    assert sorted(result["deleted"]) == names
    assert result["vanished"] == ["gone-already"]
    assert result["failed"] == []
    assert result["still_directory"] is True
    assert result["bytes_freed"] >= 64 * 1024
    assert cache.is_dir()
    assert list(cache.iterdir()) == []
    assert (outside / "keep").read_text() == "keep"  # the links' target survives


def test_module_deletes_only_the_planned_names(mod: ModuleType, tmp_path: Path) -> None:
    cache, _ = _tree(tmp_path)
    (cache / "new-since-preview").write_text("n")
    result = _clear(mod, cache, ["file"])
    assert result["deleted"] == ["file"]
    assert "new-since-preview" in result["left"]
    assert (cache / "new-since-preview").exists()
    assert (cache / "levels").is_dir()


def test_planned_names_are_direct_children_of_declared_dirs_only(mod: ModuleType) -> None:
    plan = [
        {"path": "/var/cache/nginx", "entries": [
            {"name": "ok"}, {"name": "../etc"}, {"name": "a/b"}, {"name": ".."}, {"name": ""},
        ]},
        {"path": "/etc", "entries": [{"name": "passwd"}]},
    ]  # fmt: skip
    assert mod.planned(plan, ["/var/cache/nginx"]) == {"/var/cache/nginx": ["ok"]}


@pytest.mark.parametrize(
    ("make", "state"),
    [
        (lambda t: (t / "real").mkdir() or (t / "dir").symlink_to(t / "real"), "symlink"),
        (lambda t: (t / "dir").write_text("x"), "not_directory"),
        (lambda t: None, "missing"),
    ],
)
def test_module_refuses_a_dir_that_is_not_plainly_a_directory(
    mod: ModuleType, tmp_path: Path, make: Any, state: str
) -> None:
    make(tmp_path)
    with pytest.raises(mod.Refused) as info:
        mod.open_dir(str(tmp_path / "dir"))
    assert info.value.state == state


def test_module_refuses_a_dir_reached_through_a_symlink(mod: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "real" / "cache").mkdir(parents=True)
    (tmp_path / "via").symlink_to(tmp_path / "real")
    with pytest.raises(mod.Refused) as info:
        mod.open_dir(str(tmp_path / "via" / "cache"))
    assert info.value.state == "through_symlink"


def test_module_never_crosses_onto_another_filesystem(mod: ModuleType, tmp_path: Path) -> None:
    cache, _ = _tree(tmp_path)
    # A directory the walker takes for another filesystem's mount point is left whole.
    mounted = str(cache / "levels")
    fd = mod.open_dir(str(cache))
    try:
        result = mod.clear(fd, os.fstat(fd), str(cache), ["levels", "file"], frozenset({mounted}))
    finally:
        os.close(fd)
    assert result["deleted"] == ["file"]
    assert result["failed"][0]["name"] == "levels"
    assert "another filesystem is mounted there" in result["failed"][0]["error"]
    assert (cache / "levels" / "a" / "blob").exists()


def test_a_hostile_writer_swapping_dirs_for_symlinks_cannot_reach_outside(
    mod: ModuleType, tmp_path: Path
) -> None:
    """A local user races the deletion, swapping directories for links to a precious tree."""
    cache, outside = tmp_path / "cache", tmp_path / "precious"
    outside.mkdir()
    for i in range(50):
        (outside / f"file{i}").write_text("precious")
    names = []
    for i in range(40):
        d = cache / f"d{i}" / "sub"
        d.mkdir(parents=True)
        for j in range(20):
            (d / f"f{j}").write_text("cache")
        names.append(f"d{i}")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for i in range(40):
                for victim in (cache / f"d{i}", cache / f"d{i}" / "sub"):
                    try:
                        victim.rename(victim.with_name(victim.name + ".old"))
                        victim.symlink_to(outside)
                        victim.unlink()
                        victim.with_name(victim.name + ".old").rename(victim)
                    except OSError:
                        continue

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(3):
            _clear(mod, cache, names)
    finally:
        stop.set()
        swapper.join()
    assert sorted(p.name for p in outside.iterdir()) == sorted(f"file{i}" for i in range(50))
    assert all((outside / f"file{i}").read_text() == "precious" for i in range(50))


def test_a_declared_dir_inside_another_is_never_deleted_as_its_entry(
    mod: ModuleType, tmp_path: Path
) -> None:
    cache, _ = _tree(tmp_path)
    inner = cache / "levels" / "a"
    declared = [str(cache), str(inner)]
    fd = mod.open_dir(str(cache))
    try:
        rec = mod.dir_record(str(cache))
        mod.measure_dir(fd, os.fstat(fd), rec, frozenset(), 100, declared)
        result = mod.clear(fd, os.fstat(fd), str(cache), ["levels", "file"], frozenset(), declared)
    finally:
        os.close(fd)
    assert "levels" not in [e["name"] for e in rec["entries"]]
    assert rec["skipped"][0]["name"] == "levels"
    assert "holds the declared cache dir" in rec["skipped"][0]["reason"]
    assert result["deleted"] == ["file"]
    assert result["failed"][0]["name"] == "levels"
    assert inner.is_dir()


def test_restricted_drops_an_entry_that_holds_another_declared_dir() -> None:
    plan = _plan("cc_resolved")
    scope = Scope(host="rcc1", cache_dirs=("/var/cache/nginx", "/var/cache/nginx/levels/a"))
    seen = plan.restricted(scope)
    assert [e.name for e in seen.dirs[0].entries] == ["big", "outside"]
