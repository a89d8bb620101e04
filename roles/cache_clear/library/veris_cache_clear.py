#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Empty declared cache directories, predicting exactly what goes in check mode.

Runs on the managed host. Every deletion is fd-based: directories are opened one path
component at a time with O_NOFOLLOW relative to their parent's descriptor, entries are
removed with unlinkat/rmdir relative to the descriptor of the directory holding them
(neither follows a symlink), a directory opened is checked to be the one just examined
(device and inode), and nothing on another filesystem is touched. So a local user who can
write inside a cache dir and races this module (swapping a directory for a symlink to
elsewhere) can at worst make a removal fail, never make it delete anything outside.
"""

DOCUMENTATION = r"""
---
module: veris_cache_clear
short_description: Empty declared cache directories safely, predicting exactly what goes
description:
  - Measures each declared cache dir (top-level entries, type and allocated bytes, each
    inode counted once) and, in check mode, returns exactly the entries that would be
    deleted, with a C(diff).
  - For real it deletes only the entries of O(plan) (the check run's prediction), or,
    without a plan, what it has just measured. The directory itself is never deleted; a
    symlink inside is removed as a link, its target untouched; nothing on another
    filesystem is touched; entries that appeared since the preview are left (reported).
  - A dir that is missing, not a directory, a symlink or reached through a symlink is
    refused (reported, never acted on).
options:
  dirs:
    description: The declared cache directories in scope (absolute, normalised paths).
    type: list
    elements: str
    required: true
  path:
    description: An alert's C(path) label; narrows to the declared dir equal to it.
    type: str
  mountpoint:
    description:
      - An alert's C(mountpoint) label; narrows to the declared dirs on the filesystem
        mounted there (compared by device, never used as a path).
    type: str
  plan:
    description:
      - The check run's per-dir plan (C(path) and C(entries[].name)); for real, only these
        entries are deleted, and only from declared dirs. Omitted, the module deletes
        what it measures.
    type: list
    elements: dict
  max_entries:
    description: Entries listed (and deleted) per dir at most; the rest are left and reported.
    type: int
    default: 10000
author: veris-remediate
"""

RETURN = r"""
dirs:
  description: Each declared dir as found (state, selection, entries, bytes).
  type: list
  returned: always
cleared:
  description: Each dir after a real run (deleted, vanished, failed, left, bytes freed).
  type: list
  returned: always
filesystem:
  description: Usage of the filesystem named by O(mountpoint) (after a real run), or null.
  type: dict
  returned: always
bytes_freed:
  description: Allocated bytes freed (files whose last link went, and directories).
  type: int
  returned: always
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.veris_cache_fs import (
    DIR_FLAGS,
    Refused,
    allocated,
    count,
    dev_pair,
    device_of,
    human,
    open_dir,
    plain_name,
    read_mounts,
    same_dir,
    shown,
    usage,
)

MAX_DEPTH = 128  # nested directories followed below an entry; deeper fails (safely)
MAX_ERRORS = 5  # error messages kept per entry
LIST_PASSES = 3  # times a directory is re-listed while something keeps filling it


class Walker:
    """Measures and removes below an open directory; never follows, never crosses filesystems."""

    def __init__(self, dev, mount_points):
        self.dev = dev
        self.mount_points = mount_points
        self.seen = set()

    def _count(self, st):
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return 0
            self.seen.add(key)
        return allocated(st)

    def crossing(self, st, path):
        return st.st_dev != self.dev or path in self.mount_points

    def measure(self, parent_fd, name, path):
        """(type, bytes, reason not to delete or None) of one entry."""
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return "symlink", self._count(st), None
        if not stat.S_ISDIR(st.st_mode):
            kind = "file" if stat.S_ISREG(st.st_mode) else "other"
            return kind, self._count(st), None
        if self.crossing(st, path):
            return "dir", 0, "another filesystem is mounted at %s" % path
        total, problem = self._measure_tree(parent_fd, name, path, st, 0)
        return "dir", total, problem

    def _measure_tree(self, parent_fd, name, path, st, depth):
        if depth > MAX_DEPTH:
            return 0, "%s is nested deeper than %d directories" % (path, MAX_DEPTH)
        total = self._count(st)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return 0, None
        except OSError as exc:
            return total, "%s cannot be opened: %s" % (path, exc.strerror)
        problem = None
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    child = path + "/" + entry.name
                    try:
                        cst = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(cst.st_mode):
                        if self.crossing(cst, child):
                            problem = problem or "another filesystem is mounted at %s" % shown(
                                child
                            )
                            continue
                        sub, sub_problem = self._measure_tree(fd, entry.name, child, cst, depth + 1)
                        total += sub
                        problem = problem or sub_problem
                    else:
                        total += self._count(cst)
        finally:
            os.close(fd)
        return total, problem

    def remove(self, parent_fd, name, path, errors, depth=0):
        """Remove one name below ``parent_fd``; returns bytes freed; errors are collected."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            errors.append("%s: %s" % (shown(path), exc.strerror))
            return 0
        if not stat.S_ISDIR(st.st_mode):
            try:
                # unlinkat(2) never follows: a symlink goes as a link, its target stays.
                os.unlink(name, dir_fd=parent_fd)
            except FileNotFoundError:
                return 0
            except OSError as exc:
                errors.append("%s: %s" % (shown(path), exc.strerror))
                return 0
            return allocated(st) if st.st_nlink <= 1 else 0
        if self.crossing(st, path):
            errors.append("%s: another filesystem is mounted there; left" % shown(path))
            return 0
        if depth > MAX_DEPTH:
            errors.append("%s: nested deeper than %d directories; left" % (shown(path), MAX_DEPTH))
            return 0
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            # ELOOP: it was swapped for a symlink since the stat; leave it.
            errors.append("%s: %s" % (shown(path), exc.strerror))
            return 0
        freed = 0
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                errors.append("%s: replaced while being removed; left" % shown(path))
                return 0
            for _ in range(LIST_PASSES):
                names = os.listdir(fd)
                if not names:
                    break
                before = len(errors)
                for child in names:
                    freed += self.remove(fd, child, path + "/" + child, errors, depth + 1)
                if len(errors) > before:
                    break  # something could not go: rmdir below will say so
        finally:
            os.close(fd)
        try:
            # rmdir(2) never follows a symlink and never removes a non-empty directory.
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return freed
        except OSError as exc:
            errors.append("%s: %s" % (shown(path), exc.strerror))
            return freed
        return freed + allocated(st)

    def left_bytes(self, dir_fd, names, base):
        total = 0
        for name in names:
            try:
                total += self.measure(dir_fd, name, base + "/" + name)[1]
            except OSError:
                continue
        return total


def dir_record(path):
    return {
        "path": path,
        "state": "ok",
        "detail": "",
        "selected": True,
        "why": "",
        "on_filesystem": None,
        "bytes": 0,
        "entries": [],
        "skipped": [],
    }


def run_dirs(module):
    p = module.params
    dirs = list(dict.fromkeys(p["dirs"]))
    path_label = p["path"]
    mountpoint = p["mountpoint"]
    mounts = read_mounts()
    mount_points = frozenset(point for point, _ in mounts)
    fs_dev = device_of(mounts, mountpoint) if mountpoint is not None else None
    filesystem = None
    if mountpoint is not None and fs_dev is None:
        filesystem = {
            "mountpoint": mountpoint,
            "found": False,
            "used_percent": None,
            "size_bytes": None,
            "avail_bytes": None,
        }
    records = []
    opened = {}
    try:
        for path in dirs:
            rec = dir_record(path)
            records.append(rec)
            if path_label is not None and path != path_label:
                rec["selected"] = False
                rec["why"] = "the alert names %s" % path_label
            elif mountpoint is not None and fs_dev is None:
                rec["selected"] = False
                rec["why"] = "no filesystem is mounted at %s" % mountpoint
            try:
                fd = open_dir(path)
            except Refused as refused:
                rec["state"] = refused.state
                rec["detail"] = refused.detail
                continue
            st = os.fstat(fd)
            opened[path] = (fd, st)
            if fs_dev is not None:
                rec["on_filesystem"] = dev_pair(st.st_dev) == fs_dev
                if not rec["on_filesystem"] and rec["selected"]:
                    rec["selected"] = False
                    rec["why"] = "not on the filesystem mounted at %s" % mountpoint
                if rec["on_filesystem"] and filesystem is None:
                    filesystem = usage(fd, mountpoint)
        if mountpoint is not None and filesystem is None:
            # Mounted, but no declared dir is on it: its usage is not measured (the label
            # is never used as a path); the assessment's blocker says why nothing is done.
            filesystem = {
                "mountpoint": mountpoint,
                "found": True,
                "used_percent": None,
                "size_bytes": None,
                "avail_bytes": None,
            }
        if p["plan"] is None:  # with a plan the apply run does not measure again
            for rec in records:
                if rec["selected"] and rec["path"] in opened:
                    fd, st = opened[rec["path"]]
                    measure_dir(fd, st, rec, mount_points, p["max_entries"], dirs)
        if p["plan"] is None and module.check_mode:
            return finish_preview(module, records, filesystem)
        if p["plan"] is None:
            todo = {r["path"]: [e["name"] for e in r["entries"]] for r in records}
        else:
            todo = planned(p["plan"], dirs)
        results = []
        for rec in records:
            names = todo.get(rec["path"], [])
            if rec["path"] not in opened:
                if names:  # planned, but unsafe or gone now: nothing is touched
                    results.append(refused_result(rec))
                continue
            if not rec["selected"] and not names:
                continue
            fd, st = opened[rec["path"]]
            if module.check_mode:
                results.append(preview_result(fd, st, rec["path"], names))
            else:
                results.append(clear(fd, st, rec["path"], names, mount_points, dirs))
        after = filesystem
        if filesystem is not None and filesystem["used_percent"] is not None:
            for rec in records:
                if rec["on_filesystem"] and rec["path"] in opened:
                    after = usage(opened[rec["path"]][0], mountpoint)
                    break
        changed = any(r["deleted"] for r in results)
        module.exit_json(
            changed=changed,
            dirs=records,
            cleared=results,
            filesystem=after,
            bytes_freed=sum(r["bytes_freed"] for r in results),
            diff={"prepared": result_text(results)} if changed else {},
        )
    finally:
        for fd, _ in opened.values():
            os.close(fd)


def holds_declared(path, dirs):
    """The declared dir ``path`` is, or holds: never deleted as an entry of another one."""
    return next((d for d in dirs if d == path or d.startswith(path + "/")), None)


def measure_dir(fd, st, rec, mount_points, max_entries, dirs=()):
    walker = Walker(st.st_dev, mount_points)
    total = 0
    names = sorted(os.listdir(fd))
    for name in names:
        path = rec["path"] + "/" + name
        if not plain_name(name):
            rec["skipped"].append({"name": shown(name), "reason": "name is not plain UTF-8 text"})
            continue
        inner = holds_declared(path, dirs)
        if inner is not None:
            reason = "holds the declared cache dir %s (emptied on its own)" % inner
            rec["skipped"].append({"name": name, "reason": reason})
            continue
        try:
            kind, size, problem = walker.measure(fd, name, path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            rec["skipped"].append({"name": name, "reason": exc.strerror or "cannot be read"})
            continue
        total += size
        if problem:
            rec["skipped"].append({"name": name, "reason": problem})
        elif len(rec["entries"]) >= max_entries:
            rec["skipped"].append({"name": name, "reason": "more than %d entries" % max_entries})
        else:
            rec["entries"].append({"name": name, "type": kind, "bytes": size})
    rec["bytes"] = total


def planned(plan, dirs):
    """The plan's entries per declared dir: direct children only, anything else dropped."""
    out = {}
    for item in plan:
        path = item.get("path")
        if not isinstance(path, str) or path not in dirs:
            continue
        names = []
        for entry in item.get("entries") or []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str) and plain_name(name):
                names.append(name)
        out[path] = list(dict.fromkeys(out.get(path, []) + names))
    return out


