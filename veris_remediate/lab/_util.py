"""Small helpers shared by the lab modules: locks, atomic writes, subprocesses."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..exceptions import LabError

_T = TypeVar("_T")


# -- small helpers --------------------------------------------------------------------------
def in_parallel(function: Callable[[str], _T], names: list[str]) -> list[_T]:
    """``function(name)`` for all names at once; every failure is reported, together."""
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(function, name) for name in names]
    errors = [exc for future in futures if (exc := future.exception()) is not None]
    if errors:
        raise LabError("; ".join(str(exc) for exc in errors)) from errors[0]
    return [future.result() for future in futures]


@contextlib.contextmanager
def as_lab_error(action: str) -> Iterator[None]:
    """OSError (a cgroup file, the state directory, a missing tool) is a LabError to callers."""
    try:
        yield
    except OSError as exc:
        raise LabError(f"{action} failed: {exc}") from exc


def run_tool(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` timed out") from exc
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def list_names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[-lines:])


def remove_tree(path: Path) -> None:
    """rm -rf for a failed build; first unmounts what debootstrap left mounted inside."""

    def mounts_below() -> list[str]:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        points = [
            re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), ln.split()[4]) for ln in lines
        ]
        return sorted(
            (p for p in points if p == str(path) or p.startswith(f"{path}/")), reverse=True
        )

    for point in mounts_below():
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if mounts_below():  # never rm -rf through a mounted /dev, /proc or /sys
        raise LabError(f"{path} still has mounts inside; unmount them and remove it by hand")
    shutil.rmtree(path, ignore_errors=True)
