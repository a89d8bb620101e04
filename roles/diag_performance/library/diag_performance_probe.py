#!/usr/bin/python
# Copyright: veris-remediate contributors; Apache-2.0
"""Read-only probe of a host's load, CPU, memory, pressure and OOM kills (diag_performance)."""

DOCUMENTATION = r"""
---
module: diag_performance_probe
short_description: Read load, CPU, memory, pressure and OOM kills (changes nothing)
description:
  - Samples C(/proc/stat) and every C(/proc/PID/stat) twice, O(interval) seconds apart, for
    CPU busy, I/O wait and steal percentages and each process's CPU use; reads RSS, command
    (argv[0] only - arguments may carry secrets) and systemd unit (C(/proc/PID/cgroup)) of
    each process; C(/proc/loadavg),
    C(/proc/meminfo), the memory limit and working set of the host's own cgroup (v2
    C(memory.max)/C(memory.current), v1 C(memory.limit_in_bytes)/C(memory.usage_in_bytes),
    less inactive file pages) and PSI (C(/proc/pressure/*)) where the kernel has it.
  - OOM kills, from every machine-readable source there is - the kernel journal
    (C(journalctl -k -o json) - the kernel's C(oom-kill:) key=value line and its
    C(Killed process PID (NAME)) line), systemd's "unit out of memory" journal entries
    (by C(MESSAGE_ID)), units whose C(Result) is C(oom-kill) or whose main process was
    killed by SIGKILL in the window (C(systemctl show --timestamp=unix)), and the OOM kill
    counters of memory cgroups (v2 C(memory.events), v1 C(memory.oom_control)).
  - Never changes anything, in check mode or not; never fails because a source is missing.
options:
  interval:
    description: Seconds between the two samples of C(/proc).
    type: float
    default: 0.5
  top:
    description: Processes reported by CPU and by RSS.
    type: int
    default: 5
  window_minutes:
    description: How far back the journal and unit exit times are read.
    type: int
    default: 60
  declared_units:
    description: Units the inventory declares (veris_services); OOM victims among them are marked.
    type: list
    elements: str
    default: []
  thresholds:
    description: The role's thresholds, returned in the report unchanged (numbers only).
    type: dict
    default: {}
  journal_max:
    description: Journal entries read at most.
    type: int
    default: 2000
author: veris-remediate
"""

EXAMPLES = r"""
- name: Read the host's performance
  diag_performance_probe:
    interval: 0.5
    declared_units: [nginx.service]
  register: probe
"""

RETURN = r"""
report:
  description: The diag.performance report without its kind (role_reports/diagnosis.py).
  returned: always
  type: dict
"""

import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# systemd's catalog id of "A process of this unit has been killed by the OOM killer."
SD_MESSAGE_UNIT_OOM = "fe6faa94e7774663a0da52717891d8ef"
KILLED_PROCESS = re.compile(r"Killed process (\d+) \(([^)]*)\)")
CLD_KILLED = "2"  # ExecMainCode: the main process was killed by a signal
UNLIMITED = 1 << 60  # v1 reports "no limit" as a page-rounded 2**63-1
UNIT_NAME = re.compile(r"[^/]+\.(service|scope)\Z")
TEXT_MAX = 200
CGROUP_ROOT = "/sys/fs/cgroup"


