#!/usr/bin/python
"""Read-only diagnosis of one service (systemd unit or Docker container) in one task."""

DOCUMENTATION = r"""
---
module: service_health_probe
short_description: Diagnose one service in one round trip (changes nothing)
description:
  - Reads, in one task, everything service_health reports, from machine-readable sources
    only; it never changes anything, in check mode or not.
  - Unit state from C(systemctl show) (state, result, main PID, restarts, start limit,
    C(Requires=)/C(BindsTo=), activation time, control group).
  - The declared TCP port - whether it accepts a connection (sub-second timeout), and who
    listens on it (C(ss -Htlnp) for the PIDs, C(/proc/PID/comm) and C(/proc/PID/cgroup) for
    the process and its unit), each listener marked as the service's own or not; and every
    TCP port the service's own processes listen on.
  - The HTTP probe (no redirects, no proxy), config validation (the validator as argv, no
    shell), recent errors (C(journalctl -o json), the C(MESSAGE) fields), the state of the
    units it depends on (declared, and its own C(Requires=)/C(BindsTo=)), for a container
    C(docker inspect), and the free space of the filesystems it needs (statvfs).
  - With I(retries), probes again every I(delay) seconds until healthy (once the unit has
    been active for I(settle_seconds)): the verify rounds after a fix cost one task.
  - With I(report_kind), the result also carries the report as C(veris_report) (with that
    C(kind)): the task is the report, no task of its own emits it.
options:
  unit:
    description:
      - systemd unit of the service (for a container, the declared unit name). Required
        unless I(only_config).
    type: str
  container:
    description: Docker container of the service; null for a systemd service.
    type: str
  port:
    description: TCP port probed; null for no port probe.
    type: int
  probe_host:
    description: Address the port probe connects to.
    type: str
    default: 127.0.0.1
  port_timeout:
    description: Seconds the port probe waits for a connection.
    type: float
    default: 0.5
  url:
    description: URL fetched (200-399 is healthy, redirects are not followed); null for none.
    type: str
  http_timeout:
    description: Seconds the HTTP probe waits.
    type: float
    default: 5
  http_validate_certs:
    description: Whether the HTTP probe checks TLS certificates.
    type: bool
    default: true
  config_files:
    description: Config files checked with I(validate).
    type: list
    elements: str
    default: []
  validate:
    description: Validator command, C(%s) replaced by each file; split on whitespace, no shell.
    type: str
  validate_config:
    description: Whether to validate the config files.
    type: bool
    default: true
  only_config:
    description: Only validate the config files (nothing else is probed).
    type: bool
    default: false
  dependencies:
    description: Declared dependencies, each C(unit) and C(container) (null for a unit).
    type: list
    elements: dict
    default: []
  cache_dirs:
    description: Declared cache directories (a full filesystem holding one implies clearing).
    type: list
    elements: str
    default: []
  disk_paths:
    description: Paths whose filesystems the service needs.
    type: list
    elements: str
    default: [/, /var]
  disk_full_percent:
    description: A filesystem this full (blocks or inodes) counts as full.
    type: int
    default: 95
  disk_min_free_mb:
    description: A filesystem with less free space than this counts as full.
    type: int
    default: 16
  journal:
    description: Read the journal C(always), or only when the service is C(unhealthy).
    type: str
    choices: [always, unhealthy]
    default: always
  journal_lines:
    description: Journal lines reported.
    type: int
    default: 20
  error_lines:
    description: Recent error lines reported.
    type: int
    default: 5
  config_errors_max:
    description: Validator error lines reported.
    type: int
    default: 20
  line_max:
    description: Length each reported line is cut to.
    type: int
    default: 500
  settle_seconds:
    description:
      - How long a systemd unit must have been active before the first round, counted from
        when systemd marked it active (C(ActiveEnterTimestampMonotonic)): a start earlier in
        the run counts, so only the rest is waited. A container, or a unit that is not
        active, waits it all.
    type: float
    default: 0
  retries:
    description: Rounds after the first while the service is unhealthy.
    type: int
    default: 0
  delay:
    description: Seconds between rounds.
    type: float
    default: 2
  report_kind:
    description: Also return the report as C(veris_report) with this C(kind); null for none.
    type: str
author: veris-remediate
"""

EXAMPLES = r"""
- name: Diagnose nginx
  service_health_probe:
    unit: nginx.service
    port: 80
    url: http://127.0.0.1/
    config_files: [/etc/nginx/nginx.conf]
    validate: nginx -t -c %s
  register: probe
"""

