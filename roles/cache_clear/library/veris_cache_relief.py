#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Host-wide relief for cache_clear: journald vacuum, apt-get clean, page cache drop.

Runs on the managed host. Check mode predicts what each would remove (systemd's and apt's
own rules, from the files' allocated sizes); a real run runs the tool (argv, no shell)
and reports what it removed against the prediction.
"""

DOCUMENTATION = r"""
---
module: veris_cache_relief
short_description: Vacuum the journal, apt-get clean, drop the page cache; predicted in check mode
description:
  - O(what=journal) predicts which archived journal files C(journalctl --vacuum-size)
    removes (systemd's rule; active files count towards the size but are never removed)
    and runs it for real.
  - O(what=apt) predicts what C(apt-get clean) removes (archives, partial downloads, the
    binary caches) and runs it for real.
  - O(what=page_cache) drops the page cache only where C(/proc/sys/vm/drop_caches) is
    writable; elsewhere (inside a container) it says why and changes nothing. Never fails.
  - With O(mountpoint), the journal and apt parts act only when their files are on the
    filesystem mounted there.
options:
  what:
    description: Which relief.
    type: str
    required: true
    choices: [journal, apt, page_cache]
  vacuum_size:
    description: journalctl C(--vacuum-size) value (C(200M), C(1G), bytes); O(what=journal).
    type: str
  mountpoint:
    description: An alert's C(mountpoint) label (compared by device, never used as a path).
    type: str
  expect:
    description: The files the check run predicted, to report differences.
    type: list
    elements: str
author: veris-remediate
"""

RETURN = r"""
plan:
  description: What the relief would do (files and bytes, or whether the page cache may be dropped).
  type: dict
  returned: always
result:
  description: What it did (removed, bytes freed, rc); null in check mode or when nothing ran.
  type: dict
  returned: always
"""

import errno
import functools
import os
import re
import shlex
import stat
import struct

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
)

JOURNAL_ROOTS = ("/var/log/journal", "/run/log/journal")
JOURNAL_SUFFIXES = (".journal", ".journal~")
JOURNAL_N_ENTRIES = 152  # offsetof(Header, n_entries) in systemd's journal-def.h
DROP_CACHES = "/proc/sys/vm/drop_caches"
APT_KEEP = frozenset({"lock", "partial", "auxfiles", "lost+found"})
UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text):
    match = re.fullmatch(r"([0-9]+)([KMGT]?)", text or "")
    if not match:
        return None
    return int(match.group(1)) * UNITS[match.group(2)]


def archived_info(name):
    """(have_seqnum, seqnum_id, seqnum, realtime) of an archived journal file name, or None."""
    q = len(name)
    if name.endswith(".journal"):
        if q < 1 + 32 + 1 + 16 + 1 + 16 + 8:
            return None
        if name[q - 8 - 16 - 1] != "-" or name[q - 8 - 16 - 1 - 16 - 1] != "-":
            return None
        if name[q - 8 - 16 - 1 - 16 - 1 - 32 - 1] != "@":
            return None
        seqnum_id = name[q - 8 - 16 - 1 - 16 - 1 - 32 : q - 8 - 16 - 1 - 16 - 1]
        try:
            int(seqnum_id, 16)
            seqnum = int(name[q - 8 - 16 - 1 - 16 : q - 8 - 16 - 1], 16)
            realtime = int(name[q - 8 - 16 : q - 8], 16)
        except ValueError:
            return None
        return True, seqnum_id, seqnum, realtime
    if name.endswith(".journal~"):
        if q < 1 + 16 + 1 + 16 + 8 + 1:
            return None
        if name[q - 1 - 8 - 16 - 1] != "-" or name[q - 1 - 8 - 16 - 1 - 16 - 1] != "@":
            return None
        try:
            realtime = int(name[q - 1 - 8 - 16 - 1 - 16 : q - 1 - 8 - 16 - 1], 16)
        except ValueError:
            return None
        return False, "", 0, realtime
    return None


def journal_empty(dir_fd, name):
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        raw = os.pread(fd, 8, JOURNAL_N_ENTRIES)
    finally:
        os.close(fd)
    return len(raw) < 8 or struct.unpack("<Q", raw)[0] == 0


def journal_dirs():
    """Every directory journalctl vacuums: the roots and their (machine id) subdirectories."""
    found = []
    for root in JOURNAL_ROOTS:
        try:
            fd = open_dir(root)
        except Refused:
            continue
        found.append((root, fd))
        with os.scandir(fd) as it:
            subs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for sub in sorted(subs):
            try:
                found.append((root + "/" + sub, os.open(sub, DIR_FLAGS, dir_fd=fd)))
            except OSError:
                continue
    return found


def journal_prediction(limit):
    """Per systemd's journal_directory_vacuum: which archived files --vacuum-size removes.

    Per directory: empty archived files always go; the others, oldest first, until the
    journal files left (active ones included, as systemd 252 counts them) use at most
    ``limit`` bytes. Active files are never removed.
    """
    files, usage_total, devs = [], 0, set()
    for path, fd in journal_dirs():
        try:
            devs.add(dev_pair(os.fstat(fd).st_dev))
            archived, total = [], 0
            with os.scandir(fd) as it:
                entries = [e for e in it if plain_name(e.name)]
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or not entry.name.endswith(JOURNAL_SUFFIXES):
                    continue  # systemd never vacuums (nor counts) other files
                size = allocated(st)
                usage_total += size
                total += size  # active files count towards the limit, but are never removed
                info = archived_info(entry.name)
                if info is None:
                    continue
                if journal_empty(fd, entry.name):
                    files.append({"path": path + "/" + entry.name, "bytes": size})
                    total -= size
                    continue
                # systemd's patch_realtime: a file may be older than its name says.
                times = [int(t * 1_000_000) for t in (st.st_ctime, st.st_atime, st.st_mtime)]
                realtime = min([info[3]] + [t for t in times if t > 0] + crtime(path, entry.name))
                archived.append((info, realtime, entry.name, size))
            archived.sort(key=functools.cmp_to_key(vacuum_cmp))
            for _, _, name, size in archived:
                if total <= limit:
                    break
                files.append({"path": path + "/" + name, "bytes": size})
                total -= min(size, total)
        finally:
            os.close(fd)
    return files, usage_total, devs


def crtime(directory, name):
    try:
        raw = os.getxattr(directory + "/" + name, "user.crtime_usec", follow_symlinks=False)
    except (OSError, AttributeError):
        return []
    return [struct.unpack("<Q", raw)[0]] if len(raw) == 8 else []


def cmp(a, b):
    return (a > b) - (a < b)


def vacuum_cmp(a, b):
    """systemd's vacuum_compare: by seqnum within one seqnum_id, else by time, id, name."""
    (a_has, a_id, a_seq, _), a_time, a_name, _ = a
    (b_has, b_id, b_seq, _), b_time, b_name, _ = b
    if a_has and b_has and a_id == b_id:
        return cmp(a_seq, b_seq)
    if a_time != b_time:
        return cmp(a_time, b_time)
    if a_has and b_has:
        return cmp(a_id, b_id)  # lower-case hex: the same order as memcmp of the bytes
    return cmp(a_name, b_name)


def on_fs(module, devs):
    mountpoint = module.params["mountpoint"]
    if mountpoint is None:
        return None
    dev = device_of(read_mounts(), mountpoint)
    return dev is not None and dev in devs


def existing(paths):
    present = []
    for path in paths:
        try:
            os.lstat(path)
            present.append(path)
        except OSError:
            continue
    return present


def relief_result(watched, expected, rc, err):
    """What a tool removed of the ``watched`` files, against the ``expected`` (predicted) ones."""
    gone = [f for f in watched if not existing([f["path"]])]
    expected = set(expected)
    return {
        "ran": True,
        "rc": rc,
        "error": err.strip()[-500:] if rc else "",
        "removed": gone,
        "bytes_freed": sum(f["bytes"] for f in gone),
        "not_removed": existing(sorted(p for p in expected if p not in {f["path"] for f in gone})),
        "unpredicted": sorted(f["path"] for f in gone if f["path"] not in expected),
    }


def exit_preview(module, plan, headline):
    """Exit with what a run would remove (check mode), as the preview's diff lists it."""
    files = plan["files"]
    text = "%s (%s):\n" % (headline, human(plan["bytes"])) + "".join(
        "  - %s  %s\n" % (f["path"], human(f["bytes"])) for f in files
    )
    module.exit_json(
        changed=bool(files), plan=plan, result=None, diff={"prepared": text} if files else {}
    )


def run_journal(module):
    size = module.params["vacuum_size"]
    limit = parse_size(size)
    if limit is None:
        module.fail_json(msg="vacuum_size %r is not like 200M or 1G" % size)
    files, total, devs = journal_prediction(limit)
    here = on_fs(module, devs)
    if here is False:
        files = []
    plan = {
        "vacuum_size": size,
        "on_filesystem": here,
        "usage_bytes": total,
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
    }
    if module.check_mode or here is False:
        what = count(len(files), "archived journal file", "archived journal files")
        exit_preview(module, plan, "journalctl --vacuum-size=%s would remove %s" % (size, what))
    # Watch every archived file, so files the tool removes beyond the prediction show.
    watched, _, _ = journal_prediction(0)
    expect = module.params["expect"]
    rc, _, err = module.run_command(["journalctl", "--vacuum-size=" + size])
    result = relief_result(
        watched, [f["path"] for f in files] if expect is None else expect, rc, err
    )
    module.exit_json(
        changed=bool(result["removed"]),
        plan=plan,
        result=result,
        diff={"prepared": removed_text("journalctl --vacuum-size=" + size, result)}
        if result["removed"]
        else {},
    )


def removed_text(what, result):
    return "%s removed %s (%s):\n" % (
        what,
        count(len(result["removed"]), "file", "files"),
        human(result["bytes_freed"]),
    ) + "".join("  - %s\n" % f["path"] for f in result["removed"])


def apt_dirs(module):
    """apt's own idea of its cache locations (apt-config shell, no shell involved)."""
    wanted = {
        "ARCHIVES": ("Dir::Cache::archives/d", "/var/cache/apt/archives/"),
        "LISTS": ("Dir::State::lists/d", "/var/lib/apt/lists/"),
        "PKGCACHE": ("Dir::Cache::pkgcache/f", "/var/cache/apt/pkgcache.bin"),
        "SRCPKGCACHE": ("Dir::Cache::srcpkgcache/f", "/var/cache/apt/srcpkgcache.bin"),
    }
    argv = ["apt-config", "shell"]
    for var, (key, _) in wanted.items():
        argv += [var, key]
    values = {var: default for var, (_, default) in wanted.items()}
    rc, out, _ = module.run_command(argv, environ_update={"LC_ALL": "C"})
    if rc == 0:
        for line in out.splitlines():
            var, sep, raw = line.partition("=")
            if sep and var in values:
                parsed = shlex.split(raw)
                values[var] = parsed[0] if parsed else ""
    return values


def listed_files(directory, keep=frozenset()):
    """Non-directory entries of ``directory`` (no links followed), with allocated bytes."""
    out = []
    try:
        fd = open_dir(directory.rstrip("/"))
    except Refused:
        return out, None
    try:
        dev = dev_pair(os.fstat(fd).st_dev)
        with os.scandir(fd) as it:
            for entry in it:
                if entry.name in keep:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISDIR(st.st_mode) and plain_name(entry.name):
                    path = directory.rstrip("/") + "/" + entry.name
                    out.append({"path": path, "bytes": allocated(st)})
    finally:
        os.close(fd)
    return out, dev


def apt_prediction(module):
    """What apt-get clean removes (apt's DoClean: archives, partial dirs, the binary caches)."""
    d = apt_dirs(module)
    files, devs = [], set()
    archives = d["ARCHIVES"]
    for directory, keep in (
        (archives, APT_KEEP),
        (archives.rstrip("/") + "/partial/", APT_KEEP),
        (d["LISTS"].rstrip("/") + "/partial/", APT_KEEP),
    ):
        if directory.strip("/"):
            found, dev = listed_files(directory, keep)
            files += found
            if dev is not None and directory == archives:
                devs.add(dev)
    for cache in (d["PKGCACHE"], d["SRCPKGCACHE"]):
        if not cache or cache.endswith("/"):
            continue
        parent, _, base = cache.rpartition("/")
        found, _ = listed_files(parent or "/")
        names = [(f, f["path"].rpartition("/")[2]) for f in found]
        files += [f for f, name in names if name == base or name.startswith(base + ".")]
    unique = {f["path"]: f for f in files}
    return sorted(unique.values(), key=lambda f: f["path"]), devs


def run_apt(module):
    files, devs = apt_prediction(module)
    here = on_fs(module, devs)
    if here is False:
        files = []
    plan = {"on_filesystem": here, "files": files, "bytes": sum(f["bytes"] for f in files)}
    if module.check_mode or here is False:
        exit_preview(module, plan, "apt-get clean would remove " + count(len(files), "file", "files"))
    expect = module.params["expect"]
    rc, _, err = module.run_command(["apt-get", "clean"], environ_update={"LC_ALL": "C"})
    # The fresh prediction is every file apt-get clean removes now: new ones show as
    # unpredicted against the check run's list.
    result = relief_result(files, [f["path"] for f in files] if expect is None else expect, rc, err)
    module.exit_json(
        changed=bool(result["removed"]),
        plan=plan,
        result=result,
        diff={"prepared": removed_text("apt-get clean", result)} if result["removed"] else {},
    )


def container():
    for source in ("/run/systemd/container", "/run/container_type"):
        try:
            with open(source, encoding="utf-8") as fh:
                name = fh.read().strip()
        except OSError:
            continue
        if name:
            return name[:60]
    if os.path.exists("/.dockerenv"):
        return "docker"
    return None


def cached_bytes():
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Cached:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_page_cache(module):
    engine = container()
    try:
        fd = os.open(DROP_CACHES, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        fd = None
        if exc.errno == errno.EROFS:
            where = "inside a container (%s)" % engine if engine else "on this host"
            reason = "%s is read-only %s" % (DROP_CACHES, where)
        else:
            reason = "%s cannot be written: %s" % (DROP_CACHES, exc.strerror)
            if engine:
                reason += " (inside a container: %s)" % engine
    else:
        reason = ""
    plan = {"permitted": fd is not None, "reason": reason, "container": engine}
    if fd is None or module.check_mode:
        if fd is not None:
            os.close(fd)
        module.exit_json(
            changed=fd is not None,
            plan=plan,
            result=None,
            diff={"prepared": "would sync, then drop the page cache (1 > %s)\n" % DROP_CACHES}
            if fd is not None
            else {},
        )
    before = cached_bytes()
    try:
        os.sync()  # dirty pages cannot be dropped; written back first they can
        os.write(fd, b"1")
        dropped, reason = True, ""
    except OSError as exc:
        dropped, reason = False, "writing %s failed: %s" % (DROP_CACHES, exc.strerror)
    finally:
        os.close(fd)
    result = {
        "dropped": dropped,
        "reason": reason,
        "cached_before": before,
        "cached_after": cached_bytes(),
    }
    module.exit_json(changed=dropped, plan=plan, result=result)


def main():
    module = AnsibleModule(
        argument_spec={
            "what": {"type": "str", "required": True, "choices": ["journal", "apt", "page_cache"]},
            "vacuum_size": {"type": "str"},
            "mountpoint": {"type": "str"},
            "expect": {"type": "list", "elements": "str"},
        },
        required_if=[("what", "journal", ["vacuum_size"])],
        supports_check_mode=True,
    )
    what = module.params["what"]
    if what == "journal":
        run_journal(module)
    elif what == "apt":
        run_apt(module)
    else:
        run_page_cache(module)


if __name__ == "__main__":
    main()