def shown(text, limit=TEXT_MAX):
    """Text from the host for people: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:limit]


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


# --- /proc ----------------------------------------------------------------------------------


def parse_cpu_line(text):
    """The aggregate ``cpu`` line of /proc/stat: (total, idle, iowait, steal) in ticks."""
    for line in (text or "").splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:9]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values
            return sum(values), idle, iowait, steal
    return None


def cpu_usage(before, after, interval):
    if before is None or after is None:
        return {"interval": interval, "busy_percent": 0.0, "iowait_percent": 0.0,
                "steal_percent": 0.0}
    total = max(after[0] - before[0], 1)
    idle, iowait, steal = (after[i] - before[i] for i in (1, 2, 3))
    return {
        "interval": interval,
        "busy_percent": round(100.0 * (total - idle - iowait) / total, 1),
        "iowait_percent": round(100.0 * iowait / total, 1),
        "steal_percent": round(100.0 * steal / total, 1),
    }


def parse_pid_stat(text):
    """(name, cpu ticks, start time, rss pages) of one /proc/PID/stat, or None."""
    if not text or ")" not in text:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    if len(fields) < 22:
        return None
    return name, int(fields[11]) + int(fields[12]), fields[19], int(fields[21])


def unit_of(cgroup_text):
    """The systemd unit (.service/.scope) a process runs in, from /proc/PID/cgroup."""
    paths = {}
    for line in (cgroup_text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    for key in ("", "name=systemd"):
        for part in reversed(paths.get(key, "").split("/")):
            if UNIT_NAME.match(part):
                return part
    return None


def sample_processes():
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parsed = parse_pid_stat(read("/proc/%s/stat" % entry))
            if parsed is not None:
                out[int(entry)] = parsed
    return out


def processes(before, after, elapsed, top, exclude):
    ticks = float(os.sysconf("SC_CLK_TCK"))
    page = os.sysconf("SC_PAGE_SIZE")
    rows = []
    for pid, (name, cpu, start, rss) in after.items():
        if pid in exclude:
            continue
        was = before.get(pid)
        used = cpu - was[1] if was and was[2] == start else 0
        rows.append({"pid": pid, "name": shown(name, 64),
                     "cpu_percent": round(100.0 * used / ticks / max(elapsed, 0.001), 1),
                     "rss_bytes": rss * page})
    by_cpu = sorted(rows, key=lambda r: (-r["cpu_percent"], -r["rss_bytes"], r["pid"]))[:top]
    by_rss = sorted(rows, key=lambda r: (-r["rss_bytes"], r["pid"]))[:top]
    for row in by_cpu + by_rss:
        if "command" not in row:
            # argv[0] only: arguments may carry secrets (mysql -pSECRET), and reports travel.
            raw = read("/proc/%d/cmdline" % row["pid"]) or ""
            row["command"] = shown(raw.split("\0", 1)[0].strip())
            row["unit"] = unit_of(read("/proc/%d/cgroup" % row["pid"]))
    return by_cpu, by_rss


def parse_loadavg(text):
    fields = (text or "0 0 0").split()
    return {"one": float(fields[0]), "five": float(fields[1]), "fifteen": float(fields[2])}


def parse_meminfo(text):
    values = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def parse_keyed(text):
    """``key value`` lines (memory.stat, memory.events, memory.oom_control)."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def cgroup_memory():
    """(limit, working set) of the memory cgroup this host's processes live in."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        limit, current = read(CGROUP_ROOT + "/memory.max"), read(CGROUP_ROOT + "/memory.current")
        stat = parse_keyed(read(CGROUP_ROOT + "/memory.stat"))
        inactive = stat.get("inactive_file", 0)
    else:
        base = CGROUP_ROOT + "/memory"
        limit = read(base + "/memory.limit_in_bytes")
        current = read(base + "/memory.usage_in_bytes")
        inactive = parse_keyed(read(base + "/memory.stat")).get("total_inactive_file", 0)
    try:
        limit_value = int(limit.strip())
        current_value = int(current.strip())
    except (AttributeError, ValueError):  # "max", or no such file
        return None, None
    if limit_value >= UNLIMITED:
        return None, None
    return limit_value, max(current_value - inactive, 0)


def memory():
    info = parse_meminfo(read("/proc/meminfo"))
    total = info.get("MemTotal", 0)
    limit, working_set = cgroup_memory()
    return {
        "total_bytes": total,
        "available_bytes": info.get("MemAvailable", info.get("MemFree", 0)),
        "swap_total_bytes": info.get("SwapTotal", 0),
        "swap_free_bytes": info.get("SwapFree", 0),
        "cgroup_limit_bytes": limit,
        "cgroup_working_set_bytes": working_set,
    }


def parse_pressure(resource, text):
    """One /proc/pressure file: ``some``/``full`` lines of ``avgN=`` values."""
    row = {"resource": resource, "some_avg10": 0.0, "some_avg60": 0.0, "some_avg300": 0.0,
           "full_avg10": None, "full_avg60": None, "full_avg300": None}
    found = False
    for line in (text or "").splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        for item in rest.split():
            key, _, value = item.partition("=")
            if key in ("avg10", "avg60", "avg300"):
                row["%s_%s" % (kind, key)] = float(value)
                found = True
    return row if found else None


def pressure():
    out = []
    for resource in ("cpu", "memory", "io"):
        row = parse_pressure(resource, read("/proc/pressure/%s" % resource))
        if row is not None:
            out.append(row)
    return out


# --- OOM kills ------------------------------------------------------------------------------


def parse_oom_journal(lines):
    """Kernel OOM kills and systemd's unit-OOM entries from ``journalctl -o json`` lines."""
    kills, order = {}, []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue  # binary or absent
        try:
            when = iso(int(entry.get("__REALTIME_TIMESTAMP", "0")) / 1e6)
        except ValueError:
            when = None
        if entry.get("MESSAGE_ID") == SD_MESSAGE_UNIT_OOM:
            unit = entry.get("UNIT")
            order.append({"source": "systemd", "time": when, "pid": None, "process": None,
                          "unit": shown(unit, 256) if isinstance(unit, str) else None})
            continue
        if entry.get("_TRANSPORT") != "kernel":
            continue
        if message.startswith("oom-kill:"):
            # oom-kill:constraint=…,oom_memcg=…,task_memcg=/system.slice/x.service,task=…,pid=N
            fields = dict(item.partition("=")[::2] for item in message[9:].split(","))
            pid = fields.get("pid", "")
            if pid.isdigit():
                kill = kills.setdefault(int(pid), {"source": "kernel", "time": when,
                                                   "pid": int(pid), "process": None, "unit": None})
                kill["process"] = kill["process"] or shown(fields.get("task", ""), 64) or None
                memcg = fields.get("task_memcg", "")
                kill["unit"] = kill["unit"] or next(
                    (p for p in reversed(memcg.split("/")) if UNIT_NAME.match(p)), None)
            continue
        match = KILLED_PROCESS.search(message)
        if match:
            kill = kills.setdefault(int(match.group(1)), {
                "source": "kernel", "time": when, "pid": int(match.group(1)),
                "process": None, "unit": None})
            kill["process"] = shown(match.group(2), 64)
    return order + sorted(kills.values(), key=lambda k: (k["time"] or "", k["pid"]))