RETURN = r"""
report:
  description: The health report (role_reports/service.py ServiceHealth), without C(kind).
  returned: unless only_config
  type: dict
veris_report:
  description: The report with C(kind) set to I(report_kind) (the orchestrator's channel).
  returned: when report_kind is set
  type: dict
config_checked:
  description: Whether the config files were validated.
  returned: always
  type: bool
config_valid:
  description: Whether every config file validates; null when nothing was checked.
  returned: always
  type: bool
config_errors:
  description: The failing validators' error lines.
  returned: always
  type: list
"""

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

UNIT_PROPERTIES = (
    "Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "Result", "Type",
    "MainPID", "NRestarts", "ExecMainCode", "ExecMainStatus", "Restart", "StartLimitBurst",
    "StartLimitIntervalUSec", "Requires", "BindsTo", "TriggeredBy",
    "ActiveEnterTimestampMonotonic", "ControlGroup", "InvocationID",
)  # fmt: skip
DEPENDENCY_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result", "Type")
SPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0,
    "h": 3600.0, "hr": 3600.0, "d": 86400.0, "w": 604800.0, "M": 2629800.0, "y": 31557600.0,
}  # fmt: skip
SPAN_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)")
SS_PID = re.compile(r"pid=([0-9]+)")
ENGINE = "docker.service"
LIST_LIMIT = 50


# --- reading -----------------------------------------------------------------------------


def run(module, argv):
    """(rc, stdout, stderr) of argv, run without a shell; rc 127 when the tool is missing."""
    if module.get_bin_path(argv[0]) is None:
        return 127, "", "%s not found" % argv[0]
    return module.run_command(argv)


def parse_show(text):
    """``systemctl show`` output: one dict per unit (blocks are separated by blank lines)."""
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_span(text):
    """A systemd time span (``10s``, ``1min 30s``, ``500ms``) in seconds; None if unknown."""
    text = (text or "").strip()
    if not text or text == "infinity":
        return None
    if text.isdigit():  # a bare number is microseconds in `systemctl show` raw output
        return int(text) / 1e6
    total, found = 0.0, False
    for number, unit in SPAN_PART.findall(text):
        if unit not in SPAN_UNITS:
            return None
        total += float(number) * SPAN_UNITS[unit]
        found = True
    return round(total, 6) if found else None


def read_units(module, units, properties):
    """``systemctl show`` of several units in one call, in order; {} for each it cannot read."""
    if not units:
        return []
    rc, out, err = run(module, ["systemctl", "show", "--property=" + ",".join(properties), "--"]
                       + list(units))
    blocks = parse_show(out) if rc == 0 else []
    by_id = {b.get("Id"): b for b in blocks}
    if len(blocks) == len(units):  # systemctl keeps the order it was given
        return blocks
    return [by_id.get(u, {}) for u in units]


def read_text(path):
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return None


def process_cgroup(pid):
    """The process's systemd cgroup path (the unified line, else name=systemd), or ''."""
    text = read_text("/proc/%d/cgroup" % pid) or ""
    unified = named = ""
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":
            unified = path
        elif controllers == "name=systemd":
            named = path
    return unified if unified not in ("", "/") else named


def cgroup_unit(path):
    """The systemd unit a cgroup path belongs to (its deepest unit component), or ''."""
    for part in reversed(path.split("/")):
        if part.endswith((".service", ".scope", ".socket", ".mount", ".swap")):
            return part
    return ""


def process_name(pid):
    return (read_text("/proc/%d/comm" % pid) or "").strip() or "?"


def process_argv(pid):
    raw = read_text("/proc/%d/cmdline" % pid) or ""
    return [a for a in raw.split("\0") if a]


