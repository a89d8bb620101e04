# Copyright: veris-remediate contributors; Apache-2.0
"""Filesystem helpers shared by the cache_clear modules (they run on the managed host).

Directories are opened one path component at a time with O_NOFOLLOW, each relative to its
parent's descriptor, so no symlink anywhere on a path is ever followed; a path that is
missing, not a directory, a symlink or reached through one is refused with a reason.
"""

import os
import re
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """A directory that must not be acted on; ``state`` says why."""

    def __init__(self, state, detail):
        super().__init__(detail)
        self.state = state
        self.detail = detail


def allocated(st):
    return st.st_blocks * 512


def human(n):
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return "%d %s" % (value, unit) if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024
    return "%d B" % n


def count(n, one, many):
    return "%d %s" % (n, one if n == 1 else many)


def plain_name(name):
    """A name that is one path component and travels safely as text."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes: not valid UTF-8
        return False
    return not any(ord(c) < 32 or ord(c) == 127 for c in name)


def shown(name):
    """A name for people, whatever bytes it holds."""
    raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")[:200]


def open_dir(path):
    """A descriptor of ``path``, opened component by component without following links."""
    if not path.startswith("/") or os.path.normpath(path) != path or path == "/":
        raise Refused("invalid", "%s is not a normalised absolute path" % path)
    fd = os.open("/", DIR_FLAGS)
    parts = path.strip("/").split("/")
    walked = ""
    try:
        for index, part in enumerate(parts):
            walked += "/" + part
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                last = index == len(parts) - 1
                raise refusal(fd, part, walked, path, last, exc) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def refusal(parent_fd, part, walked, path, last, exc):
    try:
        st = os.stat(part, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return Refused("missing", "%s does not exist" % path)
    except OSError as err:
        return Refused("unreadable", "%s cannot be read: %s" % (walked, err.strerror))
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(part, dir_fd=parent_fd)
        except (OSError, TypeError):
            target = "?"
        if last:
            return Refused("symlink", "%s is a symlink (to %s)" % (walked, shown(target)))
        return Refused(
            "through_symlink",
            "%s is reached through the symlink %s (to %s)" % (path, walked, shown(target)),
        )
    if not stat.S_ISDIR(st.st_mode):
        if last:
            return Refused("not_directory", "%s is not a directory" % walked)
        return Refused("missing", "%s does not exist (%s is not a directory)" % (path, walked))
    return Refused("unreadable", "%s cannot be opened: %s" % (walked, exc.strerror))


def same_dir(path, before):
    """Whether ``path`` still opens (without links) to the directory ``before`` (a stat)."""
    try:
        fd = open_dir(path)
    except Refused:
        return False
    try:
        now = os.fstat(fd)
    finally:
        os.close(fd)
    return (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino)


def unescape_mount(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def read_mounts():
    """[(mount point, (major, minor))] from /proc/self/mountinfo, in mount order."""
    mounts = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(" ")
                if len(fields) > 4 and ":" in fields[2]:
                    major, _, minor = fields[2].partition(":")
                    mounts.append((unescape_mount(fields[4]), (int(major), int(minor))))
    except (OSError, ValueError):
        pass
    return mounts


def device_of(mounts, mountpoint):
    """The device of the filesystem mounted at ``mountpoint`` (the topmost mount), or None."""
    found = None
    for point, dev in mounts:
        if point == mountpoint:
            found = dev
    return found


def dev_pair(st_dev):
    return (os.major(st_dev), os.minor(st_dev))


def usage(fd, mountpoint):
    vfs = os.fstatvfs(fd)
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    avail = vfs.f_bavail * vfs.f_frsize
    total = used + avail
    return {
        "mountpoint": mountpoint,
        "found": True,
        "used_percent": round(used * 100.0 / total, 1) if total else 0.0,
        "size_bytes": vfs.f_blocks * vfs.f_frsize,
        "avail_bytes": avail,
    }
