"""Keep ``ansible-inventory --list`` output on disk, keyed by everything it was made from.

``ansible-inventory`` costs a process and an Ansible import on every call (~0.5-0.8 s on
a 2-core machine); the listing changes only when its inputs do. An entry is served only
when its key, recomputed on every call, still matches:

- each inventory source's path and the SHA-256 of its content (a directory source: of
  every file under it), and of every file under the ``group_vars/`` and ``host_vars/``
  next to it — contents, not mtimes, so an edit within one clock tick is still seen;
- the environment's ``ANSIBLE_*`` variables, the Ansible config files Ansible would read
  (``$ANSIBLE_CONFIG``, ``./ansible.cfg``, ``~/.ansible.cfg``, ``/etc/ansible/ansible.cfg``)
  and the working directory, and the ``ansible-inventory`` executable and Ansible release.

A listing is stored only when ``ansible-inventory`` succeeded and no input changed while
it ran. Sources whose listing depends on more than files (inventory scripts, inventory
plugin configs such as ``plugin: amazon.aws.aws_ec2``) are never cached; nor is anything
when a key cannot be computed. A miss, a corrupt entry or an unwritable directory falls
back to running ``ansible-inventory``; the cache never raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# A YAML inventory source that names a plugin is a plugin's config: dynamic, never cached.
_PLUGIN_CONFIG = re.compile(rb"^plugin\s*:", re.MULTILINE)
# Files read from one directory tree at most (beyond it: not cached, Ansible still runs).
MAX_FILES = 2000
_FORMAT = 1


class _Uncacheable(Exception):
    """An input whose listing may change without any file changing."""


def _digest(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def _source_file(path: Path, out: list[tuple[str, str]]) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        raise _Uncacheable(f"{path} is executable (an inventory script)")
    data = path.read_bytes()
    if _PLUGIN_CONFIG.search(data):
        raise _Uncacheable(f"{path} configures an inventory plugin")
    out.append((str(path), hashlib.sha256(data).hexdigest()))


def _tree(root: Path, out: list[tuple[str, str]], *, source: bool) -> None:
    """Every file under ``root`` (sorted), as (path, digest); sources are also screened."""
    count = 0
    for current, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            count += 1
            if count > MAX_FILES:
                raise _Uncacheable(f"more than {MAX_FILES} files under {root}")
            path = Path(current) / name
            if source:
                _source_file(path, out)
            else:
                out.append((str(path), _digest(path)))


def _optional(path: Path) -> str:
    try:
        return _digest(path)
    except OSError:
        return "-"


def fingerprint(sources: Sequence[Path], tool: str, env: Mapping[str, str]) -> str:
    """The key of a listing of ``sources`` made by ``tool`` run with ``env``.

    Raises _Uncacheable (or OSError) when there is none.
    """
    files: list[tuple[str, str]] = []
    for given in sources:
        source = given.absolute()
        if source.is_dir():
            _tree(source, files, source=True)  # holds its own group_vars/ and host_vars/
            continue
        _source_file(source, files)
        for vars_dir in ("group_vars", "host_vars"):
            if (source.parent / vars_dir).is_dir():
                _tree(source.parent / vars_dir, files, source=False)
    spec = importlib.util.find_spec("ansible")
    release = Path(spec.origin).parent / "release.py" if spec and spec.origin else None
    tool_stat = os.stat(tool)
    config = [env.get("ANSIBLE_CONFIG", ""), "ansible.cfg", "~/.ansible.cfg",
              "/etc/ansible/ansible.cfg"]  # fmt: skip
    key = {
        "format": _FORMAT,
        "sources": [str(s.absolute()) for s in sources],
        "files": files,
        "env": sorted((k, v) for k, v in env.items() if k.startswith("ANSIBLE_")),
        "home": env.get("HOME", ""),
        "cwd": os.getcwd(),
        "config": [(c, _optional(Path(c).expanduser())) for c in config if c],
        "tool": [tool, tool_stat.st_size, tool_stat.st_mtime_ns],
        "release": _optional(release) if release else "-",
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class InventoryCache:
    """One entry per set of sources, in ``directory`` (created 0700, entries 0600)."""

    def __init__(
        self, directory: Path, sources: Sequence[Path], tool: str, env: Mapping[str, str]
    ) -> None:
        self.directory = directory
        self.sources = tuple(sources)
        self.tool = tool
        self.env = dict(env)
        name = "\0".join(str(s.absolute()) for s in self.sources)
        self.path = directory / f"inventory-{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"
        self.key = self._key()

    def _key(self) -> str | None:
        try:
            return fingerprint(self.sources, self.tool, self.env)
        except (_Uncacheable, OSError, ValueError):
            return None

    def load(self) -> str | None:
        """The stored ``ansible-inventory --list`` output, if its inputs are unchanged."""
        if self.key is None:
            return None
        try:
            entry = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, Mapping) or entry.get("key") != self.key:
            return None
        stdout = entry.get("stdout")
        return stdout if isinstance(stdout, str) else None

    def store(self, stdout: str) -> bool:
        """Keep ``stdout`` (a JSON object) if no input changed since this cache was made."""
        if self.key is None or self._key() != self.key:
            return False  # uncacheable, or an input changed while ansible-inventory ran
        try:
            if not isinstance(json.loads(stdout), Mapping):
                return False
        except ValueError:
            return False
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".inventory-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:  # mkstemp makes it 0600
                    json.dump({"key": self.key, "stdout": stdout}, fh)
                os.replace(tmp, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError:
            return False
        return True


def run_ansible_inventory(
    argv: Sequence[str],
    sources: Sequence[Path],
    *,
    env: Mapping[str, str],
    timeout: float,
    cache_dir: Path | None,
    kept: Callable[[str], str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv)`` of ``ansible-inventory --list``, or its stored output.

    Without ``cache_dir`` it only runs the command. A hit returns the stored output as
    a successful run; a successful run is stored — only ``kept(stdout)`` of it when given
    (the caller's reader needs no more, and host variables may hold secrets). Errors of the
    run are raised as ``subprocess.run`` raises them.
    """
    cache = None if cache_dir is None else InventoryCache(cache_dir, sources, argv[0], env)
    if cache is not None and (stdout := cache.load()) is not None:
        return subprocess.CompletedProcess(list(argv), 0, stdout=stdout, stderr="")
    done = subprocess.run(
        list(argv), capture_output=True, text=True, env=dict(env), timeout=timeout, check=False
    )
    if cache is not None and done.returncode == 0:
        # Not a listing ``kept`` can read: not stored, and Ansible runs next time too.
        with contextlib.suppress(ValueError):
            cache.store(done.stdout if kept is None else kept(done.stdout))
    return done