def parse_show(text):
    """``systemctl show`` output for several units: one dict per unit."""
    units, current = [], {}
    for line in (text or "").splitlines():
        if not line.strip():
            if current:
                units.append(current)
            current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    if current:
        units.append(current)
    return units


def unix_time(value):
    value = (value or "").strip()
    if value.startswith("@") and value[1:].isdigit():
        return int(value[1:])
    return None


def oom_units(shown_units, declared, since):
    """Units systemd says the OOM killer ended, or whose main process died of SIGKILL lately."""
    out = []
    for unit in shown_units:
        name = unit.get("Id", "")
        exited = unix_time(unit.get("ExecMainExitTimestamp")) or unix_time(
            unit.get("InactiveEnterTimestamp"))
        oom = unit.get("Result") == "oom-kill"
        sigkill = unit.get("ExecMainCode") == CLD_KILLED and unit.get("ExecMainStatus") == "9"
        if not (oom or (sigkill and exited is not None and exited >= since)):
            continue
        out.append({
            "unit": shown(name, 256),
            "result": shown(unit.get("Result", ""), 32),
            "killed_by_sigkill": sigkill,
            "exited_at": iso(exited) if exited else None,
            "active_state": shown(unit.get("ActiveState", ""), 32),
            "declared": name in declared,
        })
    return out