def refused_result(rec):
    return {
        "path": rec["path"],
        "state": rec["state"],
        "detail": rec["detail"],
        "still_directory": False,
        "deleted": [],
        "vanished": [],
        "failed": [],
        "left": [],
        "bytes_freed": 0,
        "bytes_left": 0,
    }


def preview_result(fd, st, path, names):
    present = set(os.listdir(fd))
    return {
        "path": path,
        "state": "ok",
        "detail": "",
        "still_directory": True,
        "deleted": [n for n in names if n in present],
        "vanished": [n for n in names if n not in present],
        "failed": [],
        "left": sorted(n for n in present if n not in names and plain_name(n)),
        "bytes_freed": 0,
        "bytes_left": 0,
    }


def clear(fd, st, path, names, mount_points, dirs=()):
    """Delete exactly ``names`` from the open directory ``fd``; report what happened."""
    walker = Walker(st.st_dev, mount_points)
    deleted, vanished, failed = [], [], []
    freed = 0
    for name in names:
        inner = holds_declared(path + "/" + name, dirs)
        if inner is not None:
            error = "holds the declared cache dir %s: never deleted" % inner
            failed.append({"name": name, "error": error})
            continue
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            vanished.append(name)
            continue
        except OSError:
            pass
        errors = []
        freed += walker.remove(fd, name, path + "/" + name, errors)
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            gone = False
        except FileNotFoundError:
            gone = True
        except OSError:
            gone = False
        if gone or not errors:
            # Removed (a writer may already have made a new entry of the same name).
            deleted.append(name)
        else:
            failed.append({"name": name, "error": "; ".join(errors[:MAX_ERRORS])[:1000]})
    remaining = [n for n in os.listdir(fd) if n not in names]
    return {
        "path": path,
        "state": "ok",
        "detail": "",
        "still_directory": same_dir(path, st),
        "deleted": deleted,
        "vanished": vanished,
        "failed": failed,
        "left": sorted(shown(n) for n in remaining),
        "bytes_freed": freed,
        "bytes_left": walker.left_bytes(fd, [f["name"] for f in failed] + remaining, path),
    }


