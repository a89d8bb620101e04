#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Read-only probe of a host's uptime, disk, memory, clock, errors, DNS, routes (diag_general)."""

DOCUMENTATION = r"""
---
module: diag_general_probe
short_description: Read uptime, filesystems, memory, clock, errors, DNS and routes (changes nothing)
description:
  - Uptime (C(/proc/uptime)), load (C(/proc/loadavg)), memory (C(/proc/meminfo)), the
    container type if any (C(systemd-detect-virt -c)).
  - Every real filesystem - C(/proc/self/mountinfo) without pseudo filesystems, mounts
    under C(/proc), C(/sys) and C(/dev), mounts of single files and repeated mounts of
    one device - with C(statvfs) sizes (used percent as df counts it) and inode use.
  - Each declared cache dir - the filesystem it is on (by device) and how much it holds
    (a walk of at most O(cache_entries_max) entries that follows no symlink and stays
    on the filesystem).
  - Clock - C(timedatectl show) (C(NTPSynchronized), C(NTP), C(Timezone)) and which of
    systemd-timesyncd, chrony, ntp, ntpsec, openntpd is active (C(systemctl show)).
  - Recent errors - C(journalctl -p err -o json) of the last O(window_minutes), at most
    O(errors_max) entries, grouped by identifier, unit and message.
  - DNS - C(nameserver), C(search)/C(domain) lines of C(/etc/resolv.conf), and a lookup
    of the host's own name and of O(dns_names), each bounded by O(dns_timeout) seconds.
  - Default routes - C(/proc/net/route) and C(/proc/net/ipv6_route).
  - Never changes anything, in check mode or not.
options:
  services:
    description: Declared services (C(name), C(cache_dirs)); each cache dir is located and measured.
    type: list
    elements: dict
    default: []
  cache_entries_max:
    description: Entries walked per cache dir at most (the size is then a lower bound).
    type: int
    default: 20000
  window_minutes:
    description: How far back the journal's errors are read.
    type: int
    default: 60
  errors_max:
    description: Error entries read at most.
    type: int
    default: 200
  dns_names:
    description: Names looked up besides the host's own.
    type: list
    elements: str
    default: []
  dns_timeout:
    description: Seconds a lookup may take.
    type: float
    default: 2.0
  thresholds:
    description: The role's thresholds, returned in the report unchanged (numbers only).
    type: dict
    default: {}
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read the host's basics
  diag_general_probe:
    services: [{name: nginx, cache_dirs: [/var/cache/nginx]}]
  register: probe
"""

RETURN = r"""
report:
  description: The diag.general report without its kind (veris_remediate/role_reports/diagnosis.py).
  returned: always
  type: dict
"""

import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

PSEUDO = frozenset((
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "autofs", "configfs", "fusectl", "hugetlbfs", "binfmt_misc",
    "nsfs", "rpc_pipefs", "efivarfs", "selinuxfs", "fuse.lxcfs", "fuse.gvfsd-fuse", "ramfs",
    "squashfs", "iso9660", "udf", "erofs", "overlay.ro",
))
# Kernel interfaces, and what a container manager mounts for itself (/run/host: systemd's
# container interface - the manager's own disk, not the host's).
PSEUDO_UNDER = ("/proc", "/sys", "/dev", "/run/host")
TIME_SERVICES = ("systemd-timesyncd.service", "chrony.service", "chronyd.service", "ntp.service",
                 "ntpsec.service", "openntpd.service")
LIST_MAX = 100
TEXT_MAX = 300
RTF_UP = 0x0001
RTF_REJECT = 0x0200


def shown(text, limit=TEXT_MAX):
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:limit]