def oom_counters():
    """Memory cgroups (the host's own and one level of units and slices) with OOM kills."""
    out = []
    unified = os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))
    base = CGROUP_ROOT if unified else CGROUP_ROOT + "/memory"
    name = "memory.events" if unified else "memory.oom_control"
    candidates = [base]
    for parent in (base, base + "/system.slice"):
        try:
            children = sorted(os.listdir(parent))
        except OSError:
            continue
        candidates += [os.path.join(parent, c) for c in children
                       if os.path.isdir(os.path.join(parent, c))]
    for path in candidates:
        kills = parse_keyed(read(os.path.join(path, name))).get("oom_kill", 0)
        if kills > 0:
            relative = os.path.relpath(path, base)
            relative = "/" if relative == "." else "/" + relative
            last = relative.rpartition("/")[2]
            out.append({"cgroup": shown(relative, 256),
                        "unit": last if UNIT_NAME.match(last) else None, "kills": kills})
    return out[:50]


# --- the module -----------------------------------------------------------------------------


def run(module, argv):
    path = module.get_bin_path(argv[0])
    if path is None:
        return None
    rc, out, _ = module.run_command([path] + argv[1:], environ_update={"LC_ALL": "C"})
    return out if rc == 0 else None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            interval=dict(type="float", default=0.5),
            top=dict(type="int", default=5),
            window_minutes=dict(type="int", default=60),
            declared_units=dict(type="list", elements="str", default=[]),
            thresholds=dict(type="dict", default={}),
            journal_max=dict(type="int", default=2000),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for key, value in params["thresholds"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            module.fail_json(msg="threshold %s must be a number, not %r" % (key, value))
    interval = min(max(params["interval"], 0.1), 5.0)
    window = max(params["window_minutes"], 1)

    cpu_before = parse_cpu_line(read("/proc/stat"))
    procs_before = sample_processes()
    started = time.monotonic()
    time.sleep(interval)
    cpu_after = parse_cpu_line(read("/proc/stat"))
    procs_after = sample_processes()
    elapsed = time.monotonic() - started
    top_cpu, top_rss = processes(procs_before, procs_after, elapsed, max(params["top"], 1),
                                 {os.getpid(), os.getppid()})

    journal = run(module, [
        "journalctl", "--no-pager", "-o", "json", "--since=-%dmin" % window,
        "-n", str(max(params["journal_max"], 1)),
        "--output-fields=MESSAGE,MESSAGE_ID,UNIT,_TRANSPORT",
        "_TRANSPORT=kernel", "+", "MESSAGE_ID=" + SD_MESSAGE_UNIT_OOM,
    ])
    show = run(module, [
        "systemctl", "show", "--timestamp=unix",
        "--property=Id,Result,ActiveState,ExecMainCode,ExecMainStatus,"
        "ExecMainExitTimestamp,InactiveEnterTimestamp",
        "*.service", "*.scope",
    ])
    since = int(time.time()) - window * 60
    report = {
        "cpus": len(os.sched_getaffinity(0)) or os.cpu_count() or 1,
        "load": parse_loadavg(read("/proc/loadavg")),
        "cpu": cpu_usage(cpu_before, cpu_after, round(elapsed, 3)),
        "memory": memory(),
        "pressure": pressure(),
        "top_cpu": top_cpu,
        "top_rss": top_rss,
        "oom": {
            "journal_readable": journal is not None,
            "events": parse_oom_journal((journal or "").splitlines())[:50],
            "units": oom_units(parse_show(show), set(params["declared_units"]), since)[:50],
            "counters": oom_counters(),
        },
        "window_minutes": window,
        "thresholds": params["thresholds"],
    }
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
