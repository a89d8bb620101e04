"""baselines: content-addressed last-known-good copies, newest confirmed first, bounded."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from veris_remediate.baselines import KEEP_COPIES, BaselineStore
from veris_remediate.exceptions import VerisError


def _fetched(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = tmp_path / f"fetched-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    path.write_text(text)
    return path, hashlib.sha256(text.encode()).hexdigest()


def _record(store: BaselineStore, tmp_path: Path, text: str, path: str = "/etc/x.conf") -> bool:
    fetched, sha = _fetched(tmp_path, text)
    _, new = store.record(
        host="h1", service="svc", path=path, fetched=fetched, sha256=sha,
        mode="0640", owner="root", group="adm", run_id="r1",
    )  # fmt: skip
    return new


def test_copies_are_stored_privately_and_newest_confirmed_comes_first(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "state")
    assert _record(store, tmp_path, "one\n") is True
    assert _record(store, tmp_path, "two\n") is True
    first = store.copies("h1")
    assert [Path(c.src).read_text() for c in first] == ["two\n", "one\n"]
    assert stat.S_IMODE(Path(first[0].src).stat().st_mode) == 0o600
    assert (first[0].mode, first[0].group) == ("0640", "adm")
    # "one" is good again: stored once, now the newest.
    assert _record(store, tmp_path, "one\n") is False
    again = store.copies("h1")
    assert [Path(c.src).read_text() for c in again] == ["one\n", "two\n"]
    assert again[0].recorded_at == first[1].recorded_at
    assert store.copies("h1", ("/etc/other.conf",)) == []
    assert store.copies("nobody") == []


def test_a_copy_that_does_not_match_the_hosts_checksum_is_refused(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "state")
    fetched, _ = _fetched(tmp_path, "content\n")
    with pytest.raises(VerisError, match="does not match"):
        store.record(
            host="h1", service="svc", path="/etc/x.conf", fetched=fetched, sha256="0" * 64,
            mode="0644", owner="root", group="root", run_id="r",
        )  # fmt: skip
    assert store.copies("h1") == []


def test_only_the_most_recent_copies_are_kept(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "state")
    for n in range(KEEP_COPIES + 3):
        _record(store, tmp_path, f"version {n}\n")
    copies = store.copies("h1")
    assert len(copies) == KEEP_COPIES
    assert Path(copies[0].src).read_text() == f"version {KEEP_COPIES + 2}\n"
    directory = Path(copies[0].src).parent
    assert len([p for p in directory.iterdir() if p.name != "index.json"]) == KEEP_COPIES


def test_a_damaged_index_is_an_error_not_a_guess(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "state")
    _record(store, tmp_path, "one\n")
    (Path(store.copies("h1")[0].src).parent / "index.json").write_text("{not json")
    with pytest.raises(VerisError, match="damaged"):
        store.copies("h1")