def read(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError:
        return ""


def iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def run(module, argv):
    path = module.get_bin_path(argv[0])
    if path is None:
        return None
    rc, out, _ = module.run_command([path] + argv[1:], environ_update={"LC_ALL": "C"})
    return out if rc == 0 else None


# --- filesystems -----------------------------------------------------------------------------


def unescape(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text):
    """(mount point, fstype, source, device, options) of each mountinfo line, in mount order."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        out.append((unescape(fields[4]), tail[0], unescape(tail[1]), fields[2],
                    fields[5].split(",") + (tail[2].split(",") if len(tail) > 2 else [])))
    return out


def is_dir(point):
    try:
        return stat.S_ISDIR(os.stat(point).st_mode)
    except OSError:
        return False


def real_mounts(mounts, isdir=is_dir):
    """Mounts a person means by "a filesystem": no pseudo filesystems, one per device."""
    topmost = {}
    for index, (point, _, _, _, _) in enumerate(mounts):
        topmost[point] = index  # a later mount on the same point hides an earlier one
    out, devices = [], set()
    for index, (point, fstype, source, device, options) in enumerate(mounts):
        if topmost[point] != index or fstype in PSEUDO:
            continue
        if any(point == p or point.startswith(p + "/") for p in PSEUDO_UNDER):
            continue
        if device in devices:
            continue  # a bind mount of a filesystem already listed
        if not isdir(point):
            continue  # a file bind-mounted over a file (/run/host/os-release)
        devices.add(device)
        out.append((point, fstype, source, device, "ro" in options))
    return out


def usage(point):
    vfs = os.statvfs(point)
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    avail = vfs.f_bavail * vfs.f_frsize
    inodes_used = vfs.f_files - vfs.f_ffree
    return {
        "size_bytes": vfs.f_blocks * vfs.f_frsize,
        "used_bytes": used,
        "avail_bytes": avail,
        # As df counts it: blocks reserved for root are neither used nor available.
        "used_percent": round(100.0 * used / (used + avail), 1) if used + avail else 0.0,
        "inodes_total": vfs.f_files,
        "inodes_used_percent": round(100.0 * inodes_used / vfs.f_files, 1) if vfs.f_files else None,
    }


def filesystems(mounts):
    out = []
    for point, fstype, source, _, read_only in mounts:
        try:
            sizes = usage(point)
        except OSError:
            continue
        out.append(dict(sizes, mountpoint=shown(point), fstype=shown(fstype, 32),
                        source=shown(source), read_only=read_only))
    return out[:LIST_MAX]


def dev_of(point):
    st = os.stat(point)
    return "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))


def measure(path, limit):
    """(bytes allocated, entries, complete): a walk that follows no symlink, stays on one fs."""
    total, entries = 0, 0
    try:
        root = os.lstat(path)
    except OSError:
        return None, 0, False
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    entries += 1
                    if entries > limit:
                        return total, entries - 1, False
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode) and st.st_dev == root.st_dev:
                        stack.append(entry.path)
        except OSError:
            continue
    return total, entries, True


def declared_cache_dirs(services):
    """``{path, service}`` for every cache dir of every declared service."""
    out = []
    for service in services:
        for path in service.get("cache_dirs") or []:
            out.append({"path": path, "service": service.get("name")})
    return out


def cache_dirs(items, mounts, limit):
    """Each declared cache dir: the filesystem it is on, and what it holds."""
    by_device = {}
    for point, _, _, device, _ in mounts:
        by_device.setdefault(device, point)
    out = []
    for item in items[:LIST_MAX]:
        path = str(item.get("path", ""))
        row = {"path": shown(path), "service": shown(item.get("service") or "", 64) or None,
               "exists": False, "mountpoint": None, "bytes": None, "entries": 0, "complete": False}
        if path.startswith("/") and os.path.isdir(path) and not os.path.islink(path):
            row["exists"] = True
            try:
                device = dev_of(path)
            except OSError:
                device = None
            row["mountpoint"] = by_device.get(device)
            if row["mountpoint"] is None:  # on a device whose mount was not listed: nearest
                row["mountpoint"] = max((p for p, _, _, _, _ in mounts
                                         if path == p or path.startswith(p.rstrip("/") + "/")),
                                        key=len, default=None)
            row["bytes"], row["entries"], row["complete"] = measure(path, limit)
        out.append(row)
    return out


# --- the rest --------------------------------------------------------------------------------


def parse_keyvalue(text):
    out = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def yes_no(value):
    return {"yes": True, "no": False}.get((value or "").lower())


def clock(module):
    info = parse_keyvalue(run(module, ["timedatectl", "show"]))
    units = run(module, ["systemctl", "show", "--property=Id,ActiveState"] + list(TIME_SERVICES))
    active = [u.get("Id") for u in (parse_keyvalue(block) for block in (units or "").split("\n\n"))
              if u.get("ActiveState") == "active"]
    return {
        "synchronized": yes_no(info.get("NTPSynchronized")),
        "ntp_enabled": yes_no(info.get("NTP")),
        "timezone": shown(info.get("Timezone", ""), 64) or None,
        "time_service": active[0] if active else None,
        "now": iso(time.time()),
    }


def recent_errors(module, window, limit):
    out = run(module, ["journalctl", "--no-pager", "-o", "json", "-p", "err",
                       "--since=-%dmin" % window, "-n", str(limit),
                       "--output-fields=MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,UNIT"])
    groups, total = {}, 0
    for line in (out or "").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue
        total += 1
        unit = entry.get("_SYSTEMD_UNIT") or entry.get("UNIT")
        key = (entry.get("SYSLOG_IDENTIFIER", ""), unit, message)
        try:
            when = iso(int(entry.get("__REALTIME_TIMESTAMP", "0")) / 1e6)
        except ValueError:
            when = None
        group = groups.setdefault(key, {
            "identifier": shown(key[0], 64) or None, "unit": shown(unit, 256) if unit else None,
            "message": shown(message), "priority": int(entry.get("PRIORITY", "3") or 3),
            "count": 0, "last_seen": when})
        group["count"] += 1
        group["last_seen"] = when
    entries = sorted(groups.values(), key=lambda g: (g["last_seen"] or ""), reverse=True)
    return {"readable": out is not None, "total": total, "truncated": total >= limit,
            "entries": entries[:20]}


def resolv_conf(text):
    nameservers, search = [], []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            nameservers.append(shown(fields[1], 64))
        elif fields and fields[0] in ("search", "domain"):
            search = [shown(f, 253) for f in fields[1:]]
    return nameservers[:10], search[:10]


def lookups(names, timeout):
    """getaddrinfo of each name in its own thread, so a dead resolver costs ``timeout`` at most."""
    results = []

    def resolve(result):
        start = time.monotonic()
        try:
            infos = socket.getaddrinfo(result["name"], None, 0, socket.SOCK_STREAM)
            result["addresses"] = sorted(set(i[4][0] for i in infos))[:10]
            result["ok"], result["error"] = True, None
        except (socket.gaierror, UnicodeError, OSError) as exc:
            result["error"] = shown(exc, 200)
        result["seconds"] = round(time.monotonic() - start, 3)

    threads = []
    for name in names:
        result = {"name": name, "ok": False, "addresses": [], "seconds": timeout,
                  "error": "timed out after %gs" % timeout}
        results.append(result)
        threads.append(threading.Thread(target=resolve, args=(result,), daemon=True))
        threads[-1].start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    # A lookup still running is left behind (a daemon thread): its result is "timed out".
    return [dict(r, name=shown(r["name"], 253)) if not t.is_alive() else
            {"name": shown(r["name"], 253), "ok": False, "addresses": [], "seconds": timeout,
             "error": "timed out after %gs" % timeout} for r, t in zip(results, threads)]


def dns(names, timeout):
    nameservers, search = resolv_conf(read("/etc/resolv.conf"))
    wanted = list(dict.fromkeys([socket.gethostname()] + [n for n in names if n]))[:10]
    return {"nameservers": nameservers, "search": search, "lookups": lookups(wanted, timeout)}


def hex_ipv4(text):
    return socket.inet_ntoa(struct.pack("<I", int(text, 16)))


def default_routes(route, ipv6_route):
    """The default routes of /proc/net/route and /proc/net/ipv6_route (hex fields)."""
    v4 = None
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            if int(fields[3], 16) & RTF_UP:
                v4 = {"gateway": hex_ipv4(fields[2]), "interface": shown(fields[0], 32)}
                break
    v6 = None
    for line in ipv6_route.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00":
            flags = int(fields[8], 16)
            if flags & RTF_UP and not flags & RTF_REJECT and fields[9] != "lo":
                gateway = ":".join(fields[4][i:i + 4] for i in range(0, 32, 4))
                v6 = {"gateway": socket.inet_ntop(socket.AF_INET6, socket.inet_pton(
                    socket.AF_INET6, gateway)), "interface": shown(fields[9], 32)}
                break
    return {"ipv4": v4, "ipv6": v6}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", default=[]),
            cache_entries_max=dict(type="int", default=20000),
            window_minutes=dict(type="int", default=60),
            errors_max=dict(type="int", default=200),
            dns_names=dict(type="list", elements="str", default=[]),
            dns_timeout=dict(type="float", default=2.0),
            thresholds=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for key, value in params["thresholds"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            module.fail_json(msg="threshold %s must be a number, not %r" % (key, value))
    window = max(params["window_minutes"], 1)
    mounts = real_mounts(parse_mountinfo(read("/proc/self/mountinfo")))
    loadavg = (read("/proc/loadavg") or "0 0 0").split()
    meminfo = {}
    for line in read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            meminfo[key] = int(parts[0]) * 1024
    virt = run(module, ["systemd-detect-virt", "--container"])
    report = {
        "hostname": shown(socket.gethostname(), 253),
        "container": shown(virt.strip(), 32) if virt and virt.strip() != "none" else None,
        "uptime_seconds": int(float((read("/proc/uptime") or "0").split()[0])),
        "load": {"one": float(loadavg[0]), "five": float(loadavg[1]),
                 "fifteen": float(loadavg[2])},
        "cpus": len(os.sched_getaffinity(0)) or 1,
        "memory": {"total_bytes": meminfo.get("MemTotal", 0),
                   "available_bytes": meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
                   "swap_total_bytes": meminfo.get("SwapTotal", 0),
                   "swap_free_bytes": meminfo.get("SwapFree", 0)},
        "filesystems": filesystems(mounts),
        "cache_dirs": cache_dirs(declared_cache_dirs(params["services"]), mounts,
                                 max(params["cache_entries_max"], 1)),
        "clock": clock(module),
        "errors": recent_errors(module, window, max(params["errors_max"], 1)),
        "dns": dns(params["dns_names"], min(max(params["dns_timeout"], 0.1), 10.0)),
        "routes": default_routes(read("/proc/net/route"), read("/proc/net/ipv6_route")),
        "window_minutes": window,
        "thresholds": params["thresholds"],
    }
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