def parse_listeners(text):
    """``ss -Htlnp`` lines -> [{address, port, pids}] (the process column gives only pids)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        local = fields[3]
        host, sep, port = local.rpartition(":")
        if not sep or not port.isdigit():
            continue
        pids = sorted({int(p) for p in SS_PID.findall(" ".join(fields[5:]))})
        out.append({"address": host, "port": int(port), "pids": pids})
    return out


def message_text(value):
    """A journal MESSAGE field: a string, or an array of bytes for binary messages."""
    if isinstance(value, list):
        try:
            return bytes(value).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return ""
    return value if isinstance(value, str) else ""


def journal(module, unit, lines, errors_of=None):
    """The MESSAGE of the unit's last ``lines`` journal entries; with ``errors_of`` (an
    invocation ID, or "" for any), only errors (priority err and worse) of that run of it."""
    argv = ["journalctl", "--unit=" + unit, "--output=json", "--lines=%d" % lines, "--no-pager"]
    if errors_of is not None:
        argv.insert(1, "--priority=err")
    rc, out, _ = run(module, argv)
    messages = []
    for line in out.splitlines() if rc == 0 else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if errors_of and errors_of not in (entry.get("INVOCATION_ID"),
                                           entry.get("_SYSTEMD_INVOCATION_ID")):
            continue  # an error of an earlier run, not of the state the unit is in now
        text = message_text(entry.get("MESSAGE"))
        if text and text not in messages[-1:]:
            messages.append(text)
    return messages


# --- the parts of a report -------------------------------------------------------------


def port_open(host, port, timeout):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is an answer, reported as it is


def http_status(url, timeout, validate_certs):
    context = ssl.create_default_context()
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # the probe is about this host: never a proxy
        urllib.request.HTTPSHandler(context=context),
        NoRedirect(),
    )
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def validate_configs(module, params):
    """(checked, valid, errors) for the declared config files."""
    command = (params["validate"] or "").strip()
    files = params["config_files"]
    if not params["validate_config"] or not command or not files:
        return False, None, []
    errors = []
    for path in files:
        argv = [part.replace("%s", path) for part in command.split()]
        rc, out, err = run(module, argv)
        if rc != 0:
            errors.extend(err.splitlines() or out.splitlines()
                          or ["%s exited %d for %s" % (argv[0], rc, path)])
    errors = [cut(e, params["line_max"]) for e in errors[: params["config_errors_max"]]]
    return True, not errors, errors


def cut(text, limit):
    text = text.rstrip()
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def docker_inspect(module, name):
    """(state or None, problem or ''): ``docker inspect`` of one container."""
    rc, out, err = run(module, ["docker", "container", "inspect", "--", name])
    if rc == 127:
        return None, "docker is not installed"
    try:
        data = json.loads(out) if out.strip() else []
    except ValueError:
        data = []
    if rc != 0 or not data:
        if "No such" in err or (rc != 0 and out.strip() == "[]"):
            return {"name": name, "exists": False}, ""
        return None, "docker inspect %s failed: %s" % (name, cut(err or out, 200))
    item = data[0]
    state = item.get("State") or {}
    health = state.get("Health") or {}
    host_ports = set()
    for bindings in ((item.get("NetworkSettings") or {}).get("Ports") or {}).values():
        for binding in bindings or []:
            if str(binding.get("HostPort", "")).isdigit():
                host_ports.add(int(binding["HostPort"]))
    networks = (item.get("NetworkSettings") or {}).get("Networks") or {}
    return {
        "name": name,
        "exists": True,
        "id": item.get("Id", ""),
        "status": state.get("Status", ""),
        "running": bool(state.get("Running")),
        "restarting": bool(state.get("Restarting")),
        "paused": bool(state.get("Paused")),
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
        "health": health.get("Status") or None,
        "restart_count": int(item.get("RestartCount") or 0),
        "restart_policy": ((item.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name")
        or "no",
        "error": state.get("Error") or "",
        "started_at": state.get("StartedAt") or "",
        "finished_at": state.get("FinishedAt") or "",
        "ports": sorted(host_ports),
        "ips": sorted(n.get("IPAddress") for n in networks.values() if n.get("IPAddress")),
    }, ""


def container_report(info):
    """A container's state as the report carries it (what the model defines)."""
    if info is None:
        return None
    keys = ("status", "running", "restarting", "paused", "exit_code", "oom_killed", "health",
            "restart_count", "restart_policy", "error", "started_at", "finished_at", "ports")
    defaults = {"status": "", "running": False, "restarting": False, "paused": False,
                "exit_code": None, "oom_killed": False, "health": None, "restart_count": 0,
                "restart_policy": "", "error": "", "started_at": "", "finished_at": "",
                "ports": []}
    out = {"name": info["name"], "exists": info["exists"]}
    out.update({k: info.get(k, defaults[k]) for k in keys})
    return out


def container_active_state(info):
    """A container's state in systemd's words, so units and containers compare alike."""
    if not info or info.get("status") == "unknown":
        return "unknown"
    if not info.get("exists"):
        return "inactive"
    if info.get("restarting"):
        return "activating"
    if info.get("running"):
        return "active"
    return "failed" if info.get("exit_code") not in (0, None) or info.get("error") else "inactive"


