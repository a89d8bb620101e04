"""The lab raises the controller's inotify limits before booting hosts, never lowers them."""

from __future__ import annotations

from pathlib import Path

import pytest

from veris_remediate.exceptions import LabError
from veris_remediate.lab.system import INOTIFY_FLOORS, raise_inotify_limits


def _sysctl(tmp_path: Path, instances: int, watches: int) -> Path:
    (tmp_path / "max_user_instances").write_text(f"{instances}\n")
    (tmp_path / "max_user_watches").write_text(f"{watches}\n")
    return tmp_path


def test_a_low_default_is_raised_to_the_floor(tmp_path: Path) -> None:
    changed = raise_inotify_limits(_sysctl(tmp_path, 128, 8192))
    assert changed == [
        f"fs.inotify.max_user_instances: 128 -> {INOTIFY_FLOORS['max_user_instances']}",
        f"fs.inotify.max_user_watches: 8192 -> {INOTIFY_FLOORS['max_user_watches']}",
    ]
    assert int((tmp_path / "max_user_instances").read_text()) == 8192


def test_a_higher_setting_is_kept(tmp_path: Path) -> None:
    assert raise_inotify_limits(_sysctl(tmp_path, 65536, 4194304)) == []
    assert (tmp_path / "max_user_instances").read_text() == "65536\n"


def test_an_unreadable_limit_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"fs\.inotify\.max_user_instances"):
        raise_inotify_limits(tmp_path)