def preview_text(records, filesystem):
    lines = []
    if filesystem is not None and filesystem.get("used_percent") is not None:
        lines.append(
            "filesystem %s is %.1f%% full" % (filesystem["mountpoint"], filesystem["used_percent"])
        )
    for rec in records:
        if rec["state"] != "ok":
            lines.append("not touched: %s" % rec["detail"])
            continue
        if not rec["selected"]:
            continue
        if rec["entries"]:
            size = sum(e["bytes"] for e in rec["entries"])
            lines.append(
                "would delete from %s (%s, %s; the directory itself stays):"
                % (rec["path"], count(len(rec["entries"]), "entry", "entries"), human(size))
            )
            for e in rec["entries"]:
                link = e["type"] == "symlink"
                note = " (the link only; its target is not touched)" if link else ""
                lines.append("  - %-7s %s  %s%s" % (e["type"], e["name"], human(e["bytes"]), note))
        else:
            lines.append("%s is empty" % rec["path"])
        for s in rec["skipped"]:
            lines.append("  would leave %s: %s" % (s["name"], s["reason"]))
    return "\n".join(lines) + "\n"


def result_text(results):
    lines = []
    for r in results:
        if r["deleted"]:
            lines.append("deleted from %s (%s freed):" % (r["path"], human(r["bytes_freed"])))
            lines.extend("  - %s" % n for n in r["deleted"])
        lines.extend("  failed %s: %s" % (f["name"], f["error"]) for f in r["failed"])
    return "\n".join(lines) + "\n"


def finish_preview(module, records, filesystem):
    changed = any(r["entries"] for r in records if r["selected"])
    module.exit_json(
        changed=changed,
        dirs=records,
        cleared=[],
        filesystem=filesystem,
        bytes_freed=0,
        diff={"prepared": preview_text(records, filesystem)} if changed else {},
    )


def main():
    module = AnsibleModule(
        argument_spec={
            "dirs": {"type": "list", "elements": "str", "required": True},
            "path": {"type": "str"},
            "mountpoint": {"type": "str"},
            "plan": {"type": "list", "elements": "dict"},
            "max_entries": {"type": "int", "default": 10000},
        },
        supports_check_mode=True,
    )
    bad = [d for d in module.params["dirs"] if not d.startswith("/") or os.path.normpath(d) != d]
    if bad:
        module.fail_json(msg="dirs must be normalised absolute paths: %s" % ", ".join(bad[:5]))
    run_dirs(module)


if __name__ == "__main__":
    main()