def owns(pid, unit_cgroup, container, triggered_by):
    """Whether a listening process is the service's own."""
    if pid == 1:  # systemd holds the sockets of socket-activated services
        return bool(triggered_by) and not container
    cgroup = process_cgroup(pid)
    if container:
        if container.get("id") and container["id"] in cgroup:
            return True  # host networking: the container's own process
        argv = process_argv(pid)  # docker-proxy forwards a published port to the container
        if argv and os.path.basename(argv[0]) == "docker-proxy" and "-container-ip" in argv:
            index = argv.index("-container-ip")
            return index + 1 < len(argv) and argv[index + 1] in container.get("ips", [])
        return False
    if not unit_cgroup:
        return False
    return cgroup == unit_cgroup or cgroup.startswith(unit_cgroup.rstrip("/") + "/")


def filesystems(paths, cache_dirs, full_percent, min_free):
    """The filesystems holding ``paths`` and ``cache_dirs``, each once, with their fill."""
    seen = {}
    order = []
    for path, is_cache in [(p, False) for p in paths] + [(d, True) for d in cache_dirs]:
        probe = path
        while probe != "/" and not os.path.exists(probe):
            probe = os.path.dirname(probe) or "/"
        try:
            device = os.stat(probe).st_dev
            st = os.statvfs(probe)
        except OSError:
            continue
        entry = seen.get(device)
        if entry is None:
            size = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            used_pct = round(100.0 * used / (used + free), 1) if used + free else 0.0
            inodes_pct = None
            if st.f_files:
                inodes_pct = round(100.0 * (st.f_files - st.f_ffree) / st.f_files, 1)
            entry = {
                "paths": [], "cache_dirs": [], "size_bytes": size, "free_bytes": free,
                "used_percent": used_pct, "inodes_used_percent": inodes_pct,
                "full": size > 0 and (used_pct >= full_percent or free < min_free
                                      or (inodes_pct or 0) >= full_percent),
            }  # fmt: skip
            seen[device] = entry
            order.append(entry)
        key = "cache_dirs" if is_cache else "paths"
        if path not in entry[key]:
            entry[key].append(path)
    return order


# --- one round -------------------------------------------------------------------------


def probe_round(module, params, config):
    unit = params["unit"]
    container_name = params["container"]
    problems = []
    show = read_units(module, [unit], UNIT_PROPERTIES)[0]
    if not show:
        problems.append("systemctl show %s gave nothing" % unit)

    # Docker is asked only when its engine runs: with docker.socket, asking would start it.
    engine = None
    if container_name or any(d.get("container") for d in params["dependencies"]):
        engine = read_units(module, [ENGINE], DEPENDENCY_PROPERTIES)[0].get("ActiveState", "")
        if engine != "active":
            problems.append("the Docker engine (%s) is %s: containers not inspected"
                            % (ENGINE, engine or "unknown"))

    def inspect(name):
        if engine != "active":
            return {"name": name, "exists": False, "status": "unknown"}
        found, problem = docker_inspect(module, name)
        if problem:
            problems.append(problem)
        return found or {"name": name, "exists": False, "status": "unknown"}

    info = inspect(container_name) if container_name else None

    # Dependencies: declared ones, the unit's own Requires=/BindsTo=, the engine of a container.
    wanted = []
    for dep in params["dependencies"]:
        if dep.get("unit"):
            wanted.append((dep["unit"], "declared", dep.get("container") or None))
    requires = []
    if not container_name:
        for name in (show.get("Requires", "") + " " + show.get("BindsTo", "")).split():
            # Slices and targets are where units live and when they start, not services.
            if not name.endswith((".slice", ".target")) and name not in requires:
                requires.append(name)
    declared_units = {u for u, _, _ in wanted}
    wanted += [(u, "requires", None) for u in requires if u not in declared_units]
    if container_name and ENGINE not in declared_units:
        wanted.append((ENGINE, "engine", None))
    shown = read_units(module, [u for u, _, c in wanted if not c], DEPENDENCY_PROPERTIES)
    shown_iter = iter(shown)
    dependencies = []
    for dep_unit, source, dep_container in wanted:
        if dep_container:
            dep_info = inspect(dep_container)
            status = dep_info.get("status", "")
            dependencies.append({
                "unit": dep_unit, "source": source, "container": dep_container,
                "active_state": container_active_state(dep_info) if dep_info else "unknown",
                "sub_state": status or ("missing" if dep_info else "unknown"),
                "result": "", "load_state": "loaded" if dep_info and dep_info.get("exists")
                else "not-found", "type": "container",
            })  # fmt: skip
            continue
        s = next(shown_iter, {})
        dependencies.append({
            "unit": dep_unit, "source": source, "container": None,
            "active_state": s.get("ActiveState", "unknown") or "unknown",
            "sub_state": s.get("SubState", "unknown") or "unknown",
            "result": s.get("Result", ""), "load_state": s.get("LoadState", "unknown") or "unknown",
            "type": s.get("Type", ""),
        })  # fmt: skip

    # Who listens: the declared port's holders, and every port the service's processes hold.
    listeners, unit_ports = {}, set()
    rc, out, err = run(module, ["ss", "-Htlnp"])
    if rc != 0:
        problems.append("ss -Htlnp failed: %s" % cut(err, 200))
    unit_cgroup = show.get("ControlGroup", "")
    triggered = show.get("TriggeredBy", "").strip()
    port = params["port"]
    ownership = {}
    for sock in parse_listeners(out if rc == 0 else ""):
        for pid in sock["pids"]:
            if pid not in ownership:
                ownership[pid] = owns(pid, unit_cgroup, info if container_name else None, triggered)
            if ownership[pid] and not container_name:
                unit_ports.add(sock["port"])
            if port is not None and sock["port"] == port:
                if pid not in listeners:
                    listeners[pid] = {
                        "pid": pid, "process": process_name(pid),
                        "unit": cgroup_unit(process_cgroup(pid)) if pid != 1 else "init.scope",
                        "addresses": [], "ours": ownership[pid],
                    }  # fmt: skip
                if sock["address"] not in listeners[pid]["addresses"]:
                    listeners[pid]["addresses"].append(sock["address"])
    if container_name and info and info.get("exists"):
        unit_ports.update(info.get("ports", []))

    is_open = None if port is None else port_open(params["probe_host"], port, params["port_timeout"])
    status = None
    if params["url"]:
        status = http_status(params["url"], params["http_timeout"], params["http_validate_certs"])
    http_ok = None if not params["url"] else status is not None and 200 <= status < 400

    active_state = show.get("ActiveState", "") or "unknown"
    if container_name:
        running = bool(info and info.get("running") and not info.get("restarting")
                       and not info.get("paused") and info.get("health") not in ("unhealthy", "starting"))
    else:
        running = active_state == "active"
    foreign = [item for item in listeners.values() if not item["ours"]]
    healthy = running and is_open is not False and http_ok is not False and not foreign

    checked, valid, errors = config
    main_pid = as_int(show.get("MainPID"))
    return {
        "unit": unit,
        "active_state": active_state,
        "sub_state": show.get("SubState", "") or "unknown",
        "unit_file_state": show.get("UnitFileState", ""),
        "load_state": show.get("LoadState", "") or "unknown",
        "result": show.get("Result", ""),
        "main_pid": main_pid or None,
        "n_restarts": as_int(show.get("NRestarts")),
        "restart_policy": show.get("Restart", ""),
        "exec_main_code": as_int(show.get("ExecMainCode")),
        "exec_main_status": as_int(show.get("ExecMainStatus")),
        "start_limit_burst": as_int(show.get("StartLimitBurst")),
        "start_limit_interval_sec": parse_span(show.get("StartLimitIntervalUSec")),
        "active_enter_monotonic": as_int(show.get("ActiveEnterTimestampMonotonic")) or None,
        "requires": requires,
        "dependencies": dependencies,
        "port": port,
        "port_open": is_open,
        "listeners": [listeners[pid] for pid in sorted(listeners)][:LIST_LIMIT],
        "unit_ports": sorted(unit_ports)[:LIST_LIMIT],
        "health_url": params["url"],
        "http_status": status,
        "http_ok": http_ok,
        "container": container_report(info) if container_name else None,
        "filesystems": filesystems(params["disk_paths"], params["cache_dirs"],
                                   params["disk_full_percent"],
                                   params["disk_min_free_mb"] * 1024 * 1024),
        "config_valid": valid if checked else None,
        "config_errors": errors,
        "journal_tail": [],
        "recent_errors": [],
        "probe_errors": problems,
        "healthy": healthy,
        "invocation_id": show.get("InvocationID", ""),  # for the journal; not reported
    }


def settle_wait(module, params):
    """Seconds still to wait so the unit has been active for ``settle_seconds``."""
    settle = params["settle_seconds"]
    if settle <= 0 or params["container"]:
        return max(settle, 0)
    show = read_units(module, [params["unit"]], ("ActiveState", "ActiveEnterTimestampMonotonic"))
    state = show[0] if show else {}
    entered = as_int(state.get("ActiveEnterTimestampMonotonic")) or 0
    if state.get("ActiveState") != "active" or entered <= 0:
        return settle
    # systemd's monotonic timestamps are CLOCK_MONOTONIC, as is time.monotonic() on Linux.
    age = time.monotonic() - entered / 1e6
    return settle if age < 0 else max(settle - age, 0)


def add_journal(module, params, report):
    """The service's last log lines, and its recent errors, into ``report``."""
    if params["container"]:
        tail, recent = container_logs(module, params["container"], params["journal_lines"],
                                      params["error_lines"])
    else:
        tail = journal(module, params["unit"], params["journal_lines"])
        recent = journal(module, params["unit"], 10 * params["error_lines"],
                         report.pop("invocation_id", ""))
    limit = params["line_max"]
    report["journal_tail"] = [cut(line, limit) for line in tail[-params["journal_lines"]:]]
    report["recent_errors"] = [cut(line, limit) for line in recent[-params["error_lines"]:]]


def container_logs(module, name, lines, error_lines):
    """A container's last output lines, and its last stderr lines as its recent errors."""
    rc, out, err = run(module, ["docker", "logs", "--tail", str(max(lines, error_lines)), "--",
                                name])
    if rc != 0:
        return [], []
    return (out.splitlines() + err.splitlines())[-lines:], err.splitlines()[-error_lines:]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            unit=dict(type="str"),
            container=dict(type="str"),
            port=dict(type="int"),
            probe_host=dict(type="str", default="127.0.0.1"),
            port_timeout=dict(type="float", default=0.5),
            url=dict(type="str"),
            http_timeout=dict(type="float", default=5),
            http_validate_certs=dict(type="bool", default=True),
            config_files=dict(type="list", elements="str", default=[]),
            validate=dict(type="str"),
            validate_config=dict(type="bool", default=True),
            only_config=dict(type="bool", default=False),
            dependencies=dict(type="list", elements="dict", default=[]),
            cache_dirs=dict(type="list", elements="str", default=[]),
            disk_paths=dict(type="list", elements="str", default=["/", "/var"]),
            disk_full_percent=dict(type="int", default=95),
            disk_min_free_mb=dict(type="int", default=16),
            journal=dict(type="str", choices=["always", "unhealthy"], default="always"),
            journal_lines=dict(type="int", default=20),
            error_lines=dict(type="int", default=5),
            config_errors_max=dict(type="int", default=20),
            line_max=dict(type="int", default=500),
            settle_seconds=dict(type="float", default=0),
            retries=dict(type="int", default=0),
            delay=dict(type="float", default=2),
            report_kind=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    # Names reach systemctl, journalctl and docker as arguments: never as options.
    for name in [params["unit"] or "x", params["container"] or "x"] + [
        str(d.get("unit") or "x") for d in params["dependencies"]
    ]:
        if name.startswith("-"):
            module.fail_json(msg="unit and container names must not start with '-': %r" % name)
    if not params["only_config"] and not params["unit"]:
        module.fail_json(msg="unit is required unless only_config")
    config = validate_configs(module, params)
    checked, valid, errors = config
    if params["only_config"]:
        module.exit_json(changed=False, config_checked=checked, config_valid=valid,
                         config_errors=errors)
    wait = settle_wait(module, params)
    if wait > 0:
        time.sleep(wait)
    rounds = 0
    while True:
        rounds += 1
        report = probe_round(module, params, config)
        if report["healthy"] or rounds > params["retries"]:
            break
        time.sleep(max(params["delay"], 0))
    # The journal of the round that is reported: the first healthy one, or the last.
    if params["journal"] == "always" or not report["healthy"]:
        add_journal(module, params, report)
    report.pop("invocation_id", None)
    report["rounds"] = rounds
    extra = {}
    if params["report_kind"]:
        extra["veris_report"] = dict(report, kind=params["report_kind"])
    module.exit_json(changed=False, report=report, config_checked=checked, config_valid=valid,
                     config_errors=errors, **extra)


if __name__ == "__main__":
    main()
